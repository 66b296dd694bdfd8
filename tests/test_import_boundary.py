"""The core never imports a modality, a model zoo or an audio stack (architecture.md's boundary)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ["diffusion", "conditioning", "corruption", "training"]
FORBIDDEN = ["robust_gen.image", "robust_gen.speech", "torchaudio", "diffusers", "speechbrain", "transformers"]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", CORE)
def test_core_sources_import_nothing_forbidden(package):
    files = sorted((ROOT / "robust_gen" / package).rglob("*.py"))
    assert files, f"robust_gen/{package} has no modules"
    for path in files:
        for name in _imported_modules(path):
            for bad in FORBIDDEN:
                assert not (name == bad or name.startswith(bad + ".")), f"{path.relative_to(ROOT)} imports {name}"


def test_importing_the_core_loads_no_forbidden_module():
    code = (
        "import sys, importlib\n"
        f"for p in {CORE!r}:\n"
        "    importlib.import_module('robust_gen.' + p)\n"
        "import pkgutil, robust_gen\n"
        f"for p in {CORE!r}:\n"
        "    pkg = importlib.import_module('robust_gen.' + p)\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'robust_gen.{p}.{m.name}')\n"
        f"bad = [m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in {FORBIDDEN!r})]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"core imports pulled in: {out.stdout.strip()}"
