"""ONNX Runtime model: load a model directory and run batches of preprocessed input.

A model directory holds ``model.onnx`` and ``model_card.json``. The ONNX graph takes
``input`` (N, C, S, S) float32 and returns, by the names in ``card.outputs``:

- ``age``: (N,) X-ray age in years;
- ``log_var`` (optional): (N,) log variance of a Gaussian NLL head;
- ``cam`` (optional): (N, h, w) class activation map whose spatial mean plus the
  head bias is the predicted age (exact for a GAP -> linear head);
- ``features`` (optional): (N, D) the pooled input of the linear head, which the content
  quality checks read (:mod:`xrayage.content`).

No torch is needed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .card import ModelCard, sha256_file
from .content import ContentChecks
from .errors import ModelError, ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "xrayage-default"
"""Name of the model bundled with the package (``xrayage/models/<name>``)."""


@dataclass
class ModelOutput:
    """Raw outputs for a batch: ages in years, optional σ (years), CAMs and head features."""

    age: np.ndarray
    sigma: np.ndarray | None = None
    cam: np.ndarray | None = None
    features: np.ndarray | None = None


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package."""
    root = resources.files("xrayage") / "models"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model_card.json").is_file())


def resolve_model_dir(name_or_path: str | os.PathLike[str] | None = None) -> Path:
    """Find a model directory: a bundled model's name, or a path to a directory."""
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    candidate = Path(name)
    if candidate.is_dir():
        return candidate
    bundled = Path(str(resources.files("xrayage") / "models" / name))
    if bundled.is_dir():
        return bundled
    raise ModelNotFoundError(
        f"no model {name!r}: give a directory with model.onnx and model_card.json, "
        f"or one of the bundled models {bundled_models()}"
    )


class AgeModel:
    """An X-ray age model running on ONNX Runtime.

    Parameters
    ----------
    directory : path
        Holds ``model_card.json`` and the ONNX file it names.
    threads : int, optional
        Intra-op threads (default: ONNX Runtime's choice, all cores).
    verify : bool
        Check the ONNX file's sha256 against the card.

    Attributes
    ----------
    content : ContentChecks or None
        The model's content quality checks, when its card has them.
    """

    def __init__(
        self, directory: str | os.PathLike[str], threads: int | None = None, verify: bool = True
    ) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.card = ModelCard.load(self.directory)
        onnx_path = self.directory / self.card.onnx_file
        if not onnx_path.is_file():
            raise ModelError(f"{onnx_path} is missing")
        if verify and self.card.onnx_sha256 and sha256_file(onnx_path) != self.card.onnx_sha256:
            raise ModelError(f"{onnx_path} does not match the sha256 in its model card")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=_providers(ort))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
            raise ModelError(f"cannot load {onnx_path}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        available = {o.name for o in self.session.get_outputs()}
        self.output_names = {k: v for k, v in self.card.outputs.items() if v in available}
        if "age" not in self.output_names:
            raise ModelError(f"{onnx_path} has no output {self.card.outputs.get('age')!r}")
        self.content: ContentChecks | None = None
        if self.card.content_checks is not None:
            if "features" not in self.output_names:
                raise ModelError(f"{onnx_path}: the card has content checks but the graph "
                                 "has no features output")
            self.content = ContentChecks(self.directory, self.card.content_checks, threads)

    def run(self, batch: np.ndarray, cam: bool = False, features: bool = False) -> ModelOutput:
        """Run a preprocessed batch (N, C, S, S) float32 and return its outputs.

        `cam` and `features` ask for those outputs, when the model has them.
        """
        wanted = {"age", "log_var"} | ({"cam"} if cam else set()) | (
            {"features"} if features else set())
        keys = [k for k in ("age", "log_var", "cam", "features")
                if k in self.output_names and k in wanted]
        values = self.session.run(
            [self.output_names[k] for k in keys],
            {self.input_name: np.ascontiguousarray(batch, np.float32)},
        )
        out = dict(zip(keys, values, strict=True))
        sigma = np.exp(0.5 * out["log_var"].reshape(-1)) if "log_var" in out else None
        return ModelOutput(
            age=out["age"].reshape(-1).astype(np.float64), sigma=sigma, cam=out.get("cam"),
            features=out.get("features"))


def _providers(ort: object) -> list[str]:
    available = ort.get_available_providers()  # type: ignore[attr-defined]
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def load_model(
    name_or_path: str | os.PathLike[str] | None = None, threads: int | None = None
) -> AgeModel:
    """Load a bundled model by name, or a model directory (see :class:`AgeModel`)."""
    return AgeModel(resolve_model_dir(name_or_path), threads=threads)
