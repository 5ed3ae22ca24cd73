"""The LightningModule: AgeNet, the loss, AdamW with warm-up and cosine decay."""

from __future__ import annotations

import math
from typing import Any

import lightning as L  # noqa: N812
import torch
import torch.nn.functional as F  # noqa: N812

from ..card import PreprocessSpec
from .augment import AugmentConfig, augment, normalize, to_float
from .model import AgeNet

LOSSES = ("l1", "smooth_l1", "gaussian_nll")


class AgeModule(L.LightningModule):
    """Train an :class:`~xrayage.train.model.AgeNet` on cached uint8 images.

    Batches are ``(uint8 (N, S, S), float age_years (N,))``. After the transfer to the
    device, training batches are augmented, and every batch is normalised as the
    :class:`~xrayage.card.PreprocessSpec` says (the same ``(x - mean) / std`` as inference).

    Parameters
    ----------
    backbone : str
        timm model name.
    spec : dict
        ``dataclasses.asdict(PreprocessSpec)``; stored in the checkpoint.
    feature_levels : list of int, optional
    taps : list of str, optional
        Further backbone modules pooled into the head (see AgeNet).
    grid : int
        Cells per side of the average pooling (see AgeNet).
    loss : {'l1', 'smooth_l1', 'gaussian_nll'}
        ``gaussian_nll`` adds a log-variance output (the model's σ in years).
    lr, weight_decay : float
        AdamW settings of the head; the backbone uses ``lr * backbone_lr_mult``.
    warmup_fraction : float
        Fraction of the steps with a linear warm-up; then a cosine decay to zero.
    backbone_lr_mult : float
    freeze_stages : int
        Freeze the stem and first stages of the backbone.
    init_weights : str, optional
        timm ``.safetensors`` state dict to start from.
    init_age, age_scale : float
        Training mean and standard deviation of age (the head's units).
    augment_cfg : dict, optional
        :class:`~xrayage.train.augment.AugmentConfig` fields.
    run_dir : str, optional
        The training run's folder (split and spec files), for export.
    """

    def __init__(
        self,
        backbone: str,
        spec: dict[str, Any],
        feature_levels: list[int] | None = None,
        loss: str = "l1",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_fraction: float = 0.05,
        backbone_lr_mult: float = 1.0,
        freeze_stages: int = 0,
        init_weights: str | None = None,
        init_age: float = 50.0,
        age_scale: float = 15.0,
        augment_cfg: dict[str, Any] | None = None,
        run_dir: str | None = None,
        taps: list[str] | None = None,
        grid: int = 1,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
        self.save_hyperparameters()
        self.spec = PreprocessSpec(**spec)
        self.aug = AugmentConfig(**(augment_cfg or {}))
        self.net = AgeNet(backbone, self.spec.channels, feature_levels,
                          gaussian=loss == "gaussian_nll", init_weights=init_weights,
                          init_age=init_age, age_scale=age_scale, image_size=self.spec.image_size,
                          taps=taps, grid=grid)
        self.net.freeze_stages(freeze_stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised input (N, C, S, S) -> age (N,), log variance (N,) or None."""
        return self.net(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, ages = batch
        x = to_float(images)
        if self.aug.enabled and self.trainer is not None and self.trainer.training:
            x = augment(x, self.aug)
        return normalize(x, self.spec), ages.float()

    def _loss(self, age: torch.Tensor, log_var: torch.Tensor | None,
              target: torch.Tensor) -> torch.Tensor:
        if self.hparams["loss"] == "l1":
            return F.l1_loss(age, target)
        if self.hparams["loss"] == "smooth_l1":
            return F.smooth_l1_loss(age, target, beta=2.0)
        if log_var is None:
            raise ValueError(f"loss {self.hparams['loss']!r} needs a model with a log-variance "
                             "output (built with loss='gaussian_nll')")
        return F.gaussian_nll_loss(age, target, log_var.clamp(-10, 12).exp(), full=False)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        age, log_var = self(x)
        loss = self._loss(age.float(), None if log_var is None else log_var.float(), y)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(y))
        self.log("train_mae", (age.detach().float() - y).abs().mean(), batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        age, log_var = self(x)
        n = len(y)
        self.log("val_loss", self._loss(age.float(), None if log_var is None
                                        else log_var.float(), y), sync_dist=True, batch_size=n)
        self.log("val_mae", (age.float() - y).abs().mean(), prog_bar=True, sync_dist=True,
                 batch_size=n)
        self.log("val_bias", (age.float() - y).mean(), sync_dist=True, batch_size=n)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        head = [p for n, p in self.net.named_parameters()
                if not n.startswith("backbone.") and p.requires_grad]
        body = [p for p in self.net.backbone.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": hp["lr"]}]
        if body:
            groups.append({"params": body, "lr": hp["lr"] * hp["backbone_lr_mult"]})
        optimizer = torch.optim.AdamW(groups, lr=hp["lr"], weight_decay=hp["weight_decay"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp["warmup_fraction"] * total)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                          "interval": "step"}}
