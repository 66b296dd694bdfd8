"""Text -> token ids for Grad-TTS, and back for debugging.

The pipeline is clean (:mod:`~robust_gen.speech.text.cleaners`) -> phonemize
(:mod:`~robust_gen.speech.text.phonemize`) -> symbol ids (:mod:`~robust_gen.speech.text.symbols`) -> optionally a
blank between every two ids and at both ends (Grad-TTS ``add_blank``: the blank id 148 sits at the even positions
0, 2, 4, ... of the list, the real symbols at the odd ones; counting from one, blanks are the odd positions).

Examples
--------
>>> ids = text_to_ids("Hi!")
>>> len(ids), ids[0] == ids[2] == ids[-1] == BLANK_ID
(7, True)
>>> ids_to_text(ids)
'{HH AY1}!'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from robust_gen.speech.text.cleaners import get_cleaner
from robust_gen.speech.text.phonemize import phonemize_clean
from robust_gen.speech.text.symbols import BLANK_ID, SYMBOL_TO_ID, SYMBOLS

__all__ = ["EncodedText", "encode_text", "ids_to_text", "intersperse", "phonemize", "text_to_ids"]

T = TypeVar("T")


@dataclass(frozen=True)
class EncodedText:
    """Everything :func:`encode_text` learns about one text.

    Attributes
    ----------
    ids : list[int]
        Token ids, with blanks when asked for.
    symbols : list[str]
        The symbols before blanks were added (``@``-prefixed ARPAbet, letters, punctuation).
    oov_words : list[str]
        Words CMUdict did not know, spelled out letter by letter (log these: many of them means the
        cleaner misses something in the corpus).
    cleaned : str
        The text after the cleaner.
    """

    ids: list[int]
    symbols: list[str]
    oov_words: list[str]
    cleaned: str


def intersperse(seq: Sequence[T], item: T) -> list[T]:
    """``item`` before, between and after the elements of ``seq`` (length ``2 * len(seq) + 1``).

    Examples
    --------
    >>> intersperse([1, 2, 3], 0)
    [0, 1, 0, 2, 0, 3, 0]
    >>> intersperse([], 0)
    [0]
    """
    result = [item] * (2 * len(seq) + 1)
    result[1::2] = seq
    return result


def encode_text(text: str, *, add_blank: bool = True, cleaner: str = "english") -> EncodedText:
    """Clean, phonemize and number ``text``; also report the out-of-dictionary words.

    Raises ValueError when nothing speakable is left (empty text, only whitespace or unknown characters).

    Examples
    --------
    >>> encoded = encode_text("Zorblax said: 2 words.", add_blank=False)
    >>> encoded.cleaned, encoded.oov_words
    ('zorblax said: two words.', ['zorblax'])
    >>> ids_to_text(encoded.ids)
    'zorblax {S EH1 D}: {T UW1} {W ER1 D Z}.'
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    cleaned = get_cleaner(cleaner)(text)
    phonemized = phonemize_clean(cleaned)
    if not phonemized.symbols:
        raise ValueError(
            f"text {text!r} yields no symbols after the {cleaner!r} cleaner; drop it from the data or fix it"
        )
    ids = [SYMBOL_TO_ID[symbol] for symbol in phonemized.symbols]
    if add_blank:
        ids = intersperse(ids, BLANK_ID)
    return EncodedText(ids=ids, symbols=phonemized.symbols, oov_words=phonemized.oov_words, cleaned=cleaned)


def text_to_ids(text: str, *, add_blank: bool = True, cleaner: str = "english") -> list[int]:
    """Token ids of ``text`` for Grad-TTS (vocabulary :data:`VOCAB_SIZE` = 149 with the blank).

    Examples
    --------
    >>> text_to_ids("a", add_blank=False) == [SYMBOL_TO_ID["@AH0"]]
    True
    >>> text_to_ids("a")[0] == BLANK_ID
    True
    """
    return encode_text(text, add_blank=add_blank, cleaner=cleaner).ids


def phonemize(text: str, *, cleaner: str = "english") -> list[str]:
    """The symbols of ``text`` (``@``-prefixed ARPAbet, letters for unknown words, punctuation).

    Examples
    --------
    >>> phonemize("Dr. Who?")
    ['@D', '@AA1', '@K', '@T', '@ER0', ' ', '@HH', '@UW1', '?']
    """
    return encode_text(text, add_blank=False, cleaner=cleaner).symbols


def ids_to_text(ids: Sequence[int]) -> str:
    """A readable form of token ids: blanks dropped, ARPAbet runs shown as ``{HH AH0 L OW1}``.

    Examples
    --------
    >>> ids_to_text(text_to_ids("Hello, qzx world"))
    '{HH AH0 L OW1}, qzx {W ER1 L D}'
    """
    pieces: list[str] = []
    phones: list[str] = []
    for raw in ids:
        index = int(raw)
        if not 0 <= index <= BLANK_ID:
            raise ValueError(f"token id {index} is outside the vocabulary 0..{BLANK_ID}")
        if index == BLANK_ID:
            continue
        symbol = SYMBOLS[index]
        if symbol.startswith("@"):
            phones.append(symbol[1:])
            continue
        if phones:
            pieces.append("{" + " ".join(phones) + "}")
            phones = []
        pieces.append(symbol)
    if phones:
        pieces.append("{" + " ".join(phones) + "}")
    return "".join(pieces)
