"""Socket helpers for protocols that open links of their own next to the privinfer channel (2PC parties).

Why here: the address of such a link is chosen by privinfer (a free port on the interface the session
already uses) and travels on the channel; a party waiting for its peer must also notice a peer that hung up.
"""
from __future__ import annotations

import ipaddress
import select
import socket


def free_port(host: str) -> int:
    """A port that is free on `host` right now (the party binds it moments later)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def peer_pending(sock: socket.socket) -> bool | None:
    """True if the peer sent data not yet read, False if nothing is pending, None once it hung up.

    Never blocks: a socket with a timeout would otherwise wait in `recv` despite MSG_DONTWAIT."""
    try:
        if not select.select([sock], [], [], 0)[0]:
            return False
        return None if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"" else True
    except (BlockingIOError, InterruptedError, socket.timeout):
        return False
    except (OSError, ValueError):
        return None


def plain_ip(host: str) -> str:
    """The IP as a peer sees it: an IPv4-mapped IPv6 address (dual-stack sockets) becomes plain IPv4."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped) if mapped else str(ip)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(addr: object) -> tuple[str, int] | None:
    """(host, port) from 'host:port' or '[v6]:port' with a literal IP and a port in 1..65535, else None."""
    if not isinstance(addr, str) or len(addr) > 64:
        return None
    host, sep, port = addr.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
        p = int(port)
    except ValueError:
        return None
    return (host, p) if sep and port.isdigit() and 1 <= p <= 65535 else None
