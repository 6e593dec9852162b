"""PANNs audio encoders (Kong et al. 2020, "PANNs: Large-Scale Pretrained Audio Neural Networks
for Audio Pattern Recognition"): CNN14 and ResNet38, written to load the official AudioSet
checkpoints (``Cnn14_mAP=0.431.pth``, ``ResNet38_mAP=0.434.pth``).

Both take a waveform at 32 kHz and compute their own front end: a power STFT (1024-sample
periodic Hann window, hop 320, centred frames, reflect padding), a Slaney-style mel filterbank
(64 bands, 50–14000 Hz, area-normalised, as ``librosa.filters.mel``), then
``10·log10(max(x, 1e-10))``. The output is the 2048-d embedding ``ReLU(fc1(·))`` (after dropout
in training), as in the papers' transfer set-up; ``fc_audioset`` (the 527 AudioSet logits) is kept
so an official checkpoint maps key for key, and is available through :meth:`audioset_logits`.

Module and parameter names follow the official code, so ``state_dict()`` keys are the official
keys (``bn0.*``, ``conv_block1.conv1.weight``, ``resnet.layer2.0.downsample.1.weight``, ``fc1.*``,
``fc_audioset.*``). The official checkpoints also hold the front end's fixed tensors
(``spectrogram_extractor.stft.conv_real.weight``, ``…conv_imag.weight``, ``logmel_extractor.melW``):
they are accepted when their shapes fit this front end, and otherwise ignored, since the front end
is recomputed from the fixed parameters above (a checkpoint of another front end, such as the
16 kHz models, fails the shape check). SpecAugment masks the normalised log-mel (after ``bn0``, as
the official training did) when ``augment.time_masks`` / ``freq_masks`` are set; mixup is applied
by the trainer to the waveform batch (``augment.mixup_alpha``), not to the log-mel.

``width`` scales every channel count (64 is the official size: blocks 64…2048); other widths
exist for tests and small experiments and cannot load an official checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..audio.augment import SpecAugment

SAMPLE_RATE = 32000
WINDOW = 1024
HOP = 320
MEL_BINS = 64
F_MIN = 50.0
F_MAX = 14000.0
AUDIOSET_CLASSES = 527
FRONT_END = f"PANNs log-mel: {SAMPLE_RATE} Hz, window {WINDOW}, hop {HOP}, {MEL_BINS} mel {F_MIN:g}-{F_MAX:g} Hz (Slaney), 10*log10"


class PannsCheckpointError(ValueError):
    """A PANNs checkpoint that cannot be read or does not fit the architecture."""


# ---------------------------------------------------------------------------------------------
# front end


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's auditory-toolbox mel scale: linear below 1 kHz (200/3 Hz per mel), log above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """[n_fft // 2 + 1, n_mels] triangular filters on the Slaney mel scale, each scaled by
    ``2 / (f_{m+2} - f_m)`` (constant energy per band); the layout of PANNs' ``melW``."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_edges = np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2)
    hz_edges = _mel_to_hz_slaney(mel_edges)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]  # [n_mels + 2, n_freqs]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
    return torch.from_numpy(weights.T.astype(np.float32))


class PannsLogMel(nn.Module):
    """wave [B, n] → log-mel [B, 1, 1 + n // HOP, MEL_BINS] (dB), always computed in float32.

    Window and filterbank are non-persistent buffers: they follow ``.to(device)`` but are not
    part of ``state_dict()`` (the official checkpoint's copies are checked, not loaded).
    ``sample_rate``: 32 kHz for PANNs; msclap's 2022 CNN14 uses the same front end at 44.1 kHz."""

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        self.register_buffer("window", torch.hann_window(WINDOW, periodic=True), persistent=False)
        self.register_buffer(
            "melW", slaney_mel_filterbank(sample_rate, WINDOW, MEL_BINS, F_MIN, F_MAX), persistent=False
        )

    @staticmethod
    def checkpoint_shapes() -> dict[str, tuple[int, ...]]:
        """Shapes of the official front-end tensors this front end corresponds to."""
        n_freq = WINDOW // 2 + 1
        return {
            "spectrogram_extractor.stft.conv_real.weight": (n_freq, 1, WINDOW),
            "spectrogram_extractor.stft.conv_imag.weight": (n_freq, 1, WINDOW),
            "logmel_extractor.melW": (n_freq, MEL_BINS),
        }

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"PANNs encoders expect a wave of shape [B, n], got {tuple(wave.shape)}")
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.stft(
                wave.float(), n_fft=WINDOW, hop_length=HOP, win_length=WINDOW, window=self.window,
                center=True, pad_mode="reflect", return_complex=True,
            )  # [B, F, T]
            power = spec.real.square() + spec.imag.square()
            mel = power.transpose(1, 2) @ self.melW  # [B, T, M]
            return (10.0 * torch.log10(mel.clamp_min(1e-10)))[:, None]


