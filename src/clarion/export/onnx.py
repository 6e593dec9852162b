"""``clarion export RUN --out DIR --format onnx``: each tower of a model as an ONNX graph.

The folder holds

- ``audio.onnx``: input ``wave`` float32 [B, n] (mono, at ``sample_rate``; clarion's own pipeline
  feeds ``clip_samples``), output ``audio_embedding`` float32 [B, d], unit norm. The log-mel front end is
  inside the graph (``cnn``: :class:`~clarion.audio.features.LogMel`; PANNs: its STFT and Slaney
  filterbank), so B and n are both free.
- ``text.onnx``: inputs ``input_ids`` int64 [B, L] and ``attention_mask`` int64 [B, L] (1 on real
  tokens, 0 on padding), output ``text_embedding`` float32 [B, d], unit norm; L ≤ ``max_tokens``.
- the tokenizer that makes those ids: ``tokenizer.json`` (``tokenizers`` format) for the
  ``transformer`` tower, which pads with id 0, truncates to ``max_tokens`` and keeps the final
  ``[SEP]`` when it truncates (:meth:`~clarion.models.text.TransformerTextEncoder.tokenize`); the
  Hugging Face tokenizer's own files in ``tokenizer/`` for ``hf`` / ``minilm-packaged`` towers.
- ``onnx.json``: the contract above as data (names, shapes, ``sample_rate``, ``clip_samples``,
  ``max_tokens``, ``embed_dim``, the model fingerprint) and the parity measured at export:
  onnxruntime against torch on a batch size and lengths other than those traced.
- ``config.yaml``: the model's config, for reference.

Graphs are traced with ``torch.onnx.export(dynamo=True)`` in eval mode (no dropout, BatchNorm
running statistics, no augmentation). Supported towers: audio ``cnn``, ``panns-cnn14``,
``panns-resnet38``; text ``transformer``, ``hf``, ``minilm-packaged``. A Hugging Face audio tower
is refused: its front end is the feature extractor, NumPy code outside the module that no ONNX
graph holds. The export fails (and writes nothing) when the measured parity is worse than
:data:`TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..api import ClarionModel
from ..files import atomic_dir, atomic_write_json, check_replaceable
from ..models.audio import CnnAudioEncoder
from ..models.hf import HfTextEncoder
from ..models.panns import PannsEncoder
from ..models.text import TransformerTextEncoder
from ..rundir import RunError
from ..version import __version__

log = logging.getLogger("clarion.export")

FORMAT = "clarion-onnx-1"
TOLERANCE = 1e-4  # max |onnxruntime − torch| on the unit embeddings
OPSET = 18
AUDIO_FILE, TEXT_FILE, MANIFEST = "audio.onnx", "text.onnx", "onnx.json"
AUDIO_OUTPUT, TEXT_OUTPUT = "audio_embedding", "text_embedding"  # graph output names


class OnnxExportError(RunError):
    """A model (or tower) that cannot be written as ONNX, or an export whose parity check failed."""


def _needs_onnx() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter writes through it)
    except ImportError as exc:
        raise OnnxExportError(
            f"--format onnx needs the optional packages onnx, onnxscript and onnxruntime ({exc.name} is missing): "
            "pip install 'clarion[onnx]'"
        ) from None
    return onnxruntime


class AudioGraph(nn.Module):
    """wave [B, n] → unit embedding [B, d]: the model's own :meth:`~clarion.models.DualEncoder.embed_audio`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model.embed_audio(wave)


