#!/usr/bin/env python3
"""Instructions the worker spends per event, counted by callgrind (repeatable on a noisy machine,
unlike CPU seconds): N signed Vapi end-of-call reports (fixtures/payloads/vapi) queued in Redis by
`engine serve --no-worker`, then drained into call_logs by `engine worker` under callgrind, the
archive on (the shipped vapi.yaml, ENCRYPTION_KEY set) or off. Per event = the difference of two
runs' totals (e.g. N = 2500 and 500) over the difference in N: start-up and idle cancel out.

usage: benches/callgrind/worker.py on|off N ENGINE_BINARY   (local Redis and Postgres; writes
       /tmp/cgw/cg.<on|off>.<N>; open with callgrind_annotate --inclusive=yes)
       CG_PHASE=ingest: the request path under callgrind instead (the worker then runs as is),
       written to /tmp/cgw/cg.ingest.<on|off>.<N>
       CG_OTEL=1: traces exported (100 % sampled) over OTLP/HTTP to a receiver in this script that
       answers 200 (its CPU is not counted); files named <on|off>.otel
Numbers: docs/benchmarks.md, "Event archive"."""
import sys, os, json, subprocess, time, shutil, signal, http.client, glob, re
arch, n, binary = sys.argv[1], int(sys.argv[2]), sys.argv[3]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.makedirs('/tmp/cgw', exist_ok=True)
name = f"cgw_{arch}_{n}_{os.getpid()}"
psql = lambda sql: subprocess.run(['psql', '-q', '-d', 'test', '-c', sql], check=True, capture_output=True)
psql(f"CREATE SCHEMA {name}")
for f in sorted(glob.glob(f'{root}/migrations/*.sql'), key=lambda p: int(re.search(r'V(\d+)__', p).group(1))):
    subprocess.run(['psql', '-q', '-d', 'test', '-v', 'ON_ERROR_STOP=1', '-c', f'SET search_path TO {name}', '-f', f], check=True, capture_output=True)
d = f'/tmp/cgw/{name}'
shutil.copytree(f'{root}/pipelines', d)
s = open(f'{d}/engine.yaml').read().replace('  limit: 100/1m\n', '  limit: 100000000/1s\n')
open(f'{d}/engine.yaml', 'w').write(s + f"redis_key_prefix: '{name}'\n")
v = open(f'{d}/vapi.yaml').read().replace('  limit: 20000/1m\n', '  limit: 100000000/1s\n')
if arch == 'off':
    a = v.index('\narchive:'); e = v.find('\n\n', a + 1)
    v = v[:a] + '\narchive: off' + v[e:]
open(f'{d}/vapi.yaml', 'w').write(v)
env = dict(PATH=os.environ['PATH'], PORT='13001', RUST_LOG='warn', REDIS_URL='redis://127.0.0.1:6379',
           DATABASE_URL=f'postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{name}',
           VAPI_WEBHOOK_SECRET='cg-secret-0123456789abcdef',
           ENCRYPTION_KEY='000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f')
phase = os.environ.get('CG_PHASE', 'worker')
if os.environ.get('CG_OTEL'):
    import http.server, threading
    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get('content-length', 0)))
            self.send_response(200); self.send_header('content-type', 'application/x-protobuf')
            self.send_header('content-length', '0'); self.end_headers()
        def log_message(self, *a): pass
    receiver = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    env['OTEL_EXPORTER_OTLP_ENDPOINT'] = f'http://127.0.0.1:{receiver.server_address[1]}'
    arch += '.otel'

under = lambda out: ['valgrind', '--tool=callgrind', f'--callgrind-out-file={out}']
ingest_out = f'/tmp/cgw/cg.ingest.{arch}.{n}'
ing = subprocess.Popen((under(ingest_out) if phase == 'ingest' else []) + [binary, 'serve', '--no-worker', '--pipelines', d], env=env, stdout=subprocess.DEVNULL, stderr=open(f'{d}.ingest.log', 'w'))
for _ in range(3000):
    try:
        c = http.client.HTTPConnection('127.0.0.1', 13001); c.request('GET', '/health'); c.getresponse().read(); break
    except Exception: time.sleep(0.1)
tpl = json.load(open(f'{root}/fixtures/payloads/vapi/end-of-call-report.json'))
c = http.client.HTTPConnection('127.0.0.1', 13001)
for i in range(n):
    tpl['message']['call']['id'] = f'00000000-0000-4000-8000-{i:012d}'
    tpl['message']['timestamp'] = 1764583200000 + i
    body = json.dumps(tpl)
    c.request('POST', '/api/webhooks/vapi', body, {'authorization': 'Bearer cg-secret-0123456789abcdef', 'content-type': 'application/json'})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
ing.send_signal(signal.SIGTERM); ing.wait()
out = ingest_out if phase == 'ingest' else f'/tmp/cgw/cg.{arch}.{n}'
w = subprocess.Popen(([] if phase == 'ingest' else under(out)) + [binary, 'worker', '--pipelines', d], env=env, stdout=subprocess.DEVNULL, stderr=open(f'{d}.worker.log', 'w'))
def rows():
    r = subprocess.run(['psql', '-tA', '-d', 'test', '-c', f'SELECT count(*) FROM {name}.call_logs'], capture_output=True, text=True)
    return int(r.stdout.strip() or 0)
t0 = time.time()
while rows() < n and time.time() - t0 < 600: time.sleep(1)
time.sleep(2)
got = rows()
w.send_signal(signal.SIGTERM); w.wait()
tot = [l for l in open(out) if l.startswith('summary:') or l.startswith('totals:')]
print(arch, n, 'rows', got, tot[-1].strip())
psql(f"DROP SCHEMA {name} CASCADE")
keys = subprocess.run(['redis-cli', '--scan', '--pattern', f'{name}*'], capture_output=True, text=True).stdout.split()
for i in range(0, len(keys), 1000):
    subprocess.run(['redis-cli', 'UNLINK', *keys[i:i + 1000]], capture_output=True)
shutil.rmtree(d, ignore_errors=True)
