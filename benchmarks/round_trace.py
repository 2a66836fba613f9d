"""Trace CrypTen's rounds per party and test the per-round link model on the trace (issue #11, `lan` miss).

Why: the planner priced a 2PC round on a link at one full RTT on top of the loopback compute, and `lan` came
out over-predicted (+37 % on mixed-mnist). With PRIVINFER_COMM_TRACE=DIR set, every `ss` party appends each
round (kind: x = exchange, s/r = one-way send/recv; post and done times, `time.perf_counter`, one clock for
every process on the host; bytes) to DIR/rank<r>-<pid>.tsv (protocols/ss/crypten_setup.py). This script
matches the two parties' rounds and prints, per trace folder, the late party's wait, the early party's
finish after the late one's post, the imbalance, and the query span; with --loopback it also replays that
loopback trace onto links under three round rules (rounds x RTT; max(0, RTT - slack) per round, session 8;
max(0, rounds x RTT - total slack), session 9 and `planner/cost.py`), to compare with the measured spans of the
other folders.

    d=/tmp/tr-lan; mkdir -p $d; PRIVINFER_COMM_TRACE=$d python -m privinfer bench --protocol ss \\
        --model mixed-mnist --network lan --samples 10 --json $d/rec.json
    python benchmarks/round_trace.py --rounds 32 --loopback /tmp/tr-loop --floor-ms 0.09 \\
        --link lan:0.5:1000 --link wan:40:100 /tmp/tr-loop /tmp/tr-lan /tmp/tr-wan

(--rounds: the 2PC rounds of one query, the bench record's `rounds` less privinfer's channel round; the
first query of each folder is the warm-up and is skipped.)
"""
from __future__ import annotations

import argparse
import glob
import statistics


def load(folder: str, rounds: int) -> list[tuple[list, list]]:
    """[(rank 0's rounds, rank 1's rounds)] per query after the warm-up; a round is (kind, post, done, bytes)."""
    per = []
    for r in (0, 1):
        files = glob.glob(f"{folder}/rank{r}-*.tsv")
        if len(files) != 1:
            raise SystemExit(f"{folder}: expected one trace of rank {r}, found {len(files)}")
        per.append([(k, float(a), float(b), int(n)) for k, a, b, n in (line.split() for line in open(files[0]))])
    if len(per[0]) != len(per[1]) or len(per[0]) % rounds:
        raise SystemExit(f"{folder}: {len(per[0])} and {len(per[1])} rounds are not whole queries of {rounds}")
    q = len(per[0]) // rounds
    return [(per[0][i * rounds:(i + 1) * rounds], per[1][i * rounds:(i + 1) * rounds]) for i in range(1, q)]


def span(q0, q1) -> float:
    return max(q0[-1][2], q1[-1][2]) - min(q0[0][1], q1[0][1])


def late_waits(q0, q1) -> list[float]:
    return [min(a[2] - a[1], b[2] - b[1]) for a, b in zip(q0, q1)]


def ms(v: list[float]) -> str:
    s = sorted(v)
    return f"{1e3 * statistics.median(s):.3f} ms (p25 {1e3 * s[len(s) // 4]:.3f}, p75 {1e3 * s[3 * len(s) // 4]:.3f})"


def describe(folder: str, qs) -> None:
    late, early, skew = [], [], []
    for q0, q1 in qs:
        for a, b in zip(q0, q1):
            if a[0] != "x":
                continue
            (lp, ld), (ep, ed) = ((b[1], b[2]), (a[1], a[2])) if b[1] >= a[1] else ((a[1], a[2]), (b[1], b[2]))
            late.append(ld - lp)
            early.append(ed - lp)
            skew.append(abs(b[1] - a[1]))
    print(f"{folder}: {len(qs)} queries of {len(qs[0][0])} rounds")
    print(f"  late party's wait (done - post):       {ms(late)}")
    print(f"  early party's done - late party's post: {ms(early)}")
    print(f"  |post skew|:                            {ms(skew)}")
    print(f"  query span (first post .. last done):   {ms([span(*q) for q in qs])}")


def replay(qs, floor_s: float, rtt_s: float, rate_mbit: float | None) -> tuple[float, float, float]:
    """Median predicted span on a link from loopback queries, + bytes / rate (the larger direction: an exchange
    sends both ways at once) under three round rules: every round + RTT (before session 8); each round +
    max(0, RTT - its slack) (session 8); the query's rounds + max(0, rounds x RTT - their total slack) (session 9,
    `cost.Cost.rounds_s`: the link's round trip replaces each round's loopback wait above the floor)."""
    rtt_model, per_round, total = [], [], []
    for q0, q1 in qs:
        wire = max(sum(r[3] for r in q0), sum(r[3] for r in q1)) * 8 / (rate_mbit * 1e6) if rate_mbit else 0.0
        slack = [max(0.0, w - floor_s) for w in late_waits(q0, q1)]
        base = span(q0, q1) + wire
        rtt_model.append(base + len(q0) * rtt_s)
        per_round.append(base + sum(max(0.0, rtt_s - x) for x in slack))
        total.append(base + max(0.0, len(slack) * rtt_s - sum(slack)))
    return statistics.median(rtt_model), statistics.median(per_round), statistics.median(total)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--rounds", type=int, required=True, help="2PC rounds per query")
    ap.add_argument("--loopback", help="a loopback trace folder to replay onto the --link profiles")
    ap.add_argument("--floor-ms", type=float, default=0.0, help="the loopback exchange floor (ms)")
    ap.add_argument("--link", action="append", default=[], help="NAME:RTT_MS:RATE_MBIT (0: unlimited)")
    a = ap.parse_args(argv)
    for f in a.folders:
        describe(f, load(f, a.rounds))
    if a.loopback:
        qs = load(a.loopback, a.rounds)
        for spec in a.link:
            name, rtt, rate = spec.split(":")
            old, per, tot = replay(qs, a.floor_ms / 1e3, float(rtt) / 1e3, float(rate) or None)
            print(f"replay of {a.loopback} on {name} ({rtt} ms, {rate} Mbit/s): rounds x RTT {1e3 * old:.2f} ms, "
                  f"per-round slack {1e3 * per:.2f} ms, total slack {1e3 * tot:.2f} ms")

if __name__ == "__main__":
    main()