class TextGraph(nn.Module):
    """(input_ids, attention_mask) [B, L] → unit embedding [B, d]: the text tower without its
    tokenizer, then the projection head and L2 normalisation (as ``embed_text``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.tower = model.text_encoder

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if isinstance(self.tower, TransformerTextEncoder):
            return self.tower.encode(input_ids, attention_mask.bool())
        # HfTextEncoder.forward after tokenisation: pooled last hidden state
        hidden = self.tower.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.tower.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.text_projection(self.features(input_ids, attention_mask)).float(), dim=-1)


def check_exportable(model: ClarionModel) -> None:
    """Raise :class:`OnnxExportError` naming the tower that cannot be exported."""
    audio, text = model.model.audio_encoder, model.model.text_encoder
    if not isinstance(audio, (CnnAudioEncoder, PannsEncoder)):
        raise OnnxExportError(
            f"model.audio_encoder={model.cfg.model.audio_encoder} cannot be exported as ONNX: its front end is the "
            "Hugging Face feature extractor (NumPy, outside the module); supported: cnn, panns-cnn14, panns-resnet38"
        )
    if not isinstance(text, (TransformerTextEncoder, HfTextEncoder)):
        raise OnnxExportError(f"model.text_encoder={model.cfg.model.text_encoder} cannot be exported as ONNX")


def tokenize(model: ClarionModel, captions: list[str]) -> dict[str, np.ndarray]:
    """The ``text.onnx`` inputs for ``captions``, exactly as the torch model tokenises them."""
    tower = model.model.text_encoder
    if isinstance(tower, TransformerTextEncoder):
        ids, mask = tower.tokenize(captions)
    else:
        enc = tower.tokenize(captions)
        ids, mask = enc["input_ids"], enc["attention_mask"]
    return {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}


def _export(graph: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], output: str, path: Path) -> None:
    auto = torch.export.Dim.AUTO
    dynamic = {name: {0: auto, 1: auto} for name in names}
    chatter = io.StringIO()  # the exporter prints its progress on stdout
    try:
        with contextlib.redirect_stdout(chatter):
            torch.onnx.export(graph, args, str(path), input_names=names, output_names=[output], dynamo=True,
                              dynamic_shapes=dynamic, opset_version=OPSET, verbose=False, external_data=False)
        log.debug("%s", chatter.getvalue())
    except Exception as exc:  # the exporter raises many types; the user needs the tower and the reason
        raise OnnxExportError(f"torch.onnx could not export {path.name}: {type(exc).__name__}: {str(exc)[:2000]}") from exc


def _parity(ort: Any, path: Path, inputs: dict[str, np.ndarray], output: str, expected: torch.Tensor) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run([output], inputs)[0]
    if out.shape != tuple(expected.shape):
        raise OnnxExportError(f"{path.name}: onnxruntime gave shape {out.shape}, torch {tuple(expected.shape)}")
    return float(np.abs(out - expected.numpy()).max())


PROBE_CAPTIONS = ["a dog barks twice", "a low tone, then a loud bell rings three times", "rain"]


def export_onnx(model: ClarionModel, out: str | Path, overwrite: bool = False, seed: int = 0) -> dict[str, Any]:
    """Write ``model``'s towers to ``out`` (see the module docstring); returns the ``onnx.json`` record.

    Traced at batch 2 and ``clip_samples``; checked under onnxruntime at batch 3 on
    ``clip_samples`` and on half of it (audio) and on :data:`PROBE_CAPTIONS` (text, another
    length than traced). An existing ``out`` is replaced only with ``overwrite`` and only when it
    holds an ONNX export.
    """
    ort = _needs_onnx()
    check_exportable(model)
    out = Path(out)
    check_replaceable(out, MANIFEST, "a clarion ONNX export", overwrite, OnnxExportError)
    net = model.model.to("cpu").eval()
    n = model.clip_samples
    generator = torch.Generator().manual_seed(seed)
    wave = lambda b, length: 0.1 * torch.randn(b, length, generator=generator)  # noqa: E731
    parity: dict[str, float] = {}
    with atomic_dir(out) as tmp, torch.no_grad():
        audio, text = AudioGraph(net).eval(), TextGraph(net).eval()
        _export(audio, (wave(2, n),), ["wave"], AUDIO_OUTPUT, tmp / AUDIO_FILE)
        traced = tokenize(model, ["a short caption", "another caption with more words in it"])
        _export(text, (torch.from_numpy(traced["input_ids"]), torch.from_numpy(traced["attention_mask"])),
                ["input_ids", "attention_mask"], TEXT_OUTPUT, tmp / TEXT_FILE)
        for length in (n, max(1, n // 2)):
            w = wave(3, length)
            parity[f"audio_B3_n{length}"] = _parity(ort, tmp / AUDIO_FILE, {"wave": w.numpy()}, AUDIO_OUTPUT, net.embed_audio(w))
        probe = tokenize(model, PROBE_CAPTIONS)
        parity[f"text_B3_L{probe['input_ids'].shape[1]}"] = _parity(ort, tmp / TEXT_FILE, probe, TEXT_OUTPUT,
                                                                net.embed_text(PROBE_CAPTIONS))
        worst = max(parity.values())
        if not worst <= TOLERANCE:
            raise OnnxExportError(f"ONNX parity check failed: max |onnxruntime - torch| = {worst:.3g} > {TOLERANCE:g} ({parity})")
        tower = net.text_encoder
        if isinstance(tower, TransformerTextEncoder):
            model.tokenizer.save(str(tmp / "tokenizer.json"))
            tokenizer = "tokenizer.json"
        else:
            tower.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            tokenizer = "tokenizer/"
        model.cfg.save(tmp / "config.yaml")
        record = {
            "format": FORMAT, "clarion": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "opset": OPSET, "fingerprint": model.fingerprint, "exported_from": str(model.source),
            "audio_encoder": model.cfg.model.audio_encoder, "text_encoder": model.cfg.model.text_encoder,
            "embed_dim": model.embed_dim, "sample_rate": model.sample_rate, "clip_samples": n,
            "max_tokens": model.cfg.model.max_tokens, "tokenizer": tokenizer,
            "audio": {"file": AUDIO_FILE, "inputs": {"wave": ["B", "n", "float32"]},
                      "outputs": {AUDIO_OUTPUT: ["B", model.embed_dim, "float32"]}},
            "text": {"file": TEXT_FILE, "inputs": {"input_ids": ["B", "L", "int64"], "attention_mask": ["B", "L", "int64"]},
                     "outputs": {TEXT_OUTPUT: ["B", model.embed_dim, "float32"]}},
            "parity_max_abs": parity, "tolerance": TOLERANCE,
        }
        atomic_write_json(tmp / MANIFEST, record)
    log.info("ONNX export in %s; parity %s", out, parity)
    return record
