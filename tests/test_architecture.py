"""The layering the README promises, checked on the source: search_spaces <- latency_models <-
nas -> compress (compress may use latency_models' runtimes, never nas), and a CLI that starts
without importing TensorFlow, Ray or the runtimes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "search_spaces": {"search_spaces"},
    "latency_models": {"search_spaces", "latency_models"},
    "compress": {"search_spaces", "latency_models", "compress"},
    "nas": {"search_spaces", "latency_models", "compress", "nas"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & set(ALLOWED)


def test_dependencies_point_one_way() -> None:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in (ROOT / package).rglob("*.py"):
            for dep in imported_packages(path) - allowed:
                bad.append(f"{path.relative_to(ROOT)} imports {dep}")
    assert not bad, bad


def test_no_pickles_or_unsafe_yaml_in_package_code() -> None:
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert "pickle.load" not in text, path
            assert "yaml.load(" not in text, path


def test_cli_starts_without_heavy_imports() -> None:
    code = (
        "import sys; from nas.cli import build_parser; build_parser().format_help(); "
        "heavy = [m for m in ('tensorflow', 'tf_keras', 'ray', 'onnxruntime', 'openvino', 'sklearn', 'optuna') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
