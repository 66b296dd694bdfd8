"""Spell out numbers in English text: cardinals, ordinals, decimals, currency, years, percentages.

The rules are the ones of the Tacotron / Grad-TTS english cleaners (numbers between 1000 and 3000 are read as
years, commas group thousands, ``$`` amounts become dollars and cents), written from scratch with no dependency.
Everything here works on text that is already lower case; :func:`expand_numbers` is the entry point.

Examples
--------
>>> expand_numbers("in 1984 i paid $3.50 for 2 apples, the 22nd time")
'in nineteen eighty four i paid three dollars fifty cents for two apples, the twenty second time'
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["cardinal_to_words", "digits_to_words", "expand_numbers", "ordinal_to_words", "year_to_words"]

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# Short-scale names (10^3k); beyond them, numbers are read digit by digit, as people read serial numbers.
_SCALES = (
    "", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion",
    "sextillion", "septillion", "octillion", "nonillion", "decillion",
)  # fmt: skip
_MAX_NAMED = 1000 ** len(_SCALES)
_MAX_NAMED_DIGITS = 3 * len(_SCALES)

_IRREGULAR_ORDINALS = {
    "zero": "zeroth", "one": "first", "two": "second", "three": "third", "five": "fifth",
    "eight": "eighth", "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip

# name, singular major, plural major, singular minor, plural minor (None: the currency has no minor unit here)
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", None, None),
}

_INTEGER = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)"  # "1,000,000" (well-formed groups only) or "1000000"
_CURRENCY_RE = re.compile(
    r"([$£€¥])\s?(" + _INTEGER + r")(?:\.([0-9]+))?(?:\s+(thousand|million|billion|trillion))?\b"
)
_ORDINAL_RE = re.compile(r"(" + _INTEGER + r")(st|nd|rd|th)\b")
_PLURAL_RE = re.compile(r"\b([0-9]+)s\b")  # "1980s"
_NEGATIVE_RE = re.compile(r"(?<![0-9a-z.,])-(?=[0-9])")
_PERCENT_RE = re.compile(r"\s?%")
_DECIMAL_RE = re.compile(r"(" + _INTEGER + r")?\.([0-9]+)")
_GROUPED_RE = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+")
_PLAIN_RE = re.compile(r"[0-9]+")


def digits_to_words(digits: str) -> str:
    """Read a string of ASCII digits one by one.

    Examples
    --------
    >>> digits_to_words("007")
    'zero zero seven'
    """
    return " ".join(_ONES[int(d)] for d in digits)


def cardinal_to_words(number: int) -> str:
    """English words for a non-negative integer (American style, no "and").

    Numbers of 10^36 and above have no common name and are read digit by digit.

    Examples
    --------
    >>> cardinal_to_words(0), cardinal_to_words(105), cardinal_to_words(1_000_021)
    ('zero', 'one hundred five', 'one million twenty one')
    """
    if number < 0:
        raise ValueError(f"cardinal_to_words needs a non-negative integer, got {number}")
    if number >= _MAX_NAMED:
        return digits_to_words(str(number))
    if number == 0:
        return "zero"
    words: list[str] = []
    scale = 0
    while number:
        number, group = divmod(number, 1000)
        if group:
            words[:0] = [*_below_thousand(group), *([_SCALES[scale]] if scale else [])]
        scale += 1
    return " ".join(words)


def _below_thousand(number: int) -> list[str]:
    hundreds, rest = divmod(number, 100)
    words = [_ONES[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words += [_TENS[tens]] + ([_ONES[ones]] if ones else [])
    elif rest:
        words.append(_ONES[rest])
    return words


def ordinal_to_words(number: int) -> str:
    """English ordinal words for a non-negative integer: only the last word changes.

    Examples
    --------
    >>> ordinal_to_words(1), ordinal_to_words(22), ordinal_to_words(40), ordinal_to_words(1000)
    ('first', 'twenty second', 'fortieth', 'one thousandth')
    """
    *head, last = cardinal_to_words(number).split(" ")
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def year_to_words(number: int) -> str:
    """Read an integer in (1000, 3000) the way years are read; other integers as cardinals.

    Examples
    --------
    >>> year_to_words(1984), year_to_words(1905), year_to_words(1900), year_to_words(2007), year_to_words(2024)
    ('nineteen eighty four', 'nineteen oh five', 'nineteen hundred', 'two thousand seven', 'twenty twenty four')
    """
    if not 1000 < number < 3000:
        return cardinal_to_words(number)
    if 2000 <= number < 2010:
        return cardinal_to_words(number)
    century, rest = divmod(number, 100)
    if rest == 0:
        return f"{cardinal_to_words(century)} hundred"
    if rest < 10:
        return f"{cardinal_to_words(century)} oh {_ONES[rest]}"
    return f"{cardinal_to_words(century)} {cardinal_to_words(rest)}"


def _plural(words: str) -> str:
    # "1980s" -> "nineteen eighties", "6s" -> "sixes"
    if words.endswith("y"):
        return words[:-1] + "ies"
    if words.endswith(("x", "s")):
        return words + "es"
    return words + "s"


def _integer_words(text: str, *, as_year: bool) -> str:
    digits = text.replace(",", "")
    if len(digits) > 1 and digits.startswith("0"):
        return digits_to_words(digits)  # "007", "0800": read as digits, like codes
    if len(digits) > _MAX_NAMED_DIGITS:
        return digits_to_words(digits)  # also keeps int() clear of Python's limit on long digit strings
    number = int(digits)
    return year_to_words(number) if as_year and "," not in text else cardinal_to_words(number)


def _currency(match: re.Match[str]) -> str:
    symbol, whole, fraction, scale = match.groups()
    major_one, major_many, minor_one, minor_many = _CURRENCIES[symbol]
    if scale:  # "$1.5 million" -> "one point five million dollars"
        amount = _integer_words(whole, as_year=False)
        if fraction:
            amount += " point " + digits_to_words(fraction)
        return f"{amount} {scale} {major_many}"
    if fraction and (minor_one is None or len(fraction) > 2):
        return f"{_integer_words(whole, as_year=False)} point {digits_to_words(fraction)} {major_many}"
    major = whole.replace(",", "").lstrip("0")  # compared as text: it may be too long for int()
    minor = int(fraction.ljust(2, "0")) if fraction else 0  # "$3.5" is three dollars fifty cents
    parts = []
    if major or not minor:
        parts.append(f"{_integer_words(whole, as_year=False)} {major_one if major == '1' else major_many}")
    if minor:
        parts.append(f"{cardinal_to_words(minor)} {minor_one if minor == 1 else minor_many}")
    return " ".join(parts)


def _ordinal(match: re.Match[str]) -> str:
    digits = match.group(1).replace(",", "")
    if len(digits) > _MAX_NAMED_DIGITS:
        return digits_to_words(digits[:-1]) + " " + ordinal_to_words(int(digits[-1]))
    return ordinal_to_words(int(digits))


def _decimal(match: re.Match[str]) -> str:
    whole, fraction = match.groups()
    head = _integer_words(whole, as_year=False) + " " if whole else ""
    return f"{head}point {digits_to_words(fraction)}"


def _spaced(replace: Callable[[re.Match[str]], str]) -> Callable[[re.Match[str]], str]:
    # Words replacing digits glued to letters or to other digits ("abc123", "1.2.3") need a space around them;
    # next to punctuation they must not get one, or "3," would turn into "three ,".
    def wrapper(match: re.Match[str]) -> str:
        text, start, end = match.string, match.start(), match.end()
        before = " " if start > 0 and text[start - 1].isalnum() else ""
        after = " " if end < len(text) and text[end].isalnum() else ""
        return before + replace(match) + after

    return wrapper


def expand_numbers(text: str) -> str:
    """Replace every run of ASCII digits in lower-case ``text`` by English words.

    Handles, in this order: currency (``$``, ``£``, ``€``, ``¥``, with an optional scale word), ordinals
    (``1st``, ``22nd``), plurals (``1980s``), a leading minus, percentages, decimals, comma-grouped numbers
    (always cardinals) and plain integers (years when between 1000 and 3000; digit by digit with a leading
    zero). Digits glued to letters are split off (``abc123`` -> ``abc one hundred twenty three``).

    Examples
    --------
    >>> expand_numbers("£2 and €1.05, 1,000,000 or 1,984 people; 3.14 is 50% of 6.28")
    'two pounds and one euro five cents, one million or one thousand nine hundred eighty four people; three point one four is fifty percent of six point two eight'
    >>> expand_numbers("the 1980s, -5 degrees, $2.5 million, 101st, 0.5, abc123")
    'the nineteen eighties, minus five degrees, two point five million dollars, one hundred first, zero point five, abc one hundred twenty three'
    """
    text = _CURRENCY_RE.sub(_spaced(_currency), text)
    text = _ORDINAL_RE.sub(_spaced(_ordinal), text)
    text = _PLURAL_RE.sub(_spaced(lambda m: _plural(_integer_words(m.group(1), as_year=True))), text)
    text = _NEGATIVE_RE.sub("minus ", text)
    text = _PERCENT_RE.sub(_spaced(lambda m: "percent"), text)
    text = _DECIMAL_RE.sub(_spaced(_decimal), text)
    text = _GROUPED_RE.sub(_spaced(lambda m: _integer_words(m.group(0), as_year=False)), text)
    return _PLAIN_RE.sub(_spaced(lambda m: _integer_words(m.group(0), as_year=True)), text)
