"""Regenerate the lock, ``constraints.txt``: the tested resolution of every dependency that CI installs.

    python tools/lock.py            # rewrite constraints.txt from pyproject.toml (keeps versions that still fit)
    python tools/lock.py --upgrade  # take the newest versions pyproject.toml allows (check them first:
                                    # python tools/check_latest.py)

Why a pip constraints file, compiled by ``uv pip compile``: the README installs with plain pip
(``pip install -e ".[dev]" -c constraints.txt``), and a constraints file is what pip reads; it pins each package
only if something asks for it, so the optional extras stay optional. uv resolves in seconds from the index's
metadata (no multi-GB torch download) and writes a *universal* resolution with environment markers, valid on every
platform and for Python 3.11 and newer (the GPU machines run 3.12), where ``pip freeze`` would record one machine.
The torch / torchaudio / torchvision trio is pinned exactly in pyproject.toml itself, so even an install without
the lock gets a trio that loads together.

Needs uv (``pip install uv``); the dev extra does not pull it in, because only maintainers regenerate the lock.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "compile_command", "parse_lock"]

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"


def compile_command(out: Path, *, upgrade: bool = False) -> list[str]:
    """The ``uv pip compile`` command that writes the universal lock of every extra to ``out``."""
    command = [
        "uv", "pip", "compile", "pyproject.toml", "--all-extras", "--universal", "--python-version", "3.11",
        "--no-header", "--quiet", "-o", str(out),
    ]
    if upgrade:
        command.append("--upgrade")
    return command


def parse_lock(text: str) -> dict[str, str]:
    """``{package: version}`` from a lock or ``pip freeze`` text; with markers, the first entry of a name wins.

    Names are normalised as PEP 503 says (``Foo_Bar`` and ``foo-bar`` are one package).

    Examples
    --------
    >>> parse_lock("torch==2.11.0\\n    # via robust-gen\\nNumPy==2.4.6 ; python_full_version < '3.12'\\n")
    {'torch': '2.11.0', 'numpy': '2.4.6'}
    """
    versions: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line.strip())
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            versions.setdefault(name, match.group(3))
    return versions


HEADER = """\
# The lock: the tested resolution of every robust_gen dependency (all extras), for Python >= 3.11 on any
# platform. CI and the README install with it:  pip install -e ".[dev]" -c constraints.txt
# Regenerate with one command:  python tools/lock.py   (see its docstring; check upgrades with
# python tools/check_latest.py first). Do not edit by hand.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upgrade", action="store_true", help="newest allowed versions instead of keeping the lock's")
    args = parser.parse_args(argv)
    if shutil.which("uv") is None:
        print("error: uv is not installed; it compiles the lock. fix: pip install uv", file=sys.stderr)
        return 2
    tmp = LOCK.with_suffix(".txt.tmp")
    if LOCK.exists() and not args.upgrade:
        tmp.write_text(LOCK.read_text())  # uv keeps the versions of an existing output file where they still fit
    done = subprocess.run(compile_command(tmp, upgrade=args.upgrade), cwd=ROOT, check=False)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        print(f"error: uv pip compile failed (exit {done.returncode}); constraints.txt is unchanged", file=sys.stderr)
        return done.returncode
    body = tmp.read_text()
    tmp.write_text(HEADER + body)
    tmp.replace(LOCK)
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(parse_lock(body))} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
