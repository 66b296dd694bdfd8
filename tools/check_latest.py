"""What would the newest releases allowed by pyproject.toml break? Find out before a user does.

    python tools/check_latest.py                    # resolve, install into a scratch venv, run the tests
    python tools/check_latest.py --resolve-only     # only list the versions that differ from constraints.txt
    python tools/check_latest.py --dry-run          # print the commands, run nothing
    python tools/check_latest.py -- -x -q tests/test_losses.py   # pytest arguments after --

The lock (``constraints.txt``) records the resolution that CI installs. This script resolves again without it,
so every package takes its newest release that pyproject.toml allows, lists each version that would change,
installs that resolution into a scratch virtual environment (``pip install -e ".[dev]"`` with no lock), checks
that the torch family loads, and runs the test suite there. The report (``reports/check_latest/report.json`` and
``report.md``) names the changed packages and the test outcome, so a failing upgrade points at its suspects.

Regenerating the lock after a good check is one command: ``python tools/lock.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lock import ROOT, compile_command, parse_lock

__all__ = ["version_changes"]


def version_changes(locked: dict[str, str], latest: dict[str, str]) -> list[dict]:
    """Packages whose version differs between two resolutions (added and removed ones too), sorted by name.

    Examples
    --------
    >>> version_changes({"torch": "2.11.0", "numpy": "2.4.6"}, {"torch": "2.11.0", "numpy": "2.5.0", "rich": "14"})
    [{'package': 'numpy', 'locked': '2.4.6', 'latest': '2.5.0'}, {'package': 'rich', 'locked': None, 'latest': '14'}]
    """
    names = sorted(set(locked) | set(latest))
    return [
        {"package": name, "locked": locked.get(name), "latest": latest.get(name)}
        for name in names
        if locked.get(name) != latest.get(name)
    ]


def _run(command: list[str], *, dry_run: bool, **kwargs) -> subprocess.CompletedProcess | None:
    print("+ " + " ".join(command), flush=True)
    if dry_run:
        return None
    return subprocess.run(command, check=False, **kwargs)


def resolve_latest(scratch: Path, *, dry_run: bool) -> dict[str, str]:
    """Resolve pyproject.toml's dependencies (all extras) at their newest allowed versions."""
    out = scratch / "latest.txt"
    done = _run(compile_command(out, upgrade=True), dry_run=dry_run, cwd=ROOT)
    if done is None:
        return {}
    if done.returncode != 0:
        raise SystemExit(f"error: resolving the newest versions failed (exit {done.returncode}); see uv's output above")
    return parse_lock(out.read_text())


def install_and_test(scratch: Path, pytest_args: list[str], *, dry_run: bool) -> dict:
    """Install the project without the lock into a fresh venv under ``scratch`` and run its tests there."""
    venv = scratch / "venv"
    python = venv / "bin" / "python"
    steps = [
        ("venv", [sys.executable, "-m", "venv", str(venv)]),
        ("pip", [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"]),
        ("install", [str(python), "-m", "pip", "install", "--quiet", "-e", ".[dev]"]),
        ("torch family", [str(python), "-c", "from robust_gen.environment import check_torch_family as c; c()"]),
        ("pytest", [str(python), "-m", "pytest", *pytest_args]),
    ]
    outcome: dict = {}
    for name, command in steps:
        started = time.monotonic()
        done = _run(command, dry_run=dry_run, cwd=ROOT)
        outcome[name] = {
            "returncode": None if done is None else done.returncode,
            "seconds": round(time.monotonic() - started, 1),
        }
        if done is not None and done.returncode != 0:
            outcome["failed_at"] = name
            break
    if not dry_run and "failed_at" not in outcome:
        frozen = subprocess.run(
            [str(python), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=False
        )
        outcome["installed"] = parse_lock(frozen.stdout)
    return outcome


def write_report(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# check_latest", "", f"verdict: **{report['verdict']}**", ""]
    if report["changes"]:
        lines += ["| package | locked | latest |", "| --- | --- | --- |"]
        lines += [f"| {c['package']} | {c['locked']} | {c['latest']} |" for c in report["changes"]]
    else:
        lines.append("No package would change.")
    if report.get("tests"):
        lines += ["", "| step | exit | seconds |", "| --- | --- | --- |"]
        lines += [
            f"| {step} | {r['returncode']} | {r['seconds']} |"
            for step, r in report["tests"].items()
            if isinstance(r, dict) and "returncode" in r
        ]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pytest_args = ["-q", "-x"]
    if "--" in argv:
        split = argv.index("--")
        argv, pytest_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolve-only", action="store_true", help="list version changes; install and test nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "check_latest", help="report folder")
    parser.add_argument("--keep", action="store_true", help="keep the scratch environment (its path is printed)")
    args = parser.parse_args(argv)
    if shutil.which("uv") is None and not args.dry_run:
        print("error: uv is not installed; it resolves the dependencies. fix: pip install uv", file=sys.stderr)
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="robust_gen_latest_"))
    try:
        locked = parse_lock((ROOT / "constraints.txt").read_text())
        latest = resolve_latest(scratch, dry_run=args.dry_run)
        changes = [] if args.dry_run else version_changes(locked, latest)
        for change in changes:
            print(f"  {change['package']}: {change['locked']} -> {change['latest']}")
        report: dict = {"changes": changes, "tests": None}
        if not args.resolve_only:
            report["tests"] = install_and_test(scratch, pytest_args, dry_run=args.dry_run)
        failed = (report["tests"] or {}).get("failed_at")
        report["verdict"] = (
            "dry run" if args.dry_run
            else f"the newest releases break step '{failed}'" if failed
            else "resolved only" if args.resolve_only
            else "the newest releases pass"
        )
        if not args.dry_run:
            write_report(report, args.out)
            print(f"{report['verdict']}; {len(changes)} package(s) differ from constraints.txt; report: {args.out}")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"scratch environment kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
