"""Audio I/O: decoding (:mod:`.decode`), the clip cache (:mod:`.cache`), log-mel features (:mod:`.features`)."""

from .cache import ClipCache
from .decode import AudioError, decode_audio, file_problem, fit_length, read_audio
from .features import LogMel, mel_filterbank

__all__ = ["AudioError", "ClipCache", "LogMel", "decode_audio", "file_problem", "fit_length", "mel_filterbank", "read_audio"]
