"""Is the installed torch family the one robust_gen pins? Say so in one message, with the command that fixes it.

torch, torchaudio and torchvision are one ABI-coupled family: a torchaudio or torchvision build links against the
exact torch it was built with, and pip happily installs a newer torchaudio beside an older torch (torchaudio 2.11.1
beside torch 2.11.0 fails at import with ``undefined symbol: torch_exception_get_what_without_backtrace``). diffusers
imports torchaudio whenever it is installed, so a broken pair breaks the image stack as well as speech.

The pins themselves live in one place, ``pyproject.toml``; this module reads them back from the installed package's
metadata (or from ``pyproject.toml`` when running from a source tree without installing) and compares them with
what is installed, without importing torchaudio unless asked to.

Examples
--------
>>> required = {"torch": "==2.11.0", "torchaudio": "==2.11.0", "torchvision": "==0.26.0"}
>>> family_problems(required, {"torch": "2.11.0+cpu", "torchaudio": "2.11.0", "torchvision": "0.26.0"})
[]
>>> family_problems(required, {"torch": "2.11.0", "torchaudio": "2.11.1", "torchvision": "0.26.0"})
['torchaudio 2.11.1 is installed, robust_gen needs torchaudio==2.11.0']
>>> fix_command(required)
'pip install "torch==2.11.0" "torchaudio==2.11.0" "torchvision==0.26.0"'
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

__all__ = [
    "FAMILY",
    "TorchFamilyMismatch",
    "check_torch_family",
    "default_cache_dir",
    "exit_on_torch_mismatch",
    "family_problems",
    "fix_command",
    "installed_versions",
    "required_versions",
]


def default_cache_dir() -> Path:
    """The shared cache folder of every recipe: ``$ROBUST_GEN_CACHE`` if set, else ``~/.cache/robust_gen``.

    It holds what is costly to make and safe to share between runs, each in its own sub-folder named by what it
    holds (the embedded corpus, mel and speaker-embedding caches, trained image autoencoders and their latents).

    Examples
    --------
    >>> import os
    >>> saved = os.environ.get("ROBUST_GEN_CACHE")
    >>> os.environ["ROBUST_GEN_CACHE"] = "~/elsewhere"
    >>> default_cache_dir() == Path.home() / "elsewhere"
    True
    >>> del os.environ["ROBUST_GEN_CACHE"]
    >>> default_cache_dir() == Path.home() / ".cache" / "robust_gen"
    True
    >>> os.environ.update({} if saved is None else {"ROBUST_GEN_CACHE": saved})
    """
    configured = os.environ.get("ROBUST_GEN_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "robust_gen"


#: The packages that must come as one exact trio.
FAMILY = ("torch", "torchaudio", "torchvision")
#: Set to 1 to skip the check (for example to try a newer torch on purpose; expect import errors).
SKIP_ENV = "ROBUST_GEN_SKIP_TORCH_CHECK"

_checked = False


class TorchFamilyMismatch(ImportError):
    """The installed torch / torchaudio / torchvision do not match the pins, or do not load together."""


def required_versions() -> dict[str, str]:
    """The version specifiers robust_gen declares for the torch family, e.g. ``{"torch": "==2.11.0", ...}``.

    Read from the installed distribution's metadata; from ``pyproject.toml`` beside the package when robust_gen
    runs from a source tree that was not installed.

    Examples
    --------
    >>> sorted(required_versions())
    ['torch', 'torchaudio', 'torchvision']
    """
    try:
        lines = importlib.metadata.requires("robust_gen") or []
    except importlib.metadata.PackageNotFoundError:
        lines = _requirements_from_pyproject()
    specs: dict[str, str] = {}
    for line in lines:
        requirement = Requirement(line)
        if requirement.name in FAMILY and not requirement.marker:
            specs[requirement.name] = str(requirement.specifier)
    return specs


def _requirements_from_pyproject() -> list[str]:
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        return []
    return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def installed_versions() -> dict[str, str | None]:
    """The installed version of each family member (``None`` where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in FAMILY:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def family_problems(required: Mapping[str, str], installed: Mapping[str, str | None]) -> list[str]:
    """One line per family member whose installed version does not satisfy its pin (empty when all match).

    A local version label (``2.11.0+cu130``, ``2.11.0+cpu``) satisfies ``==2.11.0``, as PEP 440 says.
    """
    problems = []
    for name, spec in required.items():
        version = installed.get(name)
        if version is None:
            problems.append(f"{name} is not installed, robust_gen needs {name}{spec}")
            continue
        try:
            ok = SpecifierSet(spec).contains(Version(version), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            problems.append(f"{name} {version} is installed, robust_gen needs {name}{spec}")
    return problems


def fix_command(required: Mapping[str, str]) -> str:
    """The pip command that installs the pinned trio."""
    return "pip install " + " ".join(f'"{name}{required[name]}"' for name in FAMILY if name in required)


def _message(problems: list[str], required: Mapping[str, str], cause: str | None = None) -> str:
    lines = ["the installed torch family does not match robust_gen's pins:"]
    lines += [f"  - {problem}" for problem in problems]
    if cause:
        lines.append(f"  - importing it failed: {cause}")
    lines.append(f"fix: {fix_command(required)}   (or reinstall: pip install -e \".[dev]\" -c constraints.txt)")
    return "\n".join(lines)


def check_torch_family(
    *,
    import_torchaudio: bool = True,
    required: Mapping[str, str] | None = None,
    installed: Mapping[str, str | None] | None = None,
) -> None:
    """Raise :class:`TorchFamilyMismatch` when the torch family is not the pinned trio or does not load.

    ``import_torchaudio`` also imports ``torchaudio.functional`` once, which catches a pair whose versions look
    right but whose libraries do not load together. The result is remembered: later calls cost nothing.
    ``ROBUST_GEN_SKIP_TORCH_CHECK=1`` skips the check.

    Examples
    --------
    >>> check_torch_family(required={"torch": "==2.11.0"}, installed={"torch": "2.12.0"})
    Traceback (most recent call last):
    ...
    robust_gen.environment.TorchFamilyMismatch: the installed torch family does not match robust_gen's pins:
      - torch 2.12.0 is installed, robust_gen needs torch==2.11.0
    fix: pip install "torch==2.11.0"   (or reinstall: pip install -e ".[dev]" -c constraints.txt)
    """
    global _checked
    explicit = required is not None or installed is not None
    if os.environ.get(SKIP_ENV) == "1" or (_checked and not explicit):
        return
    required = required_versions() if required is None else required
    installed = installed_versions() if installed is None else installed
    problems = family_problems(required, installed)
    if problems:
        raise TorchFamilyMismatch(_message(problems, required))
    if import_torchaudio and not explicit:
        try:
            importlib.import_module("torchaudio.functional")
        except (ImportError, OSError, RuntimeError) as error:
            cause = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            versions = [f"{name} {installed.get(name)} is installed" for name in FAMILY]
            raise TorchFamilyMismatch(_message(versions, required, cause)) from error
    if not explicit:
        _checked = True


def exit_on_torch_mismatch() -> None:
    """For entry points: run :func:`check_torch_family` and, on a mismatch, print its message and exit with 2.

    A user who installed a wrong pair needs the versions and the fix, not a 30-frame import traceback.
    """
    try:
        check_torch_family()
    except TorchFamilyMismatch as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
