"""Content quality checks: refuse by what the image shows, not by what its header says.

PNG and JPEG files have no header, and real DICOMs often carry a wrong or empty
``ViewPosition`` or ``BodyPartExamined``. These checks read the model's own features (the
pooled input of its linear head, the ``features`` output of the same ONNX run) through one
small extra ONNX graph (:class:`~xrayage.card.ContentCheckSpec`), so they cost a matrix
product, not a second network. They judge:

- the kind of image: a frontal chest radiograph, or a lateral view, another body part, not
  a radiograph at all, an inverted grey scale, a film rotated by 90° or 180°;
- a child's film (only when the header gives no age: a known age decides);
- a mirrored film (a warning: the heart's side is anatomy);
- **out of distribution**: the Mahalanobis distance of the features from frontal adult
  chest films, so an image unlike anything seen is refused even when no class fits it.

Each finding has its own code and a score; thresholds and measured rates are in the model
card and ``docs/quality.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .card import ContentCheckSpec, sha256_file
from .errors import ModelError
from .quality import QualityFinding, QualityStatus

CODES = {
    "lateral": ("content_lateral", "a lateral view"),
    "other_body_part": ("content_not_chest", "a radiograph of another body part"),
    "not_radiograph": ("content_not_radiograph", "not a radiograph (CT, MR, photo, ...)"),
    "inverted": ("content_inverted", "an inverted grey scale (bone dark)"),
    "rotated90": ("content_rotated", "rotated by 90°"),
    "rotated180": ("content_rotated", "rotated by 180° (upside down)"),
}
"""Class -> (finding code, what the image looks like)."""

REJECT_CODES = frozenset({*(code for code, _ in CODES.values()), "content_child",
                          "out_of_distribution"})
"""Every code by which the content checks refuse an image (``--allow`` takes them)."""

_REJECT, _WARN = QualityStatus.REJECT, QualityStatus.WARN


@dataclass(frozen=True)
class ContentScores:
    """What the content graph says of one image.

    Attributes
    ----------
    probabilities : dict
        Class -> probability (softmax over the card's classes).
    child, mirrored : float
        Probabilities of a child's film and of a mirrored film.
    distance : float
        Mahalanobis distance from frontal adult chest films (about ``sqrt(ood_dims)`` for
        a typical one).
    """

    probabilities: dict[str, float]
    child: float
    mirrored: float
    distance: float


class ContentChecks:
    """The content checks of a model directory, on ONNX Runtime.

    Parameters
    ----------
    directory : path
        The model directory holding ``spec.file``.
    spec : ContentCheckSpec
    threads : int, optional
        Intra-op threads.
    """

    def __init__(self, directory: str | Path, spec: ContentCheckSpec,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(directory) / spec.file
        if not path.is_file():
            raise ModelError(f"{path} (the content checks named in the model card) is missing")
        if sha256_file(path) != spec.sha256:
            raise ModelError(f"{path} does not match the sha256 in its model card")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.spec = spec
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])

    def scores(self, features: np.ndarray) -> list[ContentScores]:
        """Score a batch of model features (N, D)."""
        (raw,) = self.session.run(["scores"], {"features": np.ascontiguousarray(
            features, np.float32).reshape(len(features), -1)})
        probs, child, mirrored, distance = interpret_scores(raw, len(self.spec.classes))
        return [ContentScores(dict(zip(self.spec.classes, map(float, p), strict=True)),
                              float(c), float(m), float(d))
                for p, c, m, d in zip(probs, child, mirrored, distance, strict=True)]

    def findings(self, scores: ContentScores, age_years: float | None) -> list[QualityFinding]:
        """The findings of one image's scores (see :func:`content_findings`)."""
        return content_findings(scores, self.spec, age_years)


def content_findings(scores: ContentScores, spec: ContentCheckSpec,
                     age_years: float | None) -> list[QualityFinding]:
    """Turn content scores into quality findings with the card's thresholds.

    Parameters
    ----------
    scores : ContentScores
    spec : ContentCheckSpec
    age_years : float, optional
        The chronological age from the header or manifest; when known, it decides whether
        the patient is a child and the content's child score is not used.

    Returns
    -------
    list of QualityFinding
        Each with its score.

    Examples
    --------
    >>> spec = ContentCheckSpec("q.onnx", "", ("frontal_chest", "lateral"), 0.2, 0.5, 0.9,
    ...                         0.95, 12.0, 9.0, 8)
    >>> s = ContentScores({"frontal_chest": 0.03, "lateral": 0.97}, 0.01, 0.0, 4.0)
    >>> [(f.code, f.status.value) for f in content_findings(s, spec, 60.0)]
    [('content_lateral', 'reject')]
    """
    out: list[QualityFinding] = []
    frontal = scores.probabilities.get("frontal_chest", 0.0)
    others = {k: v for k, v in scores.probabilities.items() if k != "frontal_chest"}
    if others and frontal < spec.warn_below:
        kind = max(others, key=others.__getitem__)
        code, looks = CODES.get(kind, (f"content_{kind}", kind))
        if frontal < spec.reject_below:
            out.append(QualityFinding(code, _REJECT, f"the image looks like {looks} "
                                      f"(p = {others[kind]:.2f}), not a frontal chest "
                                      "radiograph", score=others[kind]))
        else:
            out.append(QualityFinding("content_uncertain", _WARN, "the image may not be a "
                                      f"frontal chest radiograph (p = {frontal:.2f}); it "
                                      f"could be {looks}: check it", score=frontal))
    if (age_years is None or not math.isfinite(age_years)) and scores.child >= spec.child_above:
        out.append(QualityFinding("content_child", _REJECT, "the image looks like a child's "
                                  f"chest film (p = {scores.child:.2f}) and no age is given: "
                                  "the model is for adults", score=scores.child))
    if scores.mirrored >= spec.mirrored_above:
        out.append(QualityFinding("content_mirrored", _WARN, "the film may be mirrored (heart "
                                  f"on the right; p = {scores.mirrored:.2f}): check the "
                                  "orientation", score=scores.mirrored))
    if scores.distance >= spec.ood_above:
        out.append(QualityFinding("out_of_distribution", _REJECT, "the image is unlike the "
                                  f"training radiographs (distance {scores.distance:.1f}, "
                                  f"limit {spec.ood_above:.1f})", score=scores.distance))
    elif scores.distance >= spec.ood_warn_above:
        out.append(QualityFinding("unusual_image", _WARN, "the image is unusual for the "
                                  f"training radiographs (distance {scores.distance:.1f})",
                                  score=scores.distance))
    return out


def interpret_scores(raw: np.ndarray, classes: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split the graph's ``scores`` (N, classes + 2 + k) into class probabilities
    (N, classes), child and mirror probabilities (N,) and the distance (N,)."""
    raw = np.asarray(raw, np.float64)
    logits = raw[:, :classes] - raw[:, :classes].max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    child, mirrored = _sigmoid(raw[:, classes]), _sigmoid(raw[:, classes + 1])
    return probs, child, mirrored, np.sqrt((raw[:, classes + 2:] ** 2).sum(axis=1))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -50, 50))))


__all__ = ["CODES", "REJECT_CODES", "ContentChecks", "ContentScores", "content_findings",
           "interpret_scores"]
