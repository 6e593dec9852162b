"""The run directory contract (ARCHITECTURE.md) and model save/load.

    RUN/config.yaml          resolved config tree
    RUN/tokenizer.json       the text tokenizer the model was trained with
    RUN/model.safetensors    best weights (model + objective state), + RUN/model.json metadata
    RUN/text_encoder/        for a pretrained (Hugging Face) text encoder: config.json + tokenizer
    RUN/audio_encoder/       files, for a Hugging Face audio encoder: config.json +
                             preprocessor_config.json; what rebuilding the tower offline needs
                             (its weights are in model.safetensors, so a run is self-contained)
    RUN/checkpoints/         full training state for --resume (see train/checkpoint.py)
    RUN/metrics.jsonl        one JSON object per logged step / epoch

Everything is safetensors + JSON: loading a run never unpickles anything.

Wherever a run or export directory is read, ``hf-clap:PATH`` (a pretrained Hugging Face CLAP
folder or cached hub id) stands for an untrained run built in memory by
:func:`pretrained_clap_run`: both CLAP towers and heads, the InfoNCE objective at CLAP's
temperature, ``audio.clip_seconds`` = the CLAP window.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .config import Config, ConfigError
from .files import atomic_dir, atomic_write, atomic_write_text, sha256  # noqa: F401  (part of this module's API)
from .models import DualEncoder, build_model, load_model_config, train_tokenizer
from .models.clap import clap_spec_source, is_clap_spec
from .objectives import Objective, build_objective

OBJECTIVE_PREFIX = "objective."
ENCODER_DIRS = ("audio_encoder", "text_encoder")  # RUN/<name>/: files a tower needs to be rebuilt


class RunError(RuntimeError):
    """A run that cannot go on: its directory is missing files, holds inconsistent ones or cannot
    be written, or its training diverged (the CLI reports these in one line)."""


def cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def model_state(model: DualEncoder, objective: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model weights and the objective's learnable state (prefix ``objective.``) in one flat dict.
    ``objective``: the module, or its state dict (e.g. :func:`read_objective_state` of a run)."""
    state = dict(model.state_dict())
    objective_state = objective if isinstance(objective, dict) else objective.state_dict()
    state.update({OBJECTIVE_PREFIX + k: v for k, v in objective_state.items()})
    return cpu_tensors(state)


def save_encoder_files(run: Path, model: DualEncoder) -> None:
    """``RUN/audio_encoder/`` and ``RUN/text_encoder/`` for towers with ``save_pretrained_files``
    (configs, tokenizer, feature extractor; no weights), each written to a temporary folder and
    swapped into place."""
    for name in ENCODER_DIRS:
        save = getattr(getattr(model, name), "save_pretrained_files", None)
        if save is None:
            continue
        with atomic_dir(run / name) as tmp:
            save(tmp)


