"""Tests of robust_gen.corruption: exact counts, determinism, manifests, configs and clear errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from robust_gen.corruption import (
    CaptionSwap,
    LabelFlip,
    Manifest,
    NoCorruption,
    OutlierInjection,
    SpeakerContamination,
    contaminate_speaker,
    flip_labels,
    inject_outliers,
    swap_captions,
)

REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ratios = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _labels(num_samples: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, num_samples)


def _image_records(num_samples: int = 60, num_classes: int = 4) -> list[dict]:
    return [
        {"label": i % num_classes, "caption": f"a photo number {i}", "source": i} for i in range(num_samples)
    ]


def _speech_records(num_target: int = 20, num_other: int = 30) -> list[dict]:
    target = [{"path": f"t{i}.wav", "text": f"line {i}", "speaker": "spk1"} for i in range(num_target)]
    other = [{"path": f"o{i}.wav", "text": f"line {i}", "speaker": "spk2"} for i in range(num_other)]
    return target + other


# ----------------------------------------------------------------------------------------------- label flips


@FAST
@given(
    num_samples=st.integers(0, 300),
    num_classes=st.integers(2, 12),
    ratio=ratios,
    seed=seeds,
    prior=st.sampled_from(["empirical", "uniform"]),
)
def test_flip_labels_changes_exactly_round_ratio_n(num_samples, num_classes, ratio, seed, prior):
    labels = _labels(num_samples, num_classes, seed % 1000)
    assume(prior == "uniform" or len(set(labels.tolist())) >= 2 or round(ratio * num_samples) == 0)
    new, manifest = flip_labels(labels, ratio, num_classes, seed=seed, prior=prior)
    changed = np.flatnonzero(new != labels)
    assert changed.size == round(ratio * num_samples)
    assert manifest.changed_indices == changed.tolist()
    assert all(c["before"] != c["after"] for c in manifest.changes)
    assert ((new >= 0) & (new < num_classes)).all()


@FAST
@given(num_samples=st.integers(1, 300), ratio=ratios, seed=seeds, subset_size=st.integers(2, 5))
def test_asymmetric_flips_stay_inside_the_subset(num_samples, ratio, seed, subset_size):
    labels = _labels(num_samples, 8, seed % 1000)
    subset = list(range(subset_size))
    eligible = int(np.isin(labels, subset).sum())
    count = round(ratio * num_samples)
    if count > eligible:
        with pytest.raises(ValueError, match="can flip"):
            flip_labels(labels, ratio, 8, seed=seed, mode="asymmetric", classes=subset, prior="uniform")
        return
    new, _ = flip_labels(labels, ratio, 8, seed=seed, mode="asymmetric", classes=subset, prior="uniform")
    changed = new != labels
    assert changed.sum() == count
    assert np.isin(labels[changed], subset).all() and np.isin(new[changed], subset).all()


def test_empirical_prior_draws_other_classes_by_frequency():
    labels = np.repeat([0, 1, 2, 3], [10000, 6000, 2000, 2000])
    _, manifest = flip_labels(labels, 0.5, 4, seed=0, prior="empirical")
    from_zero = np.array([c["after"] for c in manifest.changes if c["before"] == 0])
    shares = np.bincount(from_zero, minlength=4) / from_zero.size
    np.testing.assert_allclose(shares, [0.0, 0.6, 0.2, 0.2], atol=0.03)
    _, uniform = flip_labels(labels, 0.5, 4, seed=0, prior="uniform")
    from_zero = np.array([c["after"] for c in uniform.changes if c["before"] == 0])
    np.testing.assert_allclose(
        np.bincount(from_zero, minlength=4)[1:] / from_zero.size, [1 / 3] * 3, atol=0.03
    )


def test_label_flip_is_deterministic_and_on_the_fly_depends_on_epoch():
    labels = _labels(500, 10, 0)
    first, _ = flip_labels(labels, 0.1, 10, seed=7)
    np.random.seed(123)  # noqa: NPY002 (deliberately moves the legacy global state, which must not matter)
    second, _ = flip_labels(labels, 0.1, 10, seed=7)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, flip_labels(labels, 0.1, 10, seed=8)[0])

    records = [{"label": int(label)} for label in labels]
    fixed = LabelFlip(ratio=0.1, seed=7, num_classes=10)
    assert not fixed.is_epoch_dependent
    assert fixed.apply(records, epoch=0)[0] == fixed.apply(records, epoch=5)[0]
    assert [r["label"] for r in fixed.apply(records)[0]] == first.tolist()

    random_corruption = LabelFlip(ratio=0.1, seed=7, num_classes=10, on_the_fly=True)
    assert random_corruption.is_epoch_dependent
    epoch_one, manifest_one = random_corruption.apply(records, epoch=1)
    assert epoch_one == random_corruption.apply(records, epoch=1)[0]
    assert epoch_one != random_corruption.apply(records, epoch=2)[0]
    assert manifest_one.epoch == 1 and manifest_one.params["on_the_fly"] is True


def test_label_flip_never_mutates_its_input():
    records = _image_records()
    snapshot = copy.deepcopy(records)
    labels = np.array([r["label"] for r in records])
    LabelFlip(ratio=0.5, seed=0, num_classes=4).apply(records)
    flip_labels(labels, 0.5, 4, seed=0)
    assert records == snapshot and labels.tolist() == [r["label"] for r in snapshot]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.2}, "ratio must be a number in"),
        ({"ratio": -0.1}, "ratio must be a number in"),
        ({"labels": [0, 1, 5]}, "outside"),
        ({"labels": [0, -1, 2]}, "outside"),
        ({"labels": [0.0, 1.5]}, "integer"),
        ({"mode": "asymmetric", "classes": [1]}, "at least two classes"),
        ({"mode": "asymmetric"}, "needs classes"),
        ({"mode": "symmetric", "classes": [0, 1]}, "only used with mode='asymmetric'"),
        ({"mode": "asymmetric", "classes": [0, 7]}, r"must lie in \[0, 3\)"),
        ({"mode": "asymmetric", "classes": [0, 1], "ratio": 0.9}, "can flip"),
        ({"prior": "zipf"}, "prior must be one of"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"labels": [0, 0, 0, 0], "ratio": 0.5}, "prior='uniform'"),
        ({"seed": -3}, "seed must be a non-negative integer"),
    ],
)
def test_flip_labels_rejects_bad_input(kwargs, message):
    arguments = {"labels": [0, 1, 2, 0, 1, 2, 2, 2], "ratio": 0.25, "num_classes": 3, "seed": 0, **kwargs}
    labels, ratio, num_classes = (arguments.pop(key) for key in ("labels", "ratio", "num_classes"))
    with pytest.raises(ValueError, match=message):
        flip_labels(labels, ratio, num_classes, **arguments)


def test_label_flip_requires_num_classes_and_a_label_field():
    with pytest.raises(ValueError, match=r"needs num_classes"):
        LabelFlip(ratio=0.1, seed=0).apply(_image_records())
    new, _ = LabelFlip(ratio=0.1, seed=0).apply(_image_records(), num_classes=4)
    assert len(new) == 60
    with pytest.raises(ValueError, match="contradicts"):
        LabelFlip(ratio=0.1, seed=0, num_classes=4).apply(_image_records(), num_classes=5)
    with pytest.raises(ValueError, match="no field 'class_id'"):
        LabelFlip(ratio=0.1, seed=0, num_classes=4, field="class_id").apply(_image_records())
    with pytest.raises(ValueError, match="ratio"):
        LabelFlip(ratio=2.0, seed=0, num_classes=4)


# --------------------------------------------------------------------------------------------- caption swaps


def _max_distinct_pairs(texts: list[str]) -> int:
    """Brute force: the largest number of disjoint pairs with different texts."""
    if len(texts) < 2:
        return 0
    first, rest = texts[0], texts[1:]
    best = _max_distinct_pairs(rest)  # leave the first unpaired
    for j, other in enumerate(rest):
        if other != first:
            best = max(best, 1 + _max_distinct_pairs(rest[:j] + rest[j + 1 :]))
    return best


@FAST
@given(
    texts=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=0, max_size=9),
    ratio=ratios,
    seed=seeds,
)
def test_caption_swap_is_exact_or_refused_exactly_when_impossible(texts, ratio, seed):
    pairs = int(np.floor(ratio * len(texts) / 2))
    if pairs > _max_distinct_pairs(texts):
        with pytest.raises(ValueError, match="disjoint pairs with different texts"):
            swap_captions(texts, ratio, seed=seed)
        return
    new, manifest = swap_captions(texts, ratio, seed=seed)
    assert len(manifest.changes) == 2 * pairs
    assert sum(a != b for a, b in zip(texts, new)) == 2 * pairs  # never a pair with identical text
    assert Counter(new) == Counter(texts)
    for change in manifest.changes:
        partner = manifest.changes[manifest.changed_indices.index(change["partner"])]
        assert partner["partner"] == change["index"] and change["after"] == texts[change["partner"]]


@FAST
@given(num_samples=st.integers(0, 400), ratio=ratios, seed=seeds)
def test_caption_swap_counts_on_distinct_captions(num_samples, ratio, seed):
    texts = [f"caption {i}" for i in range(num_samples)]
    new, manifest = swap_captions(texts, ratio, seed=seed)
    assert sum(a != b for a, b in zip(texts, new)) == 2 * int(np.floor(ratio * num_samples / 2))
    assert manifest.apply(texts) == new


def test_caption_swap_errors_and_determinism():
    with pytest.raises(ValueError, match="disjoint pairs with different texts"):
        swap_captions(["same"] * 10, 0.5, seed=0)
    with pytest.raises(ValueError, match="ratio"):
        swap_captions(["a", "b"], 1.5, seed=0)
    with pytest.raises(ValueError, match=r"captions\[1\] must be a string"):
        swap_captions(["a", 3], 1.0, seed=0)
    texts = [f"t{i % 7}" for i in range(50)]
    assert swap_captions(texts, 0.4, seed=3) == swap_captions(texts, 0.4, seed=3)
    swap = CaptionSwap(ratio=0.4, seed=3, on_the_fly=True)
    records = [{"caption": text} for text in texts]
    assert swap.apply(records, epoch=1)[0] != swap.apply(records, epoch=2)[0]


def test_caption_swap_counts_effective_swaps_and_can_swap_across_concepts_only():
    # two captions per digit: a swap inside one digit changes the text but not the concept
    records = [{"caption": f"{style} {digit}", "label": digit} for digit in range(5) for style in ("a", "the")] * 3
    _, nominal = CaptionSwap(ratio=0.6, seed=0).apply(records)
    same = [c for c in nominal.changes if c["same_concept"]]
    assert nominal.params["effective_changes"] == len(nominal.changes) - len(same)
    assert nominal.params["effective_ratio"] == pytest.approx(nominal.params["effective_changes"] / len(records))
    new, across = CaptionSwap(ratio=0.6, seed=0, across_concepts=True).apply(records)
    assert len(across.changes) == len(nominal.changes) == 2 * 9
    assert not any(c["same_concept"] for c in across.changes)
    assert across.params["effective_changes"] == len(across.changes) and across.params["across_concepts"]
    assert across.apply(records) == new
    # every seed finds a same-concept pair among 9 at this density; across_concepts never does
    assert any(
        any(c["same_concept"] for c in CaptionSwap(ratio=0.6, seed=seed).apply(records)[1].changes)
        for seed in range(5)
    )
    with pytest.raises(ValueError, match="concept field 'label'"):
        CaptionSwap(ratio=0.2, seed=0, across_concepts=True).apply([{"caption": "x"}, {"caption": "y"}])
    unlabelled = CaptionSwap(ratio=1.0, seed=0).apply([{"caption": "x"}, {"caption": "y"}])[1]
    assert "effective_ratio" not in unlabelled.params  # nothing to count without concepts
    with pytest.raises(ValueError, match="different concepts"):
        swap_captions(["a", "b", "c", "d"], 1.0, seed=0, concepts=[1, 1, 1, 2], across_concepts=True)


# -------------------------------------------------------------------------------------- outliers and speakers


@FAST
@given(num_concept=st.integers(1, 40), ratio=ratios, seed=seeds)
def test_outlier_injection_replaces_exact_count_and_keeps_size(num_concept, ratio, seed):
    concept = [{"path": f"dog{i}", "label": 0} for i in range(num_concept)]
    pool = [{"path": f"car{i}", "label": 1} for i in range(40)]
    new, _ = inject_outliers(concept, pool, ratio, seed=seed, keep_fields=["label"])
    assert len(new) == num_concept and {r["label"] for r in new} == {0}
    outliers = [r["path"] for r in new if r["path"].startswith("car")]
    assert len(outliers) == round(ratio * num_concept) == len(set(outliers))


def test_least_similar_outliers_are_the_least_similar_pool_samples():
    rng = np.random.default_rng(0)
    concept_embeddings = np.array([1.0, 0.0]) + 0.05 * rng.normal(size=(10, 2))
    angles = np.linspace(0.0, np.pi, 12)  # pool sample j points further from the concept as j grows
    pool_embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    concept = [{"source": f"c{i}"} for i in range(10)]
    pool = [{"source": f"p{j}"} for j in range(12)]
    _, manifest = inject_outliers(
        concept,
        pool,
        0.4,
        seed=1,
        selection="least_similar",
        embeddings=concept_embeddings,
        pool_embeddings=pool_embeddings,
    )
    assert sorted(c["source"] for c in manifest.changes) == [8, 9, 10, 11]
    with pytest.raises(ValueError, match="needs embeddings"):
        inject_outliers(concept, pool, 0.4, seed=1, selection="least_similar")
    with pytest.raises(ValueError, match="off-topic pool has only 12"):
        inject_outliers(concept * 5, pool, 0.4, seed=1)


def test_outlier_injection_class_works_within_one_record_list():
    records = _image_records(num_samples=60, num_classes=3)
    embeddings = np.random.default_rng(0).normal(size=(60, 8))
    for selection in ("random", "least_similar"):
        injection = OutlierInjection(ratio=0.3, seed=2, concept=1, selection=selection)
        new, manifest = injection.apply(records, embeddings=embeddings)
        concept = [r for r in new if r["label"] == 1]
        assert len(new) == 60 and len(concept) == 20
        assert sum(r["source"] % 3 != 1 for r in concept) == 6
        assert all(records[c["source"]]["label"] != 1 for c in manifest.changes)
        assert manifest.apply(records) == new
    with pytest.raises(ValueError, match="needs concept"):
        OutlierInjection(ratio=0.3, seed=2).apply(records)
    with pytest.raises(ValueError, match="must include field"):
        OutlierInjection(ratio=0.3, seed=2, concept=1, keep_fields=["caption"])


@FAST
@given(num_target=st.integers(1, 30), ratio=ratios, seed=seeds, mode=st.sampled_from(["replace", "mix"]))
def test_speaker_contamination_counts(num_target, ratio, seed, mode):
    assume(mode == "replace" or ratio < 0.9)
    records = _speech_records(num_target=num_target, num_other=300)
    new, _ = contaminate_speaker(records, "spk1", "spk2", ratio, seed=seed, mode=mode)
    labelled_target = [r for r in new if r["speaker"] == "spk1"]
    foreign = sum(r["path"].startswith("o") for r in labelled_target)
    assert len(new) == len(records)
    if mode == "replace":
        assert len(labelled_target) == num_target and foreign == round(ratio * num_target)
    else:
        assert len(labelled_target) - foreign == num_target
        assert foreign == round(ratio * num_target / (1 - ratio))
        assert abs(foreign / len(labelled_target) - ratio) <= 1 / len(labelled_target)


def test_speaker_contamination_errors_and_class():
    records = _speech_records()
    with pytest.raises(ValueError, match="different speakers"):
        contaminate_speaker(records, "spk1", "spk1", 0.2, seed=0)
    with pytest.raises(ValueError, match="needs 20 utterances"):
        contaminate_speaker(_speech_records(20, 10), "spk1", "spk2", 1.0, seed=0)
    with pytest.raises(ValueError, match="ratio < 1"):
        SpeakerContamination("spk1", "spk2", ratio=1.0, seed=0, mode="mix")
    with pytest.raises(ValueError, match="no record has speaker == 'spk9'"):
        contaminate_speaker(records, "spk9", "spk2", 0.2, seed=0)
    contamination = SpeakerContamination("spk1", "spk2", ratio=0.25, seed=4)
    new, manifest = contamination.apply(records)
    assert manifest.apply(records) == new and len(manifest.changes) == 5


# ------------------------------------------------------------------------------------------------- manifests


def _all_corruptions() -> list:
    return [
        NoCorruption(),
        LabelFlip(ratio=0.2, seed=1, num_classes=4),
        LabelFlip(ratio=0.2, seed=1, num_classes=4, mode="asymmetric", classes=[0, 2], on_the_fly=True),
        CaptionSwap(ratio=0.3, seed=2),
        OutlierInjection(ratio=0.45, seed=3, concept=2, keep_fields=["label", "caption"]),
        SpeakerContamination("spk1", "spk2", ratio=0.3, seed=4),
        SpeakerContamination("spk1", "spk2", ratio=0.3, seed=4, mode="mix"),
    ]


@pytest.mark.parametrize("corruption", _all_corruptions(), ids=lambda c: repr(c)[:60])
def test_manifest_round_trip_recreates_the_corrupted_records(corruption, tmp_path):
    records = _speech_records() if isinstance(corruption, SpeakerContamination) else _image_records()
    snapshot = copy.deepcopy(records)
    new, manifest = corruption.apply(records, epoch=3)
    assert records == snapshot
    path = manifest.save(tmp_path / "runs" / "corruption.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["corruption.json"]  # no temp file left
    loaded = Manifest.load(path)
    assert loaded == manifest
    assert loaded.apply(records) == new
    data = json.loads(path.read_text())
    assert {"kind", "ratio", "seed", "params", "changes"} <= set(data)
    assert data["kind"] == corruption.kind and data["ratio"] == corruption.ratio


def test_manifest_applies_to_label_arrays_and_refuses_the_wrong_dataset(tmp_path):
    labels = _labels(100, 5, 0)
    new, manifest = flip_labels(labels, 0.1, 5, seed=0)
    applied = Manifest.load(manifest.save(tmp_path / "m.json")).apply(labels)
    assert isinstance(applied, np.ndarray) and np.array_equal(applied, new)
    assert labels.tolist() == _labels(100, 5, 0).tolist()
    with pytest.raises(ValueError, match="made for 100 samples"):
        manifest.apply(labels[:50])
    with pytest.raises(ValueError, match="original"):
        manifest.apply(new)
    with pytest.raises(FileNotFoundError, match="no corruption manifest"):
        Manifest.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Manifest.load(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"kind": "label_flip"}')
    with pytest.raises(ValueError, match="missing keys"):
        Manifest.load(tmp_path / "other.json")


_SUBPROCESS_SCRIPT = """
import json, numpy as np
from robust_gen.corruption import flip_labels, swap_captions, contaminate_speaker, inject_outliers
labels = np.arange(400) % 9
texts = [f"t{i % 13}" for i in range(400)]
speech = [{"speaker": "a" if i < 50 else "b", "path": str(i)} for i in range(120)]
out = {
    "labels": flip_labels(labels, 0.075, 9, seed=11)[0].tolist(),
    "random": flip_labels(labels, 0.075, 9, seed=11, epoch=4)[0].tolist(),
    "captions": swap_captions(texts, 0.1, seed=11)[0],
    "speech": contaminate_speaker(speech, "a", "b", 0.3, seed=11)[0],
    "outliers": inject_outliers(list(range(30)), list(range(100, 160)), 0.3, seed=11)[0],
}
print(json.dumps(out))
"""


def test_results_are_identical_across_process_restarts():
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_SCRIPT], capture_output=True, text=True, env=environment, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    namespace: dict = {}
    exec(_SUBPROCESS_SCRIPT.replace("print(json.dumps(out))", ""), namespace)
    assert json.loads(result.stdout) == json.loads(json.dumps(namespace["out"]))


# --------------------------------------------------------------------------------------------- Hydra configs

FILLED = {
    "none": [],
    "label_flip": ["corruption.num_classes=4"],
    "caption_swap": [],
    "outliers": ["corruption.concept=1"],
    "speaker_mix": ["corruption.target=spk1", "corruption.contaminant=spk2"],
}


@pytest.mark.parametrize("name", sorted(FILLED))
def test_corruption_configs_compose_and_instantiate(name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "configs" / "shared"), version_base="1.3"):
        config = compose(overrides=[f"+corruption={name}", *FILLED[name]])
    assert {"_target_", "ratio", "seed"} <= set(config.corruption)
    corruption = instantiate(config.corruption)
    records = _speech_records() if name == "speaker_mix" else _image_records()
    new, manifest = corruption.apply(records, epoch=0)
    assert len(new) == len(records) and manifest.kind == corruption.kind
    assert corruption.is_epoch_dependent is False
