"""The tests mirror the package: every test folder names a package folder of `privinfer/` (issue 10)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PKG = ROOT.parent / "privinfer"


def test_every_test_folder_mirrors_a_package():
    folders = [p for p in ROOT.rglob("*") if p.is_dir() and p.name != "__pycache__"]
    assert folders, "expected per-package test folders"
    for d in folders:
        rel = d.relative_to(ROOT)
        assert (PKG / rel).is_dir(), f"tests/{rel} has no matching privinfer/{rel}"


def test_every_protocol_package_has_tests():
    protos = [p.name for p in (PKG / "protocols").iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    for name in protos:
        assert list((ROOT / "protocols" / name).glob("test_*.py")), f"privinfer/protocols/{name} has no tests"
