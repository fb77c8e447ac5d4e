#!/usr/bin/env bash
# Soak: the daemon replays the bundled sample frames in a loop (--loop) while clients search,
# watch (and receive pushes), fetch thumbnails and reconnect; every few seconds it samples
# the daemon's resident memory, open file descriptors and threads. Prints one JSON line:
# {"minutes","rss_mb_start","rss_mb_end","rss_mb_max","fds_start","fds_end","threads_max",
#  "frames","queries","pushes","errors"}; exits non-zero on any error or a drift beyond the
# bounds below (RSS growth over 64 MB after the first minute's warm-up, fds growth over 8).
# Usage: benches/soak.sh [MINUTES]          (default 1; board/README.md has a 30-minute run)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-1}
d="$root/target/release/moonlensd"
[ -x "$d" ] || (cd "$root" && cargo build --release --bin moonlensd)
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
(cd "$root" && exec env RUST_LOG=warn "$d" --source dir:models/samples --loop --fps 20 --capacity 2000 \
  --index "$work/index" --socket "$work/s" --no-console 2>"$work/log") &
pid=$!
python3 - "$work/s" "$pid" "$minutes" <<'PY'
import json, os, socket, sys, threading, time
path, pid, minutes = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def sample():
    rss = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))
def ask(req, timeout=30):
    """The reply to `req`; a watch's push may come first on any connection (+MATCH, or an
    {"event": ...} line): skipped, as docs/protocol.md says clients must."""
    s = socket.socket(socket.AF_UNIX); s.settimeout(timeout); s.connect(path)
    s.sendall((json.dumps(req) + "\n").encode()); buf = b""
    while True:
        while b"\n" not in buf:
            c = s.recv(1 << 20)
            if not c: raise OSError("connection closed before the reply")
            buf += c
        line, buf = buf.split(b"\n", 1)
        if line.startswith(b"+MATCH"): continue
        reply = json.loads(line)
        if "event" in reply and "id" not in reply: continue
        s.close()
        return reply
t0 = time.time()
while True:
    try:
        if ask({"id": 0, "cmd": "status"})["frames"] >= 22: break
    except OSError:
        pass
    if time.time() - t0 > 300: sys.exit("daemon did not start")
    time.sleep(0.5)
stop = time.time() + minutes * 60
count = {"queries": 0, "pushes": 0, "errors": 0}
first_error = []
lock = threading.Lock()
def bump(k, n=1):
    with lock: count[k] += n
def searcher(i):
    texts = ["a rabbit", "an elephant", "草莓", "a duck on a pond", "fruit", "insects"]
    while time.time() < stop:
        try:
            r = ask({"id": i, "cmd": "search", "text": texts[i % len(texts)], "k": 5})
            ok = r.get("ok") is True and len(r["hits"]) == 5
            if ok and i % 2 == 0:
                t = ask({"id": i, "cmd": "thumb", "frame": r["hits"][0]["id"]})
                ok = t.get("ok") is True or "left the ring" in t.get("error", "")
            bump("queries" if ok else "errors")
            if not ok and not first_error: first_error.append(repr(r)[:300])
        except (OSError, ValueError, KeyError) as e:
            bump("errors")
            if not first_error: first_error.append(repr(e))
        time.sleep(0.05)
def watcher():
    s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(path)
    s.sendall(b'{"id":1,"cmd":"watch_add","text":"a rabbit"}\n')
    buf = b""
    while time.time() < stop:
        try:
            c = s.recv(1 << 16)
            if not c: bump("errors"); return
            buf += c
            *lines, buf = buf.split(b"\n")
            bump("pushes", sum(1 for l in lines if b'"event"' in l))
        except socket.timeout:
            pass
threads = [threading.Thread(target=searcher, args=(i,)) for i in range(4)] + [threading.Thread(target=watcher)]
for t in threads: t.start()
samples = []
while time.time() < stop:
    samples.append((time.time() - t0, *sample()))
    time.sleep(5)
for t in threads: t.join()
samples.append((time.time() - t0, *sample()))
st = ask({"id": 0, "cmd": "status"})
warm = [s for s in samples if s[0] >= 60] or samples
out = {"minutes": minutes, "rss_mb_start": round(warm[0][1], 1), "rss_mb_end": round(samples[-1][1], 1),
       "rss_mb_max": round(max(s[1] for s in samples), 1), "fds_start": warm[0][2], "fds_end": samples[-1][2],
       "threads_max": max(s[3] for s in samples), "frames": st["ingested"], **count}
print(json.dumps(out))
if first_error: print("first error:", first_error[0], file=sys.stderr)
bad = out["errors"] > 0 or out["rss_mb_end"] - out["rss_mb_start"] > 64 or out["fds_end"] - out["fds_start"] > 8
sys.exit(1 if bad else 0)
PY
