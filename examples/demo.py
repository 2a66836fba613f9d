"""`make demo`: a server process and a client process on 127.0.0.1 for each example pair.

Starts examples/<protocol>_server.py, waits until it listens, runs examples/<protocol>_client.py
against it, then stops the server. Pass protocol names to pick pairs (default: all that exist).
"""
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["plain", "he", "ss", "noisy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pair(name: str, count: int = 5) -> int:
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / f"{name}_server.py"), "--port", str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # the server prints one line once it listens
        if not line:
            print(f"[{name}] server failed to start", file=sys.stderr)
            return 1
        print(f"[{name}] {line.strip()}")
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / f"{name}_client.py"), "--port", str(port),
                              "--count", str(count)])
        print(f"[{name}] client finished in {time.perf_counter() - t0:.1f} s (exit {rc})\n")
        return rc
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    names = sys.argv[1:] or [n for n in ORDER if (HERE / f"{n}_server.py").exists()]
    sys.exit(max(run_pair(n) for n in names))