# ---------------------------------------------------------------------------------------------
# building blocks (names follow the official code so state_dict keys match)


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """2×2 average pooling; an axis already of size 1 is not pooled (very short inputs)."""
    return F.avg_pool2d(x, (min(2, x.shape[2]), min(2, x.shape[3])))


class _Pool2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pool2(x)


def _init_layer(layer: nn.Module) -> None:
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def _init_bn(bn: nn.BatchNorm2d, weight: float = 1.0) -> None:
    nn.init.constant_(bn.weight, weight)
    nn.init.zeros_(bn.bias)


class ConvBlock(nn.Module):
    """(3×3 conv, no bias → BatchNorm → ReLU) × 2, then 2×2 average pooling when ``pool``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        for layer in (self.conv1, self.conv2):
            _init_layer(layer)
        _init_bn(self.bn1)
        _init_bn(self.bn2)

    def forward(self, x: torch.Tensor, pool: bool = True) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return _pool2(x) if pool else x


class BasicBlock(nn.Module):
    """ResNet basic block in the PANNs variant: a stride-2 block average-pools its input first
    (instead of a strided conv), and its shortcut is ``Sequential(pool, 1×1 conv, BN)``."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Sequential | None = None
        if stride == 2:
            self.downsample = nn.Sequential(_Pool2(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        elif c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        _init_layer(self.conv1)
        _init_layer(self.conv2)
        _init_bn(self.bn1)
        _init_bn(self.bn2, 0.0)  # zero-init residual: each block starts as the identity
        if self.downsample is not None:
            _init_layer(self.downsample[-2])
            _init_bn(self.downsample[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _pool2(x) if self.stride == 2 else x
        out = F.relu(self.bn1(self.conv1(out)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNetLayers(nn.Module):
    """Four stages of basic blocks (stride 1, 2, 2, 2), widths w, 2w, 4w, 8w."""

    def __init__(self, width: int, blocks: tuple[int, int, int, int] = (3, 4, 6, 3)):
        super().__init__()
        c_in = width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(c_in, c_out, stride)] + [BasicBlock(c_out, c_out, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            c_in = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# ---------------------------------------------------------------------------------------------
# the networks


class PannsEncoder(nn.Module):
    """Shared parts: front end, ``bn0`` over mel bins, the clip pooling and ``fc1``/``fc_audioset``.

    ``forward``: wave [B, n] at ``sample_rate`` (32 kHz) → embedding [B, 32·width]."""

    name = "panns"

    def __init__(self, width: int = 64, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        if width < 1:
            raise ValueError(f"model.panns_width must be a positive channel count, got {width}")
        self.width = width
        self.sample_rate = sample_rate
        self.front_end = FRONT_END.replace(f"{SAMPLE_RATE} Hz", f"{sample_rate} Hz")
        self.logmel = PannsLogMel(sample_rate)
        self.bn0 = nn.BatchNorm2d(MEL_BINS)
        self.spec_augment = SpecAugment(freq_axis=-1, time_axis=-2)  # training only; off unless augment.* sets masks
        self.output_dim = 32 * width
        self.fc1 = nn.Linear(self.output_dim, self.output_dim)
        self.fc_audioset = nn.Linear(self.output_dim, AUDIOSET_CLASSES)
        _init_bn(self.bn0)
        _init_layer(self.fc1)
        _init_layer(self.fc_audioset)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, T, M] normalised log-mel → [B, 32·width, T', M']."""
        raise NotImplementedError

    def _pooled(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.logmel(wave)  # [B, 1, T, M]
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # BatchNorm over mel bins
        x = self.spec_augment(x)
        x = self.features(x).mean(3)  # [B, C, T']
        x = x.amax(2) + x.mean(2)
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return F.dropout(self._pooled(wave), p=0.5, training=self.training)

    def audioset_logits(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, 527] AudioSet logits (the official ``clipwise_output`` is their sigmoid)."""
        return self.fc_audioset(self._pooled(wave))


class Cnn14(PannsEncoder):
    """Six ConvBlocks (w … 32w channels; 2×2 pooling after the first five)."""

    name = "panns-cnn14"

    def __init__(self, width: int = 64, sample_rate: int = SAMPLE_RATE):
        super().__init__(width, sample_rate)
        widths = [1] + [width * 2**i for i in range(6)]
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, pool=i < 6)
            x = F.dropout(x, p=0.2, training=self.training)
        return x


class ResNet38(PannsEncoder):
    """ConvBlock (w) → ResNet stages (3, 4, 6, 3 basic blocks; w … 8w) → pool → ConvBlock (32w)."""

    name = "panns-resnet38"

    def __init__(self, width: int = 64):
        super().__init__(width)
        self.conv_block1 = ConvBlock(1, width)
        self.resnet = ResNetLayers(width)
        self.conv_block_after1 = ConvBlock(8 * width, 32 * width)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.conv_block1(x), p=0.2, training=self.training)
        x = F.dropout(_pool2(self.resnet(x)), p=0.2, training=self.training)
        return F.dropout(self.conv_block_after1(x, pool=False), p=0.2, training=self.training)


# ---------------------------------------------------------------------------------------------
# checkpoints


def _shape(value: object) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else f"not a tensor ({type(value).__name__})"


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}): {', '.join(items[:limit])}{more}"


def check_panns_state(model: PannsEncoder, state: dict, source: str) -> None:
    """Raise :class:`PannsCheckpointError` listing missing keys, unexpected keys and shape
    mismatches between ``state`` and ``model``; the official front-end tensors are optional."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    front_end = PannsLogMel.checkpoint_shapes()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected and k not in front_end)
    mismatched = [
        f"{k}: checkpoint {_shape(state[k])} vs model {shape}"
        for k, shape in {**expected, **front_end}.items()
        if k in state and _shape(state[k]) != shape
    ]
    if missing or unexpected or mismatched:
        message = f"{source} does not fit {model.name} (width {model.width}; 64 is the official size):"
        if missing:
            message += _listing("missing keys", missing)
        if unexpected:
            message += _listing("unexpected keys", unexpected)
        if mismatched:
            message += _listing("shape mismatches", mismatched)
        raise PannsCheckpointError(message)


def read_panns_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official PANNs checkpoint: ``torch.load(weights_only=True)`` (no
    arbitrary unpickling), then its ``"model"`` entry (a bare state dict is accepted too)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PannsCheckpointError(f"PANNs checkpoint {path} not found (nothing is downloaded: give a local .pth file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported the same way
        raise PannsCheckpointError(f"cannot read {path} as a PANNs checkpoint (torch.load, weights_only=True): {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise PannsCheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict (or a dict with a 'model' state dict)")
    return obj


def load_panns_checkpoint(model: PannsEncoder, path: str | Path) -> PannsEncoder:
    """Load an official checkpoint into ``model`` with a strict key and shape check."""
    state = read_panns_checkpoint(path)
    check_panns_state(model, state, str(path))
    keys = model.state_dict().keys()
    model.load_state_dict({k: state[k] for k in keys}, strict=True)
    return model


PANNS_MODELS: dict[str, type[PannsEncoder]] = {"panns-cnn14": Cnn14, "panns-resnet38": ResNet38}


def build_panns(name: str, width: int, checkpoint: str | None) -> PannsEncoder:
    model = PANNS_MODELS[name](width)
    if checkpoint:
        load_panns_checkpoint(model, checkpoint)
    return model
