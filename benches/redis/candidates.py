#!/usr/bin/env python3
"""Redis CPU per event for the ways an event could be written to (and read from) its queue,
measured on a private redis-server (a spare port, a temp dir, no persistence), never the shared
one. Each candidate is a file of commands in Redis's protocol sent with `redis-cli --pipe`; Redis
CPU per event = the change of INFO cpu's used_cpu_sys + used_cpu_user over the run, divided by the
events. Every run writes the same N events (2.7 KiB: a 600-byte `e` meta and a 2,100-byte body, the
shape of the cost bench's Vapi end-of-call reports), 8 per call as the engine's group commit makes
them under load, each with its own dedupe key, all counted against one rate-limit key (a provider's
org) whose limit never refuses.

  group       the engine's group script as it is (engine/redis_conn/group_commit.rs, GROUP): per
              event a GCRA check, SET NX EX of the dedupe key and XADD, the body an EVALSHA argument
  group-half  the same, the body half as long (what a 2x compression of bodies would leave)
  append      the group script without the rate limit ('A' ops)
  multi       no Lua: MULTI, SET NX EX + XADD per event, EXEC (no rate limit: not a whole design)
  decide      MULTI: one EVALSHA deciding the group (GCRA + SET NX EX, no body in Lua), then the
              8 XADDs unconditionally, EXEC (a design in which the worker must drop entries whose
              dedupe key holds another event id)
  xadd        XADD alone: the floor of keeping the event in a stream
  set         SET of the same 2.7 KiB as a string key
  ping        PING: the protocol's own floor
  read        the worker's side: XREADGROUP COUNT 100 over the filled stream
  ack         the worker's ack script (XACK + XDEL of 100 ids per call)

usage: benches/redis/candidates.py [N=40000] [ROUNDS=3]
       CANDIDATES_SERVER=/path/to/valkey-server: measure another server speaking Redis's protocol
       (default: redis-server on PATH)
Numbers: docs/benchmarks.md, "Redis's part of an event: the candidates measured"."""
import os, re, subprocess, sys, tempfile, time, uuid

N = int(sys.argv[1]) if len(sys.argv) > 1 else 40000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
G = 8
PORT = '6397'
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def script(path, name):
    """The engine's Lua script `name` (`const NAME: &str = r"...";` in `path`), as it ships."""
    src = open(f'{root}/{path}').read()
    start = src.index(f'const {name}: &str = r"') + len(f'const {name}: &str = r"')
    return src[start:src.index('\n";', start)]


GROUP = script('engine/redis_conn/group_commit.rs', 'GROUP')
ACK = script('engine/queue/redis/scripts.rs', 'ACK')
# the decide candidate: the group script's clock and GCRA, then a dedupe marker per event
DECIDE = GROUP[:GROUP.index('local function append')] + r"""
local out = {}
for i = 2, #KEYS do
  local d = gcra(KEYS[1], ARGV[1], ARGV[2], '')
  if d[1] == 0 then out[i - 1] = 0
  elseif redis.call('SET', KEYS[i], ARGV[i + 2], 'NX', 'EX', ARGV[3]) then out[i - 1] = 1
  else out[i - 1] = 2 end
end
for key, ttl in pairs(writes) do
  pcall(redis.call, 'SET', key, string.format('%.0f', tats[key]), 'PX', ttl)
end
return out
"""

META = ('{"id":"%s","received_at_ms":1764583200000,"method":"POST","path":"/api/webhooks/vapi",'
        '"headers":[["content-type","application/json"],["user-agent","Vapi/1.0"]],'
        '"index":{"call_id":"0b9b1c7e-1111-2222-3333-444455556666","type":"end-of-call-report"}}'
        % ('0' * 36)).ljust(600)
BODY = ('{"message":{"type":"end-of-call-report","artifact":{"transcript":"'
        + 'AI: Hello, how can I help? User: I would like to book a cleaning next week. ' * 40)[:2100]


def resp(*args):
    out = [b'*%d\r\n' % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b'$%d\r\n%s\r\n' % (len(a), a))
    return b''.join(out)


