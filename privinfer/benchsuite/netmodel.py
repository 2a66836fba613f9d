"""Network profiles, honestly labelled: a modelled figure for every record, a measured one where possible.

Why: every record is measured on loopback. For `lan`, `wan` and `mobile` the suite gives
* a *modelled* latency: loopback latency + rounds × RTT + (bytes up + bytes down + dealer bytes) / rate,
  both directions serialized on one link of the profile's rate (an upper bound for full-duplex links);
* a *measured* latency, when this process is root with iproute2: the same case re-run with the server in a
  network namespace behind `tc tbf` shaping and a delay line on the link (privinfer.netem): every socket
  between the sides (privinfer's channel, CrypTen's gloo, SPU's brpc) pays the RTT. Records measured
  before the delay line (RTT on the channel only) name the links that lacked it in `rtt_missing_links`.
The model's error against the measurement is tabulated per protocol.
"""
from __future__ import annotations

import os
import shutil

from ..netem import PROFILES

SHAPED = ("lan", "wan", "mobile")


def modelled_latency(record: dict, profile: str) -> float:
    """Seconds per query under `profile`, from a loopback record (see the module doc)."""
    p = PROFILES[profile]
    total_bytes = record["bytes_client_to_server"] + record["bytes_server_to_client"] + record.get("bytes_dealer", 0)
    transfer = total_bytes * 8 / (p.rate_mbit * 1e6) if p.rate_mbit else 0.0
    return record["latency_s"]["median"] + record["rounds"] * p.rtt_ms / 1e3 + transfer


def add_models(record: dict) -> None:
    """Attach {"modelled_latency_s": {profile: s}} to a loopback record."""
    record["modelled_latency_s"] = {p: round(modelled_latency(record, p), 6) for p in SHAPED}
    record["network_figure"] = "measured on loopback; lan/wan/mobile modelled (modelled_latency_s)"


def shaping_available() -> tuple[bool, str]:
    """(True, "") when namespaces with tc shaping can be made here, else (False, why not)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "not root: lan/wan/mobile figures are modelled only (records measured on loopback)"
    missing = [t for t in ("ip", "tc") if not shutil.which(t)]
    if missing:
        return False, f"no {' / '.join(missing)} (iproute2): lan/wan/mobile figures are modelled only"
    if not os.path.exists("/dev/net/tun"):
        return False, "no /dev/net/tun (the delay line needs TUN devices): lan/wan/mobile figures are modelled only"
    return True, ""


def error_rows(records: list[dict]) -> list[dict]:
    """One row per measured shaped record: its loopback twin's model against the measurement."""
    loop = {(r.get("label"), r["model"], _eps(r)): r for r in records if r["network"] == "loopback"}
    rows = []
    for r in records:
        if r["network"] == "loopback":
            continue
        twin = loop.get((r.get("label"), r["model"], _eps(r)))
        if twin is None:
            continue
        model = modelled_latency(twin, r["network"])
        meas = r["latency_s"]["median"]
        rows.append({"label": r.get("label", r["protocol"]), "model": r["model"], "profile": r["network"],
                     "modelled_s": model, "measured_s": meas, "error": (model - meas) / meas,
                     "rtt_missing_links": r.get("rtt_missing_links", [])})
    return rows


def _eps(r: dict):
    return (r.get("privacy") or {}).get("epsilon_per_query")
