"""The command line as a user runs it: separate serve and query processes, one-line errors."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from privinfer import run_reference, zoo
from privinfer.bench import RECORD_FIELDS, run_bench, write_records

CLI = [sys.executable, "-m", "privinfer"]
ROOT = Path(__file__).resolve().parent.parent


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
    # the same 3 images for plain and private accuracy (plain is exact), the whole split apart
    assert rec["accuracy_plain"] == rec["accuracy_private"] and rec["full_split_images"] > 3
    assert 0.9 <= rec["accuracy_plain_full"] <= 1.0
    # per party, process trees: the client is this process, the server its own; plain has no dealer
    assert rec["peak_rss_mb"]["client"] > 50 and rec["peak_rss_mb"]["server"] > 50 and rec["peak_rss_mb"]["dealer"] is None
    assert rec["cpu_s"]["server"] > 0 and rec["rtt_missing_links"] == []
    assert rec["bytes_client_to_server"] > 28 * 28 * 4 and rec["rounds"] == 1
    write_records([rec], tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())[0]["protocol"] == "plain"


# --- issue 14: the newcomer's command line ------------------------------------------------------------
def cli(*args, timeout=120, **kw):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, **kw)


def run_main(capsys, *args) -> tuple[int, str, str]:
    """The CLI in-process (argument handling only: no server), as (exit code, stdout, stderr)."""
    from privinfer.cli import main
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse: --version, --help, usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_version_and_help_lists_each_protocols_options(capsys):
    import privinfer
    assert run_main(capsys, "--version")[1].strip() == f"privinfer {privinfer.__version__}"
    out = run_main(capsys, "serve", "--help")[1]
    for needle in ("he (", "packing=\"latency\"", "ss (", "precision_bits=16", "noisy (", "split=null", "plain ("):
        assert needle in out, needle
    q = run_main(capsys, "query", "--help")[1]
    assert "28x28" in q and "[0, 1]" in q and "centred" in q and "--json" in q


def test_serve_requires_a_protocol(capsys):
    rc, _, err = run_main(capsys, "serve", "--model", "minionn-mnist")
    assert rc == 2 and "--protocol" in err


def test_query_json_and_one_line_conversion(plain_server):
    out = cli("query", "--port", str(plain_server), "--input", "examples/digits/7.png", "--json", cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert rec["classes"] == [7] and len(rec["logits"][0]) == 10 and rec["stats"]["protocol"] == "plain"
    lines = [l for l in out.stderr.splitlines() if l.startswith("privinfer: input ")]
    assert lines == ["privinfer: input 7.png: 28x28 L image, scaled 0-255 -> [0, 1]"]
    assert "warning: protocol 'plain' gives no privacy" in out.stderr  # the one-line no-privacy warning


def test_image_conversions_and_layout_mistakes_are_reported(tmp_path):
    from privinfer.inputs import layout_warnings, load_input
    img = np.asarray(Image.open(ROOT / "examples/digits/3.png"))
    Image.fromarray(255 - img).resize((8, 8)).convert("RGB").save(tmp_path / "small_inverted.png")
    x, how = load_input(str(tmp_path / "small_inverted.png"), (1, 28, 28))
    assert x.shape == (1, 28, 28) and "converted RGB -> grayscale" in how and "resized 8x8 -> 28x28" in how
    assert any("dark-on-white" in w and "--invert" in w for w in layout_warnings(x))
    x, how = load_input(str(tmp_path / "small_inverted.png"), (1, 28, 28), invert=True)
    assert "inverted" in how and not any("dark-on-white" in w for w in layout_warnings(x))
    big = np.zeros((1, 28, 28))
    big[0, 0:27, 10:14] = 1.0  # a "1" drawn over the whole frame
    assert any("border" in w for w in layout_warnings(big))
    assert layout_warnings(np.asarray(img, dtype=float)[None] / 255) == []  # the sample digit is fine


def test_query_refuses_uint8_array(plain_server, tmp_path):
    X, _ = zoo.load_dataset("minionn-mnist", "test")
    np.save(tmp_path / "u8.npy", (X[0] * 255).astype(np.uint8))
    out = cli("query", "--port", str(plain_server), "--input", str(tmp_path / "u8.npy"))
    assert out.returncode == 2 and "InputRangeError" in out.stderr and "divide by 255" in out.stderr
    assert "class" not in out.stdout


def test_compile_a_state_dict_and_point_to_it_from_serve(tmp_path, capsys, monkeypatch):
    import importlib.util
    import torch
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynet_cli.py").write_text(
        "import torch.nn as nn\nclass Net(nn.Sequential):\n    def __init__(self):\n"
        "        super().__init__(nn.Conv2d(1, 2, 5, stride=3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8 * 8, 10))\n")
    spec = importlib.util.spec_from_file_location("mynet_cli", tmp_path / "mynet_cli.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.Net().eval()
    torch.save(m.state_dict(), tmp_path / "net.pt")
    rc, _, err = run_main(capsys, "serve", "--model", "net.pt", "--protocol", "plain")
    assert rc == 2 and "privinfer compile" in err
    rc, _, err = run_main(capsys, "compile", "net.pt", "-o", "net.npz")
    assert rc == 2 and "--class" in err
    rc, out, err = run_main(capsys, "compile", "net.pt", "--class", "mynet_cli:Net", "--input-shape", "1", "28", "28",
                            "-o", "net.npz")
    assert rc == 0, err
    from privinfer.model import load_graph
    g = load_graph(tmp_path / "net.npz")
    assert g.input_shape == (1, 28, 28) and g.input_range == (0.0, 1.0)
    x = torch.rand(1, 1, 28, 28)
    np.testing.assert_allclose(run_reference(g, x.double().numpy()), m(x).detach().numpy(), atol=1e-5)
    import warnings
    from torch import nn
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Dropout(), nn.Flatten(), nn.Linear(2 * 7 * 7, 3))
    seq[1].running_mean.uniform_(-1, 1)
    seq.eval()

    class Cls(nn.Module):
        def forward(self, x):
            return x.relu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(seq), tmp_path / "seq_ts.pt")
        torch.jit.save(torch.jit.script(Cls()), tmp_path / "cls_ts.pt")
    rc, _, err = run_main(capsys, "compile", "seq_ts.pt", "--input-shape", "1", "28", "28", "-o", "ts.npz")
    assert rc == 0, err
    x = torch.rand(2, 1, 28, 28)
    np.testing.assert_allclose(run_reference(load_graph(tmp_path / "ts.npz"), x.double().numpy()),
                               seq(x).detach().numpy(), atol=1e-5)
    rc, _, err = run_main(capsys, "compile", "cls_ts.pt", "-o", "x.npz")
    assert rc == 2 and "TorchScript" in err and "--class" in err


def test_bench_checks_its_arguments(capsys):
    rc, _, err = run_main(capsys, "bench", "--batch", "4096", "--samples", "4096")
    assert rc == 2 and "--samples counts timed queries" in err and "GiB" in err
    assert run_main(capsys, "bench", "--samples", "0")[0] == 2
    assert "timed queries per row" in run_main(capsys, "bench", "--help")[1]


def test_noisy_banner_echoes_the_split():
    from privinfer.cli import _protocol_banner
    from privinfer.server import Server
    g = zoo.load_model("minionn-mnist")
    for split in (3, "3"):  # one meaning: the number of layers the client runs
        srv = Server(g, "noisy", split=split, torch_threads=None)
        try:
            assert f"client runs layers [0, 3) = {', '.join(g.names[:3])}" in _protocol_banner(srv)
        finally:
            srv.shutdown()


def test_records_name_their_options_and_never_a_secret():
    """Two records of one protocol measured with different options (e.g. hybrid's prefetch) are told apart by
    `options`; a dealer secret never reaches a results file."""
    from privinfer.bench import _recorded_options
    got = _recorded_options({"prefetch": True, "plan": "he:0,ss:1-", "server_secret": b"k" * 32,
                             "client_secret": None, "clip": [1.0, 2.0]})
    assert got == {"prefetch": True, "plan": "he:0,ss:1-", "server_secret": "<redacted>", "client_secret": None,
                   "clip": "[1.0, 2.0]"}
    json.dumps(got)