def cli(*args):
    return subprocess.run(['redis-cli', '-p', PORT, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def version():
    """The server's name and version (Valkey reports a Redis version too, for clients)."""
    info = dict(re.findall(r'^(\w+):(.*?)\r?$', cli('INFO', 'server'), re.M))
    if 'valkey_version' in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info['redis_version']}"


def cpu():
    info = cli('INFO', 'cpu')
    return sum(float(v) for k, v in re.findall(r'(used_cpu_sys|used_cpu_user):([\d.]+)', info))


def commands(kind, sha):
    """The candidate's commands for N events, as one byte string."""
    out = []
    body = BODY[:1050] if kind == 'group-half' else BODY
    xadd = lambda: resp('XADD', 'q', 'NOMKSTREAM', '*', 'e', META, 'b', body)
    for _ in range(N // G):
        ids = [uuid.uuid4().hex for _ in range(G)]
        if kind in ('group', 'group-half'):
            keys, argv = [], [str(G)]
            for d in ids:
                keys += ['rl', 'q', 'seen:' + d]
                argv += ['LA', '10', '100000000', '', META, body, '1', '86400']
            out.append(resp('EVALSHA', sha['group'], str(len(keys)), *keys, *argv))
        elif kind == 'append':
            keys, argv = [], [str(G)]
            for d in ids:
                keys += ['q', 'seen:' + d]
                argv += ['A', META, body, '1', '86400']
            out.append(resp('EVALSHA', sha['group'], str(len(keys)), *keys, *argv))
        elif kind == 'multi':
            out.append(resp('MULTI'))
            for d in ids:
                out += [resp('SET', 'seen:' + d, d, 'NX', 'EX', '86400'), xadd()]
            out.append(resp('EXEC'))
        elif kind == 'decide':
            out.append(resp('MULTI'))
            out.append(resp('EVALSHA', sha['decide'], str(1 + G), 'rl', *['seen:' + d for d in ids],
                            '10', '100000000', '86400', *ids))
            out += [xadd() for _ in ids]
            out.append(resp('EXEC'))
        elif kind == 'xadd':
            out += [xadd() for _ in ids]
        elif kind == 'set':
            out += [resp('SET', 'k:' + d, META + body) for d in ids]
        elif kind == 'ping':
            out += [resp('PING') for _ in ids]
    return b''.join(out)


def pipe(data):
    p = subprocess.run(['redis-cli', '-p', PORT, '--pipe'], input=data, capture_output=True)
    if b'errors: 0' not in p.stdout:
        sys.exit(f'redis-cli --pipe: {p.stdout.decode()} {p.stderr.decode()}')


def commandstats():
    """Each command's total time so far (INFO commandstats `usec`, its own execution: no I/O)."""
    stats = cli('INFO', 'commandstats')
    return {c: int(u) for c, u in re.findall(r'cmdstat_([\w|]+):calls=\d+,usec=(\d+)', stats)}


def measure(data):
    """Redis CPU per event sending `data`, and each command's own µs per event."""
    before, stats = cpu(), commandstats()
    pipe(data)
    used = (cpu() - before) * 1e6 / N
    after = commandstats()
    return used, {c: (u - stats.get(c, 0)) / N for c, u in after.items() if u > stats.get(c, 0)}


def fresh():
    cli('FLUSHALL')
    cli('XGROUP', 'CREATE', 'q', 'engine', '0', 'MKSTREAM')
    cli('CONFIG', 'RESETSTAT')


with tempfile.TemporaryDirectory() as tmp:
    server = subprocess.Popen([os.environ.get('CANDIDATES_SERVER', 'redis-server'), '--port', PORT,
                               '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
                               '--dir', tmp], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                cli('PING')
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        sha = {'group': cli('SCRIPT', 'LOAD', GROUP), 'decide': cli('SCRIPT', 'LOAD', DECIDE),
               'ack': cli('SCRIPT', 'LOAD', ACK)}
        kinds = ['group', 'group-half', 'append', 'multi', 'decide', 'xadd', 'set', 'ping']
        files = {k: commands(k, sha) for k in kinds}
        split = {}  # each candidate's commands, from its last round
        results = {k: [] for k in kinds + ['read', 'ack']}

        def run(kind, data):
            used, split[kind] = measure(data)
            results[kind].append(used)

        for _ in range(ROUNDS):
            for k in kinds:
                fresh()
                run(k, files[k])
                if k != 'xadd':
                    continue
                # the worker's side, on the stream xadd just filled
                reads = b''.join(resp('XREADGROUP', 'GROUP', 'engine', 'c', 'COUNT', '100',
                                      'STREAMS', 'q', '>') for _ in range(N // 100))
                run('read', reads)
                ids = [line for line in cli('XRANGE', 'q', '-', '+').split('\n')
                       if re.fullmatch(r'\d+-\d+', line)]
                acks = b''.join(resp('EVALSHA', sha['ack'], '1', 'q', 'engine', *ids[i:i + 100])
                                for i in range(0, len(ids), 100))
                run('ack', acks)
                assert cli('XLEN', 'q') == '0', 'the ack script left entries behind'
        print(f'Redis CPU per event (µs), {N} events of 2.7 KiB, {ROUNDS} rounds, '
              f'{version()}:')
        for k, v in results.items():
            v = sorted(v)
            print(f'  {k:<11} median {v[len(v) // 2]:6.2f}   ({", ".join(f"{x:.2f}" for x in v)})')
        print('Each command\'s own time per event, last round (INFO commandstats; a script\'s '
              'time includes the commands it calls, which are also listed):')
        for k, cmds in split.items():
            said = sorted(cmds.items(), key=lambda c: -c[1])
            print(f'  {k:<11} ' + ', '.join(f'{c} {u:.2f}' for c, u in said if u >= 0.01))
    finally:
        server.terminate()
        server.wait()
