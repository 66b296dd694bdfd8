"""The Grad-TTS text frontend: english cleaners, CMUdict ARPAbet phonemes, symbol ids with blanks.

Examples
--------
>>> from robust_gen.speech.text import VOCAB_SIZE, text_to_ids, ids_to_text
>>> ids = text_to_ids("The 2nd test, in 1984.")
>>> max(ids) < VOCAB_SIZE
True
>>> ids_to_text(ids)
'{DH AH0} {S EH1 K AH0 N D} {T EH1 S T}, {IH0 N} {N AY1 N T IY1 N} {EY1 T IY0} {F AO1 R}.'
"""

from robust_gen.speech.text.cleaners import CLEANERS, clean_basic, clean_english, clean_transliteration
from robust_gen.speech.text.encoding import (
    EncodedText,
    encode_text,
    ids_to_text,
    intersperse,
    phonemize,
    text_to_ids,
)
from robust_gen.speech.text.numbers import expand_numbers
from robust_gen.speech.text.symbols import BLANK_ID, SYMBOL_TO_ID, SYMBOLS, VOCAB_SIZE

__all__ = [
    "BLANK_ID",
    "CLEANERS",
    "SYMBOLS",
    "SYMBOL_TO_ID",
    "VOCAB_SIZE",
    "EncodedText",
    "clean_basic",
    "clean_english",
    "clean_transliteration",
    "encode_text",
    "expand_numbers",
    "ids_to_text",
    "intersperse",
    "phonemize",
    "text_to_ids",
]
