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


# Above the core: which robust_gen packages each layer may import. A modality never imports another modality;
# speech and the studies reach speaker verification only through its public face (``robust_gen.speaker``).
LAYERS = {
    "audit": {"audit", *CORE},  # the data audit's generic part: metrics, reports, filters; no modality
    "image": {"image", "audit", *CORE},
    "speech": {"speech", "speaker", "audit", *CORE},
    "speaker": {"speaker", "speech.data", *CORE},
    "experiments": {"experiments", "speaker", "speech.data", *CORE},
}
TOP_LEVEL = {"robust_gen", "robust_gen.environment", "robust_gen.launch"}


def _robust_gen_imports(path: Path) -> set[str]:
    return {name for name in _imported_modules(path) if name == "robust_gen" or name.startswith("robust_gen.")}


def _allowed(name: str, layer: str) -> bool:
    if name in TOP_LEVEL:
        return True
    inner = name.removeprefix("robust_gen.")
    if layer != "speaker" and (inner == "speaker" or inner.startswith("speaker.")):
        return inner == "speaker"  # the public face only
    return any(inner == allowed or inner.startswith(allowed + ".") for allowed in LAYERS[layer])


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_modalities_import_only_their_layer(layer):
    files = sorted((ROOT / "robust_gen" / layer).rglob("*.py"))
    assert files, f"robust_gen/{layer} has no modules"
    for path in files:
        for name in _robust_gen_imports(path):
            assert _allowed(name, layer), f"{path.relative_to(ROOT)} imports {name}, outside its layer"


def test_every_module_sits_in_a_package():
    """Only the package's entry modules live at its top; the rest sit in a package whose name says what it holds."""
    top = sorted(p.name for p in (ROOT / "robust_gen").glob("*.py"))
    assert top == ["__init__.py", "environment.py", "launch.py"]


def test_no_import_circle_between_modules():
    """Module-level imports (not those inside functions) form no cycle: each module can be read bottom up."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "robust_gen").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        names = set()
        for node in tree.body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robust_gen"):
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith("robust_gen"))
        graph[module] = names
    visiting, done = set(), set()

    def visit(node: str, trail: tuple[str, ...]) -> None:
        if node in done or node not in graph:
            return
        assert node not in visiting, "import circle: " + " -> ".join((*trail, node))
        visiting.add(node)
        for child in graph[node]:
            # a package's __init__ importing its own submodules is how a public face works, not a circle
            if not child.startswith(node + "."):
                visit(child, (*trail, node))
        visiting.discard(node)
        done.add(node)

    for module in sorted(graph):
        visit(module, ())
