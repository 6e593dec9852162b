"""The Python API: load a trained model, embed audio and text, classify, compare, export.

    import clarion
    model = clarion.load("runs/clotho")                 # a run directory or an exported model
    a = model.embed_audio(["dog.wav", "rain.flac"])      # [2, d] unit norm
    t = model.embed_text(["a dog barks", "rain"])        # [2, d]
    model.similarity(a, t)                               # [2, 2] cosine
    model.classify("dog.wav", ["dog", "rain"]).top(1)    # [[("dog", 0.93)]]
    model.save("models/clotho")                          # self-contained export

Audio goes through the evaluation pipeline: decoded (or taken as a 1-D array), resampled to
``cfg.audio.sample_rate``, capped at ``cfg.audio.max_seconds``, then cropped from the start or
zero-padded to ``cfg.audio.clip_seconds`` (:func:`clarion.audio.fit_length` without a
random generator, as :class:`clarion.data.loaders.ClipDataset` does). With
``cfg.audio.long == "windows"`` (:meth:`ClarionModel.set_long`) the whole input is cut into
windows instead, each embedded, and pooled into one embedding (:mod:`clarion.audio.windows`;
files are streamed, so an hour-long file needs no more memory than a short one). Everything
runs in eval mode under ``torch.no_grad`` in float32, so the same input always gives the same
embedding.

An export directory is a run directory without the training state (same loader,
:func:`clarion.rundir.load_model`): ``config.yaml``, ``tokenizer.json``, ``model.safetensors``
(model + objective state), ``model.json`` (metadata, checksum, fingerprint) and, for pretrained
towers, ``audio_encoder/`` / ``text_encoder/``. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import soxr
import torch
from tokenizers import Tokenizer

from .config import Config, config_from_dict
from .files import atomic_dir, check_replaceable
from .audio import AudioError, Pooled, WindowPlan, embed_windowed, file_windows, fit_length, read_audio, wave_windows
from .evaluate.zeroshot import DEFAULT_PROMPT, class_embeddings
from .models import DualEncoder
from .models.clap import is_clap_spec
from .rundir import RunError, load_model, load_tokenizer, pretrained_clap_run, read_objective_state, save_model
from .runtime import resolve_device

log = logging.getLogger("clarion.api")

EXPORT_FORMAT = "clarion-model/1"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")

AudioInput = str | os.PathLike | np.ndarray | torch.Tensor  # a file, or a 1-D waveform


def load(path: str | os.PathLike, device: str | torch.device = "auto", **long_audio) -> ClarionModel:
    """The model of a run directory or an export directory (:meth:`ClarionModel.save`), in
    eval mode on ``device`` ("auto": CUDA when available, else CPU). ``"hf-clap:PATH"``: a
    pretrained Hugging Face CLAP folder (or cached hub id) as an untrained model
    (:func:`clarion.rundir.pretrained_clap_run`); ``save`` turns it into an export directory.
    Keyword arguments (``long``, ``window_seconds``, ``hop_seconds``, ``pool``) go to
    :meth:`ClarionModel.set_long`."""
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if is_clap_spec(path):
        cfg, tokenizer, model, objective = pretrained_clap_run(str(path))
        meta = {"format": "hf-clap", "source": str(path)}
        loaded = ClarionModel(cfg, model.to(device), tokenizer, objective.state_dict(), meta, Path(str(path)))
        return loaded.set_long(**long_audio) if long_audio else loaded
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"no model at {path}: expected a run or export directory (or hf-clap:PATH)")
    cfg, model = load_model(path, device)
    meta_path = path / "model.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    loaded = ClarionModel(cfg, model, load_tokenizer(path), read_objective_state(path), meta, path)
    if long_audio:
        loaded.set_long(**long_audio)
    return loaded


@dataclass
class Classification:
    """Zero-shot classification of N clips into C classes.

    ``scores`` [N, C]: cosine between each clip and each class embedding (prompt templates
    averaged); ``probs`` [N, C]: ``softmax(scale · scores)`` over classes.
    """

    labels: list[str]
    scores: torch.Tensor
    probs: torch.Tensor

    @property
    def predicted(self) -> list[str]:
        """[N] the best label of each clip."""
        return [self.labels[c] for c in self.scores.argmax(1).tolist()]

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per clip, the ``min(k, C)`` best ``(label, probability)``, best first."""
        probs, index = self.probs.topk(min(k, len(self.labels)), dim=1)
        return [[(self.labels[c], p) for c, p in zip(row_c, row_p)] for row_c, row_p in zip(index.tolist(), probs.tolist())]


