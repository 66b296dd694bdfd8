"""The one entry-point wrapper of every recipe: check the whole config, lock, then work; one line per user error.

:func:`recipe_main` replaces ``@hydra.main`` in ``recipes/*/*.py``. In order, before anything is written:

1. mandatory values given (``run_dir=`` for sample / evaluate / synthesize) and no key added with ``+`` that no
   config declares (``+data.on_bda=skip``: a typo that would be ignored);
2. the whole config checked, naming the key: trainer types and ranges (:mod:`robust_gen.training.settings`), the
   ``loss`` and ``corruption`` objects built once (an unknown ``loss.schedule`` fails in a second, not after
   the autoencoder stage), missing ``???`` values, and the recipe's own checks;
3. for training recipes, the run lock (:func:`~robust_gen.training.run_dir.lock_run`), then the resume check (a run
   directory with checkpoints trained with other settings is refused, listing them), then ``.hydra/`` written by us:
   the recipe configs set ``hydra.output_subdir: null`` so that Hydra itself writes nothing a second, refused
   process could clobber;
4. the work, with SIGTERM / SIGINT turned into a checkpoint (during training) and exit code 128 + signal.

A user error (a bad value, a missing folder or run, a locked run, a damaged checkpoint, a full disk) prints one
line, ``error: <what and the fix>``, and exits with code 2; the traceback only with ``HYDRA_FULL_ERROR=1`` or
``--verbose``. A folder this command created and left with nothing of value (Hydra's log, the lock file) is
removed (:class:`RunDirGuard`, a Hydra callback every recipe config names). In a multirun (``-m``) a user error
fails only its own job (:class:`JobFailed`): the sweep's other jobs still run, and Hydra reports the failure
when they are done (exit code 1), so one refused run folder does not cost a night's sweep.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from robust_gen.training.checkpoint import UnverifiedCheckpointsError
from robust_gen.training.interrupt import StopRequested, handle_stop_signals
from robust_gen.training.run_dir import RunDirLocked, atomic_write_text, lock_run, set_run_aside
from robust_gen.training.settings import changed_settings
from robust_gen.training.trainer import NonFiniteLossError

__all__ = [
    "USER_ERRORS", "JobFailed", "RunDirGuard", "check_added_keys", "check_missing", "check_objects", "check_resume", "recipe_main",
    "remove_if_worthless",
]

log = logging.getLogger(__name__)

#: Exceptions that mean "the command or its inputs are wrong", reported as one line; anything else is a bug and
#: keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, NotADirectoryError, RunDirLocked, UnverifiedCheckpointsError,
    OmegaConfBaseException, PermissionError, NonFiniteLossError,
)


class JobFailed(RuntimeError):
    """A user error in one job of a multirun: an ordinary exception, which Hydra records for that job while the
    sweep's other jobs go on (``SystemExit`` would end the whole sweep)."""


#: What a folder may hold and still be worth nothing: Hydra's job log, the lock file, our copy of .hydra/.
_WORTHLESS = (".log", ".lock")
_created: dict[str, Path] = {}  # output dir -> the topmost folder this command created for it


