"""The Grad-TTS model (Popov et al., 2021): text encoder, duration predictor, alignment search, U-Net decoder.

* :mod:`~robust_gen.speech.gradtts.model`: :class:`GradTTS`, the whole model (losses, synthesis);
* :mod:`~robust_gen.speech.gradtts.text_encoder`: the transformer text encoder with relative attention and the
  duration predictor;
* :mod:`~robust_gen.speech.gradtts.decoder`: the 2-D U-Net score / noise network with its speaker map;
* :mod:`~robust_gen.speech.gradtts.alignment`: monotonic alignment search (numba, batched torch, reference).

The noise schedule and the diffusion loss are the core's (:mod:`robust_gen.diffusion`), not this package's.
"""
