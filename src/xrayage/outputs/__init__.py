"""Clinical outputs of an X-ray age estimate (the ``clinical`` extra).

- :func:`to_dicom_sr`: a DICOM TID 1500 Measurement Report (Comprehensive 3D SR),
- :func:`to_secondary_capture`: a DICOM Secondary Capture with the heat map and result,
- :func:`to_fhir_observation` / :func:`to_fhir_bundle`: FHIR R4 resources,
- :func:`render_report`: a one-page HTML report.

SR and FHIR need only the estimate (it carries its source's DICOM header); the images
(Secondary Capture, report) draw on the pixels: predict with ``keep_radiograph=True`` (and
``heatmap=True`` for the heat map). :func:`write_clinical` writes any of them for one
estimate, as ``xrayage predict --sr/--sc/--fhir/--report`` does. highdicom and
fhir.resources are imported only when used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..card import ModelCard
from ..errors import ClinicalOutputError
from ..estimate import AgeEstimate
from ._common import output_name
from .dicom_sr import SRValues, read_dicom_sr, to_dicom_sr, write_dicom_sr
from .fhir import to_fhir_bundle, to_fhir_observation, write_fhir
from .report import render_report, write_report
from .secondary_capture import render_summary_image, to_secondary_capture, write_secondary_capture

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClinicalDirs:
    """Output folders; None skips that output."""

    sr: Path | None = None
    sc: Path | None = None
    fhir: Path | None = None
    report: Path | None = None

    @property
    def any(self) -> bool:
        """True if any output is asked for."""
        return any(d is not None for d in (self.sr, self.sc, self.fhir, self.report))

    @property
    def needs_heatmap(self) -> bool:
        """True if an asked output shows the heat map."""
        return self.sc is not None or self.report is not None

    @property
    def needs_pixels(self) -> bool:
        """True if an asked output draws the radiograph (``keep_radiograph=True``)."""
        return self.needs_heatmap


def write_clinical(estimate: AgeEstimate, card: ModelCard, dirs: ClinicalDirs) -> list[Path]:
    """Write the asked clinical outputs of one estimate; skip, with a warning, the impossible.

    File names are ``<stem>-<sha1 of the input path>`` plus ``.sr.dcm``, ``.sc.dcm``,
    ``.fhir.json`` or ``.html``. A report is written for every input (rejected ones
    say why); SR, SC and FHIR need an X-ray age, SR and SC a DICOM source.

    Returns
    -------
    list of Path
        The files written.
    """
    writers = ((dirs.sr, ".sr.dcm", write_dicom_sr), (dirs.sc, ".sc.dcm", write_secondary_capture),
               (dirs.fhir, ".fhir.json", write_fhir), (dirs.report, ".html", write_report))
    written = []
    for directory, suffix, writer in writers:
        if directory is None:
            continue
        directory.mkdir(parents=True, exist_ok=True)
        try:
            written.append(writer(estimate, card, directory / output_name(estimate.path, suffix)))
        except ClinicalOutputError as exc:
            logger.warning("%s", exc)
    return written


__all__ = [
    "ClinicalDirs",
    "ClinicalOutputError",
    "SRValues",
    "read_dicom_sr",
    "render_report",
    "render_summary_image",
    "to_dicom_sr",
    "to_fhir_bundle",
    "to_fhir_observation",
    "to_secondary_capture",
    "write_clinical",
    "write_dicom_sr",
    "write_fhir",
    "write_report",
    "write_secondary_capture",
]
