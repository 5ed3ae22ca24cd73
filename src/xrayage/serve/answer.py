"""One instance in, the result objects out: what the DICOMweb worker and the Orthanc plugin
share (the C-STORE node, :mod:`xrayage.serve.node`, makes the same decisions).

:func:`answer_instance` runs the normal pipeline (:meth:`XRayAge.predict_many`, quality and
content checks included) on one DICOM instance's bytes and returns an :class:`Answer`:
the outcome, the refusal codes, and the SR (and SC) built by
:func:`xrayage.serve.node.result_datasets`, whose UIDs depend only on the source instance
and the model. It never raises for a bad instance and never names a patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..pipeline import PredictInput
from ..predict import XRayAge
from .node import instance_tag, result_datasets

OUTCOMES = ("answered", "rejected", "unreadable")


@dataclass
class Answer:
    """The result of one instance.

    Attributes
    ----------
    outcome : str
        ``answered`` (results made), ``rejected`` (the quality or content checks refused
        it) or ``unreadable`` (not a radiograph xrayage can read).
    tag : str
        :func:`~xrayage.serve.node.instance_tag` of the source SOP Instance UID (for logs).
    reasons : list of str
        Refusal codes (``lateral_view``, ``child``, ...) or the failure kind.
    xray_age : float or None
    datasets : list
        The SR (and SC) to store, empty unless answered.
    """

    outcome: str
    tag: str
    reasons: list[str] = field(default_factory=list)
    xray_age: float | None = None
    datasets: list[Any] = field(default_factory=list)

    def log_line(self) -> str:
        """One line for the log: the instance tag, the outcome and the reasons."""
        if self.outcome == "answered":
            return f"instance {self.tag}: X-ray age computed, {len(self.datasets)} object(s)"
        what = ("not readable as a radiograph" if self.outcome == "unreadable"
                else "refused by the quality checks")
        return f"instance {self.tag}: {what} ({', '.join(self.reasons) or 'no estimate'})"


def answer_instance(estimator: XRayAge, data: bytes, *, send_sc: bool = False,
                    fallback_uid: str | None = None) -> Answer:
    """Estimate one DICOM instance and build its result objects.

    Parameters
    ----------
    estimator : XRayAge
    data : bytes
        The instance as a DICOM file (Part 10).
    send_sc : bool
        Also build the Secondary Capture (heat map and result burned in).
    fallback_uid : str, optional
        The SOP Instance UID to tag an unreadable instance by.
    """
    est = next(estimator.predict_many([PredictInput(data, "instance")], heatmap=send_sc,
                                      keep_radiograph=send_sc))
    uid = est.source.sop_instance_uid if est.source is not None else None
    tag = instance_tag(uid or fallback_uid)
    if est.failure is not None and est.source is None:
        return Answer("unreadable", tag, [str(est.failure.kind)])
    if est.xray_age is None:
        reasons = list(est.qc_reasons) or ([str(est.failure.kind)] if est.failure else [])
        return Answer("rejected", tag, reasons)
    return Answer("answered", tag, [], float(est.xray_age),
                  result_datasets(est, estimator.card, send_sc=send_sc))


__all__ = ["OUTCOMES", "Answer", "answer_instance"]
