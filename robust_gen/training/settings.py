"""Types and ranges of config values, checked before any work starts, each error naming its key.

One rule table per group (:data:`SETTING_RULES` for ``trainer``; recipes add their own with :func:`check_config`),
so ``trainer.max_steps=abc``, ``trainer.batch_size=2.5`` or ``trainer.log_every=0`` stop at once with
``trainer.log_every must be an integer >= 1, got 0`` instead of a ``TypeError`` or ``ZeroDivisionError`` deep
inside training, minutes later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RESUME_FREE_GROUPS", "RESUME_FREE_KEYS", "SETTING_RULES", "Rule", "changed_settings", "check_choice", "check_config",
    "check_settings", "check_value", "flatten",
]


@dataclass(frozen=True)
class Rule:
    """What one setting may hold: ``kind`` is ``"int"``, ``"float"`` or ``"bool"``; ``low`` / ``high`` bound it
    (``open_low``: ``low`` itself excluded); ``nullable`` admits null; ``note`` says what a special value means."""

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False
    note: str = ""

    def describe(self) -> str:
        """The rule in words, e.g. ``an integer >= 1``."""
        words = {"int": "an integer", "float": "a finite number", "bool": "true or false"}[self.kind]
        if self.low is not None:
            words += f" {'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None:
            words += f"{' and' if self.low is not None else ''} {'<' if self.open_high else '<='} {self.high:g}"
        if self.nullable:
            words += " or null"
        return words + (f" ({self.note})" if self.note else "")


def check_value(key: str, value: Any, rule: Rule) -> Any:
    """``value`` checked against ``rule`` (ints given for floats become floats), or ``ValueError`` naming ``key``.

    Examples
    --------
    >>> check_value("trainer.lr", 1, Rule("float", 0, open_low=True))
    1.0
    >>> check_value("trainer.max_steps", "abc", Rule("int", 1))
    Traceback (most recent call last):
    ...
    ValueError: trainer.max_steps must be an integer >= 1, got 'abc'
    >>> check_value("trainer.batch_size", 2.5, Rule("int", 1))
    Traceback (most recent call last):
    ...
    ValueError: trainer.batch_size must be an integer >= 1, got 2.5
    """
    if value is None and rule.nullable:
        return None
    problem = f"{key} must be {rule.describe()}, got {value!r}"
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(problem)
        return value
    if isinstance(value, bool):  # True is an int to Python, never a step count or a learning rate
        raise ValueError(problem)
    if rule.kind == "int":
        if not isinstance(value, int):
            raise ValueError(problem)
    else:
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string: take what was meant
            try:
                value = float(value)
            except ValueError:
                raise ValueError(problem) from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(problem)
        value = float(value)
    if rule.low is not None and (value < rule.low or (rule.open_low and value == rule.low)):
        raise ValueError(problem)
    if rule.high is not None and (value > rule.high or (rule.open_high and value == rule.high)):
        raise ValueError(problem)
    return value


def check_settings(obj: Any, rules: Mapping[str, Rule], prefix: str) -> None:
    """Check (and normalise in place) the attributes of ``obj`` named in ``rules``; errors name ``prefix.name``."""
    for name, rule in rules.items():
        setattr(obj, name, check_value(f"{prefix}.{name}", getattr(obj, name), rule))


def check_config(cfg: Any, rules: Mapping[str, Rule]) -> None:
    """Check the dotted keys of a (Hydra) config against ``rules``; a key the config lacks is not checked.

    Examples
    --------
    >>> check_config({"data": {"min_size": 0}}, {"data.min_size": Rule("int", 1)})
    Traceback (most recent call last):
    ...
    ValueError: data.min_size must be an integer >= 1, got 0
    """
    for key, rule in rules.items():
        node: Any = cfg
        for part in key.split("."):
            node = node[part] if hasattr(node, "keys") and part in node else _MISSING
            if node is _MISSING:
                break
        if node is not _MISSING:
            check_value(key, node, rule)


def check_choice(key: str, value: Any, choices: Any) -> None:
    """``ValueError`` naming ``key`` unless ``value`` is one of ``choices``.

    Examples
    --------
    >>> check_choice("loss.schedule", "snrr", ("constant", "exponential", "snr"))
    Traceback (most recent call last):
    ...
    ValueError: loss.schedule must be one of ['constant', 'exponential', 'snr'], got 'snrr'
    """
    if value not in choices:
        raise ValueError(f"{key} must be one of {sorted(choices)}, got {value!r}")


_MISSING = object()

_POSITIVE_INT = Rule("int", 1)
_COUNT = Rule("int", 0)
_FLAG = Rule("bool")

#: The ``trainer`` group's rules (:class:`~robust_gen.training.trainer.TrainerConfig` applies them).
SETTING_RULES: dict[str, Rule] = {
    "max_steps": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "grad_accum": _POSITIVE_INT,
    "lr": Rule("float", 0, open_low=True),
    "weight_decay": Rule("float", 0),
    "warmup_steps": _COUNT,
    "grad_clip": Rule("float", 0, nullable=True, note="0 or null: no clipping"),
    "ema_decay": Rule("float", 0, 1),
    "seed": _COUNT,
    "log_every": _POSITIVE_INT,
    "checkpoint_every": Rule("int", 0, note="0: only at the end"),
    "keep_checkpoints": _POSITIVE_INT,
    "eval_every": Rule("int", 0, note="0: only at the end"),
    "num_workers": _COUNT,
    "max_nonfinite_steps": _POSITIVE_INT,
    **{name: _FLAG for name in ("ema_warmup", "tensorboard", "progress", "deterministic", "cpu", "compile",
                                "channels_last", "fsdp", "restart", "resample")},
}


#: Settings that may change when a run resumes: how long, how often to log / checkpoint / sample, and how the work
#: is executed; none of them changes what the steps already taken would have computed. Any other change (learning
#: rate, batch size, loss, data, model) is refused on resume (:func:`changed_settings`), so that a run directory
#: never records a value its weights were not trained with.
RESUME_FREE_KEYS = frozenset({
    "trainer.max_steps", "trainer.progress", "trainer.log_every", "trainer.checkpoint_every",
    "trainer.keep_checkpoints", "trainer.eval_every", "trainer.num_workers", "trainer.max_nonfinite_steps",
    "trainer.tensorboard", "trainer.cpu", "trainer.compile", "trainer.compile_mode", "trainer.compile_backend",
    "trainer.channels_last", "trainer.fsdp", "trainer.fsdp_wrap", "trainer.restart", "trainer.resample",
    "cpu_threads", "device",
})
#: Groups whose every key may change on resume (what is rendered along the way, not what is trained): preview
#: samples, and a study's instructions for sampling and evaluating the run once trained (``study.*``, ``finish.*``;
#: the resumed run's config.yaml then records the new ones, which is what its finish step reads).
RESUME_FREE_GROUPS = ("samples.", "latents.encode_batch_size", "hydra.", "study.", "finish.")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}`` (lists are leaves).

    Examples
    --------
    >>> flatten({"trainer": {"lr": 0.1, "adam_betas": [0.9, 0.99]}})
    {'trainer.lr': 0.1, 'trainer.adam_betas': [0.9, 0.99]}
    """
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_settings(saved: Mapping, current: Mapping) -> list[str]:
    """The differences that forbid resuming: ``"key: saved -> current"`` for keys set in both (a null or
    missing current value is one a recipe fills in later, not a change), except :data:`RESUME_FREE_KEYS`.

    Examples
    --------
    >>> changed_settings({"trainer": {"lr": 0.001, "max_steps": 5}}, {"trainer": {"lr": 0.5, "max_steps": 9}})
    ['trainer.lr: 0.001 -> 0.5']
    """
    old, new = flatten(saved), flatten(current)
    changes = []
    for key in sorted(old.keys() & new.keys()):
        if key in RESUME_FREE_KEYS or key.startswith(RESUME_FREE_GROUPS) or new[key] is None or new[key] == "???":
            continue
        before, after = old[key], new[key]
        if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)):
            before, after = list(before), list(after)
        if before != after:
            changes.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    return changes
