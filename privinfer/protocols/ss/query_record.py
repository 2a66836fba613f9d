"""One `ss` query's record: the figures of its chunks (each an offline and an online phase) summed.

Why apart from `sides.py`: it is bookkeeping (which worker figure feeds which record field, and the traffic that
travels outside privinfer's channel), not protocol; `sides.py` keeps the phases.
"""
from __future__ import annotations


class QueryRecord:
    """Sums the per-chunk figures of the workers (offline and online phases) into one query record."""

    def __init__(self):
        self.v = {"offline_s": 0.0, "online_s": 0.0, "online_bytes_client_to_server": 0,
                  "online_bytes_server_to_client": 0, "online_rounds": 0, "online_dealer_messages": 0,
                  "offline_bytes_server_to_dealer": 0, "offline_bytes_dealer_to_server": 0,
                  "offline_dealer_messages": 0, "offline_dealer_s": 0.0, "offline_plan_s": 0.0,
                  "offline_server_generate_s": 0.0, "offline_client_generate_s": 0.0,
                  "tuples": 0, "ring_elements": 0, "chunks": 0}

    def add(self, off: dict, on: dict) -> None:
        v = self.v
        v["chunks"] += 1
        v["offline_s"] += off["offline_s"]
        v["online_s"] += on["online_s"]
        v["online_bytes_client_to_server"] += on["client_comm"]["bytes_sent"]
        v["online_bytes_server_to_client"] += on["client_comm"]["bytes_received"]
        v["online_rounds"] += on["client_comm"]["rounds"]
        v["online_dealer_messages"] += on["server"]["dealer_messages"] + on["server"]["dealer_requests"]
        v["offline_bytes_server_to_dealer"] += off["bytes_server_to_dealer"]
        v["offline_bytes_dealer_to_server"] += off["bytes_dealer_to_server"]
        v["offline_dealer_messages"] += off["dealer_messages"]
        v["offline_dealer_s"] += off["dealer_s"]
        v["offline_plan_s"] += off["plan_s"]
        v["offline_server_generate_s"] += off["generate_s"]
        v["offline_client_generate_s"] += off["client_generate_s"]
        v["tuples"] += off["tuples"]
        v["ring_elements"] += off["ring_elements"]
        v["server_online_comm"] = on["server"]["comm"]
        v["online_cpu_s_client"] = v.get("online_cpu_s_client", 0.0) + on["client_cpu_s"]
        v["online_cpu_s_server"] = v.get("online_cpu_s_server", 0.0) + on["server"]["cpu_s"]

    def result(self) -> dict:
        v = dict(self.v)
        # traffic outside the privinfer channel, for the session's per-query totals
        v["side_bytes_client_to_server"] = v["online_bytes_client_to_server"]
        v["side_bytes_server_to_client"] = v["online_bytes_server_to_client"]
        v["side_rounds"] = v["online_rounds"]
        v["dealer_bytes"] = v["offline_bytes_server_to_dealer"] + v["offline_bytes_dealer_to_server"]
        return v