def save_model(
    run: Path, model: DualEncoder, objective: torch.nn.Module | dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Write the encoders' files (:func:`save_encoder_files`), then ``model.safetensors`` and
    ``model.json`` (meta + checksum), each atomically."""
    weights = run / "model.safetensors"
    try:
        save_encoder_files(run, model)
        atomic_write(weights, lambda tmp: save_file(model_state(model, objective), str(tmp)))
        meta = {**meta, "sha256": sha256(weights)}
        atomic_write_text(run / "model.json", json.dumps(meta, indent=2))
    except (OSError, SafetensorError) as exc:
        raise RunError(f"cannot write {weights}: {exc} (disk full or not writable?); the previous file is intact") from exc


def pretrained_clap_config(spec: str | Path) -> Config:
    """The config of ``hf-clap:PATH``: what ``model.audio_encoder=hf-clap model.text_encoder=hf-clap
    model.clap_pretrained=PATH`` resolves to (:func:`clarion.models.resolve_pretrained`; the
    checkpoint's JSON files are read, its weights are not)."""
    source = clap_spec_source(spec)
    try:
        return load_model_config(
            None, ["model.audio_encoder=hf-clap", "model.text_encoder=hf-clap", f"model.clap_pretrained={source}"]
        )
    except ValueError as exc:
        raise RunError(f"{spec}: cannot build the pretrained CLAP: {exc}") from exc


def pretrained_clap_run(spec: str | Path) -> tuple[Config, Tokenizer, DualEncoder, Objective]:
    """``hf-clap:PATH`` as a run: (config, tokenizer, model in eval mode, objective), nothing
    written. The config is :func:`pretrained_clap_config`'s; the clarion tokenizer is an empty
    placeholder (CLAP's own tokenizer does the work)."""
    cfg = pretrained_clap_config(spec)
    try:
        tokenizer = train_tokenizer([], cfg.model.vocab_size)
        model = build_model(cfg, tokenizer)
    except (OSError, RuntimeError, ValueError) as exc:
        raise RunError(f"{spec}: cannot build the pretrained CLAP: {exc}") from exc
    return cfg, tokenizer, model.eval(), build_run_objective(cfg).eval()


def load_run_config(run: Path) -> Config:
    if is_clap_spec(run):
        return pretrained_clap_config(run)
    path = run / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run} is not a clarion run: {path.name} is missing")
    try:
        return load_model_config(path)
    except ConfigError as exc:
        raise RunError(f"invalid config in {path}: {exc}") from exc


def load_tokenizer(run: Path) -> Tokenizer:
    if is_clap_spec(run):
        return train_tokenizer([], 1)
    path = run / "tokenizer.json"
    if not path.is_file():
        raise RunError(f"{run}: tokenizer.json is missing")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for any bad file
        raise RunError(f"{path} is not a valid tokenizer file: {exc}") from exc


def build_run_objective(cfg: Config) -> Objective:
    """The objective named by ``cfg``, sized by its batch size and embedding width, seeded by its seed."""
    return build_objective(
        cfg.objective.name,
        cfg.objective.options,
        batch_size=cfg.train.batch_size,
        embed_dim=cfg.model.embed_dim,
        seed=cfg.train.seed,
    )


def read_weights(run: Path) -> dict[str, torch.Tensor]:
    """``RUN/model.safetensors``, checked against the checksum in ``model.json`` when present."""
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise RunError(f"{run}: model.safetensors is missing (has training finished an epoch?)")
    meta_path = run / "model.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise RunError(f"{meta_path} is not valid JSON: {exc}") from exc
        expected = meta.get("sha256") if isinstance(meta, dict) else None
        if expected and expected != sha256(weights):
            raise RunError(f"{weights} does not match the checksum in model.json (corrupt or replaced file)")
    try:
        return load_file(str(weights))
    except SafetensorError as exc:
        raise RunError(f"{weights} is not a safetensors file ({exc}); clarion never unpickles weights") from exc


def read_objective_state(run: str | Path) -> dict[str, torch.Tensor]:
    """The objective's tensors in ``RUN/model.safetensors`` (prefix stripped), read without
    loading the model weights."""
    weights = Path(run) / "model.safetensors"
    if not weights.is_file():
        raise RunError(f"{run}: model.safetensors is missing (has training finished an epoch?)")
    with safe_open(str(weights), framework="pt") as fh:
        return {k[len(OBJECTIVE_PREFIX) :]: fh.get_tensor(k) for k in fh.keys() if k.startswith(OBJECTIVE_PREFIX)}


def load_model(run: str | Path, device: str | torch.device = "cpu") -> tuple[Config, DualEncoder]:
    """Rebuild the dual encoder of a run from its config + tokenizer (and the pretrained towers'
    files in ``RUN/text_encoder/``, ``RUN/audio_encoder/``; the original model paths are not
    needed) and load its best weights. ``hf-clap:PATH``: :func:`pretrained_clap_run`'s model."""
    if is_clap_spec(run):
        cfg, _, model, _ = pretrained_clap_run(run)
        return cfg, model.to(device).eval()
    run = Path(run)
    cfg = load_run_config(run)
    try:
        model = build_model(cfg, load_tokenizer(run), saved=run)
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, RunError):
            raise
        raise RunError(f"{run}: cannot rebuild the model: {exc}") from exc
    state = read_weights(run)
    model_keys = {k: v for k, v in state.items() if not k.startswith(OBJECTIVE_PREFIX)}
    missing, unexpected = model.load_state_dict(model_keys, strict=False)
    if missing or unexpected:
        raise RunError(f"{run / 'model.safetensors'} does not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return cfg, model.to(device).eval()


def load_objective(run: str | Path, device: str | torch.device = "cpu") -> Objective:
    """The run's objective with its learned state (temperature, radius predictor, metric M)."""
    if is_clap_spec(run):
        return build_run_objective(pretrained_clap_config(run)).to(device).eval()
    run = Path(run)
    objective = build_run_objective(load_run_config(run))
    state = {k[len(OBJECTIVE_PREFIX) :]: v for k, v in read_weights(run).items() if k.startswith(OBJECTIVE_PREFIX)}
    missing, unexpected = objective.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunError(f"{run / 'model.safetensors'}: objective state does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return objective.to(device).eval()
