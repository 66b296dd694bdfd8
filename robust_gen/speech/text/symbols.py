"""The Grad-TTS symbol set: pad, one special symbol, punctuation, letters and ARPAbet phonemes.

The order and content follow Grad-TTS (Popov et al. 2021), which took them from Tacotron 2 / Glow-TTS, so that ids
mean the same thing as in those models:

============  ==========================================  =====
group         symbols                                     count
============  ==========================================  =====
pad           ``_``                                       1
special       ``-`` (the hyphen of a spelled-out word)    1
punctuation   ``! ' ( ) , . : ; ?`` and the space         10
letters       ``A-Z a-z`` (fallback for unknown words)    52
ARPAbet       15 vowels x {bare, 0, 1, 2} + 24 consonants  84
============  ==========================================  =====

148 symbols in all. Phonemes carry an ``@`` prefix (``@HH``, ``@AH0``) so they never collide with letters. The 15
bare vowels (``@AA`` without a stress digit) are in the set for compatibility with the original list, but CMUdict
never produces them. A blank token placed between symbols (Grad-TTS's ``add_blank``) takes the next id, 148,
giving a vocabulary of 149.

Examples
--------
>>> len(SYMBOLS), VOCAB_SIZE, BLANK_ID
(148, 149, 148)
>>> SYMBOLS[0], SYMBOL_TO_ID["@HH"] > SYMBOL_TO_ID["z"]
('_', True)
"""

from __future__ import annotations

__all__ = [
    "ARPABET",
    "BLANK_ID",
    "LETTERS",
    "PAD",
    "PUNCTUATION",
    "SPECIAL",
    "SYMBOLS",
    "SYMBOL_TO_ID",
    "VOCAB_SIZE",
]

PAD = "_"
SPECIAL = "-"
PUNCTUATION = "!'(),.:;? "
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
_CONSONANTS = (
    "B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG",
    "P", "R", "S", "SH", "T", "TH", "V", "W", "Y", "Z", "ZH",
)  # fmt: skip
# Sorted like the CMUdict symbol list Tacotron ships, so that ids match checkpoints trained with that list.
_ARPABET_PLAIN = sorted([v + stress for v in _VOWELS for stress in ("", "0", "1", "2")] + list(_CONSONANTS))

ARPABET: tuple[str, ...] = tuple("@" + phone for phone in _ARPABET_PLAIN)
SYMBOLS: tuple[str, ...] = (PAD, SPECIAL, *PUNCTUATION, *LETTERS, *ARPABET)
SYMBOL_TO_ID: dict[str, int] = {symbol: index for index, symbol in enumerate(SYMBOLS)}

# The blank goes after every real symbol, so a model without blanks keeps its ids.
BLANK_ID = len(SYMBOLS)
VOCAB_SIZE = len(SYMBOLS) + 1

if len(ARPABET) != 84 or len(SYMBOLS) != 148 or len(SYMBOL_TO_ID) != len(SYMBOLS):
    raise RuntimeError("the Grad-TTS symbol set must hold 148 distinct symbols (84 ARPAbet)")
