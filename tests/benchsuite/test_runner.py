"""The matrix runner end to end on a tiny subset: records valid, table and plots written, skips explained."""
import json

from privinfer.bench import RECORD_FIELDS
from privinfer.benchsuite import build_cases, run_suite
from privinfer.benchsuite.cases import RULES
from privinfer.benchsuite.netmodel import modelled_latency
from privinfer.protocols.base import available_protocols


def test_quick_matrix_plain_subset_writes_records_table_and_plots(tmp_path):
    suite = run_suite("quick", tmp_path, only=["plain"], progress=False)
    records = json.loads((tmp_path / "records.json").read_text())
    assert suite["failed"] == [] and len(records) == suite["records"] == 1
    r = records[0]
    assert set(RECORD_FIELDS) <= set(r) and r["label"] == "plain" and r["network"] == "loopback"
    assert r["accuracy_plain"] == r["accuracy_private"]  # same images, exact protocol
    assert r["peak_rss_mb"]["server"] > 0 and r["cpu_s"]["client"] > 0
    # modelled profiles add at least one RTT per round to the loopback latency
    assert r["modelled_latency_s"]["wan"] >= r["latency_s"]["median"] + r["rounds"] * 0.020
    for name in ("latency_vs_bytes.png", "latency_by_profile.png", "accuracy_per_protocol.png", "noisy_vs_epsilon.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "matrix.md").read_text()
    assert f"| plain | {r['model']} |" in md and "Machine: " in md and "modelled" in md


def test_every_registered_protocol_has_a_rule_or_is_reported():
    cases, skipped = build_cases("default")
    ruled = {r.protocol for r in RULES}
    for p in available_protocols():
        assert p in ruled or any(s["case"] == p for s in skipped)
    # ReLU networks reach `he` only as labelled HE-friendly variants; batch packing only on polynomial ones
    he = [c for c in cases if c.rule.protocol == "he"]
    assert any(c.variant == "he-friendly" for c in he)
    assert all(c.variant is None for c in he if c.rule.label == "he (batch)")
    assert {c.epsilon for c in cases if c.rule.protocol == "noisy"} == {1.0, 5.0, 10.0}


def test_modelled_latency_counts_both_directions_and_the_dealer():
    rec = {"latency_s": {"median": 0.5}, "rounds": 10, "bytes_client_to_server": 1_000_000,
           "bytes_server_to_client": 1_500_000, "bytes_dealer": 500_000}
    # mobile: 30 ms RTT, 20 Mbit/s: 0.5 + 10 * 0.03 + 3e6 * 8 / 20e6
    assert abs(modelled_latency(rec, "mobile") - (0.5 + 0.3 + 1.2)) < 1e-9


def test_without_root_the_profiles_are_modelled_and_the_runner_says_so(monkeypatch):
    from privinfer.benchsuite import netmodel
    monkeypatch.setattr(netmodel.os, "geteuid", lambda: 1000)
    ok, why = netmodel.shaping_available()
    assert not ok and "not root" in why and "modelled only" in why


def test_a_case_over_its_budget_has_its_processes_ended():
    import subprocess
    import sys
    import time

    from privinfer.benchsuite.runner import case_deadline
    t0 = time.monotonic()
    with case_deadline(0.5) as fired:
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        p.wait(timeout=20)
    assert fired.is_set() and p.returncode != 0 and time.monotonic() - t0 < 15


def test_the_deadline_spares_delay_line_relays():
    """A killed relay would drop the killed server's FIN: the client would wait for its socket timeout."""
    import subprocess
    import sys

    from privinfer.benchsuite.runner import case_deadline
    from privinfer.netem import RELAY_PIDS
    with case_deadline(0.3) as fired:
        relay = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        RELAY_PIDS.add(relay.pid)
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        other.wait(timeout=20)
    try:
        assert fired.is_set() and other.returncode != 0 and relay.poll() is None
    finally:
        RELAY_PIDS.discard(relay.pid)
        relay.kill()
        relay.wait()


def test_a_shaped_row_median_is_a_typical_query_not_the_mean_with_a_slow_one():
    """cheetah's second query also runs SPU's OT extension (~7x a normal query): with 2 shaped samples the
    median was their mean, and `lan` read 472 ms against the 122 ms its loopback twin's model predicts."""
    from privinfer.bench import _quantiles
    from privinfer.benchsuite.runner import SHAPED_SAMPLES
    assert SHAPED_SAMPLES >= 3 and SHAPED_SAMPLES % 2 == 1  # an odd count: the median is one of the queries
    slow, typical = 0.82, 0.12  # seconds: the matrix's lan figures for cheetah / tenseal-mnist
    lat = [slow] + [typical] * (SHAPED_SAMPLES - 1)
    assert _quantiles(lat)["median"] == typical
