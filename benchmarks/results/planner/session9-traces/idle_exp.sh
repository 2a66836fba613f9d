#!/usr/bin/env bash
# idle experiments for #11 (session 9). Run from /work/main at idle.
set -u
P=/work/main/.venv/bin/python
O=/work/notes/idle9; mkdir -p $O
cd /work/main
echo "start $(date +%T) $(uptime)" >> $O/log
$P /tmp/gloo_lo.py 5 >> $O/log 2>&1
# E4: halt theory: loopback with and without nice-19 spinners
for i in 1 2; do
  for spin in 0 1; do
    pids=""
    if [ $spin = 1 ]; then for c in 0 1; do nice -n 19 $P -c "while True: pass" & pids="$pids $!"; done; fi
    $P -m privinfer bench --protocol ss --model mixed-mnist cryptonets-mnist --network loopback --samples 20 --json $O/spin${spin}_$i.json > /dev/null 2>&1
    [ -n "$pids" ] && kill $pids
    $P - $O/spin${spin}_$i.json <<'P2' >> $O/log
import json,sys
for r in json.load(open(sys.argv[1])): print(sys.argv[1].split('/')[-1], r['model'], 'lat', round(r['latency_s']['median']*1e3,1), 'on', round(r['online_s']*1e3,1))
P2
  done
done
# E2: traces loopback and lan
for m in mixed-mnist cryptonets-mnist minionn-mnist; do for n in loopback lan; do
  d=$O/tr-$m-$n; rm -rf $d; mkdir -p $d
  PRIVINFER_COMM_TRACE=$d $P -m privinfer bench --protocol ss --model $m --network $n --samples 10 --json $d/rec.json > $d/log 2>&1
  $P -c "import json; r=json.load(open('$d/rec.json'))[0]; print('$m $n', round(r['latency_s']['median']*1e3,1), 'on', round(r['online_s']*1e3,1), r['rounds'], r.get('link_rtt_ms_measured'))" >> $O/log
done; done
# E3: counted whole vs the engine's online
$P /tmp/whole.py cryptonets-mnist mixed-mnist minionn-mnist 2>&1 | grep -v Warn >> $O/log
echo "end $(date +%T) $(uptime)" >> $O/log
