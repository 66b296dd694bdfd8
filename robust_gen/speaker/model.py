"""An offline SpeechBrain ECAPA-TDNN speaker model: build, train, save, load, calibrate.

Speaker similarity (pseudo-Huber paper, Figures 3-4) needs a speaker-embedding network. The usual one,
SpeechBrain's ``speechbrain/spkrec-ecapa-voxceleb``, lives on the Hugging Face hub, which build machines
cannot reach. This module trains a small ECAPA-TDNN (Desplanques et al., 2020) on the embedded espeak-ng
corpus in about a minute on CPU and saves it in the layout ``EncoderClassifier.from_hparams`` loads
without a network:

``hyperparams.yaml``          the modules (Fbank, sentence mean norm, ECAPA, AAM classifier) and the
                              Pretrainer, its ``pretrained_path`` set to this directory
``embedding_model.ckpt``      ECAPA state dict
``classifier.ckpt``           cosine classifier weights (the AAM-softmax head)
``mean_var_norm_emb.ckpt``    global embedding statistics (used by ``encode_batch(normalize=True)``)
``label_encoder.txt``         SpeechBrain ``CategoricalEncoder`` file of the training speakers; the same
                              bytes as ``label_encoder.ckpt``, the name the Pretrainer collects under, so
                              that loading with ``savedir=<this directory>`` never links or writes
``calibration.json``          equal error rate and its threshold on held-out speakers (written by the recipe)
``training.json``             what the model was trained on and how it went

The hyperparameter text is generated once and the training modules are built FROM it with HyperPyYAML,
so training and inference use the same feature pipeline by construction.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robust_gen.speaker.loading import TRAINING_NAME

log = logging.getLogger(__name__)

__all__ = [
    "SpeakerModelSpec",
    "SpeakerTrainingConfig",
    "TrainedSpeakerModel",
    "build_speaker_modules",
    "espeak_training_records",
    "hyperparams_yaml",
    "save_speaker_model",
    "train_speaker_model",
    "training_voices",
]


# ---------------------------------------------------------------------------------------------------
# Architecture and the hyperparams.yaml that describes it.


@dataclass(frozen=True)
class SpeakerModelSpec:
    """Shape of the ECAPA-TDNN speaker model and its features.

    The defaults give ~0.6M parameters (the hub model has 20.8M with 1024 channels): enough to tell
    espeak-ng voices apart, small enough to train on CPU in about a minute.

    Examples
    --------
    >>> SpeakerModelSpec().channels
    (128, 128, 128, 128, 384)
    >>> SpeakerModelSpec(channels=(8, 8, 24))
    Traceback (most recent call last):
    ...
    ValueError: channels, kernel_sizes and dilations must have the same length, got 3, 5, 5
    """

    sample_rate: int = 16000
    n_mels: int = 80
    channels: tuple[int, ...] = (128, 128, 128, 128, 384)
    kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    attention_channels: int = 64
    se_channels: int = 64
    res2net_scale: int = 8
    lin_neurons: int = 192

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "kernel_sizes", tuple(int(k) for k in self.kernel_sizes))
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        lengths = (len(self.channels), len(self.kernel_sizes), len(self.dilations))
        if len(set(lengths)) != 1:
            raise ValueError(
                "channels, kernel_sizes and dilations must have the same length, got "
                + ", ".join(map(str, lengths))
            )
        for name in ("sample_rate", "n_mels", "attention_channels", "se_channels", "lin_neurons"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if any(c % self.res2net_scale for c in self.channels[1:-1]):
            raise ValueError(f"the middle channels {self.channels[1:-1]} must be divisible by res2net_scale")

    @classmethod
    def tiny(cls) -> SpeakerModelSpec:
        """A ~13k-parameter model for tests and examples: the real classes, a fraction of the size.

        Examples
        --------
        >>> SpeakerModelSpec.tiny().lin_neurons
        16
        """
        return cls(
            n_mels=20, channels=(16, 16, 48), kernel_sizes=(5, 3, 1), dilations=(1, 2, 1),
            attention_channels=8, se_channels=8, res2net_scale=4, lin_neurons=16,
        )  # fmt: skip


def hyperparams_yaml(spec: SpeakerModelSpec, num_speakers: int, model_dir: str | os.PathLike) -> str:
    """The ``hyperparams.yaml`` text of a local speaker model (same keys as the hub ECAPA model).

    ``pretrained_path`` is the absolute ``model_dir``, so the Pretrainer's paths name local files, never
    a hub id. :func:`load_speaker_encoder` overrides it with the directory actually loaded, so a moved
    directory keeps working.

    Examples
    --------
    >>> text = hyperparams_yaml(SpeakerModelSpec(), 10, "/models/spk")
    >>> 'pretrained_path: "/models/spk"' in text and "out_n_neurons: 10" in text
    True
    """
    if num_speakers < 2:
        raise ValueError(f"a speaker classifier needs at least 2 speakers, got {num_speakers}")
    directory = Path(model_dir).absolute().as_posix()
    s = spec
    return f"""# Offline ECAPA-TDNN speaker model written by robust_gen (recipes/speaker/train.py).
