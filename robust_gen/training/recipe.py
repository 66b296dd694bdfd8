"""What every recipe entry point does the same way: find the configs, name the run, write the resolved config,
apply the configured corruption and record its manifest, and build the trainer settings.

Recipes are thin Hydra scripts; this module keeps them thin and identical in these habits.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from robust_gen.training.run_dir import atomic_write_text

if TYPE_CHECKING:  # the trainer loads torch: imported where used, so that a recipe's --help is fast
    from robust_gen.training.trainer import TrainerConfig

__all__ = [
    "CONFIG_ROOT",
    "MANIFEST_NAME",
    "SAFE_TARGETS",
    "apply_corruption",
    "check_targets",
    "compose_config",
    "load_run_config",
    "register_resolvers",
    "run_name",
    "trainer_config",
    "write_resolved_config",
]

log = logging.getLogger(__name__)

#: The Hydra config tree: ``configs/<recipe>/`` roots plus ``configs/shared/`` groups (loss, trainer, corruption).
CONFIG_ROOT = Path(os.environ.get("ROBUST_GEN_CONFIGS", Path(__file__).resolve().parents[2] / "configs"))
MANIFEST_NAME = "corruption_manifest.json"


def run_name(override_dirname: str = "") -> str:
    """A directory name for a run from its command-line overrides, so re-running a command finds its run.

    The name is also a valid Hydra override value without quoting (``run_dir=runs/image/<name>``): ``=`` becomes
    ``-`` and ``,`` becomes ``__``.

    Examples
    --------
    >>> run_name("")
    'default'
    >>> run_name("corruption=label_flip,corruption.ratio=0.2")
    'corruption-label_flip__corruption.ratio-0.2'
    >>> run_name("data.root=/a/b")
    'data.root-_a_b'
    """
    if not override_dirname:
        return "default"
    name = override_dirname.replace("=", "-").replace(",", "__")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:200]


def register_resolvers() -> None:
    """Register the ``rg.*`` OmegaConf resolvers and point Hydra at the shared groups (idempotent).

    Call before ``@hydra.main`` runs (at import time of the recipe script).
    """
    os.environ.setdefault("ROBUST_GEN_CONFIGS", str(CONFIG_ROOT))
    if not OmegaConf.has_resolver("rg.run_name"):
        OmegaConf.register_new_resolver("rg.run_name", run_name)


def write_resolved_config(cfg: DictConfig, run_dir: str | Path) -> str:
    """Write the fully resolved config to ``run_dir/config.yaml`` and return its text."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    atomic_write_text(Path(run_dir) / "config.yaml", text)
    return text


