"""The papers' studies as data: for each, the recipe and config overlays of its sweep and the layout of its report.

Adding a study is one entry here plus its overlay in ``configs/<recipe>/experiment/``.

Examples
--------
>>> STUDIES["huber_speech"].recipe, STUDIES["huber_image"].overlays
('tts', ('huber_image', 'huber_image_schedules', 'huber_image_delta'))
>>> STUDIES["slight_label"].hue
('cep.kind',)
>>> STUDIES["slight_label"].claims[0].treatment, STUDIES["slight_label"].claims[0].better
('uniform', 'lower')
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robust_gen.experiments.paired import Claim

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
    ``claims``: the papers' claims the study tests, as paired comparisons (:class:`~robust_gen.experiments.paired.Claim`;
    the report states each as "the paper says X; here the paired difference is Y [CI]; verdict").
    ``guidance_metrics``: ``eval.best.*`` keys also shown at every guidance scale the runs were sampled at (a
    curve per setting, and the claims judged at each fixed scale), for studies whose headline is the best scale
    of a sweep: where the best scale moves between settings, best-against-best and same-scale comparisons differ.
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
    claims: tuple[Claim, ...] = ()
    guidance_metrics: tuple[str, ...] = ()

    @property
    def hue(self) -> tuple[str, ...]:
        return tuple(k for k in self.by if k != self.x)


_FID = ("eval.best.fid", "eval.best.kid_mean", "eval.best.precision", "eval.best.recall")
_RATIO = ("corruption.ratio",)
_GUIDED = ("eval.best.fid", "eval.best.conditional_accuracy")


def _cep_claims(data: str) -> tuple[Claim, ...]:
    """Chen et al. 2024's claims: CEP improves FID at every corruption level, and slight corruption beats clean."""
    return (
        Claim(f"CEP-U lowers FID ({data}; LDM-4 on ImageNet-1K: 9.44 -> 7.00)", "eval.best.fid", "cep.kind",
              "uniform", "none", across=_RATIO),
        Claim(f"CEP-G lowers FID ({data}; LDM-4 on ImageNet-1K: 9.44 -> 6.91)", "eval.best.fid", "cep.kind",
              "gaussian", "none", across=_RATIO),
        Claim("slight corruption (2.5 %) lowers FID against clean data (LDM-4: 10.12 -> 8.98 at 150K steps)",
              "eval.best.fid", "corruption.ratio", 0.025, 0.0, where={"cep.kind": "none"}),
        Claim("slight corruption (5 %, eta <= 7.5 %) lowers FID against clean data", "eval.best.fid",
              "corruption.ratio", 0.05, 0.0, where={"cep.kind": "none"}),
    )


