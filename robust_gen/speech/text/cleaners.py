"""Text cleaners: turn raw text into lower-case ASCII words the phonemizer can look up.

``english`` is the Tacotron / Grad-TTS ``english_cleaners`` pipeline (ASCII transliteration, lower case, numbers,
abbreviations, whitespace), with the transliteration done by Unicode NFKD instead of the ``unidecode`` package.
``transliteration`` and ``basic`` are the lighter cleaners of the same family, for text that is not English.

Examples
--------
>>> clean_english("  Dr. Müller paid $3.50 on May 1st, 1984!  ")
'doctor muller paid three dollars fifty cents on may first, nineteen eighty four!'
>>> get_cleaner("basic")("Hello   WORLD")
'hello world'
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from robust_gen.speech.text.numbers import expand_numbers

__all__ = ["CLEANERS", "clean_basic", "clean_english", "clean_transliteration", "get_cleaner", "to_ascii"]

# Abbreviations that Tacotron's english cleaners expand (always written with a period); "missus" is the spelling
# CMUdict knows for "mrs".
_ABBREVIATIONS = {
    "mrs": "missus", "mr": "mister", "dr": "doctor", "st": "saint", "co": "company", "jr": "junior",
    "maj": "major", "gen": "general", "drs": "doctors", "rev": "reverend", "lt": "lieutenant",
    "hon": "honorable", "sgt": "sergeant", "capt": "captain", "esq": "esquire", "ltd": "limited",
    "col": "colonel", "ft": "fort",
}  # fmt: skip
_ABBREVIATION_RE = re.compile(r"\b(" + "|".join(sorted(_ABBREVIATIONS, key=len, reverse=True)) + r")\.")
_WHITESPACE_RE = re.compile(r"\s+")

# Characters NFKD leaves alone but that have an obvious ASCII reading: typographic punctuation and the Latin
# letters that are not a base letter plus a combining mark.
_TYPOGRAPHIC = str.maketrans(
    {
        "‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "“": '"', "”": '"', "„": '"', "″": '"',
        "«": '"', "»": '"', "–": " - ", "—": " - ", "―": " - ", "‐": "-", "‑": "-", "…": "...",
        "ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ð": "d", "Ð": "D",
        "þ": "th", "Þ": "TH", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ı": "i",
    }
)  # fmt: skip
_CURRENCY_SYMBOLS = "£€¥"  # kept through the ASCII step until the number expansion has read them


def to_ascii(text: str, *, keep: str = "") -> str:
    """Transliterate ``text`` to ASCII with Unicode NFKD, keeping the characters in ``keep``.

    Accents are dropped (``é`` -> ``e``), compatibility forms folded (``ﬁ`` -> ``fi``, full-width digits ->
    digits), typographic quotes and dashes mapped to ASCII. Other non-ASCII letters and marks are dropped; any
    other non-ASCII character (symbols, foreign punctuation, exotic spaces) becomes a space so words stay apart.

    Examples
    --------
    >>> to_ascii("Café “naïve” — ﬁne ３")
    'Cafe "naive"  -  fine 3'
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_TYPOGRAPHIC))
    out = []
    for char in decomposed:
        if char.isascii() or char in keep:
            out.append(char)
        elif not unicodedata.category(char).startswith(("L", "M")):
            out.append(" ")
    return "".join(out)


def _expand_abbreviations(text: str) -> str:
    return _ABBREVIATION_RE.sub(lambda m: _ABBREVIATIONS[m.group(1)], text)


def _collapse_whitespace(text: str) -> str:
    return _WHITESPACE_RE.sub(" ", text).strip()


def clean_english(text: str) -> str:
    """The english cleaner: ASCII, lower case, numbers and abbreviations spelled out, whitespace collapsed.

    Examples
    --------
    >>> clean_english("Mr. Smith & Mrs. Jones met at 10% past 2nd St. in 2024.")
    'mister smith and missus jones met at ten percent past second saint in twenty twenty four.'
    """
    text = to_ascii(text, keep=_CURRENCY_SYMBOLS).lower()
    text = expand_numbers(text)
    text = to_ascii(text)  # currency symbols without an amount are of no use now
    text = _expand_abbreviations(text)
    text = text.replace("&", " and ")
    return _collapse_whitespace(text)


def clean_transliteration(text: str) -> str:
    """ASCII, lower case, whitespace collapsed; numbers are left alone (for non-English text).

    Examples
    --------
    >>> clean_transliteration("Ça  va?")
    'ca va?'
    """
    return _collapse_whitespace(to_ascii(text).lower())


def clean_basic(text: str) -> str:
    """Lower case and whitespace collapse only.

    Examples
    --------
    >>> clean_basic(" A\\tB ")
    'a b'
    """
    return _collapse_whitespace(text.lower())


CLEANERS: dict[str, Callable[[str], str]] = {
    "english": clean_english,
    "transliteration": clean_transliteration,
    "basic": clean_basic,
}


def get_cleaner(name: str) -> Callable[[str], str]:
    """The cleaner registered under ``name`` (see :data:`CLEANERS`).

    Examples
    --------
    >>> get_cleaner("english") is clean_english
    True
    """
    try:
        return CLEANERS[name]
    except KeyError:
        raise ValueError(f"unknown text cleaner {name!r}; choose one of {sorted(CLEANERS)}") from None
