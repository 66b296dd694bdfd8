"""Caption swaps (Chen et al. 2024, text-conditional setting on CC3M, papers.md §2).

"Pick two image-text pairs and swap their texts": exactly ``floor(ratio * N / 2)`` disjoint pairs exchange
their captions, so ``2 * floor(ratio * N / 2)`` samples carry another sample's caption. A pair never has
identical text (the swap would change nothing).

How pairs are drawn: walk a random permutation of the indices and accept an index unless its caption text
already has ``m`` accepted members (``m`` = number of pairs), until ``2m`` are accepted; then order the accepted
indices by caption group (groups in order of first appearance, members in permutation order) and pair position
``i`` with position ``i + m``. With at most ``m`` members per text, the two halves never share a text. This
works whenever any valid set of pairs exists, i.e. when ``m <= N - (count of the most frequent text)``.

Effective corruption: a swap between two captions of the same concept ("a handwritten seven" and "the digit 7")
changes the text but not what it names. When the records' concept is known (``concepts``; the ``label`` field of
:class:`CaptionSwap`), each change records ``same_concept`` and the manifest's params ``effective_changes`` /
``effective_ratio`` (changes that name another concept, over N) beside the nominal ratio. ``across_concepts``
draws the pairs on the concepts instead of the texts, so that every swap changes the concept (effective = nominal).
"""

from __future__ import annotations

import json
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
from robust_gen.corruption.records import is_record_table


def swap_pair_count(ratio: float, num_samples: int) -> int:
    """Number of swapped pairs, ``floor(ratio * num_samples / 2)``.

    Examples
    --------
    >>> swap_pair_count(0.1, 25)
    1
    """
    return math.floor(check_ratio(ratio) * int(num_samples) / 2)


def _draw_pairs(texts: Sequence[Any], num_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``num_pairs`` disjoint index pairs with different keys (texts or concepts; see the module docstring)."""
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
    captions: Sequence[str],
    ratio: float,
    *,
    seed: int,
    epoch: int | None = None,
    concepts: Sequence[Any] | None = None,
    across_concepts: bool = False,
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
    concepts : sequence, optional
        What each caption names (e.g. the class label): the manifest then counts the effective swaps.
    across_concepts : bool
        Pair only captions of different concepts (needs ``concepts``), so that every swap changes the concept.

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
    >>> texts = ["a 7", "the digit 7", "a 1", "the digit 1"]
    >>> _, m = swap_captions(texts, 1.0, seed=0, concepts=[7, 7, 1, 1], across_concepts=True)
    >>> m.params["effective_changes"], m.params["effective_ratio"]
    (4, 1.0)
    """
    ratio = check_ratio(ratio)
    seed = check_seed(seed)
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise ValueError(f"captions must be a list of strings, got {type(captions).__name__}")
    texts = list(captions)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"captions[{index}] must be a string, got {type(text).__name__}: {text!r}")
    keys = _pairing_keys(texts, concepts, across_concepts)
    num_pairs = swap_pair_count(ratio, len(texts))
    if num_pairs:
        largest_group = max(Counter(keys).values())
        possible = min(len(texts) // 2, len(texts) - largest_group)
        if num_pairs > possible:
            raise ValueError(
                f"ratio {ratio} asks for {num_pairs} caption swaps among {len(texts)} captions, but at most "
                f"{possible} disjoint pairs with different {'concepts' if across_concepts else 'texts'} exist "
                f"({largest_group} captions share one); lower the ratio, deduplicate the captions or set "
                "across_concepts=false"
            )
    pairs = _draw_pairs(keys, num_pairs, make_generator(seed, epoch))
    new_texts = list(texts)
    changes = []
    for first, second in pairs:
        new_texts[first], new_texts[second] = texts[second], texts[first]
        same = None if concepts is None else bool(concepts[first] == concepts[second])
        for index, partner in ((first, second), (second, first)):
            change = {"index": index, "before": texts[index], "after": texts[partner], "partner": partner}
            if same is not None:
                change["same_concept"] = same
            changes.append(change)
    params: dict[str, Any] = {"across_concepts": bool(across_concepts)}
    if concepts is not None:
        effective = sum(not change["same_concept"] for change in changes)
        params.update(effective_changes=effective, effective_ratio=effective / len(texts) if texts else 0.0)
    manifest = Manifest(
        kind="caption_swap", ratio=ratio, seed=seed, num_samples=len(texts), epoch=epoch, params=params,
        changes=changes,
    )
    return new_texts, manifest


def _pairing_keys(texts: list[str], concepts: Sequence[Any] | None, across_concepts: bool) -> list[Any]:
    """What a pair must differ in: the texts, or with ``across_concepts`` the concepts."""
    if concepts is not None and len(concepts) != len(texts):
        raise ValueError(f"concepts has {len(concepts)} entries for {len(texts)} captions; pass one per caption")
    if not across_concepts:
        return texts
    if concepts is None:
        raise ValueError("across_concepts=true needs the concept of each caption (CaptionSwap: concept_field)")
    return [json.dumps(c, sort_keys=True, default=str) for c in concepts]  # any JSON-able concept, hashable


class CaptionSwap(Corruption):
    """Config-facing caption swap on dict records (see :func:`swap_captions`).

    Examples
    --------
    >>> records = [{"caption": f"photo {i}", "label": 0} for i in range(10)]
    >>> new, manifest = CaptionSwap(ratio=0.4, seed=0).apply(records)
    >>> sum(a["caption"] != b["caption"] for a, b in zip(records, new))
    4
    >>> manifest.params["effective_changes"]  # every record names concept 0: no swap changes the concept
    0

    ``concept_field`` (default ``label``; None to skip): the record field naming what a caption describes, used for
    the effective-corruption count when every record has it; ``across_concepts`` swaps only between concepts.
    """

    kind: ClassVar[str] = "caption_swap"

    def __init__(
        self,
        ratio: float,
        seed: int,
        field: str = "caption",
        on_the_fly: bool = False,
        concept_field: str | None = "label",
        across_concepts: bool = False,
    ) -> None:
        super().__init__(ratio, seed, on_the_fly=on_the_fly)
        self.field, self.concept_field, self.across_concepts = field, concept_field, bool(across_concepts)

    def _concepts(self, records: Sequence[Mapping[str, Any]]) -> list[Any] | None:
        field = self.concept_field
        if is_record_table(records) and field in records.fields:
            return list(field_values(records, field))
        if field is None or is_record_table(records) or not all(isinstance(r, Mapping) and field in r for r in records):
            if self.across_concepts:
                raise ValueError(
                    f"corruption.across_concepts=true needs every record to have the concept field {field!r} "
                    "(corruption.concept_field); unlabelled captions cannot be swapped across concepts"
                )
            return None
        return [r[field] for r in records]

    def apply(self, records: Sequence[Mapping[str, Any]], *, epoch: int = 0) -> tuple[list[dict], Manifest]:
        """Swap ``record[field]`` between ``floor(ratio * N / 2)`` pairs; returns new records."""
        captions = field_values(records, self.field)
        _, manifest = swap_captions(
            captions, self.ratio, seed=self.seed, epoch=self._epoch_for_seed(epoch),
            concepts=self._concepts(records), across_concepts=self.across_concepts,
        )  # fmt: skip
        manifest.field = self.field
        manifest.params.update(on_the_fly=self.on_the_fly, concept_field=self.concept_field)
        return with_changes(records, self.field, manifest), manifest
