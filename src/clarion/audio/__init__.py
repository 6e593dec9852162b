"""Audio I/O: decoding (:mod:`.decode`), the clip cache (:mod:`.cache`), log-mel features (:mod:`.features`),
whole recordings as pooled windows (:mod:`.windows`)."""

from .cache import ClipCache
from .decode import AudioError, decode_audio, file_problem, fit_length, pad_to, read_audio
from .features import LogMel, mel_filterbank
from .windows import Pooled, WindowPlan, embed_windowed, file_summary, file_windows, wave_windows

__all__ = [
    "AudioError", "ClipCache", "LogMel", "Pooled", "WindowPlan", "decode_audio", "embed_windowed", "file_problem",
    "file_summary", "file_windows", "fit_length", "pad_to", "mel_filterbank", "read_audio", "wave_windows",
]