_RESILIENCE = "eval.best.resilience.resilience"
STUDIES: dict[str, StudySpec] = {
    "slight_label": StudySpec(
        "Slight corruption, class labels (Chen et al. 2024)",
        by=("corruption.ratio", "cep.kind"), x="corruption.ratio", x_scale=100.0, xlabel="label flips eta (%)",
        metrics=(*_FID, "eval.best.conditional_accuracy", "eval.best.guidance_scale"),
        notes="eval.best.*: the sample tag (guidance scale) of lowest FID per run, as the paper reports the best "
        "guidance scale of a sweep. FID/KID on the domain classifier's features (offline), not Inception.",
        recipe="image", overlays=('slight_label',), guidance_metrics=_GUIDED,
        claims=_cep_claims("class labels"),
    ),
    "slight_caption": StudySpec(
        "Slight corruption, captions (Chen et al. 2024)",
        by=("corruption.ratio", "cep.kind"), x="corruption.ratio", x_scale=100.0, xlabel="caption swaps eta (%)",
        metrics=(*_FID, "eval.best.conditional_accuracy", "eval.best.guidance_scale", "manifest.effective_ratio"),
        notes="Text-conditional; eval.best.* as for the label study. Conditional accuracy: the domain classifier "
        "finds the digit the caption names (the offline stand-in for a CLIP score). manifest.effective_ratio: the "
        "share of samples whose swapped caption names another digit (a swap between two captions of one digit "
        "changes nothing), beside the nominal ratio.",
        recipe="image", overlays=('slight_caption',), guidance_metrics=_GUIDED,
        claims=_cep_claims("captions"),
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
        claims=(
            Claim("scheduled pseudo-Huber (snr) is more resilient than L2 (1 - LPIPS at 30 %: -0.001 vs -0.005)",
                  _RESILIENCE, "loss.method", "pseudo_huber:snr", "l2", better="higher", across=_RATIO),
            Claim("scheduled pseudo-Huber (snr) at the paper's delta 0.01 is more resilient than L2", _RESILIENCE, "loss.method", "pseudo_huber:snr,c_min=0.01",
                  "l2", better="higher", across=_RATIO),
            Claim("scheduled pseudo-Huber (snr) in the corrected form (on each sample's whole residual) at delta 0.01 is "
                  "more resilient than L2", _RESILIENCE,
                  "loss.method", "pseudo_huber:snr,form=vector,c_min=0.01", "l2", better="higher", across=_RATIO),
            Claim("the corrected form (on each sample's whole residual) is more resilient than the reference "
                  "scripts' per-element form (Fig. 5, delta 0.01)", _RESILIENCE, "loss.method",
                  "pseudo_huber:snr,form=vector,c_min=0.01", "pseudo_huber:snr,c_min=0.01", better="higher",
                  across=_RATIO),
            Claim("scheduled pseudo-Huber keeps more samples on the concept than L2 (the paper's 'robust to "
                  "outliers'; share of samples the classifier calls the concept, delta 0.01, corrected form)",
                  "eval.best.conditional_accuracy", "loss.method", "pseudo_huber:snr,form=vector,c_min=0.01", "l2",
                  better="higher", across=_RATIO),
            Claim("scheduled pseudo-Huber in the reference scripts' form at delta 0.01 keeps more samples on the "
                  "concept than L2", "eval.best.conditional_accuracy",
                  "loss.method", "pseudo_huber:snr,c_min=0.01", "l2", better="higher", across=_RATIO),
            Claim("the backwards exponential schedule (small delta near the data) is less resilient than snr",
                  _RESILIENCE, "loss.method", "pseudo_huber:exponential_backwards", "pseudo_huber:snr",
                  better="lower", across=_RATIO),
        ),
    ),
    "huber_speech": StudySpec(
        "Scheduled pseudo-Huber, speech: target speaker contaminated by another (Khrapov et al. 2024)",
        by=("corruption.ratio", "loss.method"), x="corruption.ratio", x_scale=100.0, xlabel="contamination (%)",
        metrics=("speaker_sim.last.mean", "speaker_sim.ceiling.mean", "speaker_sim.last.similarity_to.*",
                 "speaker_sim.last.identified", "speaker_sim.last.resilience", "speaker_sim.last.below.0.25",
                 "speaker_sim.last.rms_dbfs_median", "speaker_sim.last.no_speech", "speaker_sim.mean",
                 "speaker_sim.last.step"),
        series_metrics=("speaker_sim.mean",),
        notes="speaker_sim.last.*: at the last evaluated step, the speaker similarity of the synthesized speech to "
        "the target's recordings (resilience: minus the ratio-0 run's); ceiling.mean: the vocoded-real ceiling "
        "(held-out real utterances of the target through log-mel and the recipe's vocoder, against the other "
        "references): what a perfect acoustic model would score; similarity_to.<speaker>: similarity to the "
        "contaminant's recordings (us_m1 in the CPU overlay); identified: share of samples whose nearest voice "
        "among every corpus voice is the target; rms_dbfs_median: median level (dBFS); no_speech: samples that "
        "fail the speech-activity check (flagged, still scored); speaker_sim.mean: over every evaluated step; "
        "below.0.25: samples under the VoxCeleb model's threshold (other thresholds in the CSV); series plot: "
        "similarity over training iterations.",
        recipe="tts", overlays=('huber_speech',),
        claims=(
            Claim("scheduled pseudo-Huber keeps the synthesized speech closer to the target speaker than L2",
                  "speaker_sim.last.mean", "loss.method", "pseudo_huber:snr", "l2", better="higher", across=_RATIO),
        ),
    ),
    "conditioning": StudySpec(
        "Entangled vs disentangled control metadata (Berrada et al. 2024)",
        by=("control.mode",), x="control.mode",
        metrics=("eval.centred.conditional_accuracy", "eval.shifted.conditional_accuracy",
                 "eval.shift_drop.conditional_accuracy", "eval.centred.fid", "eval.shifted.fid"),
        notes="Samples with the centred crop condition (tag centred) and with a shifted crop (tag shifted): "
        "a drop of conditional accuracy under the shifted crop means the crop condition changes the class "
        "(eval.shift_drop.*: centred minus shifted within each run).",
        bar_groups=(("eval.centred.conditional_accuracy", "eval.shifted.conditional_accuracy"),
                    ("eval.centred.fid", "eval.shifted.fid")),
        recipe="image", overlays=('conditioning',),
        claims=(
            Claim("disentangled control keeps the class when the crop condition moves (higher accuracy under the "
                  "shifted crop than entangled)", "eval.shifted.conditional_accuracy", "control.mode",
                  "disentangled", "entangled", better="higher"),
            Claim("disentangled control loses less conditional accuracy than entangled when the crop condition "
                  "moves (the drop from the centred to the shifted crop within each run)",
                  "eval.shift_drop.conditional_accuracy", "control.mode", "disentangled", "entangled",
                  better="lower"),
            Claim("disentangled control lowers FID (ImageNet-1k: -7 % at 256 px, -8 % at 512)", "eval.centred.fid",
                  "control.mode", "disentangled", "entangled", better="lower"),
        ),
    ),
}  # fmt: skip
