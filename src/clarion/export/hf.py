"""A clarion model with CLAP towers (``hf-clap``) back as a Hugging Face ``ClapModel`` folder.

The folder holds ``config.json`` + ``model.safetensors`` (``ClapModel.save_pretrained``) and the
``ClapProcessor`` files (feature extractor and tokenizer), so ``ClapModel.from_pretrained``,
``ClapProcessor.from_pretrained`` and ``pipeline("zero-shot-audio-classification", model=DIR)``
load it offline. Weights map one to one: the audio tower's ``ClapAudioModel`` →
``audio_model.*``, the text tower's ``ClapTextModel`` → ``text_model.*``, the heads →
``audio_projection.*`` / ``text_projection.*``. Both logit scales are ``log(1/τ)`` of the
objective's learned temperature, clamped as the objective clamps it (``logit_scale ≤ log 100``),
so HF's ``logits_per_audio`` are the logits clarion trained with; an objective without such a
temperature (SigLIP, m-LTM, triplet) leaves the checkpoint's ``logit_scale_init_value``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path

import torch

from ..api import ClarionModel
from ..files import atomic_dir, check_replaceable
from ..models.clap import ClapAudioTower, ClapTextTower
from ..objectives.infonce import MAX_LOGIT_SCALE
from ..rundir import RunError

log = logging.getLogger("clarion.export")

TEMPERATURE_KEY = "temperature.logit_scale"  # InfoNCE's, also under an SVR wrapper (base.temperature.…)


class ExportError(RunError):
    """A model that cannot be written in the format asked for."""


def logit_scale_of(objective_state: dict[str, torch.Tensor]) -> float | None:
    """``log(1/τ)`` of the objective's learnable temperature, clamped to ``MAX_LOGIT_SCALE``;
    None when the objective has none."""
    keys = [k for k in objective_state if k == TEMPERATURE_KEY or k.endswith("." + TEMPERATURE_KEY)]
    if len(keys) != 1:
        return None
    return min(float(objective_state[keys[0]]), MAX_LOGIT_SCALE)


def _check_clap(model: ClarionModel) -> tuple[ClapAudioTower, ClapTextTower]:
    audio, text = model.model.audio_encoder, model.model.text_encoder
    if not isinstance(audio, ClapAudioTower) or not isinstance(text, ClapTextTower):
        m = model.cfg.model
        raise ExportError(
            f"--format hf writes a Hugging Face ClapModel, so both towers must be CLAP's (model.audio_encoder=hf-clap "
            f"and model.text_encoder=hf-clap); {model.source} has audio_encoder={m.audio_encoder}, "
            f"text_encoder={m.text_encoder}. Export it with --format clarion instead."
        )
    return audio, text


def export_hf(model: ClarionModel, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``model`` (both towers ``hf-clap``) to ``out`` as a Hugging Face CLAP folder."""
    import transformers

    audio, text = _check_clap(model)
    out = Path(out)
    check_replaceable(out, "config.json", "a Hugging Face model folder", overwrite, ExportError)
    config = copy.deepcopy(audio.clap_config)
    config.text_config = copy.deepcopy(text.clap_config.text_config)
    scale = logit_scale_of(model.objective_state)
    if scale is None:
        scale = math.log(config.logit_scale_init_value)
        log.warning("the objective has no learnable temperature: the logit scales stay at log(%g)", config.logit_scale_init_value)
    hf = transformers.ClapModel(config)
    state = {f"audio_model.{k}": v for k, v in audio.model.state_dict().items()}
    state.update({f"text_model.{k}": v for k, v in text.model.state_dict().items()})
    state.update({f"audio_projection.{k}": v for k, v in model.model.audio_projection.state_dict().items()})
    state.update({f"text_projection.{k}": v for k, v in model.model.text_projection.state_dict().items()})
    state.update(logit_scale_a=torch.tensor(scale), logit_scale_t=torch.tensor(scale))
    missing, unexpected = hf.load_state_dict({k: v.detach().cpu() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ExportError(f"the CLAP weights do not fit ClapModel: missing {missing[:5]}, unexpected {unexpected[:5]}")
    processor = transformers.ClapProcessor(audio.feature_extractor, text.tokenizer)
    with atomic_dir(out) as tmp:
        hf.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
    return out
