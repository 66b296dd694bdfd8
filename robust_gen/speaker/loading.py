"""Load a speaker model: a SpeechBrain model directory offline, or a hub id.

The directory layout is described in :mod:`robust_gen.speaker.model`. Loading fails fast and
clearly (:class:`SpeakerModelUnavailable`) when a hub model is not cached and the hub cannot be reached.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

__all__ = [
    "CHECKPOINTS",
    "DEFAULT_HUB_MODEL",
    "OFFLINE_HINT",
    "TRAINING_NAME",
    "SpeakerModelUnavailable",
    "encoder_sample_rate",
    "load_speaker_encoder",
]

TRAINING_NAME = "training.json"
CHECKPOINTS = ("embedding_model.ckpt", "mean_var_norm_emb.ckpt", "classifier.ckpt", "label_encoder.txt")
DEFAULT_HUB_MODEL = "speechbrain/spkrec-ecapa-voxceleb"
OFFLINE_HINT = (
    "train the offline speaker model with `python recipes/speaker/train.py` (about a minute on CPU) and "
    "pass its directory: `--model runs/speaker/default/model`"
)


class SpeakerModelUnavailable(RuntimeError):
    """The speaker model cannot be loaded: not cached and the hub is offline or unreachable."""


def _offline_env() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float) -> bool:
    """Whether the hub answers within ``timeout`` seconds (any HTTP answer counts)."""
    import requests

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        requests.head(endpoint, timeout=timeout)
    except requests.RequestException:
        return False
    return True


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") != 1 or (os.sep != "/" and os.sep in model)


def _check_device(device: str) -> str:
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")
    return device


def load_speaker_encoder(
    model: str | os.PathLike = DEFAULT_HUB_MODEL,
    *,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    hub_timeout: float = 3.0,
):
    """Load a SpeechBrain ``EncoderClassifier`` from a local directory or a hub id, failing fast offline.

    Parameters
    ----------
    model : str or PathLike
        A directory (written by ``recipes/speaker/train.py``, or a downloaded hub model) or a hub id.
    device : str
        ``cpu``, ``cuda``, ``cuda:N``.
    cache_dir : str or PathLike, optional
        Where hub models are collected; default ``<robust_gen cache>/speechbrain``.
    hub_timeout : float
        Seconds to wait for the hub before declaring it unreachable.

    Raises
    ------
    FileNotFoundError
        ``model`` names a directory that does not exist.
    SpeakerModelUnavailable
        A hub model that is not cached while ``HF_HUB_OFFLINE`` is set or the hub does not answer, or a
        local directory that SpeechBrain cannot load. The message names the offline alternative.

    Examples
    --------
    >>> import os, tempfile
    >>> os.environ["HF_HUB_OFFLINE"] = "1"
    >>> try:
    ...     load_speaker_encoder("nobody/not-a-speaker-model", cache_dir=tempfile.mkdtemp())
    ... except SpeakerModelUnavailable as error:
    ...     print("recipes/speaker/train.py" in str(error))
    True
    >>> del os.environ["HF_HUB_OFFLINE"]
    """
    from speechbrain.inference.speaker import EncoderClassifier
    from speechbrain.utils.fetching import FetchConfig, LocalStrategy

    device = _check_device(device)
    text = os.fspath(model)
    local = Path(text).expanduser()
    run_opts = {"device": device}
    if local.is_dir():
        hparams_path = local / "hyperparams.yaml"
        if not hparams_path.is_file():
            raise SpeakerModelUnavailable(
                f"speaker model directory {local} has no hyperparams.yaml; expected the files "
                f"hyperparams.yaml, {', '.join(CHECKPOINTS)}; {OFFLINE_HINT}"
            )
        # The hub's hyperparams.yaml points pretrained_path at the hub id; a copy on disk must read its
        # checkpoints from where it is now, so override it. savedir=None: nothing is linked or written.
        has_path_key = re.search(r"^pretrained_path\s*:", hparams_path.read_text(encoding="utf-8"), re.M)
        overrides = {"pretrained_path": local.absolute().as_posix()} if has_path_key else {}
        try:
            return EncoderClassifier.from_hparams(
                source=str(local.absolute()),
                savedir=None,
                overrides=overrides,
                run_opts=run_opts,
                local_strategy=LocalStrategy.NO_LINK,
                fetch_config=FetchConfig(allow_network=False),
            )
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise SpeakerModelUnavailable(
                f"cannot load the speaker model in {local}: {error}. A model directory holds "
                f"hyperparams.yaml, {', '.join(CHECKPOINTS)}; {OFFLINE_HINT}"
            ) from error
    if _looks_like_path(text) or not _HUB_ID.match(text):
        raise FileNotFoundError(f"speaker model directory {text} does not exist; {OFFLINE_HINT}")
    from robust_gen.environment import default_cache_dir

    savedir = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "speechbrain"
    savedir = savedir / text.replace("/", "--")

    def attempt(allow_network: bool):
        return EncoderClassifier.from_hparams(
            source=text,
            savedir=str(savedir),
            run_opts=run_opts,
            fetch_config=FetchConfig(allow_network=allow_network),
        )

    try:
        return attempt(allow_network=False)  # the local cache first: no network at all
    except (OSError, ValueError) as error:
        cache_error = error
    if _offline_env():
        reason = "HF_HUB_OFFLINE is set"
    elif not _hub_reachable(hub_timeout):
        reason = f"the Hugging Face hub did not answer within {hub_timeout:g} s"
    else:
        try:
            return attempt(allow_network=True)
        except (OSError, ValueError) as error:
            raise SpeakerModelUnavailable(
                f"cannot fetch speaker model {text!r} from the hub: {error}; {OFFLINE_HINT}"
            ) from error
    raise SpeakerModelUnavailable(
        f"speaker model {text!r} is not in the local cache ({savedir}) and {reason}; {OFFLINE_HINT}"
    ) from cache_error


def encoder_sample_rate(encoder) -> int:
    """Input sample rate of a loaded ``EncoderClassifier`` (16 kHz for the ECAPA models)."""
    return int(getattr(encoder.audio_normalizer, "sample_rate", 16000))
