"""AgeNet: a timm feature backbone, grid average pooling and one linear layer.

Each selected feature map ``F_l`` (C_l, h_l, w_l) is average-pooled over a ``g x g`` grid
of equal cells (``g = 1``: global average pooling, GAP), and one linear layer maps all cell
means to the age. With the linear weights split per level into ``w_l`` (C_l, g, g)::

    age = b + Σ_l Σ_cij w_lcij · mean_{cell ij}(F_lc)
    cam = Σ_l up_l(g² Σ_c up_g(w_lc) F_lc)    (h, w) = the largest selected level's size

(The trained linear layer works in standardised age units; ``w`` and ``b`` above are its
weights and bias mapped to years, ``w = scale * w_z``, ``b = scale * b_z + shift``, with
``shift, scale`` the training mean and standard deviation of age.)

where ``up_g`` spreads each cell's weight over the cell's pixels and ``up_l`` is
nearest-neighbour upsampling by an integer factor, which preserves the spatial mean.
Because the pooling and the weighted sum are both linear,
``cam.mean(axis=(-2, -1)) + b == age`` exactly (to float rounding): every CAM pixel is
its region's contribution to the X-ray age in years. Sizes whose level resolutions are
not integer multiples of each other and of ``g`` are refused (choose another image size,
feature levels or grid). A grid keeps where in the chest a feature appears (apex or base,
spine or heart): with a frozen ImageNet backbone, 3 x 3 cells read age about 0.6 y more
accurately than GAP (``docs/experiments.md``).

Layers after the last selected level are not built (timm ``features_only``), so they
are neither trained nor exported.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import timm
import torch
import torch.nn.functional as F  # noqa: N812
from timm.models import FeatureInfo
from torch import nn

logger = logging.getLogger(__name__)


class _FeatureKwargs(TypedDict, total=False):
    """The model keyword arguments of a timm ``features_only`` backbone."""

    features_only: bool
    in_chans: int
    out_indices: tuple[int, ...]


def _feature_info(model: nn.Module) -> FeatureInfo:
    """The :class:`timm.models.FeatureInfo` of a timm ``features_only`` model."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, FeatureInfo):
        raise TypeError(f"{type(model).__name__} is not a timm features_only backbone "
                        "(no FeatureInfo)")
    return info


def _create(name: str, in_chans: int, out_indices: Sequence[int] | None,
            init_weights: str | Path | None) -> nn.Module:
    kwargs: _FeatureKwargs = {"features_only": True, "in_chans": in_chans}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    if init_weights is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    path = Path(init_weights)
    if path.suffix != ".safetensors":
        raise ValueError(f"--init-weights {path}: only .safetensors files are loaded (no pickles)")
    if not path.is_file():
        raise ValueError(f"--init-weights {path}: no such file")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file only; never a download
    # timm loads the file into the full model, sums the RGB conv1 kernels for in_chans=1
    # and drops the classifier keys (features_only loads with num_classes=0).
    overlay = {"file": str(path), "source": "", "hf_hub_id": None, "url": None}
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


