"""`benchmarks/published.json` loader: the schema is enforced, rows are labelled as other hardware."""
import json

import pytest

from privinfer.benchsuite.peers import load_published
from privinfer.benchsuite.report import published_table
from privinfer.errors import PrivinferError

ROW = {"system": "CryptoNets", "network": "cryptonets-mnist", "protocol": "he", "metric": "latency", "value": 250,
       "unit": "s", "hardware": "Xeon E5-1620 3.5 GHz", "source": "Gilad-Bachrach et al., ICML 2016, Table 2",
       "checked": False}


def test_published_rows_are_labelled_and_unchecked_ones_marked(tmp_path):
    path = tmp_path / "published.json"
    path.write_text(json.dumps([ROW, {**ROW, "checked": True, "value": 4.2}]))
    rows = load_published(path)
    assert [r["label"] for r in rows] == ["published, other hardware"] * 2
    table = published_table(rows)
    assert "(?)" in table and "| yes |" in table and "ICML 2016" in table


def test_published_schema_is_enforced(tmp_path):
    path = tmp_path / "published.json"
    path.write_text(json.dumps([{k: v for k, v in ROW.items() if k != "source"}]))
    with pytest.raises(PrivinferError, match="source"):
        load_published(path)
    path.write_text(json.dumps([{**ROW, "checked": "yes"}]))
    with pytest.raises(PrivinferError, match="checked"):
        load_published(path)
    assert load_published(tmp_path / "absent.json") == []


def test_orion_peer_without_its_venv_is_a_typed_error(tmp_path, monkeypatch):
    from privinfer.benchsuite import peers
    monkeypatch.setattr(peers, "ORION_PYTHON", tmp_path / "absent" / "python")
    with pytest.raises(PrivinferError, match="make orion"):
        peers.orion([], 1)
    rows = peers.run_peers([], 1, log=lambda s: None, only=["orion"])
    assert rows[0]["peer"] == "orion" and "make orion" in rows[0]["error"]
