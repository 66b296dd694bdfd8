"""Caption swaps (Chen et al. 2024, text-conditional setting on CC3M, papers.md §2).

"Pick two image-text pairs and swap their texts": exactly ``floor(ratio * N / 2)`` disjoint pairs exchange
their captions, so ``2 * floor(ratio * N / 2)`` samples carry another sample's caption. A pair never has
identical text (the swap would change nothing).

How pairs are drawn: walk a random permutation of the indices and accept an index unless its caption text
already has ``m`` accepted members (``m`` = number of pairs), until ``2m`` are accepted; then order the accepted
indices by caption group (groups in order of first appearance, members in permutation order) and pair position
``i`` with position ``i + m``. With at most ``m`` members per text, the two halves never share a text. This
works whenever any valid set of pairs exists, i.e. when ``m <= N - (count of the most frequent text)``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from robust_gen.corruption.base import (
    Corruption,
    check_ratio,
    check_seed,
    field_values,
    make_generator,
    with_changes,
)
from robust_gen.corruption.manifest import Manifest


def swap_pair_count(ratio: float, num_samples: int) -> int:
    """Number of swapped pairs, ``floor(ratio * num_samples / 2)``.

    Examples
    --------
    >>> swap_pair_count(0.1, 25)
    1
    """
    return math.floor(check_ratio(ratio) * int(num_samples) / 2)


def _draw_pairs(texts: Sequence[str], num_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``num_pairs`` disjoint index pairs with different texts (see the module docstring)."""
    accepted: dict[str, list[int]] = {}  # insertion order = order of first appearance in the permutation
    total = 0
    for index in rng.permutation(len(texts)):
        members = accepted.setdefault(texts[index], [])
        if len(members) < num_pairs:
            members.append(int(index))
            total += 1
            if total == 2 * num_pairs:
                break
    ordered = [index for members in accepted.values() for index in members]
    return [(ordered[i], ordered[i + num_pairs]) for i in range(num_pairs)]


def swap_captions(
    captions: Sequence[str], ratio: float, *, seed: int, epoch: int | None = None
) -> tuple[list[str], Manifest]:
    """Swap the captions of ``floor(ratio * N / 2)`` disjoint pairs with different texts.

    Parameters
    ----------
    captions : sequence of str
        One caption per sample; not modified.
    ratio : float
        In [0, 1]; about ``ratio * N`` samples end up with another sample's caption.
    seed : int
        Seed of the pairing.
    epoch : int, optional
        For on-the-fly corruption: the pairing is then seeded from ``(seed, epoch)``.

    Returns
    -------
    new_captions : list of str
    manifest : Manifest
        ``kind="caption_swap"``; each change names its ``partner`` index.

    Raises
    ------
    ValueError
        If the ratio asks for more pairs with different texts than exist (e.g. all captions identical).

    Examples
    --------
    >>> new, manifest = swap_captions(["a cat", "a dog", "a car", "a cup"], 0.5, seed=0)
    >>> sorted(new) == ["a car", "a cat", "a cup", "a dog"], len(manifest.changes)
    (True, 2)
    """
    ratio = check_ratio(ratio)
    seed = check_seed(seed)
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise ValueError(f"captions must be a list of strings, got {type(captions).__name__}")
    texts = list(captions)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"captions[{index}] must be a string, got {type(text).__name__}: {text!r}")
    num_pairs = swap_pair_count(ratio, len(texts))
    if num_pairs:
        largest_group = max(Counter(texts).values())
        possible = min(len(texts) // 2, len(texts) - largest_group)
        if num_pairs > possible:
            raise ValueError(
                f"ratio {ratio} asks for {num_pairs} caption swaps among {len(texts)} captions, but at most "
                f"{possible} disjoint pairs with different texts exist ({largest_group} captions are identical); "
                "lower the ratio or deduplicate the captions"
            )
    pairs = _draw_pairs(texts, num_pairs, make_generator(seed, epoch))
    new_texts = list(texts)
    changes = []
    for first, second in pairs:
        new_texts[first], new_texts[second] = texts[second], texts[first]
        changes.append({"index": first, "before": texts[first], "after": texts[second], "partner": second})
        changes.append({"index": second, "before": texts[second], "after": texts[first], "partner": first})
    manifest = Manifest(
        kind="caption_swap", ratio=ratio, seed=seed, num_samples=len(texts), epoch=epoch, changes=changes
    )
    return new_texts, manifest


class CaptionSwap(Corruption):
    """Config-facing caption swap on dict records (see :func:`swap_captions`).

    Examples
    --------
    >>> records = [{"caption": f"photo {i}", "label": 0} for i in range(10)]
    >>> new, manifest = CaptionSwap(ratio=0.4, seed=0).apply(records)
    >>> sum(a["caption"] != b["caption"] for a, b in zip(records, new))
    4
    """

    kind: ClassVar[str] = "caption_swap"

    def __init__(self, ratio: float, seed: int, field: str = "caption", on_the_fly: bool = False) -> None:
        super().__init__(ratio, seed, on_the_fly=on_the_fly)
        self.field = field

    def apply(self, records: Sequence[Mapping[str, Any]], *, epoch: int = 0) -> tuple[list[dict], Manifest]:
        """Swap ``record[field]`` between ``floor(ratio * N / 2)`` pairs; returns new records."""
        captions = field_values(records, self.field)
        _, manifest = swap_captions(captions, self.ratio, seed=self.seed, epoch=self._epoch_for_seed(epoch))
        manifest.field = self.field
        manifest.params["on_the_fly"] = self.on_the_fly
        return with_changes(records, self.field, manifest), manifest