class RunDirGuard(Callback):
    """Hydra callback: remember which folders Hydra is about to create for this run, so that a command that fails
    before doing anything can take them away again (:func:`remove_if_worthless`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        try:
            HydraConfig.instance().set_config(config)
            output = Path(str(config.hydra.run.dir)).absolute()
        except Exception:  # an unresolvable run dir: Hydra reports it itself
            return
        top = None
        for folder in [output, *output.parents]:
            if folder.exists():
                break
            top = folder
        if top is not None:
            _created[str(output)] = top


def remove_if_worthless(output_dir: str | os.PathLike) -> bool:
    """Remove the folders this command created for ``output_dir`` if they hold only a log and a lock file.

    Examples
    --------
    >>> import tempfile
    >>> base = Path(tempfile.mkdtemp())
    >>> _created[str(base / "a" / "b")] = base / "a"
    >>> (base / "a" / "b").mkdir(parents=True)
    >>> _ = (base / "a" / "b" / "train.log").write_text("")
    >>> remove_if_worthless(base / "a" / "b"), (base / "a").exists()
    (True, False)
    """
    top = _created.pop(str(Path(output_dir).absolute()), None)
    if top is None or not top.is_dir():
        return False
    for path in top.rglob("*"):
        if path.is_file() and not (path.name.endswith(_WORTHLESS) or ".hydra" in path.parts):
            return False
    shutil.rmtree(top, ignore_errors=True)
    return True


def check_added_keys(overrides: Iterable[str], group_roots: Iterable[Path], cfg: Any = None) -> None:
    """Refuse ``+key=value`` overrides of plain keys: nothing reads a key no config declares, so a typo
    (``+data.on_bda=skip``) would be silently ignored. ``+group=option`` (a config group) and keys under
    ``trainer.extra`` stay allowed.

    Examples
    --------
    >>> check_added_keys(["trainer.lr=0.1", "+trainer.extra.note=x"], [])
    >>> check_added_keys(["+data.on_bda=skip"], [])
    Traceback (most recent call last):
    ...
    ValueError: unknown key data.on_bda (added with +data.on_bda=skip): no config declares it, so nothing would ...
    """
    roots = list(group_roots)
    for override in overrides:
        if not override.startswith("+") or override.startswith("++"):
            continue
        key = override[1:].split("=", 1)[0].split("@", 1)[0]
        if key.startswith("trainer.extra.") or any((root / key.replace(".", "/")).is_dir() for root in roots):
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(cfg, parent) if cfg is not None and parent else cfg
        known = f"; keys of {parent or 'the config'}: {sorted(k for k in node.keys() if k != key.rsplit('.', 1)[-1])}" \
            if isinstance(node, DictConfig) else ""
        raise ValueError(
            f"unknown key {key} (added with {override}): no config declares it, so nothing would read it; check the "
            f"spelling and drop the '+'{known}"
        )


def check_missing(cfg: DictConfig, filled_later: tuple[str, ...] = ("corruption.",)) -> None:
    """Name the first mandatory (``???``) value the command left out, e.g. ``data.root`` of ``data=folder``.

    Examples
    --------
    >>> check_missing(OmegaConf.create({"data": {"source": "folder", "root": "???"}}))
    Traceback (most recent call last):
    ...
    ValueError: data.root is required here (data: source=folder) and has no default: add data.root=<value> ...
    """
    for key in sorted(OmegaConf.missing_keys(cfg)):
        if key.startswith(filled_later):
            continue
        group = key.split(".", 1)[0]
        node = cfg.get(group) if "." in key else None
        hint = f" ({group}: source={node.get('source')})" if isinstance(node, DictConfig) and "source" in node else ""
        raise ValueError(f"{key} is required here{hint} and has no default: add {key}=<value> to the command")


def check_objects(cfg: DictConfig, groups: Iterable[str] = ("schedule", "loss", "corruption")) -> None:
    """Build the small objects of ``groups`` once (their constructors check their settings), so a bad
    ``loss.schedule`` or ``corruption.ratio`` fails before any work; values filled from the data (``???``) are
    left out of this trial build."""
    from hydra.utils import instantiate

    for group in groups:
        if group not in cfg or not isinstance(cfg[group], DictConfig) or "_target_" not in cfg[group]:
            continue
        node = OmegaConf.to_container(cfg[group], resolve=True)
        filled_later = [k for k, v in node.items() if v == "???"]
        node = {k: v for k, v in node.items() if k not in filled_later}
        try:
            instantiate(node)
        except Exception as e:  # instantiate wraps the constructor's error in its own
            cause = e.__cause__ or e
            if filled_later and isinstance(cause, TypeError):
                continue  # it needs the values the recipe fills from the data: checked when they are there
            raise ValueError(f"{group}: {cause}") from e


def check_resume(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to resume a run whose checkpoints were trained with other settings (:func:`changed_settings`), or
    with ``trainer.restart=true`` move them aside for a fresh start; called under the run lock, before the recipe
    writes its config (on the node's first process only, which holds the lock)."""
    saved_path = run_dir / "config.yaml"
    if os.environ.get("LOCAL_RANK", "0") != "0" or not saved_path.is_file():
        return
    if not any((run_dir / "checkpoints").glob("step_*")):
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = OmegaConf.to_container(cfg, resolve=True)
    changes = changed_settings(saved, current)
    if not changes:
        return
    if bool(OmegaConf.select(cfg, "trainer.restart", default=False)):
        set_run_aside(run_dir, f"other settings ({'; '.join(changes)})")
        return
    raise ValueError(
        f"{run_dir} holds checkpoints trained with other settings than this command's: {'; '.join(changes)}. "
        "Put the old values back to resume, start over with trainer.restart=true (old checkpoints are kept "
        "aside), or train into a new run directory (hydra.run.dir=...)"
    )