# Load: speechbrain.inference.speaker.EncoderClassifier.from_hparams(source=<dir>, savedir=<dir>)
sample_rate: {s.sample_rate}
n_mels: {s.n_mels}
emb_dim: {s.lin_neurons}
out_n_neurons: {num_speakers}
pretrained_path: {json.dumps(directory)}

compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
    sample_rate: !ref <sample_rate>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {list(s.channels)}
    kernel_sizes: {list(s.kernel_sizes)}
    dilations: {list(s.dilations)}
    attention_channels: {s.attention_channels}
    se_channels: {s.se_channels}
    res2net_scale: {s.res2net_scale}
    lin_neurons: !ref <emb_dim>

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: !ref <emb_dim>
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer
    sample_rate: !ref <sample_rate>

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def build_speaker_modules(hparams_text: str) -> dict:
    """Instantiate the objects of a ``hyperparams.yaml`` text (HyperPyYAML), as inference will.

    Examples
    --------
    >>> hparams = build_speaker_modules(hyperparams_yaml(SpeakerModelSpec.tiny(), 3, "/tmp/m"))
    >>> hparams["embedding_model"](torch.randn(2, 50, 20)).shape
    torch.Size([2, 1, 16])
    """
    from hyperpyyaml import load_hyperpyyaml

    return load_hyperpyyaml(hparams_text)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------
# Training data: the embedded espeak-ng corpus, optionally with more voices.


def training_voices(extra_voices: Sequence[dict] = ()) -> tuple:
    """:data:`DEFAULT_VOICES` plus extra ``{speaker, voice, rate, pitch, pitch_range}`` voices.

    The held-out voices must stay unseen, so an extra voice may not reuse a held-out speaker id, voice
    name or formant variant (the part after ``+``, which sets the timbre).

    Examples
    --------
    >>> len(training_voices([{"speaker": "x_m5", "voice": "en-us+m5"}]))
    11
    >>> training_voices([{"speaker": "x_f5", "voice": "en-gb-x-rp+f5"}])
    Traceback (most recent call last):
    ...
    ValueError: extra voice x_f5 (en-gb-x-rp+f5) reuses variant 'f5' of held-out voice us_f5; held-out voices must stay unseen
    """
    from robust_gen.speech.data.corpus import DEFAULT_VOICES, HELD_OUT_VOICES, VoiceSpec

    extras = tuple(VoiceSpec(**dict(v)) for v in extra_voices)
    held_out = {v.voice.partition("+")[2].lower(): v for v in HELD_OUT_VOICES}
    held_ids = {v.speaker for v in HELD_OUT_VOICES} | {v.voice.lower() for v in HELD_OUT_VOICES}
    for voice in extras:
        variant = voice.voice.partition("+")[2].lower()
        if voice.speaker in held_ids or voice.voice.lower() in held_ids:
            raise ValueError(f"extra voice {voice.speaker} ({voice.voice}) is a held-out voice")
        if variant in held_out:
            raise ValueError(
                f"extra voice {voice.speaker} ({voice.voice}) reuses variant {variant!r} of held-out voice "
                f"{held_out[variant].speaker}; held-out voices must stay unseen"
            )
    voices = DEFAULT_VOICES + extras
    speakers = [v.speaker for v in voices]
    if len(set(speakers)) != len(speakers):
        raise ValueError(f"training speaker ids must be unique, got duplicates in {speakers}")
    return voices