def trainer_config(cfg: DictConfig | dict) -> TrainerConfig:
    """Build :class:`TrainerConfig` from the ``trainer`` group, naming any unknown key.

    Examples
    --------
    >>> trainer_config({"max_steps": 5, "batch_size": 2}).max_steps
    5
    >>> trainer_config({"max_step": 5})
    Traceback (most recent call last):
    ...
    ValueError: unknown trainer setting(s) ['max_step']; known: ...
    """
    from robust_gen.training.trainer import TrainerConfig

    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    known = set(TrainerConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown trainer setting(s) {unknown}; known: {sorted(known)}")
    return TrainerConfig(**values)


def apply_corruption(
    corruption: Any,
    records: list[dict],
    run_dir: str | Path,
    *,
    epoch: int = 0,
    **apply_kwargs: Any,
) -> tuple[list[dict], Any]:
    """Apply a corruption object to the dataset's records and write its manifest into the run directory.

    Returns the corrupted records and the manifest. For corruption re-drawn every epoch the manifest of each
    epoch goes to ``corruption_manifest_epochXXXX.json`` besides the epoch-0 one.
    """
    new_records, manifest = corruption.apply(records, epoch=epoch, **apply_kwargs)
    name = MANIFEST_NAME if epoch == 0 else f"corruption_manifest_epoch{epoch:04d}.json"
    manifest.save(Path(run_dir) / name)
    changed = len(manifest.changed_indices)
    log.info("corruption %s: %d of %d samples changed (manifest: %s)", manifest.kind, changed, len(records), name)
    return new_records, manifest


#: The only ``_target_`` values a config read back from a run directory or checkpoint may hold: exact names of the
#: classes the shipped config groups build (``tests/test_security.py`` checks every ``_target_`` under configs/ is
#: here). Such a config came from disk, perhaps from someone else: it is data. A prefix rule (``torch.nn.``) would
#: not do: a module re-exports what it imports, so ``torch.nn.modules.module.torch.load`` starts with ``torch.nn.``
#: and is ``torch.load``. A config naming anything else is refused; add a new class here when a config group gains
#: one.
SAFE_TARGETS = frozenset({
    "robust_gen.corruption.CaptionSwap",
    "robust_gen.corruption.LabelFlip",
    "robust_gen.corruption.NoCorruption",
    "robust_gen.corruption.OutlierInjection",
    "robust_gen.corruption.SpeakerContamination",
    "robust_gen.diffusion.losses.L1Loss",
    "robust_gen.diffusion.losses.L2Loss",
    "robust_gen.diffusion.losses.PseudoHuberLoss",
    "robust_gen.diffusion.schedules.DiscreteVP",
    "robust_gen.speech.gradtts.model.GradTTS",
})


def check_targets(cfg: Any, allowed: frozenset[str] = SAFE_TARGETS, *, source: str = "config") -> None:
    """Raise ``ValueError`` if any ``_target_`` in ``cfg`` is not exactly one of the names in ``allowed``.

    The comparison is on the whole string, before anything is imported: nothing a config names is imported or
    called unless it is on the list. Interpolations are not resolved first, so ``_target_: ${x}`` is refused too.

    Examples
    --------
    >>> check_targets({"loss": {"_target_": "robust_gen.diffusion.losses.L2Loss"}})
    >>> check_targets({"x": [{"_target_": "os.system", "_args_": ["rm -rf /"]}]}, source="ckpt/config.yaml")
    Traceback (most recent call last):
    ...
    ValueError: ckpt/config.yaml: refusing _target_ 'os.system' at x[0]; a config loaded from disk may only name ...
    >>> check_targets({"_target_": "torch.nn.modules.module.torch.load"})
    Traceback (most recent call last):
    ...
    ValueError: config: refusing _target_ 'torch.nn.modules.module.torch.load' at <root>; ...
    """
    container = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if target is not None and not (isinstance(target, str) and target in allowed):
                raise ValueError(
                    f"{source}: refusing _target_ {target!r} at {where or '<root>'}; a config loaded from disk may "
                    f"only name one of the classes in robust_gen.training.recipe.SAFE_TARGETS ({sorted(allowed)}). "
                    "If you wrote this config yourself, build the object from the registered config groups instead"
                )
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(container, "")


def compose_config(
    recipe: str, name: str = "train", overrides: Sequence[str] = (), *, return_hydra_config: bool = False
) -> DictConfig:
    """The config a recipe's ``<name>.py`` would see, composed by Hydra from ``configs/<recipe>/<name>.yaml`` with
    command-line style ``overrides`` (for tools, benchmarks and tests that build a recipe's objects in-process);
    ``return_hydra_config`` keeps the ``hydra`` node (sweep folders, job settings).

    Examples
    --------
    >>> cfg = compose_config("image", overrides=["model=dit_tiny"])
    >>> cfg.model.arch, cfg.trainer.fsdp
    ('dit', False)
    """
    from hydra import compose, initialize_config_dir

    register_resolvers()  # the recipes' interpolations, and Hydra's searchpath to configs/shared
    with initialize_config_dir(config_dir=str(CONFIG_ROOT / recipe), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def load_run_config(run_dir: str | Path) -> DictConfig:
    """Read a run's resolved ``config.yaml`` as data (YAML only; every ``_target_`` checked), naming what is missing.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.yaml").write_text("loss: {_target_: robust_gen.diffusion.losses.L2Loss}")
    >>> load_run_config(d).loss._target_
    'robust_gen.diffusion.losses.L2Loss'
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {run_dir} a run directory written by a robust_gen recipe? (it holds config.yaml, "
            "checkpoints/ and metrics.jsonl)"
        )
    cfg = OmegaConf.load(path)
    check_targets(cfg, source=str(path))
    return cfg
