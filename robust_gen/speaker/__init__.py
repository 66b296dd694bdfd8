"""Speaker verification: a SpeechBrain ECAPA-TDNN speaker encoder (hub id or local folder), trained offline on the
embedded voices when no hub is reachable, calibrated, and used to score synthesized speech.

This module is the package's public face: code outside it (the speech recipe, ``tools/speaker_sim.py``,
``recipes/speaker/train.py``, the studies) imports from here. The submodules:

* :mod:`~robust_gen.speaker.loading`: load an encoder offline or from the hub, failing fast and clearly;
* :mod:`~robust_gen.speaker.model`: the offline ECAPA-TDNN: build, train, save as a SpeechBrain folder;
* :mod:`~robust_gen.speaker.calibration`: equal error rate and the verification threshold;
* :mod:`~robust_gen.speaker.ceiling`: the vocoded-real ceiling of a similarity, identification among voices;
* :mod:`~robust_gen.speaker.inputs`: which files to score (run folders, filelists, globs);
* :mod:`~robust_gen.speaker.activity`: level and speech activity, which flags files without usable speech;
* :mod:`~robust_gen.speaker.similarity`: batched embeddings with a cache, similarity to each speaker's references;
* :mod:`~robust_gen.speaker.reports`: per-file CSV, JSON summary, similarity over training steps, resilience.
"""

from robust_gen.speaker.activity import (
    ACTIVITY_MODES,
    ActivityCheck,
    SpeechActivity,
    activity_problem,
    speech_activity,
)
from robust_gen.speaker.calibration import calibrate, model_threshold, write_calibration
from robust_gen.speaker.ceiling import (
    CeilingSpec,
    centroids,
    hold_out,
    identification_accuracy,
    identify,
    speaker_ceilings,
    vocoded_real_ceiling,
)
from robust_gen.speaker.inputs import collect_synthesized
from robust_gen.speaker.loading import (
    DEFAULT_HUB_MODEL,
    SpeakerModelUnavailable,
    encoder_sample_rate,
    load_speaker_encoder,
)
from robust_gen.speaker.model import (
    SpeakerModelSpec,
    SpeakerTrainingConfig,
    TrainedSpeakerModel,
    build_speaker_modules,
    espeak_training_records,
    hyperparams_yaml,
    save_speaker_model,
    train_speaker_model,
    training_voices,
)
from robust_gen.speaker.reports import (
    CSV_NAME,
    DEFAULT_THRESHOLDS,
    JSON_NAME,
    default_out_dir,
    headline,
    threshold_key,
)
from robust_gen.speaker.similarity import SpeakerEmbedder, evaluate_speaker_similarity

__all__ = [
    "ACTIVITY_MODES",
    "CSV_NAME",
    "DEFAULT_HUB_MODEL",
    "DEFAULT_THRESHOLDS",
    "JSON_NAME",
    "ActivityCheck",
    "CeilingSpec",
    "SpeakerEmbedder",
    "SpeakerModelSpec",
    "SpeakerModelUnavailable",
    "SpeakerTrainingConfig",
    "SpeechActivity",
    "TrainedSpeakerModel",
    "activity_problem",
    "build_speaker_modules",
    "calibrate",
    "centroids",
    "collect_synthesized",
    "default_out_dir",
    "encoder_sample_rate",
    "espeak_training_records",
    "evaluate_speaker_similarity",
    "headline",
    "hold_out",
    "hyperparams_yaml",
    "identification_accuracy",
    "identify",
    "load_speaker_encoder",
    "model_threshold",
    "save_speaker_model",
    "speaker_ceilings",
    "speech_activity",
    "threshold_key",
    "train_speaker_model",
    "training_voices",
    "vocoded_real_ceiling",
    "write_calibration",
]
