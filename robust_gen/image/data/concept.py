"""Concept fine-tuning data (``data=concept``): one concept's image folder among others that serve as outliers.

The folder layout is the ``folder`` source's (``<root>/<name>/*.png``); ``data.concept`` names the concept's
sub-folder, and training sees only the records labelled as the concept, so with ``corruption=outliers`` the
concept's set is polluted by images from the other folders (Khrapov et al. 2024, the DreamBooth-style setting).
"""

from __future__ import annotations

from typing import Any

__all__ = ["concept_label"]


def concept_label(data_cfg: Any, class_names: list[str]) -> int | None:
    """The class index of ``data_cfg["concept"]`` (a sub-folder name) among ``class_names``; None without one.
    The folder source reads underscores in folder names as spaces; either spelling is accepted.

    Examples
    --------
    >>> concept_label({"concept": "dog"}, ["cat", "dog"]), concept_label({}, ["cat"])
    (1, None)
    >>> concept_label({"concept": "sks_dog"}, ["cat", "sks dog"])
    1
    >>> concept_label({"concept": "cow"}, ["cat", "dog"])
    Traceback (most recent call last):
    ...
    ValueError: data.concept='cow' is not a sub-folder of data.root; the folders are ['cat', 'dog']
    """
    name = data_cfg.get("concept") if hasattr(data_cfg, "get") else None
    if name is None:
        return None
    for spelling in (str(name), str(name).replace("_", " ")):
        if spelling in class_names:
            return class_names.index(spelling)
    raise ValueError(f"data.concept={name!r} is not a sub-folder of data.root; the folders are {class_names}")
