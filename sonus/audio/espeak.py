"""eSpeak NG through ctypes (the library and voices shipped by PyPI ``espeakng-loader``).

Synchronous mode: ``espeak_Synth`` returns once the callback has received all samples.
The library is a process-wide singleton with global state, so a process gets one
engine (:func:`get_engine`), and :func:`synthesized_here` tells whether this process's
engine state is already "dirty" (see ``sonus.data.recipes.synth`` on determinism).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

_INSTALL_HINT = "install eSpeak NG for Python with `pip install espeakng-loader`"
_SYNC, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1  # AUDIO_OUTPUT_SYNCHRONOUS, POS_CHARACTER, espeakCHARS_UTF8
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def espeak_paths() -> tuple[str, str]:
    """(library file, data folder) shipped by ``espeakng-loader``; RuntimeError without it."""
    try:
        import espeakng_loader

        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except (ImportError, RuntimeError) as e:
        raise RuntimeError(f"eSpeak NG is not available ({e}); {_INSTALL_HINT}") from e


def load_library(path: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise RuntimeError(f"cannot load the eSpeak NG library {path} ({e}); {_INSTALL_HINT}") from e
    lib.espeak_Info.argtypes, lib.espeak_Info.restype = [ctypes.c_void_p], ctypes.c_char_p
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes, lib.espeak_SetSynthCallback.restype = [_CALLBACK], None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_ng_SetRandSeed.argtypes, lib.espeak_ng_SetRandSeed.restype = [ctypes.c_long], None
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]  # fmt: skip
    return lib


@dataclass(frozen=True)
class VoiceSettings:
    """How one utterance is spoken: eSpeak voice name and its parameters."""

    voice: str  # accent[+variant], e.g. "en-us+f2"
    rate: int  # words per minute
    pitch: int  # 0..100
    pitch_range: int  # 0..100
    volume: int  # 0..200, 100 is the default


class EspeakEngine:
    """ctypes binding to libespeak-ng in synchronous mode.

    The library is a process-wide singleton with global state: use :func:`get_engine`,
    which initialises it once per process.
    """

    def __init__(self, library_path: str | None = None, data_path: str | None = None) -> None:
        if library_path is None or data_path is None:
            default_lib, default_data = espeak_paths()
            library_path, data_path = library_path or default_lib, data_path or default_data
        self._lib = load_library(library_path)
        self.sample_rate = int(self._lib.espeak_Initialize(_SYNC, 0, str(data_path).encode(), 0))
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data folder {data_path}; {_INSTALL_HINT}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: the library holds a raw pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes._Pointer, num_samples: int, events: int) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0: go on synthesising

    def synthesize(self, text: str, settings: VoiceSettings, seed: int = 0) -> np.ndarray:
        """Speak ``text``; returns (T,) int16 samples at ``self.sample_rate`` (22.05 kHz).

        ``seed`` seeds eSpeak's noise generator, which breathy variants (``+f2``) use
        and which ``espeak_Initialize`` seeds from the clock.

        Raises:
            RuntimeError: eSpeak rejects the voice or the text, or produces no audio.
        """
        global _SYNTHESIZED_HERE
        _SYNTHESIZED_HERE = True
        if self._lib.espeak_SetVoiceByName(settings.voice.encode()) != 0:
            raise RuntimeError(f"eSpeak has no voice '{settings.voice}'")
        for param, value in ((_RATE, settings.rate), (_PITCH, settings.pitch),
                             (_RANGE, settings.pitch_range), (_VOLUME, settings.volume)):  # fmt: skip
            self._lib.espeak_SetParameter(param, value, 0)
        self._lib.espeak_ng_SetRandSeed(seed)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0 or not self._chunks:
            raise RuntimeError(f"eSpeak failed (error {err}, {len(self._chunks)} chunks) on {text!r} ({settings.voice})")
        return np.concatenate(self._chunks)


_ENGINE: EspeakEngine | None = None
_SYNTHESIZED_HERE = False  # True: this process's eSpeak state is dirty, do not fork workers from it


def synthesized_here() -> bool:
    """Whether this process has synthesised (its eSpeak state then depends on the past)."""
    return _SYNTHESIZED_HERE


def get_engine() -> EspeakEngine:
    """This process's :class:`EspeakEngine`, initialised on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = EspeakEngine()
    return _ENGINE
