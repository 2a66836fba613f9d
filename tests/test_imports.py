"""Every relative import in the package names a module that exists, including imports inside functions
(run only on some paths, e.g. a benchmark case), which a plain `import privinfer` never executes."""
import ast
import importlib.util
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "privinfer"


def _module_of(path: Path) -> list[str]:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def test_every_relative_import_resolves():
    missing = []
    for path in PKG.rglob("*.py"):
        mod = _module_of(path)
        package = mod if path.name == "__init__.py" else mod[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                base = package[:len(package) - (node.level - 1)]
                name = ".".join(base + [node.module])
                if importlib.util.find_spec(name) is None:
                    missing.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {name}")
    assert not missing, missing
