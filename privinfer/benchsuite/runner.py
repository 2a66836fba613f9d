"""Run the protocol × network matrix and write records, a Markdown report and plots into one folder.

Why: one command (`privinfer bench --matrix default --out DIR`, or `benchmarks/run_matrix.py`) must give
every figure the README quotes, from one run on one machine. Each case is measured by
`privinfer.bench.run_bench` (client here, server in its own process, real TCP); a case that fails is
listed with its error and the rest go on. Progress goes to stderr as a plain-text bar.

Output folder: `records.json` (one record per case and network, ARCHITECTURE.md schema plus `label`,
`modelled_latency_s`, per-party `peak_rss_mb` / `cpu_s`), `suite.json` (command, machine, wall time,
what was skipped or failed, peers, published rows, the model's error), `matrix.md` and four PNG plots;
`records.partial.json` holds the records so far while the run is in progress.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .._process import descendants
from ..netem import RELAY_PIDS
from ..bench import run_bench, write_records
from . import netmodel
from .cases import Case, build_cases
from .peers import load_published, run_peers
from .plots import write_plots
from .report import machine, markdown

#: timed queries per shaped (lan/wan/mobile) row: odd and >= 3, so that its median, like its loopback twin's,
#: is a typical query and not the mean of two. One query of a session can be far slower than the rest (cheetah's
#: second query also runs SPU's Ferret OT extension: +0.6 s and +266 KB on tenseal-mnist); with 2 samples that
#: query was half the median and moved cheetah's `lan` row to 472 ms against 122 ms modelled (session 10).
SHAPED_SAMPLES = 3
#: seconds one case may take (set-up included) before its processes are ended and it is listed as failed
CASE_BUDGET_S = {"default": 240.0, "quick": 90.0}


@contextlib.contextmanager
def case_deadline(seconds: float):
    """Yield an Event set when `seconds` pass; then every process started inside the block is ended, so that
    the session's next read fails with a typed error and the matrix goes on. Work in this process itself
    (training a variant) is not interrupted. Delay-line relays are spared: a killed server's FIN must still
    reach the client through them (the namespace's own clean-up stops them)."""
    me, before = os.getpid(), set(descendants(os.getpid()))
    fired, done = threading.Event(), threading.Event()

    def watch():
        if done.wait(seconds):
            return
        fired.set()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in reversed(descendants(me)):
                if pid not in before and pid not in RELAY_PIDS:
                    with contextlib.suppress(OSError):
                        os.kill(pid, sig)
            if done.wait(3.0):
                return

    t = threading.Thread(target=watch, daemon=True, name="privinfer-case-deadline")
    t.start()
    try:
        yield fired
    finally:
        done.set()
        t.join()


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, file=sys.stderr, disable=not enabled, unit="case", ascii=True, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")


def run_case(case: Case, network: str = "loopback", samples: int | None = None) -> dict:
    from .variants import prepare
    t0 = time.perf_counter()
    graph, opts, extra = prepare(case)
    extra["prepare_s"] = round(time.perf_counter() - t0, 2)  # training / fine-tuning a variant (0 when cached)
    rec = run_bench(case.rule.protocol, case.model, batch=case.rule.batch, samples=samples or case.samples,
                    warmup=case.rule.warmup, network=network, options=opts, graph=graph, progress=False)
    if case.variant:
        rec["model"] = f"{case.model} (HE-friendly)"
    rec.update(extra)
    rec["case_wall_s"] = round(time.perf_counter() - t0, 2)
    if network == "loopback":
        netmodel.add_models(rec)
    else:
        rec["network_figure"] = "measured: server in a namespace behind tc tbf, every link delayed by RTT/2 each way"
    return rec


def _shaped_picks(cases: list[Case], records: list[dict]) -> list[Case]:
    """One case per protocol: its fastest loopback row (so that mobile's RTTs stay affordable)."""
    by_label: dict[str, tuple[float, Case]] = {}
    done = {(r["label"], r["model"].split(" ")[0], (r.get("privacy") or {}).get("epsilon_per_query")): r
            for r in records}
    for c in cases:
        r = done.get((c.rule.label, c.model, c.epsilon))
        if r is None or c.rule.batch > 64:  # not the 4096-image HE batch: one timed query per profile is too few
            continue
        t = r["latency_s"]["median"] * max(1, r["rounds"])
        if c.rule.protocol not in by_label or t < by_label[c.rule.protocol][0]:
            by_label[c.rule.protocol] = (t, c)
    return [c for _, c in by_label.values()]


def run_suite(matrix: str = "default", out: str | Path = "bench-matrix", *, only: list[str] | None = None,
              networks: list[str] | None = None, shaped: bool | None = None, peers: bool | None = None,
              progress: bool = True, command: str | None = None) -> dict:
    """Run the matrix; return the suite summary (also written to OUT/suite.json)."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    cases, skipped = build_cases(matrix, only, networks)
    can_shape, why_not = netmodel.shaping_available()
    shaped = (matrix == "default") if shaped is None else shaped
    peers = (matrix == "default" and not only and not networks) if peers is None else peers
    picks_budget = len(netmodel.SHAPED)
    records, failed = [], []
    budget = CASE_BUDGET_S[matrix]

    def attempt(case: Case, network: str = "loopback", samples: int | None = None, tag: str = "") -> None:
        with case_deadline(budget) as fired:
            try:
                records.append(run_case(case, network, samples))
                # after every case, so that an interrupted run keeps what it measured
                (out / "records.partial.json").write_text(json.dumps(records, indent=1) + "\n")
                return
            except Exception as e:  # one failing case is reported, the matrix goes on
                err = f"{type(e).__name__}: {str(e)[:300]}"
        if fired.is_set():
            err = f"over the case budget of {budget:.0f} s (set-up included): ended"
        failed.append({"case": case.name + tag, "error": err})
    with _bar(len(cases), progress) as bar:
        for case in cases:
            bar.set_postfix_str(case.name[:60])
            attempt(case)
            bar.update(1)
        note = ("lan/wan/mobile modelled (no shaped run requested)" if not shaped else
                f"lan/wan/mobile modelled; measured under tc tbf shaping for one row per protocol" if can_shape
                else f"lan/wan/mobile modelled only, fell back to loopback: {why_not}")
        if shaped and can_shape:
            picks = _shaped_picks(cases, records)
            bar.reset(total=len(picks) * picks_budget)
            for case in picks:
                for prof in netmodel.SHAPED:
                    bar.set_postfix_str(f"{prof}: {case.name}"[:60])
                    attempt(case, prof, SHAPED_SAMPLES, f" @ {prof}")  # a refused namespace: loopback rows stand
                    bar.update(1)
    if shaped and not can_shape:
        log(f"privinfer bench: {why_not}")
    peer_rows = run_peers(records, log=log) if peers else []
    suite = {"matrix": matrix, "command": command or f"privinfer bench --matrix {matrix} --out {out}",
             "machine": machine(), "network_note": note, "skipped": skipped, "failed": failed,
             "peers": peer_rows, "published": load_published(), "model_error": netmodel.error_rows(records),
             "cases": len(cases), "records": len(records)}
    suite["wall_s"] = round(time.perf_counter() - t0, 1)
    write_records(records, out / "records.json")
    (out / "records.partial.json").unlink(missing_ok=True)
    write_plots(records, out)
    suite["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "suite.json").write_text(json.dumps(suite, indent=1) + "\n")
    (out / "matrix.md").write_text(markdown(suite, records))
    log(f"privinfer bench: {len(records)} records, {len(failed)} failed, {len(skipped)} not applicable; "
        f"{suite['wall_s']:.0f} s; wrote {out}/records.json, suite.json, matrix.md and 4 PNG plots")
    return suite


def rewrite_outputs(out: str | Path) -> dict:
    """Redraw the plots and rewrite matrix.md from OUT/records.json and OUT/suite.json (no measurement)."""
    out = Path(out)
    records = json.loads((out / "records.json").read_text())
    suite = json.loads((out / "suite.json").read_text())
    suite["published"] = load_published()
    write_plots(records, out)
    (out / "suite.json").write_text(json.dumps(suite, indent=1) + "\n")
    (out / "matrix.md").write_text(markdown(suite, records))
    return suite


def rerun_peers(out: str | Path, names: list[str], samples: int = 5) -> dict:
    """Measure the named peers again against OUT's records and replace their rows in OUT/suite.json
    (each replaced row says so in its note)."""
    from .peers import PEERS
    out = Path(out)
    records = json.loads((out / "records.json").read_text())
    suite = json.loads((out / "suite.json").read_text())
    rows = suite.get("peers", [])
    for name in names:
        row = run_peers(records, samples, only=[name])[0]
        row["note"] = (row.get("note", "") + "; re-measured after the matrix run, same machine").lstrip("; ")
        idx = list(PEERS).index(name)
        rows[idx:idx + 1] = [row]
    suite["peers"] = rows
    (out / "suite.json").write_text(json.dumps(suite, indent=1) + "\n")
    return suite