def espeak_training_records(
    utterances_per_voice: int = 40,
    extra_voices: Sequence[dict] = (),
    extra_utterances_per_voice: int = 16,
    seed: int = 0,
    *,
    root: str | os.PathLike | None = None,
    check_voices: bool = True,
) -> list[dict]:
    """Records of the embedded corpus (:data:`DEFAULT_VOICES`, the TTS recipe's default) plus a corpus of
    ``extra_voices`` (more speakers make the embedding generalize to unseen voices).

    Both corpora are cached (``root/default`` and ``root/extra`` when ``root`` is given, else in the
    robust_gen cache, shared with the TTS recipe); ``check_voices`` runs espeak-ng's distinctness check.

    Examples
    --------
    >>> import tempfile
    >>> records = espeak_training_records(1, [{"speaker": "x_m5", "voice": "en-us+m5"}], 1,
    ...                                   root=tempfile.mkdtemp(), check_voices=False)
    >>> len(records), records[-1]["speaker"]
    (11, 'x_m5')
    """
    from robust_gen.speech.data.corpus import DEFAULT_VOICES, synthesize_corpus
    from robust_gen.speech.data.filelists import read_filelist

    voices = training_voices(extra_voices)
    extras = voices[len(DEFAULT_VOICES) :]
    folder = Path(root) if root is not None else None
    filelist = synthesize_corpus(
        folder / "default" if folder else None,
        utterances_per_voice=utterances_per_voice,
        seed=seed,
        check_voices=check_voices,
    )
    records = list(read_filelist(filelist))
    if extras:
        filelist = synthesize_corpus(
            folder / "extra" if folder else None,
            voices=extras,
            utterances_per_voice=extra_utterances_per_voice,
            seed=seed,
            check_voices=check_voices,
        )
        records += read_filelist(filelist)
    return records


# ---------------------------------------------------------------------------------------------------
# Training.


@dataclass(frozen=True)
class SpeakerTrainingConfig:
    """How :func:`train_speaker_model` trains (AAM-softmax, Deng et al. 2019, as in SpeechBrain's recipe).

    Examples
    --------
    >>> SpeakerTrainingConfig(steps=0)
    Traceback (most recent call last):
    ...
    ValueError: steps must be a positive integer, got 0
    """

    steps: int = 160
    batch_size: int = 32
    crop_seconds: float = 1.5
    lr: float = 2e-3
    weight_decay: float = 2e-5
    warmup_steps: int = 10
    margin: float = 0.2  # additive angular margin (radians)
    scale: float = 30.0  # logit scale of the cosine classifier
    noise_prob: float = 0.3  # chance that a crop gets white noise, to survive vocoder artefacts
    snr_db: tuple[float, float] = (10.0, 40.0)
    norm_utterances_per_speaker: int = 8  # utterances that estimate the embedding statistics
    seed: int = 0
    log_every: int = 20

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.crop_seconds <= 0.2:
            raise ValueError(f"crop_seconds must exceed 0.2 s, got {self.crop_seconds}")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must lie in [0, 1], got {self.noise_prob}")
        object.__setattr__(self, "snr_db", tuple(float(v) for v in self.snr_db))


@dataclass
class TrainedSpeakerModel:
    """Result of :func:`train_speaker_model`: the modules, the hyperparameter text and training facts."""

    hparams_text: str
    modules: dict
    speakers: list[str]
    spec: SpeakerModelSpec
    facts: dict = field(default_factory=dict)


def _load_training_audio(records: Sequence[dict], sample_rate: int) -> tuple[list[torch.Tensor], list[str]]:
    from robust_gen.speech.data.audio import is_silent, load_audio

    waves, speakers = [], []
    for record in records:
        wav = load_audio(record["path"], sample_rate)
        if is_silent(wav):
            log.warning("speaker training: skipping silent file %s", record["path"])
            continue
        waves.append(wav)
        speakers.append(str(record["speaker"]))
    return waves, speakers


