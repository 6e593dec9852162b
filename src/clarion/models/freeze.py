"""Freezing part of a dual encoder: the first N blocks of a tower, or parameters by name.

A tower's **blocks** are its main sequence of repeated stages, in forward order:

===========================  ==================================================================
tower                        blocks
===========================  ==================================================================
``cnn`` (clarion)            ``blocks.i`` (the ConvBlocks after the stem)
``transformer`` (clarion)    ``transformer.layers.i``
``panns-cnn14``              ``conv_block1`` … ``conv_block6``
``panns-resnet38``           ``conv_block1``, ``resnet.layer1`` … ``layer4``, ``conv_block_after1``
Hugging Face (and others)    the first ``nn.ModuleList`` named ``layer``, ``layers``, ``h``,
                             ``block`` or ``blocks`` in module order: BERT/RoBERTa/CLAP text
                             ``encoder.layer.i``, AST ``layers.i``, HTSAT its stages ``layers.i``,
                             GPT-2 ``h.i``
===========================  ==================================================================

The tower's **stem** (what runs before block 0) freezes with any N ≥ 1: clarion ``cnn``
``mel_norm`` and ``stem``; clarion ``transformer`` the token and position embeddings; PANNs
``bn0``; elsewhere every parameter outside the blocks whose dotted name has a part containing
``embed`` (``embeddings``, ``patch_embed``, ``pos_embed``…), or a part named ``wte``/``wpe``
(GPT-2) or ``batch_norm`` (HTSAT's input normalisation). What comes after the last block (final
norms, pooling layers, PANNs ``fc1``) never freezes by count; a name pattern can freeze it.

Frozen parameters get ``requires_grad=False`` (the optimiser leaves them out). Every module all of
whose parameters are frozen (a frozen block, a frozen BatchNorm) is kept in eval mode by
:class:`~.dual.DualEncoder` whatever ``train()`` is called with: its BatchNorm statistics stay as
loaded and its dropout is off, as with ``model.freeze_audio``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..config import ConfigError, ModelConfig
from .audio import CnnAudioEncoder
from .dual import DualEncoder
from .panns import Cnn14, PannsEncoder, ResNet38
from .text import TransformerTextEncoder

_BLOCK_LISTS = ("layer", "layers", "h", "block", "blocks")
_STEM_NAMES = ("wte", "wpe", "batch_norm")


@dataclass
class FreezeSummary:
    trainable: int  # parameters (elements) left to train
    frozen: int
    what: list[str]  # what was frozen, in words

    def line(self) -> str:
        total = self.trainable + self.frozen
        detail = f" ({'; '.join(self.what)})" if self.what else ""
        return (f"parameters: {self.trainable / 1e6:.3f} M trainable, {self.frozen / 1e6:.3f} M frozen "
                f"of {total / 1e6:.3f} M{detail}")


def tower_blocks(tower: nn.Module) -> tuple[list[str], list[str]]:
    """The dotted names (relative to ``tower``) of its blocks in forward order, and of the
    modules or parameters of its stem (see the module docstring)."""
    if isinstance(tower, CnnAudioEncoder):
        return [f"blocks.{i}" for i in range(len(tower.blocks))], ["mel_norm", "stem"]
    if isinstance(tower, TransformerTextEncoder):
        return [f"transformer.layers.{i}" for i in range(len(tower.transformer.layers))], \
            ["token_embedding", "position_embedding"]
    if isinstance(tower, Cnn14):
        return [f"conv_block{i}" for i in range(1, 7)], ["bn0"]
    if isinstance(tower, ResNet38):
        return ["conv_block1", *(f"resnet.layer{i}" for i in range(1, 5)), "conv_block_after1"], ["bn0"]
    if isinstance(tower, PannsEncoder):
        raise ConfigError(f"freezing by layer does not know the blocks of {type(tower).__name__}; use model.freeze_patterns")
    for name, module in tower.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in _BLOCK_LISTS and len(module):
            blocks = [f"{name}.{i}" for i in range(len(module))]
            stem = [p for p, _ in tower.named_parameters()
                    if not any(p.startswith(b + ".") for b in blocks) and _is_stem_name(p)]
            return blocks, stem
    raise ConfigError(
        f"freezing by layer: {type(tower).__name__} has no list of blocks (an nn.ModuleList named "
        f"{', '.join(_BLOCK_LISTS)}); use model.freeze_patterns"
    )


def _is_stem_name(name: str) -> bool:
    return any("embed" in part or part in _STEM_NAMES for part in name.split("."))


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze_layers(model: DualEncoder, cfg: ModelConfig) -> FreezeSummary:
    """Apply ``model.freeze_audio_layers``, ``model.freeze_text_layers`` and ``model.freeze_patterns``
    to ``model`` (``requires_grad=False``; fully frozen modules held in eval mode). A count above a
    tower's block count, or a pattern that matches no parameter, raises :class:`ConfigError`."""
    frozen: set[str] = set()
    what: list[str] = []
    named = dict(model.named_parameters())
    for side, tower, n in (("audio", model.audio_encoder, cfg.freeze_audio_layers),
                           ("text", model.text_encoder, cfg.freeze_text_layers)):
        if n == 0:
            continue
        blocks, stem = tower_blocks(tower)
        if n > len(blocks):
            raise ConfigError(
                f"model.freeze_{side}_layers={n}, but the {side} encoder ({type(tower).__name__}) has "
                f"{len(blocks)} blocks ({blocks[0]} … {blocks[-1]})"
            )
        prefixes = [f"{side}_encoder.{p}" for p in stem + blocks[:n]]
        frozen |= {k for k in named if _under(k, prefixes)}
        what.append(f"{side} encoder: stem + first {n} of {len(blocks)} blocks")
    for pattern in cfg.freeze_patterns:
        matched = {k for k in named if re.search(pattern, k)}
        if not matched:
            raise ConfigError(
                f"model.freeze_patterns: {pattern!r} matches no parameter name (names look like "
                f"{', '.join(list(named)[:3])}, …)"
            )
        frozen |= matched
        what.append(f"{pattern!r}: {len(matched)} tensors")
    for name in frozen:
        named[name].requires_grad_(False)
    if frozen:
        model.hold_in_eval(_fully_frozen_modules(model))
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    return FreezeSummary(n_total - n_frozen, n_frozen, what)


def _fully_frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost submodules that have parameters, all of them frozen."""
    out: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(module)
            return
        for child in module.children():
            visit(child)

    for child in model.children():
        visit(child)
    return out
