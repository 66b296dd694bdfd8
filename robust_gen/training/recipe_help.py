"""``--help`` for the recipes: what the script does, its config groups and main options, two example commands.

Every recipe calls ``start_process(help_for="<recipe>/<config>")`` (:mod:`robust_gen.launch`) first; with ``--help``
(or ``-h``) on the command line that prints :func:`recipe_help` and exits, before torch loads, so help is quick.

The text is the entry config's own Hydra help template (``hydra.help.template`` with ``header`` and ``footer``,
in ``configs/<recipe>/<config>.yaml``), so descriptions live beside the settings they describe and defaults in
it (``${trainer.max_steps}``) are read from the composed config. This module fills ``$APP_CONFIG_GROUPS``
itself instead of Hydra's stock list, because that list is wrong for these recipes: it shows every group under
the config folder (``sample.py`` would list the training groups), leaves out the groups that come from
``configs/shared`` through ``hydra.searchpath`` (``loss``, ``corruption``, ``trainer``), and offers internal
entries (``_paper_image``, ``_common``). Here a recipe's groups are those of its defaults list (with the
selected option first) plus the optional ``+group`` ones it names, and names starting with ``_`` are left out.

Examples
--------
>>> text = recipe_help("image/sample")
>>> "sampler" in text and "loss" not in text.split("== Main options")[0]
True
"""

from __future__ import annotations

import re
import string
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

__all__ = ["config_groups", "print_help_if_asked", "recipe_help"]

HELP_FLAGS = ("--help", "-h")


def _options(group: str, search_dirs: Sequence[Path]) -> list[str]:
    """The public options of ``group``: YAML files in its folder under any search directory, ``_*`` left out."""
    names = {p.stem for d in search_dirs for p in (d / group).glob("*.yaml") if not p.stem.startswith("_")}
    return sorted(names)


def config_groups(recipe: str, choices: dict[str, str | None], optional_groups: Sequence[str] = ()) -> str:
    """One line per config group: the default option first, then the others (``_*`` entries hidden).

    ``choices`` are Hydra's ``hydra.runtime.choices`` (group -> selected option); ``hydra/*`` groups are left out.
    ``optional_groups`` (e.g. ``experiment``) are added with ``+`` and no default.

    Examples
    --------
    >>> print(config_groups("tts", {"loss": "l2", "hydra/launcher": "basic"}, ["experiment"]))
      loss         l2 (default) | l1 | pseudo_huber
      +experiment  huber_speech | huber_speech_paper | paper
    """
    from robust_gen.training.recipe import CONFIG_ROOT

    search_dirs = [CONFIG_ROOT / recipe, CONFIG_ROOT / "shared"]
    rows = []
    for group, chosen in sorted(choices.items()):
        if group.startswith("hydra/") or group == "hydra":
            continue
        others = [o for o in _options(group, search_dirs) if o != chosen]
        rows.append((group, [f"{chosen} (default)", *others] if chosen else others))
    rows += [(f"+{group}", _options(group, search_dirs)) for group in optional_groups]
    if not rows:
        return "  (none: every setting is a key=value below)"
    width = max(len(name) for name, _ in rows) + 2
    return "\n".join(
        textwrap.fill(
            " | ".join(options),
            110,
            initial_indent=f"  {name:<{width}}",
            subsequent_indent=" " * (width + 2),
            break_on_hyphens=False,
        )
        for name, options in rows
    )


def recipe_help(config: str, optional_groups: Sequence[str] = (), overrides: Sequence[str] = ()) -> str:
    """The help text of the entry config ``config`` (``"<recipe>/<name>"``, e.g. ``"image/train"``).

    ``overrides`` are the command's other arguments, so ``python recipes/image/train.py model=dit_tiny --help``
    shows that model's defaults.
    """
    from omegaconf import OmegaConf

    from robust_gen.training.recipe import compose_config

    recipe, name = config.split("/")
    try:
        cfg = compose_config(recipe, name, list(overrides), return_hydra_config=True)
    except Exception:  # a bad override must not hide the help: show the defaults instead
        cfg = compose_config(recipe, name, [], return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    groups = config_groups(recipe, choices, optional_groups)
    template = OmegaConf.to_container(cfg.hydra.help, resolve=False)["template"]
    # ${key} by hand rather than by OmegaConf, so values read as they are typed on the command line (null, true)
    text = _INTERPOLATION.sub(lambda m: _override_value(OmegaConf.select(cfg, m.group(1))), template)
    text = _INTERPOLATION.sub(
        lambda m: _override_value(OmegaConf.select(cfg, m.group(1))), text
    )  # header, footer
    # Hydra's own help fills the same $-names (string.Template), so the template also works with Hydra's --help
    return string.Template(text).safe_substitute(APP_CONFIG_GROUPS=groups).rstrip() + "\n"


_INTERPOLATION = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def _override_value(value: object) -> str:
    """``value`` as it is written in an override: ``null``, ``true``, ``[1.0,3.0]``.

    Examples
    --------
    >>> _override_value(None), _override_value(True), _override_value([1.0, 3.0]), _override_value("ema")
    ('null', 'true', '[1.0,3.0]', 'ema')
    """
    from omegaconf import ListConfig

    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def print_help_if_asked(
    config: str, optional_groups: Sequence[str] = (), argv: Sequence[str] | None = None
) -> None:
    """Print :func:`recipe_help` and exit when ``argv`` (default ``sys.argv``) asks for ``--help`` / ``-h``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a in HELP_FLAGS for a in args):
        return
    overrides = [a for a in args if a not in HELP_FLAGS and not a.startswith("-")]
    print(recipe_help(config, optional_groups, overrides), end="")
    sys.exit(0)
