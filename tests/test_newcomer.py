"""The newcomer's path (issue 14), run as a user runs it: the README's quick start and own-model path as
scripts in subprocesses (no `__main__` guard), a uint8 image, sample digits, and each friction fixed."""
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CLI = [sys.executable, "-m", "privinfer"]


def section(title: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block in the README section `title` (tests break if it drifts)."""
    text = README[README.index(f"## {title}"):]
    text = text[:text.index("\n## ", 4)]
    return re.findall(r"```(python|sh)\n(.*?)```", text, re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sh_pair(lines: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a README `serve` line in the background and its `query` line against it, on a free port."""
    serve, query = (l.split("#")[0].strip() for l in lines)
    assert serve.startswith("privinfer serve") and query.startswith("privinfer query")
    port = str(free_port())
    serve_args = [a if a != "7700" and a != "7701" else port for a in serve.split()[1:]]
    query_args = [a if a != "7700" and a != "7701" else port for a in query.split()[1:]]
    srv = subprocess.Popen(CLI + serve_args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "serving" in srv.stdout.readline()
        return subprocess.run(CLI + query_args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    finally:
        srv.terminate()
        srv.wait(10)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    """Start the slow scripts at once (they mostly wait on imports and key generation), collect later."""
    tmp = tmp_path_factory.mktemp("newcomer")
    (tmp / "digits").mkdir()
    quick = section("Quick start")[0][1]
    assert "__main__" not in quick  # the quick start runs without a guard
    (tmp / "quick.py").write_text(quick)
    # the same script, fed the image as uint8 0-255 (the commonest mistake): a typed error, never a class.
    # The refusal is the client's, before any protocol work, so `plain` saves the CKKS key generation here;
    # tests/model/test_bounds.py covers `he` in-process
    uint8 = quick.replace("s.infer(X[0])", "s.infer((X[0] * 255).astype('uint8'))")
    assert uint8 != quick
    (tmp / "quick_uint8.py").write_text(uint8.replace('protocol="he"', 'protocol="plain"'))
    # ss with spawn="thread" in a script without a guard: its CrypTen processes must not re-run the script
    (tmp / "ss_thread.py").write_text(
        "import privinfer\nfrom privinfer import zoo\nX, y = zoo.load_dataset('minionn-mnist', 'test')\n"
        "with privinfer.PrivateSession(zoo.load_model('minionn-mnist'), 'ss', spawn='thread') as s:\n"
        "    print(s.infer(X[0]).argmax(), y[0])\n")
    own = section("Your own model")
    (tmp / "mynet.py").write_text(own[0][1])
    (tmp / "own.py").write_text(own[1][1])
    procs = {name: subprocess.Popen([sys.executable, f"{name}.py"], cwd=tmp, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name in ("quick", "quick_uint8", "ss_thread", "own")}
    yield tmp, procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def finish(proc, timeout: float = 240):
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"script hung for {timeout} s")
    return proc.returncode, out, err, time.monotonic() - t0


def test_readme_quick_start_runs_without_main_guard(scripts):
    rc, out, err, _ = finish(scripts[1]["quick"])
    assert rc == 0, err[-2000:]
    predicted, label = out.split()[:2]
    assert predicted == label, out


def test_readme_quick_start_with_uint8_image_is_refused(scripts):
    rc, out, err, _ = finish(scripts[1]["quick_uint8"])
    assert rc != 0 and "InputRangeError" in err and "divide by 255" in err, err[-2000:]
    assert not out.strip()  # no class printed


def test_ss_thread_session_without_main_guard(scripts):
    rc, out, err, _ = finish(scripts[1]["ss_thread"])
    assert rc == 0, err[-2000:]
    predicted, label = out.split()[:2]
    assert predicted == label, out


def test_readme_own_model_path(scripts):
    tmp, procs = scripts
    rc, out, err, _ = finish(procs["own"])
    assert rc == 0, err[-2000:]
    from privinfer import run_reference
    from privinfer.model import load_graph
    from PIL import Image
    graph = load_graph(tmp / "mynet.npz")
    assert graph.input_range == (0.0, 1.0) and graph.input_shape == (1, 28, 28)
    assert {l.kind for l in graph.layers} <= {"conv2d", "poly", "avgpool2d", "flatten", "linear"}
    sh = section("Your own model")[2][1].strip().splitlines()
    image = sh[1].split("--input")[1].split()[0]
    (tmp / "examples").exists() or (tmp / "examples").symlink_to(ROOT / "examples")
    got = run_sh_pair(sh, tmp)
    assert got.returncode == 0, got.stderr[-2000:]
    x = np.asarray(Image.open(ROOT / image), dtype=np.float64)[None] / 255.0
    want = int(run_reference(graph, x[None]).argmax())
    assert got.stdout.startswith(f"class {want}"), got.stdout  # the served model's own answer, privately


@pytest.mark.slow  # the own-model test already runs README serve/query lines under `he`
def test_readme_deployed_commands_classify_the_sample_digit(tmp_path):
    sh = section("Quick start")[1][1].strip().splitlines()
    image = sh[1].split("--input")[1].split()[0]
    label = Path(image).stem
    got = run_sh_pair(sh, ROOT)
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.startswith(f"class {label}"), got.stdout
    conversions = [l for l in got.stderr.splitlines() if l.startswith("privinfer: input ")]
    assert len(conversions) == 1 and "scaled 0-255 -> [0, 1]" in conversions[0], got.stderr


def test_sample_digits_match_the_zoo_layout():
    from PIL import Image
    from privinfer import run_reference, zoo
    X, _ = zoo.load_dataset("digits", "test")
    g = zoo.load_model("minionn-mnist")
    for d in range(10):
        img = np.asarray(Image.open(ROOT / "examples" / "digits" / f"{d}.png"))
        assert img.shape == (28, 28) and img.dtype == np.uint8
        x = img[None].astype(np.float64) / 255.0
        assert np.abs(X - x).reshape(len(X), -1).max(1).min() <= 1 / 255  # one of the test images (rounded to 8 bits)
        assert run_reference(g, x[None]).argmax() == d
