"""The command line as a user runs it: separate serve and query processes, one-line errors."""
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from privinfer import zoo
from privinfer.bench import RECORD_FIELDS, run_bench, write_records

CLI = [sys.executable, "-m", "privinfer"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def plain_server():
    port = free_port()
    proc = subprocess.Popen(CLI + ["serve", "--model", "minionn-mnist", "--protocol", "plain", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert "serving" in proc.stdout.readline()
    yield port
    proc.terminate()
    proc.wait(10)


def test_query_npy_and_png(plain_server, tmp_path):
    X, y = zoo.load_dataset("minionn-mnist", "test")
    np.save(tmp_path / "digit.npy", X[0])
    Image.fromarray((X[1][0] * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    for name, label in (("digit.npy", y[0]), ("digit.png", y[1])):
        out = subprocess.run(CLI + ["query", "--port", str(plain_server), "--input", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"class {label}"), out.stdout


def test_errors_are_one_line(plain_server, tmp_path):
    cases = [["query", "--port", str(plain_server), "--input", str(tmp_path / "missing.npy")],
             ["query", "--port", str(plain_server), "--protocol", "nope", "--input", __file__],
             ["serve", "--model", "no-such-net", "--protocol", "plain"]]
    for args in cases:
        out = subprocess.run(CLI + args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("error:") and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_zoo_list():
    out = subprocess.run(CLI + ["zoo", "list"], capture_output=True, text=True, timeout=120)
    for name in ("cryptonets-mnist", "minionn-mnist", "secureml-mnist", "deepsecure-mnist", "tenseal-mnist",
                 "minionn-cifar"):
        assert name in out.stdout


def test_bench_record_has_exactly_the_fields(tmp_path):
    rec = run_bench("plain", "minionn-mnist", samples=3, progress=False)
    assert set(rec) == set(RECORD_FIELDS)
    assert rec["accuracy_plain"] >= 0.95 and rec["argmax_agreement"] == 1.0 and rec["max_abs_err"] < 1e-5
    assert rec["bytes_client_to_server"] > 28 * 28 * 4 and rec["rounds"] == 1
    write_records([rec], tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())[0]["protocol"] == "plain"
