"""The load test's short version (`benchmarks/load.py --short`): a real `privinfer serve --workers 1`,
two client processes for 1.5 s; every answer checked against the reference, nothing left running."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_load_short(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "benchmarks" / "load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "load.json"
    report = mod.main(["--short", "--json", str(out)])
    assert out.exists()
    (run,) = report["runs"]
    many = run["concurrent"]
    assert run["server_exit_code"] == 0 and run["processes_left_behind"] == 0
    assert many["clients"] == 2 and many["queries"] > 0 and many["throughput_qps"] > 0
    assert many["errors"] == {} and many["wrong_answers"] == 0
    assert many["latency_ms"]["p50"] <= many["latency_ms"]["p99"]
    assert many["server_peak_rss_mb"] > 0 and many["server_cpu_cores"] >= 0