@dataclass
class FileEmbeddings:
    """:meth:`ClarionModel.embed_files`: ``embeddings`` [n_ok, d] of the files at positions
    ``ok`` (into the paths given) and the ``(path, reason)`` of the files that failed. With
    ``keep_windows``: per ok file, its window embeddings [K_i, d] and window starts in seconds."""

    embeddings: torch.Tensor
    ok: list[int]
    bad: list[tuple[str, str]]
    windows: list[torch.Tensor] | None = None
    starts: list[list[float]] | None = None


LONG_KEYS = ("long", "window_seconds", "hop_seconds", "pool")  # how long inputs are read, not what the model is


class ClarionModel:
    """A trained dual encoder ready for inference. Embeddings come back on the CPU as float32
    [N, d] with unit-norm rows, whatever the device the model runs on."""

    def __init__(
        self,
        cfg: Config,
        model: DualEncoder,
        tokenizer: Tokenizer,
        objective_state: dict[str, torch.Tensor],
        meta: dict,
        source: Path,
    ):
        self.cfg = cfg
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.objective_state = objective_state
        self.meta = meta
        self.source = source

    def __repr__(self) -> str:
        return f"ClarionModel({str(self.source)!r}, d={self.embed_dim}, {self.sample_rate} Hz, device={self.device})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def sample_rate(self) -> int:
        return self.cfg.audio.sample_rate

    @property
    def clip_samples(self) -> int:
        """Samples of the window every clip is cropped / padded to."""
        return round(self.cfg.audio.clip_seconds * self.sample_rate)

    @property
    def windowed(self) -> bool:
        """Whether long inputs are embedded as pooled windows (``audio.long == "windows"``)."""
        return self.cfg.audio.long == "windows"

    @property
    def window_plan(self) -> WindowPlan:
        return WindowPlan.from_config(self.cfg.audio)

    @property
    def long_settings(self) -> dict:
        """``{"long", "window_seconds", "hop_seconds", "pool"}`` as they apply now (resolved seconds)."""
        a = self.cfg.audio
        if a.long == "first":
            return {"long": "first", "clip_seconds": a.clip_seconds}
        plan = self.window_plan
        return {"long": "windows", "window_seconds": plan.window / self.sample_rate,
                "hop_seconds": plan.hop / self.sample_rate, "pool": a.pool}

    def set_long(self, long: str | None = None, window_seconds: float | None = None,
                 hop_seconds: float | None = None, pool: str | None = None) -> ClarionModel:
        """Change how long inputs are embedded (``audio.long`` and its window, hop and pooling;
        None keeps a setting); checked like the config file. Returns ``self``."""
        tree = self.cfg.to_dict()
        for key, value in (("long", long), ("window_seconds", window_seconds), ("hop_seconds", hop_seconds), ("pool", pool)):
            if value is not None:
                tree["audio"][key] = value
        self.cfg.audio = config_from_dict(tree).audio
        return self

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of what determines the embeddings: the model's weights (names, dtypes, shapes,
        bytes), the audio and model config and the tokenizer. A run and its export share it.
        The long-input settings (:data:`LONG_KEYS`) are left out: they say how a file is read,
        and so is ``audio.pad`` at its default ``zeros`` (fingerprints from before the key existed hold),
        and an index records them itself."""
        digest = hashlib.sha256()
        audio = {k: v for k, v in self.cfg.to_dict()["audio"].items() if k not in LONG_KEYS}
        if audio.get("pad") == "zeros":
            del audio["pad"]
        settings = {"audio": audio, "model": self.cfg.to_dict()["model"]}
        digest.update(json.dumps(settings, sort_keys=True).encode())
        digest.update(self.tokenizer.to_str().encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # -- audio ---------------------------------------------------------------------------

    def prepare(self, audio: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """One input as the model's window: float32 [clip_samples].

        ``audio`` is a file path, or a waveform (1-D numpy array or tensor) at ``sample_rate``
        Hz (None: already at the model's rate). Raises :class:`AudioError` for a file that is
        missing or cannot be decoded, ValueError for a bad waveform.
        """
        max_seconds = self.cfg.audio.max_seconds
        if isinstance(audio, (str, os.PathLike)):
            wave = read_audio(audio, self.sample_rate, max_seconds)
        else:
            wave = self._resample(audio, sample_rate)
        return fit_length(wave, self.clip_samples, None, self.cfg.audio.pad)

    def _resample(self, wave: np.ndarray | torch.Tensor, rate: int | None, cap: bool = True) -> np.ndarray:
        """What :func:`clarion.audio.decode_audio` does to decoded samples (soxr "HQ", cap unless ``cap=False``)."""
        if isinstance(wave, torch.Tensor):
            wave = wave.detach().cpu().numpy()
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"a waveform must be 1-D [n_samples] (mono), got shape {wave.shape}")
        if wave.size == 0:
            raise ValueError("empty waveform (0 samples)")
        if not np.isfinite(wave).all():
            raise ValueError("waveform has non-finite samples (NaN/Inf)")
        rate = self.sample_rate if rate is None else rate
        if int(rate) != rate or rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {rate}")
        if rate != self.sample_rate:
            wave = soxr.resample(wave, int(rate), self.sample_rate, quality="HQ")
        if cap and self.cfg.audio.max_seconds is not None:
            wave = wave[: int(np.ceil(self.cfg.audio.max_seconds * self.sample_rate - 1e-6))]
        return np.ascontiguousarray(wave, dtype=np.float32)

    @torch.no_grad()
    def _embed_windows(self, windows: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        """[B, d] embeddings of B prepared windows [clip_samples] (or [window] samples)."""
        batch = torch.from_numpy(np.stack(windows) if isinstance(windows, list) else windows).to(self.device)
        return self.model.embed_audio(batch).float().cpu()

    def _window_source(self, audio: AudioInput, sample_rate: int | None) -> Callable[[], Iterator[tuple[int, np.ndarray]]]:
        """The window iterator of one input (windows mode): a file is streamed, a waveform resampled whole."""
        plan = self.window_plan
        if isinstance(audio, (str, os.PathLike)):
            return lambda: file_windows(audio, self.sample_rate, plan)
        wave = self._resample(audio, sample_rate, cap=False)
        return lambda: wave_windows(wave, plan)

    def _pooled(self, sources: list, batch_size: int, keep_windows: bool = False) -> Iterator[Pooled]:
        return embed_windowed(sources, self._embed_windows, batch_size, self.cfg.audio.pool, keep_windows)

    def embed_audio(
        self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None, batch_size: int = 32
    ) -> torch.Tensor:
        """[N, d] unit-norm embeddings of N files or waveforms (a single one gives [1, d]).

        ``sample_rate`` applies to the waveforms (None: the model's rate). A bad input raises
        (:class:`AudioError` / ValueError); :meth:`embed_files` skips bad files instead.
        """
        items = _as_list(audio)
        _check_batch_size(batch_size)
        if self.windowed:
            pooled = list(self._pooled([self._window_source(x, sample_rate) for x in items], batch_size))
            for item in pooled:
                if item.error is not None:
                    raise item.error
            return torch.stack([p.embedding for p in pooled]) if pooled else torch.zeros(0, self.embed_dim)
        out = [
            self._embed_windows([self.prepare(x, sample_rate) for x in chunk])
            for chunk in _chunks(items, batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def embed_files(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int = 32,
        progress: Callable[[int], object] | None = None,
        keep_windows: bool = False,
    ) -> FileEmbeddings:
        """Embed files, skipping (and logging) those that cannot be decoded.

        ``progress(n)`` is called as files are done with the number done since the last call.
        ``keep_windows`` (windows mode only) also returns each file's window embeddings and starts.
        """
        _check_batch_size(batch_size)
        if keep_windows and not self.windowed:
            raise ValueError("keep_windows needs audio.long=windows")
        if self.windowed:
            return self._embed_files_windowed(list(paths), batch_size, progress, keep_windows)
        embeddings, ok, bad = [], [], []
        for start, chunk in zip(range(0, len(paths), batch_size), _chunks(list(paths), batch_size)):
            windows = []
            for offset, path in enumerate(chunk):
                try:
                    windows.append(self.prepare(path))
                except AudioError as exc:
                    log.warning("skipping %s", exc)
                    bad.append((str(path), exc.reason))
                    continue
                ok.append(start + offset)
            if windows:
                embeddings.append(self._embed_windows(windows))
            if progress is not None:
                progress(len(chunk))
        emb = torch.cat(embeddings) if embeddings else torch.zeros(0, self.embed_dim)
        return FileEmbeddings(emb, ok, bad)

    def _embed_files_windowed(self, paths: list, batch_size: int, progress, keep_windows: bool) -> FileEmbeddings:
        embeddings, ok, bad, windows, starts = [], [], [], [], []
        for item in self._pooled([self._window_source(p, None) for p in paths], batch_size, keep_windows):
            if item.error is not None:
                log.warning("skipping %s", item.error)
                bad.append((str(paths[item.index]), item.error.reason))
            else:
                ok.append(item.index)
                embeddings.append(item.embedding)
                if keep_windows:
                    windows.append(item.windows)
                    starts.append([s / self.sample_rate for s in item.starts])
            if progress is not None:
                progress(1)
        emb = torch.stack(embeddings) if embeddings else torch.zeros(0, self.embed_dim)
        return FileEmbeddings(emb, ok, bad, windows if keep_windows else None, starts if keep_windows else None)

    # -- text ----------------------------------------------------------------------------

    @torch.no_grad()
    def embed_text(self, texts: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """[N, d] unit-norm embeddings of N texts (a single string gives [1, d])."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        _check_batch_size(batch_size)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {i} is empty or not a string: {text!r}")
        out = [self.model.embed_text(chunk).float().cpu() for chunk in _chunks(texts, batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    # -- both ----------------------------------------------------------------------------

    def _audio_embeddings(self, audio, sample_rate: int | None, batch_size: int) -> torch.Tensor:
        """A 2-D tensor is taken as embeddings [N, d]; anything else as inputs of :meth:`embed_audio`."""
        if isinstance(audio, torch.Tensor) and audio.ndim == 2:
            return _check_embeddings(audio, self.embed_dim, "audio")
        return self.embed_audio(audio, sample_rate, batch_size)

    def _text_embeddings(self, text, batch_size: int) -> torch.Tensor:
        if isinstance(text, torch.Tensor):
            return _check_embeddings(text, self.embed_dim, "text")
        return self.embed_text(text, batch_size)

    def similarity(
        self, audio, text, sample_rate: int | None = None, batch_size: int = 32
    ) -> torch.Tensor:
        """Cosine similarity [Na, Nt] between audio (embeddings [Na, d], or inputs of
        :meth:`embed_audio`) and text (embeddings [Nt, d], or strings)."""
        a = self._audio_embeddings(audio, sample_rate, batch_size)
        t = self._text_embeddings(text, batch_size)
        return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T

    def classify(
        self,
        audio,
        labels: Sequence[str],
        prompt: str | Sequence[str] = DEFAULT_PROMPT,
        sample_rate: int | None = None,
        batch_size: int = 32,
        scale: float = 100.0,
    ) -> Classification:
        """Zero-shot classification of audio (embeddings [N, d] or inputs of :meth:`embed_audio`)
        into ``labels``: each class is the prompt template(s) with ``{label}`` filled in, averaged
        over templates (:func:`clarion.evaluate.zeroshot.class_embeddings`, as ``clarion zeroshot``)."""
        labels = [str(x) for x in labels]
        if len(set(labels)) != len(labels):
            raise ValueError("labels are repeated")
        classes = class_embeddings(self.embed_text, labels, prompt).float()  # [C, d]
        a = self._audio_embeddings(audio, sample_rate, batch_size)
        scores = a @ classes.T
        return Classification(labels, scores, torch.softmax(scale * scores, dim=1))

    # -- export --------------------------------------------------------------------------

    def save(self, out: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write a self-contained export directory that :func:`load` reads (see the module
        docstring). An existing non-empty ``out`` is replaced only with ``overwrite`` and only
        when it holds a model (``config.yaml``)."""
        out = Path(out)
        check_replaceable(out, "config.yaml", "a clarion model directory", overwrite, RunError)
        with atomic_dir(out) as tmp:
            self.cfg.save(tmp / "config.yaml")
            self.tokenizer.save(str(tmp / "tokenizer.json"))
            meta = {k: v for k, v in self.meta.items() if k != "sha256"}
            meta.update(format=EXPORT_FORMAT, exported_from=str(self.source), fingerprint=self.fingerprint)
            save_model(tmp, self.model, self.objective_state, meta)
        return out


def find_audio_files(root: str | os.PathLike) -> list[str]:
    """Audio files under ``root`` (recursive, by extension, hidden files and folders left out),
    as sorted POSIX paths relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder not found: {root}")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                found.append((Path(folder) / name).relative_to(root).as_posix())
    return sorted(found)


def _as_list(audio) -> list:
    if isinstance(audio, (str, os.PathLike)) or (isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 1):
        return [audio]
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        raise ValueError(f"pass waveforms as a list of 1-D arrays, got an array of shape {tuple(audio.shape)}")
    return list(audio)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _check_embeddings(x: torch.Tensor, dim: int, what: str) -> torch.Tensor:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} embeddings must be [N, {dim}], got {tuple(x.shape)}")
    return x.detach().float().cpu()
