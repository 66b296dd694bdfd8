"""Import the Grad-TTS authors' released checkpoints (huawei-noah/Speech-Backbones, ``Grad-TTS/checkpts``), and
the HiFi-GAN vocoder they ship, into SpeechBrain's ``HifiganGenerator`` (:func:`write_authors_hifigan`).

Their checkpoints are ``torch.save(model.state_dict())`` of their ``GradTTS``: single-speaker LJSpeech
(``grad-tts.pt``, 14,835,032 parameters) and the 247-speaker LibriTTS model (``grad-tts-libri-tts.pt``,
14,888,680 parameters). :func:`convert_state_dict` renames their keys onto :class:`GradTTS`'s (the architecture
is the same; only names differ, and the relative-position tables drop their shared-head axis);
:func:`infer_config` reads the model's sizes from the tensors' shapes, including the speaker count and whether
the text encoder sees the speaker (it does not in the released LibriTTS model).

What the weights do not say:

* ``pe_scale``: 1000 for the current checkpoints, 1 for their older ``grad-tts-old.pt`` (their ``params.py``);
* the decoder's attention groups / heads: their code hard-wires GroupNorm(8) and 4 heads;
* the noise schedule: their ``beta_min = 0.05``, ``beta_max = 20``.

An imported model runs exactly as the authors' by default: ``decoder_attention_padding="include"`` (their linear
attention normalises over padded frames too) and, at synthesis, ``length_rounding="scale_total"`` (their
``ceil(w) * length_scale``). Reading a ``.pt`` file uses ``torch.load(weights_only=True)``: tensors only.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from robust_gen.speech.gradtts.model import GradTTS

__all__ = [
    "AUTHORS_DECODER_HEADS",
    "AUTHORS_HIFIGAN_CONFIG",
    "convert_hifigan_state_dict",
    "convert_state_dict",
    "hifigan_generator_kwargs",
    "infer_config",
    "load_authors_model",
    "read_state_dict",
    "start_from_run",
    "write_authors_hifigan",
    "write_imported_run",
]

log = logging.getLogger(__name__)

#: Their LinearAttention's default, which their U-Net never changes.
AUTHORS_DECODER_HEADS = 4
_RENAMES = [  # (pattern, replacement), applied in order to each key
    (r"^spk_emb\.", "speaker_embedding."),
    (r"^encoder\.emb\.", "encoder.embedding."),
    (r"^encoder\.prenet\.conv_layers\.", "encoder.prenet.convs."),
    (r"^encoder\.prenet\.norm_layers\.", "encoder.prenet.norms."),
    (r"^encoder\.encoder\.attn_layers\.(\d+)\.conv_([qkv])\.", r"encoder.transformer.attention.\1.to_\2."),
    (r"^encoder\.encoder\.attn_layers\.(\d+)\.conv_o\.", r"encoder.transformer.attention.\1.to_out."),
    (r"^encoder\.encoder\.attn_layers\.(\d+)\.emb_rel_([kv])$", r"encoder.transformer.attention.\1.rel_\2"),
    (r"^encoder\.encoder\.norm_layers_1\.", "encoder.transformer.norm_attention."),
    (r"^encoder\.encoder\.ffn_layers\.(\d+)\.conv_1\.", r"encoder.transformer.feed_forward.\1.conv_in."),
    (r"^encoder\.encoder\.ffn_layers\.(\d+)\.conv_2\.", r"encoder.transformer.feed_forward.\1.conv_out."),
    (r"^encoder\.encoder\.norm_layers_2\.", "encoder.transformer.norm_feed_forward."),
    (r"^encoder\.proj_m\.", "encoder.proj_mu."),
    (r"^encoder\.proj_w\.conv_(\d)\.", r"encoder.duration.conv\1."),
    (r"^encoder\.proj_w\.norm_(\d)\.", r"encoder.duration.norm\1."),
    (r"^encoder\.proj_w\.proj\.", "encoder.duration.proj."),
    (r"^decoder\.estimator\.", "decoder."),
    (r"^decoder\.spk_mlp\.", "decoder.speaker_mlp."),
    (r"\.mlp\.", ".time_mlp."),  # the time MLP of the U-Net and of every ResNet block
    (r"^decoder\.mlp\.", "decoder.time_mlp."),
    (r"\.block\.0\.", ".conv."),  # Block = Sequential(conv, GroupNorm, Mish)
    (r"\.block\.1\.", ".norm."),
    (r"\.res_conv\.", ".skip."),
    (r"\.fn\.fn\.", "."),  # Residual(Rezero(LinearAttention)) -> one module with its gate
    (r"\.fn\.g$", ".gate"),
    (r"^decoder\.mid_attn\.", "decoder.mid_attention."),
    (r"^decoder\.(downs|ups)\.(\d+)\.3\.conv\.", r"decoder.\1.\2.3."),  # Downsample / Upsample wrappers
]


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _need(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise KeyError(f"{key!r} is missing: not a state dict of the Grad-TTS authors' GradTTS (their "
                       "torch.save(model.state_dict()) checkpoints, e.g. grad-tts.pt)")
    return state[key]


def infer_config(state: dict[str, torch.Tensor], *, pe_scale: float = 1000.0) -> dict[str, Any]:
    """:class:`GradTTS` keyword arguments that fit the authors' state dict ``state`` (see the module docstring).

    Examples
    --------
    >>> cfg = infer_config({"encoder.emb.weight": torch.zeros(149, 16), **{
    ...     f"encoder.prenet.conv_layers.{i}.weight": torch.zeros(16, 16, 5) for i in range(3)},
    ...     "encoder.encoder.attn_layers.0.conv_q.weight": torch.zeros(16, 16, 1),
    ...     "encoder.encoder.attn_layers.0.emb_rel_k": torch.zeros(1, 9, 8),
    ...     "encoder.encoder.ffn_layers.0.conv_1.weight": torch.zeros(32, 16, 3),
    ...     "encoder.proj_w.conv_1.weight": torch.zeros(16, 16, 3), "encoder.proj_m.weight": torch.zeros(80, 16, 1),
    ...     "decoder.estimator.mlp.0.weight": torch.zeros(32, 8),
    ...     "decoder.estimator.downs.0.0.block1.block.0.weight": torch.zeros(8, 2, 3, 3),
    ...     "decoder.estimator.downs.1.0.block1.block.0.weight": torch.zeros(16, 8, 3, 3),
    ...     "decoder.estimator.downs.0.2.fn.fn.to_qkv.weight": torch.zeros(384, 8, 1, 1)})
    >>> cfg["n_speakers"], cfg["encoder_heads"], cfg["decoder_dim_mults"], cfg["condition_encoder"]
    (1, 2, [1, 2], False)
    """
    n_vocab, channels = _need(state, "encoder.emb.weight").shape
    n_speakers, speaker_dim = state["spk_emb.weight"].shape if "spk_emb.weight" in state else (1, 64)
    prenet = [k for k in state if re.fullmatch(r"encoder\.prenet\.conv_layers\.\d+\.weight", k)]
    layers = [k for k in state if re.fullmatch(r"encoder\.encoder\.attn_layers\.\d+\.conv_q\.weight", k)]
    width = _need(state, "encoder.encoder.attn_layers.0.conv_q.weight").shape[0]
    rel = _need(state, "encoder.encoder.attn_layers.0.emb_rel_k")
    if rel.shape[0] != 1:
        raise ValueError("the checkpoint's relative-position tables are per head (heads_share=False); GradTTS shares "
                         "them across heads, as the authors' model does")
    if width not in (channels, channels + speaker_dim):
        raise ValueError(f"encoder width {width} is neither {channels} nor {channels} + speaker dim {speaker_dim}")
    ffn = _need(state, "encoder.encoder.ffn_layers.0.conv_1.weight")
    duration = _need(state, "encoder.proj_w.conv_1.weight")
    if duration.shape[-1] != 3:
        raise ValueError(f"duration predictor kernel {duration.shape[-1]}; GradTTS builds kernel 3")
    dim = _need(state, "decoder.estimator.mlp.0.weight").shape[1]
    level_widths = []
    while f"decoder.estimator.downs.{len(level_widths)}.0.block1.block.0.weight" in state:
        level_widths.append(state[f"decoder.estimator.downs.{len(level_widths)}.0.block1.block.0.weight"].shape[0])
    hidden = _need(state, "decoder.estimator.downs.0.2.fn.fn.to_qkv.weight").shape[0] // 3
    return {
        "n_vocab": int(n_vocab),
        "n_speakers": int(n_speakers),
        "n_feats": int(_need(state, "encoder.proj_m.weight").shape[0]),
        "encoder_channels": int(channels),
        "encoder_filter_channels": int(ffn.shape[0]),
        "encoder_heads": int(width // rel.shape[-1]),
        "encoder_layers": len(layers),
        "encoder_kernel_size": int(ffn.shape[-1]),
        "encoder_window_size": int((rel.shape[1] - 1) // 2),
        "prenet_layers": len(prenet),
        "prenet_kernel_size": int(state[prenet[0]].shape[-1]),
        "duration_channels": int(duration.shape[0]),
        "decoder_dim": int(dim),
        "decoder_dim_mults": [int(w // dim) for w in level_widths],
        "decoder_groups": 8,
        "decoder_attention_heads": AUTHORS_DECODER_HEADS,
        "decoder_attention_head_dim": int(hidden // AUTHORS_DECODER_HEADS),
        "pe_scale": float(pe_scale),
        "speaker_dim": int(speaker_dim),
        "condition_encoder": bool(width != channels),
        "beta_min": 0.05,
        "beta_max": 20.0,
        "output": "score",
    }


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' state dict under :class:`GradTTS`'s names (relative tables ``[1, 2w+1, d] -> [2w+1, d]``)."""
    out = {}
    for key, value in state.items():
        new = _rename(key)
        if re.search(r"\.rel_[kv]$", new):
            value = value.squeeze(0)
        out[new] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pt`` state dict (``torch.load(weights_only=True)``: no code runs) or a ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (e.g. grad-tts.pt from the authors' Grad-TTS/checkpts)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors (the authors save torch.save(model.state_dict()))")
    return dict(state)


def load_authors_model(
    state: dict[str, torch.Tensor], *, pe_scale: float = 1000.0, attention_padding: str = "include"
) -> tuple[GradTTS, dict[str, Any]]:
    """A :class:`GradTTS` holding the authors' weights ``state``, and its constructor arguments.

    ``attention_padding="include"`` (default) runs their decoder exactly as trained; ``"ignore"`` switches to
    the project's padding-free linear attention (the same on unpadded inputs). Every key and shape must match:
    a mismatch names the keys.
    """
    config = {**infer_config(state, pe_scale=pe_scale), "decoder_attention_padding": attention_padding}
    model = GradTTS(**config)
    converted = convert_state_dict(state)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(converted)), sorted(set(converted) - set(expected))
    wrong = sorted(k for k in set(expected) & set(converted) if expected[k].shape != converted[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"the checkpoint does not fit GradTTS{config}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, wrong shapes {wrong[:5]}")
    model.load_state_dict(converted)
    log.info("imported Grad-TTS: %d parameters, %d speaker(s), encoder conditioned: %s",
             sum(p.numel() for p in model.parameters()), config["n_speakers"], config["condition_encoder"])
    return model.eval(), config


def write_imported_run(
    model: GradTTS, config: dict[str, Any], out_dir: str | Path, *, speakers: list[str] | None = None,
    source: str = "",
) -> Path:
    """Write ``model`` as a tts run folder: ``config.yaml`` (the tts recipe's config with this model and its
    speaker ids) and ``checkpoints/step_00000000`` (model and EMA weights: the same tensors).

    ``recipes/tts/synthesize.py run_dir=OUT_DIR`` reads it, and ``recipes/tts/train.py init_from=OUT_DIR`` starts
    fine-tuning from its weights. ``speakers`` names the speaker ids in order (default ``"0"``, ``"1"``, ...).
    """
    from omegaconf import OmegaConf, open_dict

    from robust_gen.training.checkpoint import save_checkpoint
    from robust_gen.training.recipe import compose_config, write_resolved_config

    out_dir = Path(out_dir)
    if (out_dir / "checkpoints").exists():
        raise FileExistsError(f"{out_dir} already holds checkpoints: import into a new folder")
    names = list(speakers) if speakers is not None else [str(i) for i in range(model.n_speakers)]
    if len(names) != model.n_speakers or len(set(names)) != len(names):
        raise ValueError(f"need {model.n_speakers} distinct speaker names, got {len(names)} ({len(set(names))} distinct)")
    cfg = compose_config("tts", "train", ["model=gradtts_paper"])
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"_target_": "robust_gen.speech.gradtts.model.GradTTS",
                                      **{k: v for k, v in config.items() if k != "n_speakers"}})
        cfg.speaker_ids = {name: i for i, name in enumerate(names)}
        cfg.imported_from = str(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = write_resolved_config(cfg, out_dir)
    weights = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    ema = {**{f"module.{k}": v for k, v in weights.items()}, "n_averaged": torch.tensor(0, dtype=torch.long)}
    save_checkpoint(out_dir / "checkpoints", 0, tensors={"model": weights, "ema": ema},
                    state={"imported_from": str(source)}, config_yaml=config_yaml)
    return out_dir


def start_from_run(cfg: Any, speakers: dict[str, int]) -> dict[str, torch.Tensor] | None:
    """For ``init_from=<run dir>`` in the tts recipe: take the model settings of that run (an imported checkpoint
    or any tts run) into ``cfg.model`` and return its EMA weights (None without ``init_from``).

    The data's speakers must be the run's (same names and ids), so that every speaker keeps its embedding row.
    """
    from omegaconf import open_dict

    from robust_gen.speech.synthesis import load_trained

    source = cfg.get("init_from")
    if not source:
        return None
    trained = load_trained(source, use_ema=True)
    if dict(speakers) != dict(trained.speakers):
        if len(speakers) == len(trained.speakers) == 1:
            log.info("init_from %s: its one speaker stands for this data's %s", source, next(iter(speakers)))
        else:
            raise ValueError(f"init_from={source} was trained with speakers {_describe(trained.speakers)} but the "
                             f"data has {_describe(speakers)}: fine-tune on data with the same speaker ids")
    with open_dict(cfg):
        cfg.model = trained.config.model
    return trained.model.state_dict()


def _describe(speakers: dict[str, int]) -> str:
    names = sorted(speakers, key=speakers.get)
    return f"{len(names)} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


# ---------------------------------------------------------------------------------------------------- HiFi-GAN
#: The authors' checkpts/hifigan-config.json (HiFi-GAN V1, Kong et al. 2020), for their hifigan.pt.
AUTHORS_HIFIGAN_CONFIG = {
    "resblock": "1", "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4],
    "upsample_initial_channel": 512, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "num_mels": 80,
}  # fmt: skip


def hifigan_generator_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """SpeechBrain ``HifiganGenerator`` arguments for a HiFi-GAN config in the original (jik876) format.

    Examples
    --------
    >>> hifigan_generator_kwargs(AUTHORS_HIFIGAN_CONFIG)["upsample_factors"]
    [8, 8, 2, 2]
    """
    return {
        "in_channels": int(config.get("num_mels", 80)), "out_channels": 1, "resblock_type": str(config["resblock"]),
        "resblock_dilation_sizes": [list(d) for d in config["resblock_dilation_sizes"]],
        "resblock_kernel_sizes": list(config["resblock_kernel_sizes"]),
        "upsample_kernel_sizes": list(config["upsample_kernel_sizes"]),
        "upsample_initial_channel": int(config["upsample_initial_channel"]),
        "upsample_factors": list(config["upsample_rates"]),
    }  # fmt: skip


def convert_hifigan_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original HiFi-GAN generator's state dict (weight-normed ``weight_g`` / ``weight_v``, as in the authors'
    ``hifigan.pt["generator"]``) under SpeechBrain ``HifiganGenerator``'s names (its convolutions sit in a ``conv``
    wrapper and use parametrized weight norm: ``original0`` = g, ``original1`` = v). The architectures are the
    same (layers, shapes, activations); one difference is SpeechBrain's: its "same" convolutions pad by
    reflection where the original pads with zeros, which changes the first and last few output samples of an
    utterance. :func:`robust_gen.speech.vocoder.zero_padding_like_original` switches a generator to zero padding (then the output is the
    original's to float rounding).

    Examples
    --------
    >>> sorted(convert_hifigan_state_dict({"conv_pre.weight_g": torch.ones(1), "conv_pre.bias": torch.ones(1)}))
    ['conv_pre.conv.bias', 'conv_pre.conv.parametrizations.weight.original0']
    """
    suffixes = {".weight_g": ".conv.parametrizations.weight.original0",
                ".weight_v": ".conv.parametrizations.weight.original1", ".bias": ".conv.bias"}
    out = {}
    for key, value in state.items():
        for old, new in suffixes.items():
            if key.endswith(old):
                out[key[: -len(old)] + new] = value
                break
        else:
            raise ValueError(f"unexpected HiFi-GAN key {key!r}: expected weight-normed convolutions (weight_g, "
                             "weight_v, bias), as saved before remove_weight_norm()")
    return out


def write_authors_hifigan(
    checkpoint: str | Path, out_dir: str | Path, config: dict[str, Any] | None = None
) -> Path:
    """Write the authors' HiFi-GAN (``hifigan.pt``: ``{"generator": state_dict}``) as a local SpeechBrain HiFi-GAN
    folder for ``vocoder.kind=hifigan vocoder.source=<out_dir>``; ``config`` defaults to their hifigan-config.json.
    The folder is marked to pad with zeros (``padding: zeros`` in its hyperparams.yaml), so the recipe's vocoder
    runs it as the original."""
    from robust_gen.speech.vocoder import write_local_hifigan

    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    state = state.get("generator", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint} holds no HiFi-GAN generator state dict")
    # the folder says it pads with zeros like the original: SpeechBrainHifiGan then runs it exactly as trained
    return write_local_hifigan(out_dir, hifigan_generator_kwargs(config or AUTHORS_HIFIGAN_CONFIG),
                               convert_hifigan_state_dict(state), padding="zeros")
