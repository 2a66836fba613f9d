"""`make demo`: a server process and a client process on 127.0.0.1 for each example pair.

Starts examples/<protocol>_server.py, waits until it listens, runs examples/<protocol>_client.py
against it, then stops the server. For `ss` it first starts a third-party dealer (examples/ss_dealer.py)
with fresh secrets for the server and the client, so the demo runs the authenticated set-up. Pass protocol names to pick pairs (default: all that exist).
"""
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["plain", "he", "ss", "noisy", "hybrid"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ss_dealer(tmp: Path) -> tuple[subprocess.Popen, list[str], list[str]]:
    """`ss`: a third-party dealer with one secret for the server and one for the client."""
    for who in ("server", "client"):
        subprocess.run([sys.executable, str(HERE / "ss_dealer.py"), "--new-secret", str(tmp / f"{who}.psk")],
                       check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    dealer = subprocess.Popen([sys.executable, str(HERE / "ss_dealer.py"), "--port", str(port), "--server-secret",
                               str(tmp / "server.psk"), "--client-secret", str(tmp / "client.psk")],
                              stdout=subprocess.PIPE, text=True)
    print(f"[ss] {dealer.stdout.readline().strip()}")  # it prints one line once it listens
    return (dealer, ["--dealer", f"127.0.0.1:{port}", "--dealer-secret", str(tmp / "server.psk")],
            ["--dealer-secret", str(tmp / "client.psk")])


def run_pair(name: str, count: int = 5) -> int:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        helper, server_args, client_args = ss_dealer(Path(tmp)) if name == "ss" else (None, [], [])
        try:
            return _run_pair(name, port, count, server_args, client_args)
        finally:
            if helper is not None:
                helper.terminate()
                helper.wait(10)


def _run_pair(name: str, port: int, count: int, server_args: list[str], client_args: list[str]) -> int:
    server = subprocess.Popen([sys.executable, str(HERE / f"{name}_server.py"), "--port", str(port), *server_args],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # the server prints one line once it listens
        if not line:
            print(f"[{name}] server failed to start", file=sys.stderr)
            return 1
        print(f"[{name}] {line.strip()}")
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / f"{name}_client.py"), "--port", str(port),
                              "--count", str(count), *client_args])
        print(f"[{name}] client finished in {time.perf_counter() - t0:.1f} s (exit {rc})\n")
        return rc
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    args = sys.argv[1:]
    count = 5
    if "--count" in args:  # `python examples/demo.py noisy --count 10`
        i = args.index("--count")
        count = int(args[i + 1])
        del args[i:i + 2]
    names = args or [n for n in ORDER if (HERE / f"{n}_server.py").exists()]
    sys.exit(max(run_pair(n, count) for n in names))
