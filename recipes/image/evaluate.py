"""python recipes/image/evaluate.py run_dir=runs/image/default [tag=<tag>] [clean_run_dir=<clean run>]

Evaluate the samples of an image run: FID / KID / precision-recall (domain-classifier features by default,
TF-Inception with ``metrics.feature_extractors=[domain,inception]``), conditional accuracy, and, given a run
trained on clean data, the resilience of the pseudo-Huber paper. Reads ``<run_dir>/samples/<tag>/images.npz``,
writes ``<run_dir>/eval/metrics.json`` and ``<run_dir>/eval/metrics.png``.

The domain classifier is trained on the clean references on first use and cached under
``classifier.cache_dir/<hash>/`` (or loaded from ``classifier.path``). Config: configs/image/evaluate.yaml.
"""

from __future__ import annotations

from robust_gen.launch import start_process

# first, before torch loads: --help prints and exits; idle OpenMP threads sleep; the torch trio is checked
start_process(help_for="image/evaluate")

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from robust_gen.image.eval.classifier import load_domain_classifier
from robust_gen.image.eval.metrics import (
    FeatureCosineSimilarity,
    build_feature_extractors,
    evaluate_run,
    get_or_train_classifier,
    load_references,
)
from robust_gen.training.entry import recipe_main
from robust_gen.training.recipe import register_resolvers

register_resolvers()
log = logging.getLogger(__name__)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation described by ``cfg`` (configs/image/evaluate.yaml) and return the metrics report."""
    device = _device(cfg.device)
    refs_cfg = cfg.references
    references = load_references(refs_cfg.source, refs_cfg.image_size, refs_cfg.max_images, refs_cfg.seed,
                                 crop_margin=refs_cfg.get("crop_margin") or 0)
    clf_cfg = OmegaConf.to_container(cfg.classifier, resolve=True)
    path, cache_dir = clf_cfg.pop("path"), clf_cfg.pop("cache_dir")
    # null settings mean the library default: leave them out, so the cached classifier's key does not change
    clf_cfg = {k: v for k, v in clf_cfg.items() if v is not None}
    if path is not None:
        classifier = load_domain_classifier(path, device)
    else:
        classifier = get_or_train_classifier(references, cache_dir, device=device, **clf_cfg)
    m = cfg.metrics
    extractors = build_feature_extractors(
        list(m.feature_extractors), classifier, inception_weights=m.inception_weights, device=device
    )
    similarity = None
    if cfg.clean_run_dir is not None:
        name = cfg.resilience.feature_extractor
        extractor = (
            extractors.get(name)
            or build_feature_extractors(
                [name], classifier, inception_weights=m.inception_weights, device=device
            )[name]
        )
        similarity = FeatureCosineSimilarity(
            extractor, match_classes=cfg.resilience.match_classes, name=f"{name}_feature_cosine"
        )
    return evaluate_run(
        cfg.run_dir,
        references,
        classifier,
        extractors,
        tag=cfg.tag,
        exclude=list(cfg.exclude),
        clean_run_dir=cfg.clean_run_dir,
        similarity=similarity,
        plot=cfg.plot,
        kid_subset_size=m.kid_subset_size,
        kid_subsets=m.kid_subsets,
        precision_recall=m.precision_recall,
        prc_neighborhood=m.prc_neighborhood,
        batch_size=m.batch_size,
        seed=m.seed,
        progress=bool(cfg.progress),
    )


@recipe_main("image", "evaluate", required=("run_dir",))
def main(cfg: DictConfig, output_dir) -> None:
    report = evaluate(cfg)
    for tag, entry in report["tags"].items():
        log.info(
            "%s: FID %.3f (%s), KID %.5f, conditional accuracy %s, resilience %s",
            tag,
            entry["fid"],
            entry["feature_extractor"],
            entry["kid_mean"],
            entry["conditional_accuracy"],
            entry.get("resilience", {}).get("resilience"),
        )
    log.info("wrote %s/eval/metrics.json", cfg.run_dir)


if __name__ == "__main__":
    main()
