"""The relay's line (privinfer/netem_relay.py) paces packets at the link's rate and drops what overflows its
queue, as a bottleneck link does (no free burst). Timing is a lower bound only: nothing may arrive earlier
than the line allows; how close to that it comes is `benchmarks/netem_check.py`'s job."""
import os
import socket
import threading
import time

from privinfer import netem_relay


def _line(rate, delay_s=0.0):
    a_out, a_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # packets keep their boundaries
    b_out, b_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    stop_r, stop_w = os.pipe()
    for s in (a_in, b_in):
        s.setblocking(False)
    t = threading.Thread(target=netem_relay.forward, args=(a_in.fileno(), b_in.fileno(), delay_s, stop_r, rate),
                         daemon=True)
    t.start()
    def stop():  # the relay's ends stay referenced (and open) until it has stopped
        os.write(stop_w, b"x")
        t.join(5)
        for fd in (stop_r, stop_w):
            os.close(fd)
        for s in (a_in, b_in, a_out, b_out):
            s.close()
    return a_out, b_out, stop


def _receive(sock, n, timeout):
    sock.settimeout(timeout)
    got, times = [], []
    try:
        while len(got) < n:
            got.append(sock.recv(1 << 16))
            times.append(time.perf_counter())
    except socket.timeout:
        pass
    return got, times


def test_packets_leave_at_the_rate_in_order():
    a, b, stop = _line(rate=200_000.0)  # 200 kB/s: 10 packets of 4 kB need >= 0.2 s on the line
    try:
        t0 = time.perf_counter()
        for i in range(10):
            a.send(bytes([i]) * 4000)
        got, times = _receive(b, 10, 5.0)
        assert [p[0] for p in got] == list(range(10)) and all(len(p) == 4000 for p in got)
        assert times[-1] - t0 >= 10 * 4000 / 200_000.0 * 0.999  # never faster than the line
    finally:
        stop()


def test_without_a_rate_nothing_is_paced_and_a_full_queue_drops():
    a, b, stop = _line(rate=None)
    try:  # 50 x 1 kB fits the datagram socket's send buffer (~208 kB with per-packet overhead; 50 x 4 kB did not,
        for i in range(50):  # and the relay drops what it cannot write, as a link drops)
            a.send(b"x" * 1000)
        assert len(_receive(b, 50, 2.0)[0]) == 50
    finally:
        stop()
    a, b, stop = _line(rate=20_000.0)  # 0.2 s of queue = 4 kB: of 50 packets sent at once, most are dropped
    try:
        for i in range(50):
            a.send(b"x" * 4000)
        got = _receive(b, 50, 1.5)[0]
        assert 1 <= len(got) < 10
    finally:
        stop()
