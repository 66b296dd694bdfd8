"""Vocoders: log-mel ``[B, n_mels, T]`` -> waveform ``[B, T * hop]``.

* :class:`SpeechBrainHifiGan`: a pretrained HiFi-GAN loaded through SpeechBrain's own loader,
  ``speechbrain.inference.vocoders.HIFIGAN.from_hparams(source=...)``, where ``source`` is a hub id (e.g.
  ``speechbrain/tts-hifigan-ljspeech``, needs the network) or a local folder holding ``hyperparams.yaml`` and
  ``generator.ckpt`` (:func:`write_local_hifigan` writes one). HiFi-GAN and Grad-TTS share the mel definition of
  :mod:`robust_gen.speech.data.mel`, so a HiFi-GAN trained on those features reads Grad-TTS's output directly.
* :class:`GriffinLimVocoder`: no weights at all. It inverts the mel filterbank (least squares,
  ``torchaudio.transforms.InverseMelScale`` with the same Slaney filterbank) and recovers a phase by Griffin-Lim
  (``torchaudio.transforms.GriffinLim`` with the same STFT settings). Robotic but intelligible on real mels; the
  offline default.

:func:`build_vocoder` picks one from a config: HiFi-GAN when a source is given, Griffin-Lim otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from robust_gen.speech.data.mel import MelConfig

__all__ = [
    "GriffinLimVocoder",
    "SpeechBrainHifiGan",
    "build_vocoder",
    "limit_level",
    "validate_vocoder_config",
    "write_local_hifigan",
    "zero_padding_like_original",
]

#: How a HiFi-GAN's "same" convolutions pad: SpeechBrain's reflection, or zeros as the original HiFi-GAN.
HIFIGAN_PADDINGS = ("reflect", "zeros")

#: Log-mel values above this are clipped before inversion: exp() of a diverged sample would overflow.
MAX_LOG_MEL = 6.0


#: :func:`limit_level`: block length (samples), the quantile of the blocks' peaks that sets the level, and the
#: value that quantile is brought down to (-6 dBFS: louder blocks up to twice as loud pass unclipped).
LEVEL_BLOCK, LEVEL_QUANTILE, LEVEL_TARGET = 1024, 0.8, 0.5


def limit_level(wav: torch.Tensor) -> torch.Tensor:
    """Bring waveforms ``[B, samples]`` into [-1, 1] by a robust level, not by their single largest sample.

    Each row is cut into blocks of ``LEVEL_BLOCK`` samples; the ``LEVEL_QUANTILE`` quantile of the blocks'
    peaks is the row's level. A row is scaled down (never up) so that this level is at most ``LEVEL_TARGET``,
    then clipped to [-1, 1]. A burst covering less than a fifth of the file (a diverged frame, a click
    60 dB over the speech) is clipped instead of setting the level: scaling by the peak let such a burst
    push the speech down to -70 dBFS.

    Examples
    --------
    >>> speech = 0.5 * torch.sin(torch.arange(22050) / 5.0)
    >>> speech[-2205:] = 40.0  # a 100-ms burst far over full scale
    >>> out = limit_level(speech[None])[0]
    >>> round(float(out[:1000].abs().max()), 3), float(out.abs().max())
    (0.5, 1.0)
    >>> round(float(limit_level(4 * speech[None, :4096]).abs().max()), 3)  # loud throughout: to 0.5
    0.5
    """
    blocks = torch.nn.functional.pad(wav.abs().float(), (0, -wav.shape[-1] % LEVEL_BLOCK))
    peaks = blocks.reshape(*wav.shape[:-1], -1, LEVEL_BLOCK).amax(dim=-1)
    reference = peaks.quantile(LEVEL_QUANTILE, dim=-1, keepdim=True)
    scale = (LEVEL_TARGET / reference.clamp(min=1e-12)).clamp(max=1.0)
    return (wav * scale).clamp(-1.0, 1.0)


def _fit_length(wav: torch.Tensor, frames: int, hop_length: int) -> torch.Tensor:
    """Trim or zero-pad ``[B, samples]`` to exactly ``frames * hop_length`` samples."""
    target = frames * hop_length
    if wav.shape[-1] >= target:
        return wav[..., :target]
    return torch.nn.functional.pad(wav, (0, target - wav.shape[-1]))


class GriffinLimVocoder:
    """Mel inversion by least squares plus Griffin-Lim phase recovery, matching ``mel_config``.

    Parameters
    ----------
    mel_config:
        The features' parameters (:class:`~robust_gen.speech.data.mel.MelConfig`).
    n_iter:
        Griffin-Lim iterations (32 is torchaudio's default; more is cleaner and slower).
    momentum:
        Fast Griffin-Lim momentum (0.99).
    seed:
        Seed of the random initial phase (the result is deterministic).

    Examples
    --------
    >>> from robust_gen.speech.data.mel import MelSpectrogram
    >>> config = MelConfig()
    >>> tone = 0.5 * torch.sin(2 * torch.pi * 440 * torch.arange(256 * 40) / 22050)
    >>> wav = GriffinLimVocoder(config, n_iter=8)(MelSpectrogram(config)(tone)[None])
    >>> wav.shape
    torch.Size([1, 10240])
    """

    def __init__(
        self, mel_config: MelConfig | None = None, n_iter: int = 32, momentum: float = 0.99, seed: int = 0
    ):
        import torchaudio.transforms

        self.mel_config = config = mel_config or MelConfig()
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        self.seed = seed
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=config.n_fft // 2 + 1,
            n_mels=config.n_mels,
            sample_rate=config.sample_rate,
            f_min=config.f_min,
            f_max=config.f_max,
            norm="slaney",
            mel_scale="slaney",
        )
        # power=1: the mels are of STFT magnitudes (HiFi-GAN's features), not of power spectra.
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            power=1.0,
            n_iter=n_iter,
            momentum=momentum,
        )

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @torch.no_grad()
    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Waveforms ``[B, T * hop]`` in [-1, 1] for log-mels ``[B, n_mels, T]``."""
        _check_mel(log_mel, self.mel_config.n_mels)
        magnitude_mel = log_mel.float().cpu().clamp(max=MAX_LOG_MEL).exp()
        linear = self.inverse_mel(magnitude_mel)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            wav = self.griffin_lim(linear)
        wav = _fit_length(wav, log_mel.shape[-1], self.mel_config.hop_length)
        return limit_level(wav)


class SpeechBrainHifiGan:
    """A SpeechBrain HiFi-GAN (``HIFIGAN.from_hparams``) as a vocoder.

    Parameters
    ----------
    source:
        Hub id (``speechbrain/tts-hifigan-ljspeech``) or a local folder with ``hyperparams.yaml`` and
        ``generator.ckpt``. A local folder's ``hyperparams.yaml`` must point its pretrainer at that folder
        (:func:`write_local_hifigan` does); the hub's points at the hub.
    savedir:
        Where SpeechBrain links or downloads the files (None: its default cache).
    sample_rate, hop_length:
        The vocoder's rate and hop (22050 and 256 for the LJSpeech / LibriTTS-22k models), used to trim the
        output to ``frames * hop`` samples.
    device:
        Where to run it.
    padding:
        How its "same" convolutions pad: ``"reflect"`` (SpeechBrain's generator) or ``"zeros"`` (the original
        HiFi-GAN; weights converted from it run exactly as trained only so). None: what the folder's
        ``hyperparams.yaml`` says (``padding: zeros`` for a folder written by
        :func:`~robust_gen.speech.gradtts.convert.write_authors_hifigan`), else ``"reflect"``.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        savedir: str | os.PathLike | None = None,
        *,
        sample_rate: int = 22050,
        hop_length: int = 256,
        device: str = "cpu",
        padding: str | None = None,
    ) -> None:
        from speechbrain.inference.vocoders import HIFIGAN

        source = str(source)
        local = Path(source)
        if (local.is_absolute() or source.startswith(".")) and not (local / "hyperparams.yaml").is_file():
            raise FileNotFoundError(
                f"vocoder folder {source} has no hyperparams.yaml; pass a SpeechBrain HiFi-GAN folder or hub id"
            )
        self.sample_rate, self.hop_length = sample_rate, hop_length
        if padding is not None and padding not in HIFIGAN_PADDINGS:
            raise ValueError(f"vocoder.padding must be one of {list(HIFIGAN_PADDINGS)} or null, got {padding!r}")
        self.model = HIFIGAN.from_hparams(
            source=source, savedir=None if savedir is None else str(savedir), run_opts={"device": device}
        )
        self.padding = padding or getattr(self.model.hparams, "padding", None) or "reflect"
        if self.padding not in HIFIGAN_PADDINGS:
            raise ValueError(f"{source}/hyperparams.yaml: padding must be one of {list(HIFIGAN_PADDINGS)}, "
                             f"got {self.padding!r}")  # fmt: skip
        generator = self.model.hparams.generator
        # SpeechBrain's inference adds `inference_padding` replicated frames at both ends of the mel (its output is
        # that much longer, cropped in __call__); the original HiFi-GAN runs on the mel as it is
        self.edge_frames = int(getattr(generator, "inference_padding", 0) or 0)
        if self.padding == "zeros":
            zero_padding_like_original(generator)
            self.model.infer = lambda mel: generator.inference(mel, padding=False)
            self.edge_frames = 0

    @torch.no_grad()
    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Waveforms ``[B, T * hop]`` for log-mels ``[B, n_mels, T]``."""
        _check_mel(log_mel, None)
        wav = self.model.decode_batch(log_mel.float()).squeeze(1).cpu()
        edge, frames = self.edge_frames * self.hop_length, log_mel.shape[-1] * self.hop_length
        if edge and wav.shape[-1] == frames + 2 * edge:  # the padded frames' audio, not the utterance's
            wav = wav[..., edge : edge + frames]
        return limit_level(_fit_length(wav, log_mel.shape[-1], self.hop_length))


def zero_padding_like_original(generator: torch.nn.Module) -> torch.nn.Module:
    """Make a SpeechBrain ``HifiganGenerator``'s "same" convolutions pad with zeros, as the original HiFi-GAN
    (SpeechBrain's pad by reflection, which changes the first and last few output samples of an utterance).

    Examples
    --------
    >>> from speechbrain.nnet.CNN import Conv1d
    >>> zero_padding_like_original(torch.nn.Sequential(Conv1d(4, 3, in_channels=2)))[0].padding_mode
    'constant'
    """
    from speechbrain.nnet.CNN import Conv1d

    for module in generator.modules():
        if isinstance(module, Conv1d) and module.padding == "same":
            module.padding_mode = "constant"  # F.pad's name for zero padding
    return generator


def _check_mel(log_mel: torch.Tensor, n_mels: int | None) -> None:
    if log_mel.dim() != 3 or (n_mels is not None and log_mel.shape[1] != n_mels):
        raise ValueError(f"expected log-mels [B, {n_mels or 'n_mels'}, T], got shape {list(log_mel.shape)}")


def write_local_hifigan(
    directory: str | os.PathLike,
    generator_kwargs: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
    *,
    padding: str = "reflect",
) -> Path:
    """Save a HiFi-GAN generator in the folder layout ``HIFIGAN.from_hparams(source=directory)`` loads offline.

    Writes ``hyperparams.yaml`` (a ``HifiganGenerator`` built from ``generator_kwargs``, a pretrainer whose
    ``pretrained_path`` is this folder, and ``padding``: how the weights expect their convolutions to pad, read by
    :class:`SpeechBrainHifiGan`) and ``generator.ckpt`` (``state_dict``, or a freshly initialised generator's
    weights). Returns the folder.

    Examples
    --------
    >>> import tempfile
    >>> kwargs = dict(in_channels=80, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]],
    ...               resblock_kernel_sizes=[3], upsample_kernel_sizes=[16, 16, 4, 4],
    ...               upsample_initial_channel=16, upsample_factors=[8, 8, 2, 2])
    >>> folder = write_local_hifigan(tempfile.mkdtemp(), kwargs)
    >>> sorted(p.name for p in folder.iterdir())
    ['generator.ckpt', 'hyperparams.yaml']
    """
    import yaml
    from speechbrain.lobes.models.HifiGAN import HifiganGenerator

    if padding not in HIFIGAN_PADDINGS:
        raise ValueError(f"padding must be one of {list(HIFIGAN_PADDINGS)}, got {padding!r}")
    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        state_dict = HifiganGenerator(**generator_kwargs).state_dict()
    torch.save(state_dict, folder / "generator.ckpt")
    arguments = yaml.safe_dump(dict(generator_kwargs), default_flow_style=None, sort_keys=False)
    body = "\n".join("  " + line for line in arguments.splitlines())  # indented under `generator:`
    text = (
        "# A local SpeechBrain HiFi-GAN written by robust_gen.speech.vocoder.write_local_hifigan.\n"
        f"pretrained_path: {folder.as_posix()}\n"
        f"padding: {padding}   # how these weights' convolutions pad: reflect (SpeechBrain) | zeros (original)\n"
        "generator: !new:speechbrain.lobes.models.HifiGAN.HifiganGenerator\n"
        f"{body}\n"
        "modules:\n"
        "  generator: !ref <generator>\n"
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer\n"
        "  loadables:\n"
        "    generator: !ref <generator>\n"
        "  paths:\n"
        "    generator: !ref <pretrained_path>/generator.ckpt\n"
    )
    (folder / "hyperparams.yaml").write_text(text, encoding="utf-8")
    return folder


def build_vocoder(
    kind: str = "griffin_lim", *, mel_config: MelConfig | None = None, device: str = "cpu", **options: Any
):
    """A vocoder from config: ``kind="hifigan"`` (needs ``source``; optional ``savedir``, ``padding``) or
    ``"griffin_lim"`` (optional ``n_iter``, ``momentum``, ``seed``).

    Examples
    --------
    >>> type(build_vocoder("griffin_lim", n_iter=4)).__name__
    'GriffinLimVocoder'
    """
    mel_config = mel_config or MelConfig()
    if kind == "hifigan":
        if not options.get("source"):
            raise ValueError(
                "vocoder kind 'hifigan' needs vocoder.source (a SpeechBrain hub id or local folder)"
            )
        return SpeechBrainHifiGan(
            options["source"],
            options.get("savedir"),
            sample_rate=mel_config.sample_rate,
            hop_length=mel_config.hop_length,
            device=device,
            padding=options.get("padding"),
        )
    if kind == "griffin_lim":
        allowed = {"n_iter", "momentum", "seed"}
        unknown = sorted(set(options) - allowed - {"source", "savedir"})
        if unknown:
            raise ValueError(f"unknown Griffin-Lim option(s) {unknown}; known: {sorted(allowed)}")
        return GriffinLimVocoder(mel_config, **{k: v for k, v in options.items() if k in allowed})
    raise ValueError(f"unknown vocoder kind {kind!r}; choose 'hifigan' or 'griffin_lim'")


def validate_vocoder_config(cfg: Any) -> None:
    """A speech config's ``vocoder`` section, checked before any work: names and ranges, one line each.

    Examples
    --------
    >>> validate_vocoder_config({"vocoder": {"kind": "hifigan", "source": "x", "padding": "zero"}})
    Traceback (most recent call last):
    ...
    ValueError: vocoder.padding must be one of ['reflect', 'zeros'] or null, got 'zero'
    """
    from robust_gen.training.settings import Rule, check_choice, check_config

    vocoder = cfg.get("vocoder") or {}
    check_choice("vocoder.kind", vocoder.get("kind", "griffin_lim"), ("griffin_lim", "hifigan"))
    padding = vocoder.get("padding")
    if padding is not None and padding not in HIFIGAN_PADDINGS:
        raise ValueError(f"vocoder.padding must be one of {list(HIFIGAN_PADDINGS)} or null, got {padding!r}")
    if vocoder.get("kind") == "hifigan" and not vocoder.get("source"):
        raise ValueError("vocoder.kind=hifigan needs vocoder.source: a SpeechBrain hub id or a local folder "
                         "(tools/import_gradtts.py writes one from the authors' hifigan.pt)")
    check_config(cfg, {"vocoder.n_iter": Rule("int", 1, nullable=True)})
