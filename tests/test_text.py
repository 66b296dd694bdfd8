"""Tests for the Grad-TTS text frontend (robust_gen.speech.text)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robust_gen.speech.text import (
    BLANK_ID,
    SYMBOL_TO_ID,
    SYMBOLS,
    VOCAB_SIZE,
    clean_basic,
    clean_english,
    clean_transliteration,
    encode_text,
    expand_numbers,
    ids_to_text,
    intersperse,
    phonemize,
    text_to_ids,
)
from robust_gen.speech.text.numbers import cardinal_to_words, ordinal_to_words
from robust_gen.speech.text.phonemize import pronunciation_dictionary
from robust_gen.speech.text.symbols import ARPABET, LETTERS, PUNCTUATION

# ---------------------------------------------------------------- symbol set


def test_symbol_set_matches_grad_tts_layout():
    assert len(SYMBOLS) == 148 and VOCAB_SIZE == 149 and BLANK_ID == 148
    assert SYMBOLS[0] == "_" and SYMBOLS[1] == "-"
    assert "".join(SYMBOLS[2:12]) == "!'(),.:;? " == PUNCTUATION
    assert "".join(SYMBOLS[12:64]) == LETTERS and len(LETTERS) == 52
    assert SYMBOLS[64:] == ARPABET and len(ARPABET) == 84 and len(set(ARPABET)) == 84
    assert all(s.startswith("@") for s in ARPABET)
    # 15 vowels x (bare, 0, 1, 2) + 24 consonants
    assert sum(s[-1].isdigit() for s in ARPABET) == 45
    assert ARPABET[:5] == ("@AA", "@AA0", "@AA1", "@AA2", "@AE") and ARPABET[-1] == "@ZH"


def test_every_cmudict_pronunciation_maps_to_symbols():
    dictionary = pronunciation_dictionary()
    assert len(dictionary) > 100_000
    phones = {phone for pron in dictionary.values() for phone in pron}
    assert {"@" + p for p in phones} <= set(ARPABET)
    assert dictionary["world"] == ("W", "ER1", "L", "D")


def test_dictionary_is_loaded_once():
    assert pronunciation_dictionary() is pronunciation_dictionary()


# ---------------------------------------------------------------- numbers


def _words_to_number(words: str) -> int:
    """An independent reader of English cardinals, to check cardinal_to_words both ways."""
    units = {w: i for i, w in enumerate(cardinal_to_words(i) for i in range(20))}
    tens = {w: 10 * i for i, w in enumerate(["", "", "twenty", "thirty", "forty", "fifty", "sixty",
                                             "seventy", "eighty", "ninety"]) if w}  # fmt: skip
    scales = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12,
              "quadrillion": 10**15, "quintillion": 10**18}  # fmt: skip
    total, group = 0, 0
    for word in words.split(" "):
        if word in units:
            group += units[word]
        elif word in tens:
            group += tens[word]
        elif word == "hundred":
            group *= 100
        else:
            total += group * scales[word]
            group = 0
    return total + group


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**20 - 1))
def test_cardinal_words_read_back_to_the_number(number):
    words = cardinal_to_words(number)
    assert re.fullmatch(r"[a-z]+( [a-z]+)*", words)
    assert _words_to_number(words) == number


@pytest.mark.parametrize(
    ("number", "words"),
    [(0, "zero"), (13, "thirteen"), (40, "forty"), (99, "ninety nine"), (100, "one hundred"),
     (101, "one hundred one"), (1000, "one thousand"), (1_000_000, "one million"),
     (2_000_000_003, "two billion three")],
)  # fmt: skip
def test_cardinals(number, words):
    assert cardinal_to_words(number) == words


@pytest.mark.parametrize(
    ("number", "words"),
    [(1, "first"), (2, "second"), (3, "third"), (4, "fourth"), (5, "fifth"), (8, "eighth"), (9, "ninth"),
     (11, "eleventh"), (12, "twelfth"), (20, "twentieth"), (21, "twenty first"), (22, "twenty second"),
     (100, "one hundredth"), (101, "one hundred first"), (1_000_000, "one millionth")],
)  # fmt: skip
def test_ordinals(number, words):
    assert ordinal_to_words(number) == words


def test_negative_cardinal_is_an_error():
    with pytest.raises(ValueError, match="-3"):
        cardinal_to_words(-3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1st and 22nd and 3rd and 11th", "first and twenty second and third and eleventh"),
        ("3.14", "three point one four"),
        ("0.05", "zero point zero five"),
        ("$3.50", "three dollars fifty cents"),
        ("$1", "one dollar"),
        ("$0.01", "one cent"),
        ("$3.5", "three dollars fifty cents"),
        ("$1,250", "one thousand two hundred fifty dollars"),
        ("$2 billion", "two billion dollars"),
        ("£2", "two pounds"),
        ("£1.01", "one pound one penny"),
        ("€20", "twenty euros"),
        ("1984", "nineteen eighty four"),
        ("1905", "nineteen oh five"),
        ("1800", "eighteen hundred"),
        ("2000", "two thousand"),
        ("2008", "two thousand eight"),
        ("2024", "twenty twenty four"),
        ("1,984", "one thousand nine hundred eighty four"),
        ("1,000,000", "one million"),
        ("12,345.6", "twelve thousand three hundred forty five point six"),
        ("50%", "fifty percent"),
        ("2.5 %", "two point five percent"),
        ("the 1920s", "the nineteen twenties"),
        ("-7", "minus seven"),
        ("007", "zero zero seven"),
        ("room 12b", "room twelve b"),
        ("1,2,3", "one,two,three"),
    ],
)
def test_expand_numbers(text, expected):
    assert expand_numbers(text) == expected


def test_long_digit_strings_are_read_digit_by_digit():
    # Python refuses int() on very long digit strings; the expansion must not depend on it.
    words = expand_numbers("9" * 5000 + " and $" + "1" * 5000 + " and " + "2" * 5000 + "nd")
    assert re.fullmatch(r"[a-z ]+", words)
    assert words.count("nine") == 5000 and words.endswith("second")


# ---------------------------------------------------------------- cleaners


_ABBREVIATIONS = {
    "mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "co": "company", "jr": "junior",
    "maj": "major", "gen": "general", "drs": "doctors", "rev": "reverend", "lt": "lieutenant",
    "hon": "honorable", "sgt": "sergeant", "capt": "captain", "esq": "esquire", "ltd": "limited",
    "col": "colonel", "ft": "fort",
}  # fmt: skip


@pytest.mark.parametrize(("short", "long"), sorted(_ABBREVIATIONS.items()))
def test_abbreviations_expand(short, long):
    assert clean_english(f"Met {short.capitalize()}. Smith") == f"met {long} smith"


def test_abbreviation_needs_its_period():
    assert clean_english("the co op") == "the co op"


def test_english_cleaner_unicode_and_whitespace():
    assert clean_english("  Café\tNAÏVE\n\n“quoted” — ﬁne  ") == 'cafe naive "quoted" - fine'
    assert clean_english("Straße ＴＥＳＴ ７") == "strasse test seven"
    assert clean_english("日本語 text") == "text"


def test_other_cleaners():
    assert clean_transliteration("Ça  VA 3") == "ca va 3"
    assert clean_basic("Ça  VA") == "ça va"


def test_unknown_cleaner_is_an_error():
    with pytest.raises(ValueError, match="'klingon'"):
        text_to_ids("hello", cleaner="klingon")


# ---------------------------------------------------------------- phonemes and ids


def test_punctuation_is_split_off_not_spelled():
    symbols = phonemize("Hello, world.")
    assert symbols == ["@HH", "@AH0", "@L", "@OW1", ",", " ", "@W", "@ER1", "@L", "@D", "."]
    assert encode_text("(world,) world! world? world: world;").oov_words == []


def test_out_of_dictionary_words_fall_back_to_letters_and_are_reported():
    encoded = encode_text("The blorptastic Zyx said hi", add_blank=False)
    assert encoded.oov_words == ["blorptastic", "zyx"]
    assert ids_to_text(encoded.ids) == "{DH AH0} blorptastic zyx {S EH1 D} {HH AY1}"


def test_hyphenated_words_look_up_parts():
    encoded = encode_text("sun-dried blorp-cat", add_blank=False)
    assert encoded.oov_words == ["blorp"]
    assert encoded.symbols[-3:] == ["@K", "@AE1", "@T"]
    assert "-" not in encoded.symbols
    # a dash between words stays a symbol
    assert phonemize("yes - no")[3:6] == [" ", "-", " "]


def test_inner_apostrophes_stay_in_the_word():
    assert phonemize("don't") == ["@D", "@OW1", "@N", "@T"]


def test_blank_interspersing():
    plain = text_to_ids("Speech synthesis.", add_blank=False)
    blanked = text_to_ids("Speech synthesis.")
    assert blanked == intersperse(plain, BLANK_ID)
    assert BLANK_ID not in plain


@pytest.mark.parametrize("text", ["", "   \n\t", "###", "日本語", "___", "@^#~"])
def test_text_without_symbols_is_a_value_error_naming_it(text):
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        text_to_ids(text)


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError, match="str"):
        text_to_ids(b"hello")  # type: ignore[arg-type]


def test_ids_to_text_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="149"):
        ids_to_text([1, 149])


# Arbitrary unicode, plus text dense in what the cleaners act on (digits, currency, abbreviations, accents).
_TRICKY = st.text(
    alphabet=st.sampled_from(list("0123456789$£€¥.,%-'!?:;() stndrhmMDSTÉéñü“”—…\t\n_#@")), max_size=60
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), _TRICKY))
def test_any_unicode_text_gives_valid_ids_or_a_value_error(text):
    try:
        ids = text_to_ids(text)
    except ValueError as error:
        assert repr(text) in str(error)
        return
    assert len(ids) % 2 == 1 and len(ids) >= 3
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert all(i == BLANK_ID for i in ids[0::2])  # blank before, between and after the symbols
    assert all(i != BLANK_ID for i in ids[1::2])
    assert SYMBOL_TO_ID["_"] not in ids
    assert text_to_ids(text, add_blank=False) == ids[1::2]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("abc xyz0123456789$£.,%-'!?stndrh"), max_size=40))
def test_number_heavy_text_leaves_no_digits(text):
    cleaned = clean_english(text)
    assert not re.search(r"[0-9£]", cleaned)
