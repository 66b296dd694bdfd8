"""The papers' studies as data: for each, the recipe and config overlays of its sweep and the layout of its report.

Adding a study is one entry here plus its overlay in ``configs/<recipe>/experiment/``.

Examples
--------
>>> STUDIES["huber_speech"].recipe, STUDIES["huber_image"].overlays
('tts', ('huber_image', 'huber_image_schedules', 'huber_image_delta'))
>>> STUDIES["slight_label"].hue
('cep.kind',)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["STUDIES", "StudySpec"]


@dataclass(frozen=True)
class StudySpec:
    """What a study's report shows.

    ``by``: the method and setting keys a table row stands for (seeds are aggregated); ``x``: the plot's x axis
    (one of ``by``); ``metrics``: result keys tabulated and plotted against ``x``; ``series_metrics``: per-step
    keys plotted against the training step (:func:`read_run_series`); ``x_scale``: 100 shows ratios in percent;
    ``bar_groups``: for a categorical ``x``, metrics drawn side by side as grouped bars (one PNG per group).
    ``recipe`` and ``overlays``: the recipe whose ``configs/<recipe>/experiment/<overlay>.yaml`` overlays make
    the sweep, run one after the other into the same sweep folder (``<overlay>_paper`` at paper scale).
    """

    title: str
    by: tuple[str, ...]
    x: str
    metrics: tuple[str, ...]
    series_metrics: tuple[str, ...] = ()
    x_scale: float = 1.0
    xlabel: str = ""
    notes: str = ""
    extra_by: tuple[str, ...] = field(default=())
    bar_groups: tuple[tuple[str, ...], ...] = ()
    recipe: str = "image"
    overlays: tuple[str, ...] = ()

    @property
    def hue(self) -> tuple[str, ...]:
        return tuple(k for k in self.by if k != self.x)


_FID = ("eval.best.fid", "eval.best.kid_mean", "eval.best.precision", "eval.best.recall")
STUDIES: dict[str, StudySpec] = {
    "slight_label": StudySpec(
        "Slight corruption, class labels (Chen et al. 2024)",
        by=("corruption.ratio", "cep.kind"), x="corruption.ratio", x_scale=100.0, xlabel="label flips eta (%)",
        metrics=(*_FID, "eval.best.conditional_accuracy", "eval.best.guidance_scale"),
        notes="eval.best.*: the sample tag (guidance scale) of lowest FID per run, as the paper reports the best "
        "guidance scale of a sweep. FID/KID on the domain classifier's features (offline), not Inception.",
        recipe="image", overlays=('slight_label',),
    ),
    "slight_caption": StudySpec(
        "Slight corruption, captions (Chen et al. 2024)",
        by=("corruption.ratio", "cep.kind"), x="corruption.ratio", x_scale=100.0, xlabel="caption swaps eta (%)",
        metrics=(*_FID, "eval.best.conditional_accuracy", "eval.best.guidance_scale"),
        notes="Text-conditional; eval.best.* as for the label study. Conditional accuracy: the domain classifier "
        "finds the digit the caption names (the offline stand-in for a CLIP score).",
        recipe="image", overlays=('slight_caption',),
    ),
    "huber_image": StudySpec(
        "Scheduled pseudo-Huber, images: one concept with off-topic outliers (Khrapov et al. 2024)",
        by=("corruption.ratio", "loss.method"), x="corruption.ratio", x_scale=100.0, xlabel="outliers (%)",
        metrics=("eval.best.resilience.resilience", "eval.best.resilience.similarity_corrupted",
                 "eval.best.resilience.similarity_clean", "eval.best.fid", "eval.best.conditional_accuracy"),
        notes="resilience = similarity(samples, clean refs) - the clean-data run's similarity (closer to 0 is "
        "better), domain-classifier feature cosine in place of CLIP / 1 - LPIPS; FID and similarity against the "
        "concept's own references; conditional accuracy: the share of samples the classifier calls the concept.",
        recipe="image", overlays=('huber_image', 'huber_image_schedules', 'huber_image_delta'),
    ),
    "huber_speech": StudySpec(
        "Scheduled pseudo-Huber, speech: target speaker contaminated by another (Khrapov et al. 2024)",
        by=("corruption.ratio", "loss.method"), x="corruption.ratio", x_scale=100.0, xlabel="contamination (%)",
        metrics=("speaker_sim.last.mean", "speaker_sim.last.resilience", "speaker_sim.last.below.0.25",
                 "speaker_sim.mean", "speaker_sim.last.step"),
        series_metrics=("speaker_sim.mean",),
        notes="speaker_sim.last.*: speaker similarity of the synthesized speech to the target's recordings at the "
        "last evaluated step (resilience: minus the ratio-0 run's); speaker_sim.mean: over every evaluated step; "
        "below.0.25: samples under the VoxCeleb model's threshold (other thresholds in the CSV); series plot: "
        "similarity over training iterations.",
        recipe="tts", overlays=('huber_speech',),
    ),
    "conditioning": StudySpec(
        "Entangled vs disentangled control metadata (Berrada et al. 2024)",
        by=("control.mode",), x="control.mode",
        metrics=("eval.centred.conditional_accuracy", "eval.shifted.conditional_accuracy",
                 "eval.centred.fid", "eval.shifted.fid"),
        notes="Samples with the centred crop condition (tag centred) and with a shifted crop (tag shifted): "
        "a drop of conditional accuracy under the shifted crop means the crop condition changes the class.",
        bar_groups=(("eval.centred.conditional_accuracy", "eval.shifted.conditional_accuracy"),
                    ("eval.centred.fid", "eval.shifted.fid")),
        recipe="image", overlays=('conditioning',),
    ),
}  # fmt: skip