class AgeNet(nn.Module):
    """X-ray age regressor with an exact class activation map.

    Parameters
    ----------
    backbone : str
        timm model name (``resnet18``, ``efficientnet_b0``, ``legacy_xception``, ...).
    in_chans : int
        1 or 3 (the :class:`~xrayage.card.PreprocessSpec` channels).
    feature_levels : sequence of int, optional
        Indices into the backbone's feature levels (negative counts from the end);
        default ``(-1,)``, the last level.
    taps : sequence of str, optional
        Names of further backbone modules (e.g. Xception's middle-flow ``block5``)
        whose outputs are pooled into the head too. They must lie before the last
        selected level (so they are built) and have a map size that divides the
        largest level's. Intermediate blocks carry much of the age signal of a frozen
        ImageNet backbone.
    gaussian : bool
        Add a second linear output, the log variance for a Gaussian NLL loss.
    init_weights : path, optional
        timm state dict (``.safetensors``) to start from, e.g. ImageNet weights.
    init_age, age_scale : float
        Training mean and standard deviation of age: the head predicts
        ``init_age + age_scale * z``, so training starts at the no-skill fit and the
        optimiser works in standardised units.
    image_size : int, optional
        If given, check now that the CAM levels have integer size ratios at this size.
    grid : int
        Cells per side of the average pooling (1: global average pooling).
    """

    age_shift: torch.Tensor  # buffers, registered in __init__
    age_scale: torch.Tensor

    def __init__(
        self,
        backbone: str,
        in_chans: int = 1,
        feature_levels: Sequence[int] | None = None,
        gaussian: bool = False,
        init_weights: str | Path | None = None,
        init_age: float = 50.0,
        age_scale: float = 15.0,
        image_size: int | None = None,
        taps: Sequence[str] | None = None,
        grid: int = 1,
    ) -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, not {in_chans}")
        if grid < 1:
            raise ValueError(f"grid must be a positive number of cells per side, not {grid}")
        self.grid = int(grid)
        probe = timm.create_model(backbone, pretrained=False, features_only=True,
                                  in_chans=in_chans)
        self.level_modules: list[str] = list(_feature_info(probe).module_name())
        n = len(self.level_modules)
        levels = sorted({int(i) % n for i in (feature_levels or (-1,)) if -n <= int(i) < n})
        if not levels or len(levels) != len(set(feature_levels or (-1,))):
            raise ValueError(f"feature levels {feature_levels} out of range for {backbone} "
                             f"({n} levels: 0..{n - 1})")
        self.feature_levels = levels
        self.backbone = (probe if levels == list(range(n)) and init_weights is None
                         else _create(backbone, in_chans, levels, init_weights))
        del probe
        self.taps = list(taps or ())
        self._tapped: dict[int, torch.Tensor] = {}
        modules = dict(self.backbone.named_modules())
        for index, name in enumerate(self.taps):
            # timm wraps backbones ("body.block3") and may flatten dots ("layer1_0")
            found = sorted((n for n in modules if n.replace("_", ".") == name.replace("_", ".")
                            or n.endswith("." + name)), key=len)
            if not found:
                raise ValueError(f"tap {name!r} is not a module of the truncated {backbone} "
                                 f"backbone (levels {levels})")
            modules[found[0]].register_forward_hook(functools.partial(self._keep, index))
        channels = list(_feature_info(self.backbone).channels()) + self._tap_channels(in_chans)
        self.channels = channels
        width = sum(channels) * self.grid**2
        self.head = nn.Linear(width, 1)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("age_shift", torch.tensor(float(init_age)))
        self.register_buffer("age_scale", torch.tensor(float(age_scale)))
        self.log_var_head: nn.Linear | None = None
        if gaussian:
            self.log_var_head = nn.Linear(width, 1)
            nn.init.zeros_(self.log_var_head.weight)
            nn.init.zeros_(self.log_var_head.bias)
        if image_size is not None:
            self.cam_size(image_size)

    def _keep(self, index: int, module: nn.Module, args: object, output: torch.Tensor) -> None:
        self._tapped[index] = output

    @torch.no_grad()
    def _tap_channels(self, in_chans: int) -> list[int]:
        if not self.taps:
            return []
        was = self.training
        self.backbone.eval()
        feats = self.features(torch.zeros(1, in_chans, 96, 96))
        self.backbone.train(was)
        return [f.shape[1] for f in feats[len(feats) - len(self.taps):]]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The selected feature maps, then the tapped ones in the order of ``taps``, each
        (N, C_l, h_l, w_l)."""
        self._tapped = {}
        levels = list(self.backbone(x))
        tapped, self._tapped = self._tapped, {}
        return levels + [tapped[i] for i in range(len(self.taps))]

    def pool(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The head's input: each map's ``grid x grid`` cell means, (N, Σ_l C_l grid²)."""
        g = self.grid
        if g > 1 and not torch.jit.is_tracing() and any(
                f.shape[-2] % g or f.shape[-1] % g for f in feats):
            shapes = [tuple(f.shape[-2:]) for f in feats]
            raise ValueError(f"feature maps {shapes} do not split into {g} x {g} equal cells; "
                             "choose another image size or grid")
        return torch.cat([
            f.mean(dim=(2, 3)) if g == 1 else F.adaptive_avg_pool2d(f, g).flatten(1)
            for f in feats], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return age (N,) in years and, with the Gaussian head, log variance (N,)."""
        age, log_var, _ = self._run(self.features(x), cam=False)
        return age, log_var

    def forward_with_cam(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Return age (N,), log variance (N,) or None, and the CAM (N, h, w) in years."""
        age, log_var, cam = self._run(self.features(x), cam=True)
        assert cam is not None
        return age, log_var, cam

    def _run(self, feats: list[torch.Tensor], cam: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        pooled = self.pool(feats)
        age = self.head(pooled).squeeze(1) * self.age_scale + self.age_shift
        log_var = None
        if self.log_var_head is not None:  # in years²: log(scale² · var_z)
            log_var = self.log_var_head(pooled).squeeze(1) + 2 * torch.log(self.age_scale)
        if not cam:
            return age, log_var, None
        g = self.grid
        weights = torch.split(self.head.weight[0] * self.age_scale,
                              [c * g * g for c in self.channels])
        size = max((f.shape[-2], f.shape[-1]) for f in feats)
        total = None
        for f, w in zip(feats, weights, strict=True):
            if g == 1:
                level = torch.einsum("nchw,c->nhw", f, w).unsqueeze(1)
            else:  # each cell's weight on each of its pixels, times g² (cell mean -> map mean)
                cells = w.view(1, -1, g, g) * (g * g)
                spread = F.interpolate(cells, size=f.shape[-2:], mode="nearest")[0]
                level = (f * spread).sum(dim=1, keepdim=True)
            if (level.shape[-2], level.shape[-1]) != size:
                level = F.interpolate(level, size=size, mode="nearest")
            total = level if total is None else total + level
        assert total is not None
        return age, log_var, total.squeeze(1)

    def age_bias(self) -> float:
        """The bias ``b`` in years: ``cam.mean((-2, -1)) + b == age``."""
        return float((self.head.bias[0] * self.age_scale + self.age_shift).detach())

    @torch.no_grad()
    def cam_size(self, image_size: int) -> tuple[int, int]:
        """CAM (h, w) at `image_size`; ValueError if the level sizes are not integer multiples."""
        was = self.training
        self.eval()
        try:
            conv_in = next(m for m in self.backbone.modules() if isinstance(m, nn.Conv2d))
            feats = self.features(torch.zeros(1, conv_in.in_channels, image_size, image_size))
        finally:
            self.train(was)
        size = max((f.shape[-2], f.shape[-1]) for f in feats)
        g = self.grid
        for f in feats:
            h, w = f.shape[-2:]
            if size[0] % h or size[1] % w or h % g or w % g:
                shapes = [tuple(m.shape[-2:]) for m in feats]
                raise ValueError(
                    f"feature levels {self.feature_levels} give maps {shapes} at {image_size} "
                    f"px: not integer multiples of each other and of the {g} x {g} grid, so the "
                    "pooling or the CAM could not be exact; choose another --image-size, "
                    "--feature-levels or --grid"
                )
        return size

    def freeze_stages(self, n: int) -> int:
        """Freeze the stem and the first `n` feature stages; return the frozen parameter count.

        Frozen BatchNorm layers are kept in eval mode (see :meth:`train`).
        """
        if n <= 0:
            return 0
        if n > len(self.level_modules):
            raise ValueError(f"cannot freeze {n} stages: the backbone has "
                             f"{len(self.level_modules)}")
        target = self.level_modules[n - 1]
        forms = (target, target.replace(".", "_"))
        order = [name for name, _ in self.backbone.named_modules()]
        pos = next((i for i, name in enumerate(order)
                    if name in forms or any(name.endswith("." + f) for f in forms)), None)
        if pos is None:
            raise ValueError(f"cannot locate stage {target!r} in the backbone to freeze it")
        # Everything registered up to the stage's module, and the stage itself.
        owners = set(order[: pos + 1]) | {m for m in order if m.startswith(order[pos] + ".")}
        frozen = {name for name, _ in self.backbone.named_parameters()
                  if name.rpartition(".")[0] in owners}
        count = 0
        for name, p in self.backbone.named_parameters():
            if name in frozen:
                p.requires_grad_(False)
                count += p.numel()
        self._frozen_modules = [m for name, m in self.backbone.named_modules()
                                if isinstance(m, nn.modules.batchnorm._BatchNorm)
                                and all(f"{name}.{k}" in frozen for k, _ in
                                        m.named_parameters(recurse=False))
                                and any(True for _ in m.parameters(recurse=False))]
        return count

    def train(self, mode: bool = True) -> AgeNet:
        """Set train mode, keeping frozen BatchNorm layers in eval mode."""
        super().train(mode)
        for m in getattr(self, "_frozen_modules", []):
            m.eval()
        return self


class ExportWrapper(nn.Module):
    """ONNX view of an :class:`AgeNet`: returns ``(age, [log_var,] cam)``."""

    def __init__(self, net: AgeNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        age, log_var, cam = self.net.forward_with_cam(x)
        return (age, cam) if log_var is None else (age, log_var, cam)
