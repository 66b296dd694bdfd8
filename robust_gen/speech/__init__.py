"""The speech recipe: Grad-TTS text-to-speech, its data and its synthesis.

Importing it checks that the installed torch / torchaudio / torchvision are the pinned trio and load together
(:func:`robust_gen.environment.check_torch_family`): a mismatched torchaudio otherwise fails deep inside an import
with an undefined-symbol error.
"""

from robust_gen.environment import check_torch_family

check_torch_family()