def _random_crops(
    waves: list[torch.Tensor], indices: torch.Tensor, crop: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``crop``-sample random windows (shorter clips zero-padded) and relative lengths."""
    batch = torch.zeros(len(indices), crop)
    lengths = torch.ones(len(indices))
    for row, index in enumerate(indices.tolist()):
        wav = waves[index]
        if wav.numel() > crop:
            start = int(torch.randint(0, wav.numel() - crop + 1, (1,), generator=generator))
            batch[row] = wav[start : start + crop]
        else:
            batch[row, : wav.numel()] = wav
            lengths[row] = wav.numel() / crop
    return batch, lengths


def _add_noise(
    batch: torch.Tensor, config: SpeakerTrainingConfig, generator: torch.Generator
) -> torch.Tensor:
    """White noise at a random SNR on a random subset of the crops (data augmentation)."""
    chosen = torch.rand(batch.shape[0], generator=generator) < config.noise_prob
    if not chosen.any():
        return batch
    low, high = config.snr_db
    snr = low + (high - low) * torch.rand(batch.shape[0], generator=generator)
    power = batch.pow(2).mean(dim=1).clamp_min(1e-10)
    noise_std = (power / 10 ** (snr / 10)).sqrt() * chosen
    return batch + noise_std[:, None] * torch.randn(batch.shape, generator=generator)


def _lr_factor(step: int, config: SpeakerTrainingConfig) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_speaker_model(
    records: Sequence[dict],
    spec: SpeakerModelSpec = SpeakerModelSpec(),
    config: SpeakerTrainingConfig = SpeakerTrainingConfig(),
    *,
    model_dir: str | os.PathLike = "model",
    progress: bool = False,
) -> TrainedSpeakerModel:
    """Train an ECAPA-TDNN with AAM-softmax on ``records`` (``{"path", "speaker"}`` dicts) on CPU.

    Each step draws ``batch_size`` speakers uniformly (then one of their utterances and a random
    ``crop_seconds`` window), so speakers with more data do not dominate. Features come from the
    same ``Fbank`` + sentence mean normalization that inference runs.

    Parameters
    ----------
    records : sequence of dict
        Training utterances with ``path`` and ``speaker`` keys (e.g. from ``read_filelist``).
    spec : SpeakerModelSpec
        Architecture.
    config : SpeakerTrainingConfig
        Optimization settings.
    model_dir : str or PathLike
        Where the model will be saved (written into ``pretrained_path``; nothing is written here).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    TrainedSpeakerModel
        Pass to :func:`save_speaker_model`.

    Examples
    --------
    >>> import tempfile
    >>> from robust_gen.speech.data.corpus import DEFAULT_VOICES, synthesize_corpus
    >>> from robust_gen.speech.data.filelists import read_filelist
    >>> folder = tempfile.mkdtemp()
    >>> records = read_filelist(synthesize_corpus(f"{folder}/corpus", voices=DEFAULT_VOICES[:2],
    ...                                           utterances_per_voice=2, check_voices=False))
    >>> config = SpeakerTrainingConfig(steps=2, batch_size=4, crop_seconds=0.5, warmup_steps=1)
    >>> trained = train_speaker_model(records, SpeakerModelSpec.tiny(), config, model_dir=f"{folder}/model")
    >>> trained.speakers, trained.facts["steps"]
    (['gb_m2', 'us_m1'], 2)
    >>> model_dir = save_speaker_model(trained, f"{folder}/model")
    >>> sorted(p.name for p in model_dir.iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['classifier.ckpt', 'embedding_model.ckpt', 'hyperparams.yaml', 'label_encoder.ckpt',
     'label_encoder.txt', 'mean_var_norm_emb.ckpt', 'training.json']
    >>> from robust_gen.speaker.loading import encoder_sample_rate, load_speaker_encoder
    >>> encoder_sample_rate(load_speaker_encoder(model_dir))
    16000
    """
    from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
    from tqdm.auto import tqdm

    started = time.perf_counter()
    waves, utterance_speakers = _load_training_audio(records, spec.sample_rate)
    speakers = sorted(set(utterance_speakers))
    if len(speakers) < 2:
        raise ValueError(f"speaker training needs at least 2 speakers with audio, got {speakers}")
    load_seconds = time.perf_counter() - started
    torch.manual_seed(config.seed)  # the weight initialization happens while the modules are built
    hparams = build_speaker_modules(hyperparams_yaml(spec, len(speakers), model_dir))
    label_encoder = hparams["label_encoder"]
    label_encoder.update_from_iterable(speakers)
    label_encoder.expect_len(len(speakers))
    by_speaker = [
        torch.tensor([i for i, s in enumerate(utterance_speakers) if s == speaker]) for speaker in speakers
    ]
    features, sentence_norm = hparams["compute_features"], hparams["mean_var_norm"]
    embedder, classifier = hparams["embedding_model"], hparams["classifier"]
    loss_fn = LogSoftmaxWrapper(AdditiveAngularMargin(margin=config.margin, scale=config.scale))
    parameters = [*embedder.parameters(), *classifier.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    generator = torch.Generator().manual_seed(config.seed)
    crop = round(config.crop_seconds * spec.sample_rate)
    embedder.train()
    classifier.train()
    history = []
    bar = tqdm(range(config.steps), desc="speaker model", disable=not progress)
    for step in bar:
        targets = torch.randint(0, len(speakers), (config.batch_size,), generator=generator)
        picks = torch.stack(
            [
                by_speaker[t][torch.randint(0, len(by_speaker[t]), (1,), generator=generator)][0]
                for t in targets
            ]
        )
        batch, lengths = _random_crops(waves, picks, crop, generator)
        batch = _add_noise(batch, config, generator)
        with torch.no_grad():
            feats = sentence_norm(features(batch), lengths)
        embeddings = embedder(feats, lengths)
        logits = classifier(embeddings)  # cosines [B, 1, S]
        loss = loss_fn(logits, targets[:, None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        optimizer.step()
        scheduler.step()
        accuracy = float((logits.squeeze(1).argmax(dim=1) == targets).float().mean())
        history.append((float(loss.detach()), accuracy))
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            recent = history[-config.log_every :]
            mean_loss = sum(h[0] for h in recent) / len(recent)
            mean_acc = sum(h[1] for h in recent) / len(recent)
            log.info(
                "speaker model step %d/%d: loss %.3f, accuracy %.3f",
                step + 1,
                config.steps,
                mean_loss,
                mean_acc,
            )
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{mean_acc:.2f}")
    embedder.eval()
    classifier.eval()
    _fit_embedding_statistics(hparams, waves, by_speaker, config.norm_utterances_per_speaker)
    tail = history[-config.log_every :]
    facts = {
        "num_speakers": len(speakers),
        "num_utterances": len(waves),
        "num_parameters": count_parameters(embedder),
        "steps": config.steps,
        "final_loss": sum(h[0] for h in tail) / len(tail),
        "final_accuracy": sum(h[1] for h in tail) / len(tail),
        "load_seconds": round(load_seconds, 2),
        "train_seconds": round(time.perf_counter() - started - load_seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "spec": asdict(spec),
        "config": asdict(config),
    }
    return TrainedSpeakerModel(
        hyperparams_yaml(spec, len(speakers), model_dir), hparams, speakers, spec, facts
    )


@torch.no_grad()
def _fit_embedding_statistics(hparams: dict, waves, by_speaker, per_speaker: int) -> None:
    """Estimate ``mean_var_norm_emb``'s global mean from whole training utterances (eval-mode ECAPA),
    one zero-padded batch per speaker with relative lengths, as inference embeds them."""
    norm = hparams["mean_var_norm_emb"]
    norm.train()
    for indices in by_speaker:
        batch = [waves[i] for i in indices[:per_speaker].tolist()]
        lengths = torch.tensor([w.numel() for w in batch], dtype=torch.float64)
        padded = torch.zeros(len(batch), int(lengths.max()))
        for row, wav in enumerate(batch):
            padded[row, : wav.numel()] = wav
        relative = (lengths / lengths.max()).float()
        feats = hparams["mean_var_norm"](hparams["compute_features"](padded), relative)
        embeddings = hparams["embedding_model"](feats, relative)
        norm(embeddings, torch.ones(len(batch)))
    norm.eval()


def save_speaker_model(trained: TrainedSpeakerModel, model_dir: str | os.PathLike) -> Path:
    """Write ``trained`` to ``model_dir`` in the layout of :mod:`robust_gen.speaker.model`; return
    the directory.

    The files are written into a hidden sibling folder that replaces ``model_dir`` only when complete,
    so a reader never sees half a model. Each object is saved with SpeechBrain's own checkpoint save
    hook, the counterpart of the load hook the Pretrainer calls.
    """
    from speechbrain.utils.checkpoints import DEFAULT_SAVE_HOOKS, get_default_hook

    model_dir = Path(model_dir).absolute()
    expected = f"pretrained_path: {json.dumps(model_dir.as_posix())}"
    if expected not in trained.hparams_text:
        raise ValueError(f"the model was trained for another directory; train it with model_dir={model_dir}")
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    building = model_dir.parent / f".{model_dir.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    building.mkdir()
    try:
        (building / "hyperparams.yaml").write_text(trained.hparams_text, encoding="utf-8")
        for name, filename in (
            ("embedding_model", "embedding_model.ckpt"),
            ("mean_var_norm_emb", "mean_var_norm_emb.ckpt"),
            ("classifier", "classifier.ckpt"),
            ("label_encoder", "label_encoder.txt"),
        ):
            obj = trained.modules[name]
            get_default_hook(obj, DEFAULT_SAVE_HOOKS)(obj, building / filename)
        shutil.copyfile(building / "label_encoder.txt", building / "label_encoder.ckpt")
        facts = {**trained.facts, "speakers": trained.speakers}
        (building / TRAINING_NAME).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
        if model_dir.exists():
            outdated = model_dir.parent / f".{model_dir.name}.outdated-{uuid.uuid4().hex[:8]}"
            model_dir.rename(outdated)
            building.rename(model_dir)
            shutil.rmtree(outdated, ignore_errors=True)
        else:
            building.rename(model_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return model_dir
