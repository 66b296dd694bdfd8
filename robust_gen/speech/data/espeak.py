"""A ctypes driver for the espeak-ng speech synthesizer bundled by the ``espeakng-loader`` package.

The package ships ``libespeak-ng.so`` and its ``espeak-ng-data`` folder, so speech can be synthesized
offline for about a hundred voice variants. We drive the C API directly (``speak_lib.h``):

``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ...)`` -> sample rate, ``espeak_SetVoiceByName``,
``espeak_SetParameter`` (rate, pitch, range), ``espeak_SetSynthCallback`` (collects int16 samples),
``espeak_Synth`` and ``espeak_Synchronize``.

Determinism. libespeak-ng keeps synthesis state in C statics that ``espeak_Terminate`` does not reset
(e.g. the pitch-flutter phase in ``wavegen.c``) and seeds its noise generator from the clock in
``espeak_Initialize``. So the same text in the same voice gives slightly different audio depending on
what was spoken before. To make every utterance a pure function of (text, voice, parameters), each
:class:`EspeakSynthesizer` loads a *private copy* of the shared library and reloads it (``dlclose`` +
``dlopen``, about a millisecond) before every utterance, then fixes the noise seed with
``espeak_ng_SetRandSeed``. The private copy also keeps other users of the packaged library (e.g. a
phonemizer) from sharing, or pinning in memory, the state we reset.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

# Values from espeak-ng's speak_lib.h.
AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit() when data is missing
ESPEAK_CHARS_AUTO = 0
POS_CHARACTER = 1
ESPEAK_RATE, ESPEAK_PITCH, ESPEAK_RANGE = 1, 3, 4
EE_OK, EE_INTERNAL_ERROR, EE_BUFFER_FULL, EE_NOT_FOUND = 0, -1, 1, 2
RATE_LIMITS = (80, 450)  # words per minute (espeakRATE_MINIMUM, espeakRATE_MAXIMUM)
PERCENT_LIMITS = (0, 100)  # pitch and pitch range are 0..100, 50 being the voice's own setting
BUFFER_MS = 200  # size of the sample chunks handed to the callback; it does not change the audio

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True)
class VoiceSpec:
    """One synthetic speaker: an espeak-ng voice name plus prosody parameters.

    Parameters
    ----------
    speaker : str
        Speaker id written into filelists and used as the folder name (letters, digits, ``_`` and ``-``).
    voice : str
        espeak-ng voice name, a base voice with an optional ``+variant`` (``"en-us+f3"``).
    rate : int
        Speaking rate in words per minute, 80..450 (espeak-ng's default is 175).
    pitch : int
        Base pitch, 0..100; 50 keeps the variant's own pitch.
    pitch_range : int
        Intonation range, 0..100; 50 keeps the variant's own range, 0 is monotone.

    Examples
    --------
    >>> VoiceSpec("us_f3", "en-us+f3", rate=160).voice
    'en-us+f3'
    >>> VoiceSpec("bad/name", "en")
    Traceback (most recent call last):
    ...
    ValueError: speaker id 'bad/name' must be non-empty and use only letters, digits, '_' and '-'
    """

    speaker: str
    voice: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50

    def __post_init__(self) -> None:
        if not self.speaker or not all(c.isalnum() or c in "_-" for c in self.speaker):
            raise ValueError(
                f"speaker id {self.speaker!r} must be non-empty and use only letters, digits, '_' and '-'"
            )
        if not self.voice or "\0" in self.voice:
            raise ValueError(f"voice name {self.voice!r} of speaker {self.speaker!r} is empty or invalid")
        _check_range("rate", self.rate, RATE_LIMITS, self.speaker)
        _check_range("pitch", self.pitch, PERCENT_LIMITS, self.speaker)
        _check_range("pitch_range", self.pitch_range, PERCENT_LIMITS, self.speaker)


def _check_range(name: str, value: int, limits: tuple[int, int], speaker: str) -> None:
    low, high = limits
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} of speaker {speaker!r} must be an integer in [{low}, {high}]")


def espeak_data_path() -> Path:
    """The ``espeak-ng-data`` folder shipped by ``espeakng-loader``.

    Examples
    --------
    >>> (espeak_data_path() / "phontab").is_file()
    True
    """
    import espeakng_loader

    return Path(espeakng_loader.get_data_path())


def espeak_library_path() -> Path:
    """The ``libespeak-ng`` shared library shipped by ``espeakng-loader``.

    Examples
    --------
    >>> espeak_library_path().is_file()
    True
    """
    import espeakng_loader

    path = Path(espeakng_loader.get_library_path())
    if not path.is_file():
        raise FileNotFoundError(f"espeakng-loader's library is missing at {path}; reinstall espeakng-loader")
    return path


@cache
def available_base_voices() -> frozenset[str]:
    """Lower-case names of the base (language) voices in the bundled data, e.g. ``"en-us"``.

    Examples
    --------
    >>> {"en", "en-us", "en-gb-x-rp"} <= available_base_voices()
    True
    """
    lang_dir = espeak_data_path() / "lang"
    return frozenset(p.name.lower() for p in lang_dir.rglob("*") if p.is_file())


@cache
def available_variants() -> frozenset[str]:
    """Names of the voice variants (the part after ``+``) in the bundled data, e.g. ``"f3"``, ``"m7"``.

    Examples
    --------
    >>> {"f1", "f5", "m1", "m7"} <= available_variants()
    True
    """
    return frozenset(p.name for p in (espeak_data_path() / "voices" / "!v").iterdir() if p.is_file())


def check_voice_name(voice: str) -> None:
    """Raise ValueError unless ``voice`` names a bundled base voice and (if given) a bundled variant.

    espeak-ng accepts an unknown ``+variant`` without complaint and speaks the plain base voice, so an
    unchecked typo would silently merge two speakers.

    Examples
    --------
    >>> check_voice_name("en-us+m3")
    >>> check_voice_name("en+nope")
    Traceback (most recent call last):
    ...
    ValueError: espeak-ng voice 'en+nope': no variant 'nope' in the bundled data; pick one of f1..f5, m1..m8 or another file in espeak-ng-data/voices/!v
    """
    base, _, variant = voice.partition("+")
    if base.lower() not in available_base_voices():
        english = ", ".join(sorted(v for v in available_base_voices() if v.startswith("en")))
        raise ValueError(
            f"espeak-ng voice {voice!r}: no base voice {base!r} in the bundled data (English ones: {english})"
        )
    if variant and variant not in available_variants():
        raise ValueError(
            f"espeak-ng voice {voice!r}: no variant {variant!r} in the bundled data; pick one of "
            "f1..f5, m1..m8 or another file in espeak-ng-data/voices/!v"
        )


def _remove_private_copy(folder: Path, owner_pid: int) -> None:
    # A forked child (e.g. a DataLoader worker) inherits the instance; only the creating process
    # deletes the library copy that its own reloads still need.
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)


class EspeakSynthesizer:
    """Offline text-to-speech with espeak-ng, one utterance at a time, deterministic.

    Every call to :meth:`synthesize` starts from a freshly loaded library with a fixed noise seed,
    so the output depends only on the text and the voice. Calls are serialized by a lock; use
    :meth:`shared` for the process-wide instance.

    Examples
    --------
    >>> synth = EspeakSynthesizer.shared()
    >>> synth.sample_rate
    22050
    >>> wav = synth.synthesize("Hello there.", VoiceSpec("gb_m3", "en+m3"))
    >>> wav.dtype, wav.ndim, len(wav) > synth.sample_rate // 4
    (dtype('int16'), 1, True)
    """

    _shared: EspeakSynthesizer | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data_path = bytes(espeak_data_path())
        # A private copy of the library: our dlclose then really unloads it (resetting its statics)
        # even when someone else in the process holds the packaged one open.
        self._tmpdir = Path(tempfile.mkdtemp(prefix="robust_gen_espeak_"))
        self._lib_path = self._tmpdir / "libespeak-ng-private.so"
        shutil.copyfile(espeak_library_path(), self._lib_path)
        self._cleanup = weakref.finalize(self, _remove_private_copy, self._tmpdir, os.getpid())
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive as long as the instance
        self._lib: ctypes.CDLL | None = None
        self.sample_rate = self._reload()

    @classmethod
    def shared(cls) -> EspeakSynthesizer:
        """The process-wide synthesizer, created on first use."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @property
    def version(self) -> str:
        """The espeak-ng version string reported by the library (e.g. ``"1.52.0"``)."""
        with self._lock:
            assert self._lib is not None
            self._lib.espeak_Info.restype = ctypes.c_char_p
            return self._lib.espeak_Info(None).decode()

    def _collect(self, samples, count, _events) -> int:
        if samples and count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # 0 = continue synthesis

    def _reload(self) -> int:
        """Unload and load the private library copy, initialize it; return its sample rate."""
        if self._lib is not None:
            self._lib.espeak_Terminate()
            _ctypes.dlclose(self._lib._handle)
            self._lib = None
        if not self._lib_path.is_file():  # e.g. removed by a cleaner of the temp folder
            self._lib_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(espeak_library_path(), self._lib_path)
        lib = ctypes.CDLL(str(self._lib_path))
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        rate = lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, self._data_path, ESPEAK_INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise RuntimeError(
                f"espeak_Initialize failed (returned {rate}) with data path {self._data_path.decode()}; "
                "reinstall espeakng-loader"
            )
        lib.espeak_SetSynthCallback(self._callback)
        if hasattr(lib, "espeak_ng_SetRandSeed"):  # espeak-ng >= 1.52; older builds seed from the clock
            lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
        self._lib = lib
        return rate

    def synthesize(self, text: str, voice: VoiceSpec) -> np.ndarray:
        """Speak ``text`` with ``voice``; return mono int16 samples at :attr:`sample_rate`.

        Raises ValueError for empty text or an unknown voice, RuntimeError when espeak-ng fails or
        returns no audio.
        """
        if not isinstance(text, str) or not text.strip() or "\0" in text:
            raise ValueError(f"text to synthesize must be a non-empty string without NUL, got {text!r}")
        check_voice_name(voice.voice)
        if self._cleanup.alive is False:
            raise RuntimeError("this EspeakSynthesizer was closed; create a new one")
        encoded = text.encode("utf-8") + b"\0"
        with self._lock:
            self._reload()
            lib = self._lib
            assert lib is not None
            # The voice is selected again for every utterance: the library was just reloaded, and
            # SetVoiceByName keeps the previous voice when the name is not found.
            status = lib.espeak_SetVoiceByName(voice.voice.encode())
            if status != EE_OK:
                raise ValueError(f"espeak-ng could not select voice {voice.voice!r} (status {status})")
            for parameter, value in (
                (ESPEAK_RATE, voice.rate),
                (ESPEAK_PITCH, voice.pitch),
                (ESPEAK_RANGE, voice.pitch_range),
            ):
                status = lib.espeak_SetParameter(parameter, value, 0)
                if status != EE_OK:
                    raise RuntimeError(f"espeak_SetParameter({parameter}, {value}) failed with {status}")
            self._chunks = []
            status = lib.espeak_Synth(
                encoded, len(encoded), 0, POS_CHARACTER, 0, ESPEAK_CHARS_AUTO, None, None
            )
            sync_status = lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if status != EE_OK or sync_status != EE_OK:
            raise RuntimeError(f"espeak_Synth failed (status {status}, {sync_status}) for text {text!r}")
        if not chunks:
            raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {voice.voice!r}")
        return np.concatenate(chunks)

    def close(self) -> None:
        """Unload the library and delete the private copy (also done at garbage collection)."""
        with self._lock:
            if self._lib is not None:
                self._lib.espeak_Terminate()
                _ctypes.dlclose(self._lib._handle)
                self._lib = None
            self._cleanup()
