"""The layering the README promises, checked on the source: search_spaces <- latency_models <-
nas -> compress (compress may use latency_models' runtimes, never nas), no package importing
another's private names, and a CLI that starts without importing TensorFlow, Ray or the runtimes."""

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


def private_imports(source: str, package: str, where: str) -> list[str]:
    """``from other_package... import _name``, or an import of another package's ``_private``
    module, in ``source`` (a module of ``package``)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] not in ALLOWED or parts[0] == package:
                continue
            private = [p for p in parts[1:] if p.startswith("_")]
            private += [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private:
                out.append(f"{where}:{node.lineno} imports {private} from {node.module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in ALLOWED and parts[0] != package and any(p.startswith("_") for p in parts[1:]):
                    out.append(f"{where}:{node.lineno} imports {alias.name}")
    return out


def test_no_package_imports_another_packages_private_names() -> None:
    """A name starting with ``_`` is its package's own business: another package that needs it
    needs a public name (and the owner then knows it is used)."""
    bad = []
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            bad += private_imports(path.read_text(), package, str(path.relative_to(ROOT)))
    assert not bad, bad


def test_the_private_import_rule_catches_both_spellings() -> None:
    source = "from search_spaces.nb201 import _hidden, EDGES\nimport latency_models._secret\nfrom nas.x import _ours\n"
    assert private_imports(source, "nas", "probe.py") == [
        "probe.py:1 imports ['_hidden'] from search_spaces.nb201",
        "probe.py:2 imports latency_models._secret",
    ]


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


def test_nas_run_is_the_api_function_and_the_module_name_still_imports() -> None:
    """``from nas import run`` and ``nas.run(...)`` are the function, whatever was imported before
    (``import nas.run``, ``from nas.run import ...``), and importing ``nas`` stays light."""
    code = (
        "import sys; import nas.run; from nas.run import select_best, build_latency_model; import nas; "
        "from nas import run; import nas.runner; "
        "assert nas.run is run and run.__module__ == 'nas' and callable(run), nas.run; "
        "assert select_best is nas.runner.select_best and sys.modules['nas.run'] is not run; "
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr
    light = "import sys, nas; print([m for m in ('numpy', 'tensorflow', 'optuna', 'nas.runner') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


MAX_MODULE_LINES = 600


def test_no_product_module_is_over_600_lines() -> None:
    """A module a newcomer can read in one sitting: split a longer one by subject."""
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for package in ALLOWED
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, long
