"""Speaker contamination, the audio setting of the scheduled pseudo-Huber paper (Khrapov et al. 2024, §1).

Grad-TTS is trained on a target speaker's data contaminated by another speaker's. Two settings:

``mode="replace"``
    ``round(ratio * n_target)`` of the target's utterances are replaced by distinct utterances of the
    contaminant, relabelled as the target. The target's utterance count is unchanged; ``ratio`` is the
    contaminant's share of the target label afterwards.
``mode="mix"``
    The two speakers are merged under the target label: all target utterances are kept and
    ``k = round(ratio * n_target / (1 - ratio))`` distinct contaminant utterances are relabelled as the target,
    so that ``ratio`` is the contaminant's share of the merged label, ``k / (n_target + k)`` (exact up to that
    rounding; ``ratio`` must be < 1). ``ratio = 0.5`` with ``k = n_target`` merges equal amounts.

In both modes the list keeps its length and only the records named in the manifest change; utterances of the
contaminant that were not used keep their own label (a single-speaker recipe then keeps the records whose
speaker is the target).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from robust_gen.corruption.base import (
    Corruption,
    check_ratio,
    check_seed,
    copy_records,
    corrupted_count,
    make_generator,
    record_field,
)
from robust_gen.corruption.manifest import Manifest

SPEAKER_MODES = ("replace", "mix")


def mixed_contaminant_count(ratio: float, num_target: int) -> int:
    """Contaminant utterances merged into the target label in ``mode="mix"``: ``round(r * n / (1 - r))``.

    Examples
    --------
    >>> mixed_contaminant_count(0.2, 40)   # 10 of the 50 merged utterances are the contaminant's
    10
    """
    ratio = check_ratio(ratio)
    if ratio >= 1.0:
        raise ValueError("mode='mix' needs ratio < 1 (ratio is the contaminant's share of the merged label)")
    return round(ratio * int(num_target) / (1.0 - ratio))


def contaminate_speaker(
    records: Sequence[Mapping[str, Any]],
    target: Any,
    contaminant: Any,
    ratio: float,
    *,
    seed: int,
    mode: str = "replace",
    field: str = "speaker",
    epoch: int | None = None,
) -> tuple[list[dict], Manifest]:
    """Contaminate ``target``'s utterances with ``contaminant``'s (see the module docstring for the modes).

    Parameters
    ----------
    records : sequence of dict
        Utterance records, each with a ``field`` naming its speaker; not modified.
    target, contaminant : hashable
        The two speaker names (different).
    ratio : float
        The contaminant's share of the target label afterwards, in [0, 1] (``[0, 1)`` for ``mode="mix"``).
    seed : int
        Seed of the choice of utterances.
    mode : {"replace", "mix"}
    field : str
        Record key holding the speaker.
    epoch : int, optional
        For on-the-fly corruption: seeded from ``(seed, epoch)``.

    Returns
    -------
    new_records : list of dict
    manifest : Manifest
        ``kind="speaker_contamination"``, whole-record changes; in replace mode ``source`` is the index of the
        contaminant utterance that took the place.

    Examples
    --------
    >>> records = [{"path": f"a{i}.wav", "speaker": "a"} for i in range(10)]
    >>> records += [{"path": f"b{i}.wav", "speaker": "b"} for i in range(10)]
    >>> new, manifest = contaminate_speaker(records, "a", "b", 0.3, seed=0)
    >>> target = [r for r in new if r["speaker"] == "a"]
    >>> len(target), sum(r["path"].startswith("b") for r in target)
    (10, 3)
    >>> new, manifest = contaminate_speaker(records, "a", "b", 0.5, seed=0, mode="mix")
    >>> len([r for r in new if r["speaker"] == "a"])
    20
    """
    ratio = check_ratio(ratio)
    seed = check_seed(seed)
    if mode not in SPEAKER_MODES:
        raise ValueError(f"mode must be one of {SPEAKER_MODES}, got {mode!r}")
    if target == contaminant:
        raise ValueError(f"target and contaminant must be different speakers, both are {target!r}")
    speakers = [record_field(records, i, field) for i in range(len(records))]
    target_index = np.array([i for i, s in enumerate(speakers) if s == target], dtype=np.int64)
    donor_index = np.array([i for i, s in enumerate(speakers) if s == contaminant], dtype=np.int64)
    if target_index.size == 0:
        raise ValueError(f"no record has {field} == {target!r}; check the target speaker's name")

    if mode == "replace":
        count = corrupted_count(ratio, target_index.size)
    else:
        count = mixed_contaminant_count(ratio, target_index.size)
    if count > donor_index.size:
        raise ValueError(
            f"ratio {ratio} ({mode}) needs {count} utterances of {contaminant!r} but it has {donor_index.size}; "
            "lower the ratio or add data of the contaminant"
        )
    rng = make_generator(seed, epoch)
    new_records = copy_records(records)
    changes = []
    if mode == "replace":
        positions = np.sort(rng.choice(target_index, size=count, replace=False))
        donors = rng.choice(donor_index, size=count, replace=False)
        for position, donor in zip(positions.tolist(), donors.tolist()):
            new_records[position] = {**records[donor], field: target}
            changes.append(
                {
                    "index": position,
                    "before": records[position],
                    "after": new_records[position],
                    "source": donor,
                }
            )
    else:
        for donor in np.sort(rng.choice(donor_index, size=count, replace=False)).tolist():
            new_records[donor][field] = target
            changes.append({"index": donor, "before": records[donor], "after": new_records[donor]})
    manifest = Manifest(
        kind="speaker_contamination",
        ratio=ratio,
        seed=seed,
        num_samples=len(records),
        epoch=epoch,
        params={"target": target, "contaminant": contaminant, "mode": mode, "field": field},
        changes=changes,
    )
    return new_records, manifest


class SpeakerContamination(Corruption):
    """Config-facing speaker contamination (see :func:`contaminate_speaker` for what ``ratio`` means).

    Examples
    --------
    >>> records = [{"speaker": s, "text": str(i)} for i, s in enumerate(["x"] * 8 + ["y"] * 8)]
    >>> new, manifest = SpeakerContamination("x", "y", ratio=0.25, seed=3).apply(records)
    >>> len(manifest.changes), manifest.params["mode"]
    (2, 'replace')
    """

    kind: ClassVar[str] = "speaker_contamination"

    def __init__(
        self,
        target: Any,
        contaminant: Any,
        ratio: float,
        seed: int,
        mode: str = "replace",
        field: str = "speaker",
        on_the_fly: bool = False,
    ) -> None:
        super().__init__(ratio, seed, on_the_fly=on_the_fly)
        if mode not in SPEAKER_MODES:
            raise ValueError(f"mode must be one of {SPEAKER_MODES}, got {mode!r}")
        if mode == "mix":
            mixed_contaminant_count(self.ratio, 0)  # rejects ratio == 1 at construction
        self.target = target
        self.contaminant = contaminant
        self.mode = mode
        self.field = field

    def apply(self, records: Sequence[Mapping[str, Any]], *, epoch: int = 0) -> tuple[list[dict], Manifest]:
        """Contaminate the target's utterances; returns new records of the same length."""
        if self.target is None or self.contaminant is None:
            raise ValueError(
                "SpeakerContamination needs target and contaminant speaker names: set corruption.target and "
                "corruption.contaminant"
            )
        new_records, manifest = contaminate_speaker(
            records,
            self.target,
            self.contaminant,
            self.ratio,
            seed=self.seed,
            mode=self.mode,
            field=self.field,
            epoch=self._epoch_for_seed(epoch),
        )
        manifest.params["on_the_fly"] = self.on_the_fly
        return new_records, manifest