def _write_hydra_files(output_dir: Path) -> None:
    """What Hydra writes to ``.hydra/`` (it is told not to, so that a refused second process writes nothing)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    folder = output_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    atomic_write_text(folder / "hydra.yaml", OmegaConf.to_yaml({"hydra": hydra_cfg}))
    atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(list(hydra_cfg.overrides.task)))


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return str(error) if "no space" in str(error).lower() else f"no space left on device: {error}"
    text = str(error).strip() or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def recipe_main(
    recipe: str,
    config_name: str,
    *,
    lock: bool = False,
    required: tuple[str, ...] = (),
    validate: Callable[[DictConfig], None] | None = None,
) -> Callable[[Callable[[DictConfig, Path], Any]], Callable[[], None]]:
    """Decorate ``task(cfg, output_dir)`` into a recipe's ``main()`` (see the module docstring).

    ``lock``: a training recipe (locks its output dir, checks resuming, writes ``.hydra/``); ``required``: keys the
    command line must give (checked before Hydra composes anything); ``validate``: the recipe's own checks.
    """
    import hydra

    from robust_gen.training.recipe import CONFIG_ROOT, trainer_config

    group_roots = [CONFIG_ROOT / recipe, CONFIG_ROOT / "shared"]

    def decorator(task: Callable[[DictConfig, Path], Any]) -> Callable[[], None]:
        def run(cfg: DictConfig) -> Any:
            from hydra.core.hydra_config import HydraConfig

            output_dir = Path(HydraConfig.get().runtime.output_dir)
            check_added_keys(HydraConfig.get().overrides.task, group_roots, cfg)
            check_missing(cfg)
            if "trainer" in cfg:
                trainer_config(cfg.trainer)
            check_objects(cfg)
            if validate is not None:
                validate(cfg)
            with lock_run(output_dir) if lock else contextlib.nullcontext():
                if lock:
                    check_resume(cfg, output_dir)
                    _write_hydra_files(output_dir)
                    atomic_write_text(output_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
                return task(cfg, output_dir)

        def hydra_task(cfg: DictConfig) -> Any:
            from hydra.core.hydra_config import HydraConfig

            output_dir = HydraConfig.get().runtime.output_dir
            try:
                with handle_stop_signals():
                    return run(cfg)
            except StopRequested as stop:
                print(stop, file=sys.stderr, flush=True)
                raise SystemExit(stop.exit_code) from None
            except (*USER_ERRORS, OSError) as error:
                if isinstance(error, OSError) and not isinstance(error, USER_ERRORS) and error.errno != errno.ENOSPC:
                    raise
                remove_if_worthless(output_dir)
                if _verbose():
                    raise
                print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)
                print("  (full traceback: HYDRA_FULL_ERROR=1 or --verbose)", file=sys.stderr, flush=True)
                if _in_multirun():
                    raise JobFailed(f"{output_dir}: {_one_line(error)}") from None
                raise SystemExit(2) from None

        # Hydra names the job (and its log file) after the function it is given, unwrapped: the recipe's task
        hydra_task.__wrapped__ = task
        hydra_main = hydra.main(config_path=str(CONFIG_ROOT / recipe), config_name=config_name, version_base="1.3")(
            hydra_task
        )

        @functools.wraps(task)
        def main() -> None:
            if "--verbose" in sys.argv:
                sys.argv.remove("--verbose")
                os.environ["ROBUST_GEN_VERBOSE"] = "1"
            given = {arg.split("=", 1)[0].lstrip("+") for arg in sys.argv[1:] if "=" in arg}
            for key in required:
                if key not in given and not any(a in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info")
                                                for a in sys.argv[1:]):
                    print(f"error: {key} is required: python {sys.argv[0]} {key}=<value> ...", file=sys.stderr)
                    raise SystemExit(2)
            hydra_main()

        return main

    return decorator


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _verbose() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("ROBUST_GEN_VERBOSE") == "1"
