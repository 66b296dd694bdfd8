"""Model-side conditioning: CEP, condition dropout for guidance, gated control-metadata embedding."""

from robust_gen.conditioning.cep import CEP, CEPWrapper, ConditionalEmbeddingPerturbation, cep_scale, perturb
from robust_gen.conditioning.control import ControlEmbedding, NoiseLevelGate
from robust_gen.conditioning.dropout import (
    ConditionDropout,
    DropoutMasks,
    draw_dropout_masks,
    replace_dropped,
)

__all__ = [
    "CEP",
    "CEPWrapper",
    "ConditionDropout",
    "ConditionalEmbeddingPerturbation",
    "ControlEmbedding",
    "DropoutMasks",
    "NoiseLevelGate",
    "cep_scale",
    "draw_dropout_masks",
    "perturb",
    "replace_dropped",
]
