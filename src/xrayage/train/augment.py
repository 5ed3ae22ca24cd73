"""Radiograph augmentation on a batch of cached uint8 images, then normalisation, in torch.

Runs on the training device (GPU or CPU) after the batch is transferred, so the data loader
only copies uint8 arrays and is never the bottleneck.

Augmentations fit radiographs: small rotations, isotropic scale and translation (patient
positioning), contrast, brightness and gamma (exposure and processing), Gaussian noise
(quantum noise). No vertical flip. **No horizontal flip by default**: the chest is not
left-right symmetric (heart, aortic knob, stomach bubble), and age shows in exactly those
structures (aortic unfolding and calcification, cardiac silhouette); flipped images are
anatomically impossible (situs inversus is about 1 in 10,000) and never seen at inference,
and the CAM would learn a mirrored anatomy. ``hflip=True`` is available for experiments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from ..card import PreprocessSpec


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (all drawn uniformly, per image).

    Attributes
    ----------
    rotation_deg : float
        Maximum absolute rotation.
    scale : float
        Maximum relative zoom, in ``[1 - scale, 1 + scale]``.
    translate : float
        Maximum shift as a fraction of the side.
    contrast, brightness : float
        Multiplicative contrast about the mean in ``[1 - c, 1 + c]``; additive brightness
        in ``[-b, b]`` (intensity units in [0, 1]).
    gamma : float
        ``x ** g`` with ``log g`` in ``[-gamma, gamma]``.
    noise_std : float
        Maximum standard deviation of additive Gaussian noise.
    hflip : bool
        Mirror left-right with probability 0.5 (off by default, see the module docstring).
    enabled : bool
        False turns every transform off (to check that a model can overfit).
    """

    rotation_deg: float = 7.0
    scale: float = 0.08
    translate: float = 0.05
    contrast: float = 0.2
    brightness: float = 0.05
    gamma: float = 0.25
    noise_std: float = 0.02
    hflip: bool = False
    enabled: bool = True


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """Map uint8 (N, S, S) or (N, 1, S, S) to float32 (N, 1, S, S) in [0, 1]."""
    x = batch.float() / 255.0
    return x if x.ndim == 4 else x.unsqueeze(1)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """Randomly transform float (N, 1, S, S) images in [0, 1]; returns the same shape."""
    n, dev = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, device=dev, generator=generator) * (hi - lo) + lo

    angle = uniform(-cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180)
    scale = uniform(1 - cfg.scale, 1 + cfg.scale)
    tx, ty = uniform(-cfg.translate, cfg.translate) * 2, uniform(-cfg.translate, cfg.translate) * 2
    flip = torch.ones(n, device=dev)
    if cfg.hflip:
        flip = torch.where(torch.rand(n, device=dev, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1),
                         torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(1 - cfg.contrast, 1 + cfg.contrast).view(-1, 1, 1, 1) + mean
    x = x + uniform(-cfg.brightness, cfg.brightness).view(-1, 1, 1, 1)
    x = x.clamp(0, 1) ** torch.exp(uniform(-cfg.gamma, cfg.gamma)).view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, device=dev, generator=generator)
    x = x + noise * uniform(0, cfg.noise_std).view(-1, 1, 1, 1)
    return x.clamp(0, 1)


def normalize(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Torch twin of :func:`xrayage.preprocess.normalize`: (N, 1, S, S) -> (N, C, S, S)."""
    x = x.expand(-1, spec.channels, -1, -1)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
