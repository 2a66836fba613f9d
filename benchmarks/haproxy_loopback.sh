#!/usr/bin/env bash
# The multi-host recipe, on loopback: two `privinfer serve` "hosts" behind HAProxy in TCP mode.
#
#   bash benchmarks/haproxy_loopback.sh          (needs haproxy: apt-get install haproxy)
#
# A privinfer session is one TCP connection, so a TCP (layer 4) balancer keeps every session on one host
# by construction; `balance leastconn` spreads new sessions by open connections, and `maxconn` per
# server mirrors each host's --max-sessions so that HAProxy queues a session instead of the host
# refusing it. Timeouts exceed privinfer's per-read timeout (120 s) and an HE key upload.
# Prints which backend served each of 6 sessions, then stops one host and shows new sessions still work.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DIR=$(mktemp -d)
LB=17700; A=17701; B=17702
cat > "$DIR/haproxy.cfg" <<EOF
global
    maxconn 256
defaults
    mode tcp
    timeout connect 2s
    # a host that refuses (stopped, restarting) costs a retry on another host, not a failed session
    retries 2
    option redispatch
    timeout client 300s
    timeout server 300s
    timeout queue 60s
frontend privinfer
    bind 127.0.0.1:$LB
    default_backend hosts
backend hosts
    balance leastconn
    # with clients behind distinct addresses, 'balance source' + 'hash-type consistent' pins a client's
    # successive sessions to one host (not needed for correctness: no state crosses connections)
    server host1 127.0.0.1:$A check inter 1s fall 2 maxconn 16
    server host2 127.0.0.1:$B check inter 1s fall 2 maxconn 16
EOF
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for port in $A $B; do
    $PY -m privinfer serve --protocol plain --model minionn-mnist --port $port --workers 1 --max-sessions 16 \
        > "$DIR/serve-$port.log" 2>&1 &
    pids+=($!)
done
for port in $A $B; do
    for _ in $(seq 1 120); do grep -q serving "$DIR/serve-$port.log" 2>/dev/null && break; sleep 0.5; done
done
haproxy -f "$DIR/haproxy.cfg" -db > "$DIR/haproxy.log" 2>&1 &
pids+=($!)
sleep 1
$PY - "$LB" "$A" "$B" "${pids[0]}" <<'EOF'
import os, signal, sys, time
import numpy as np
import privinfer
from privinfer import zoo
lb, a, b, pid_a = (int(v) for v in sys.argv[1:])
X, y = zoo.load_dataset("minionn-mnist", "test")
held = [privinfer.connect("127.0.0.1", lb, "plain") for _ in range(6)]
for i, s in enumerate(held):
    s.infer(X[i])
def conns_to(port):  # established TCP connections towards a host (HAProxy -> host), from the kernel
    with open("/proc/net/tcp") as f:
        rows = [l.split() for l in f.readlines()[1:]]
    return sum(1 for r in rows if r[3] == "01" and int(r[2].split(":")[1], 16) == port)
print(f"6 sessions through the balancer: {conns_to(a)} on host1, {conns_to(b)} on host2")
for s in held:
    s.close()
os.kill(pid_a, signal.SIGTERM)
time.sleep(1)  # no wait for the health check: redispatch covers the refused connects
ok = 0
for i in range(4):
    with privinfer.connect("127.0.0.1", lb, "plain") as s:
        ok += int(np.argmax(s.infer(X[i])) == y[i])
print(f"after stopping host1: 4 new sessions served, {ok}/4 correct")
EOF
