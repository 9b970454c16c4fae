//! The Lua scripts of the queue's state changes: each runs atomically in Redis, so a crash
//! between two steps of one change cannot happen (ack + delete; retry = schedule + ack; dead
//! letter = append + ack; promote due retries).
//!
//! A worker repeats a state change whose answer it did not get (a failover, a cut link), so each
//! must be harmless twice: the retry and the dead letter acknowledge first and add nothing when
//! the entry was no longer pending (their first run did it, and only the answer was lost).

pub(super) const ACK: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
";

pub(super) const RETRY: &str = r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
return redis.call('XDEL', KEYS[1], ARGV[2])
";

pub(super) const DEAD: &str = r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  return 0
end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[3], 'b', ARGV[6], 'reason', ARGV[4], 'attempts', ARGV[5], 'from', ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
";

pub(super) const PROMOTE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local d = cjson.decode(member)
  redis.call('XADD', KEYS[2], '*', 'e', d.e, 'a', tostring(d.a))
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next[2] then
  return {#due, math.max(tonumber(next[2]) - now, 0)}
end
return {#due, -1}
";
