"""The README's generated blocks (benchmark table, local-DP bounds) match what the code computes."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_blocks_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_table.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ldp_bound_sentence_uses_the_function():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import readme_table
    finally:
        sys.path.pop(0)
    text = readme_table.ldp_bounds()
    assert "23.2 % at ε=1" in text and "45.09 % at ε=2" in text and "99.96 % at ε=10" in text
