"""Seeded, exact, recorded corruptions of training data: labels, captions, outliers, speakers.

Functional forms work on plain values (``flip_labels``, ``swap_captions``, ``inject_outliers``,
``contaminate_speaker``); the classes (``LabelFlip``, ``CaptionSwap``, ``OutlierInjection``,
``SpeakerContamination``, ``NoCorruption``) are built from ``configs/corruption/*.yaml`` and share
``apply(records, *, epoch=0) -> (new_records, manifest)``.
"""

from robust_gen.corruption.base import (
    Corruption,
    NoCorruption,
    check_ratio,
    check_seed,
    corrupted_count,
    make_generator,
)
from robust_gen.corruption.captions import CaptionSwap, swap_captions, swap_pair_count
from robust_gen.corruption.labels import LabelFlip, flip_labels
from robust_gen.corruption.manifest import Manifest
from robust_gen.corruption.outliers import OutlierInjection, inject_outliers, least_similar_order
from robust_gen.corruption.records import RecordTable, is_record_table
from robust_gen.corruption.speakers import SpeakerContamination, contaminate_speaker, mixed_contaminant_count

__all__ = [
    "CaptionSwap",
    "Corruption",
    "LabelFlip",
    "Manifest",
    "NoCorruption",
    "OutlierInjection",
    "RecordTable",
    "SpeakerContamination",
    "check_ratio",
    "check_seed",
    "contaminate_speaker",
    "corrupted_count",
    "flip_labels",
    "inject_outliers",
    "is_record_table",
    "least_similar_order",
    "make_generator",
    "mixed_contaminant_count",
    "swap_captions",
    "swap_pair_count",
]
