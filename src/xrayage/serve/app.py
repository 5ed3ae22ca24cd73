"""The HTTP API and web page: ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz``, ``/``.

The service holds no logic of its own: an upload is estimated with
:meth:`~xrayage.predict.XRayAge.predict_many` (the pipeline's stages), and the estimate's
typed failure picks the status code (413, 415, 400), in a bounded thread pool so the event
loop never runs ONNX. Limits (see :mod:`xrayage.serve.limits`) are applied before a
body is parsed. Logs name the route, status, duration and size only: never a file
name, a header value or anything read from the image.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Literal

# without the 'serve' extra, importing xrayage.serve already raised MissingExtraError
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import ClinicalOutputError, MissingExtraError
from ..estimate import AgeEstimate, FailureKind
from ..explain import overlay
from ..pipeline import PredictInput
from ..predict import XRayAge
from . import redact
from .limits import GuardMiddleware, InferencePool, Ticket, UploadLimits, error_code

logger = logging.getLogger("xrayage.serve")

DEFAULT_MAX_UPLOAD_BYTES = 64 << 20
"""Largest request body (64 MiB): an uncompressed 16-bit 4k x 4k radiograph is 32 MiB."""

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest decoded image (pixels): twice the largest flat-panel detectors."""

STATIC = resources.files("xrayage") / "serve" / "static"


class ModelInfo(BaseModel):
    """The model that made an estimate."""

    name: str
    version: str


class Prediction(BaseModel):
    """The X-ray age of one upload (``xray_age`` is null when quality checks reject it)."""

    xray_age: float | None = Field(description="X-ray age, years")
    age_interval_lower: float | None = Field(
        description="lower limit of the interval for the chronological age of a patient with "
        "this X-ray age, years")
    age_interval_upper: float | None = Field(description="its upper limit, years")
    interval_coverage: float | None = Field(description="nominal coverage of the interval")
    age_years: float | None = Field(description="chronological age, from the header or the "
                                    "age_years field, years")
    age_gap: float | None = Field(description="xray_age - age_years, years")
    age_gap_corrected: float | None = Field(description="gap corrected for regression to "
                                            "the mean, years")
    qc_status: Literal["ok", "warn", "reject"]
    qc_reasons: list[str] = Field(description="quality-check codes")
    qc_messages: list[str] = Field(description="one sentence per quality-check code")
    model: ModelInfo
    heatmap_png_base64: str | None = Field(
        None, description="class activation map overlay (PNG), when heatmap=true")
    sr_dicom_base64: str | None = Field(
        None, description="DICOM SR (Part 10 file), when sr=true and the upload is DICOM")
    fhir_observation: dict[str, Any] | None = Field(
        None, description="FHIR R4 Observation, when fhir=true")
    notes: list[str] = Field(
        default_factory=list, description="why a requested output is missing")


class Error(BaseModel):
    """An error: ``detail`` says what went wrong and what to do; ``code`` is stable."""

    detail: str
    code: str = Field(description="stable error code, e.g. unreadable, too_large, busy")
    errors: list[dict[str, Any]] | None = Field(
        None, description="422 invalid_request only: each invalid field (loc, msg, type)")


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"]


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Error, "description": text} for code, text in {
        400: "unreadable image (corrupt or truncated)",
        401: "missing or wrong API key",
        408: "upload too slow (below the minimum rate, or past the body deadline)",
        413: "upload or image too large",
        415: "not multipart/form-data, or not a DICOM, PNG or JPEG image",
        422: "a field out of range, or a non-finite (NaN/infinite) image or result",
        429: "too many uploads in flight from this client address",
        500: "internal error (JSON, never plain text)",
        501: "the requested output needs an extra that is not installed",
        503: "server busy; retry after the Retry-After delay",
        504: "request timed out",
    }.items()
}


@dataclass(frozen=True)
class _Options:
    heatmap: bool
    sr: bool
    fhir: bool
    fhir_context: dict[str, str | None] = field(default_factory=dict)


class _RefusedError(Exception):
    def __init__(self, code: int, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail
        self.error = error or error_code(code)


def create_app(model: XRayAge | str | os.PathLike[str] | None = None, *,
               api_key: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               timeout_s: float = 60.0, max_queue: int = 8, workers: int = 1,
               max_pixels: int = DEFAULT_MAX_PIXELS, uploads: UploadLimits | None = None,
               fhir_patient_system: str | None = None) -> FastAPI:
    """Build the FastAPI application.

    Parameters
    ----------
    model : XRayAge, str or path, optional
        A loaded estimator, or a bundled model name or model directory to load
        (default: the bundled model).
    api_key : str, optional
        When set, every route but ``/healthz`` and the static page needs it, in
        header ``X-API-Key`` or ``Authorization: Bearer``.
    max_upload_bytes : int
        Largest request body; larger uploads get 413 as soon as they pass it.
    timeout_s : float
        Per-request deadline (upload, queue and inference): 504 when passed.
    max_queue : int
        Requests allowed to wait for an inference thread; more get 503 + Retry-After.
    workers : int
        Concurrent inference threads.
    max_pixels : int
        Largest decoded image; larger ones (decompression bombs) get 413.
    uploads : UploadLimits, optional
        Slow-client protection: body deadline, minimum rate, uploads per client.
    fhir_patient_system : str, optional
        ``system`` of the FHIR patient identifier (default
        :data:`xrayage.outputs.fhir.PATIENT_ID_SYSTEM`).

    Returns
    -------
    fastapi.FastAPI

    Examples
    --------
    >>> app = create_app("tests/tiny-model")  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app)  # doctest: +SKIP
    """
    # a copy, so the service's pixel limit never changes the caller's estimator
    estimator = copy.copy(model) if isinstance(model, XRayAge) else XRayAge.load(model)
    estimator.max_pixels = max_pixels
    pool = InferencePool(workers=workers, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown()

    app = FastAPI(
        title="xrayage", version=__version__, lifespan=lifespan, docs_url=None,
        redoc_url=None,  # their pages load scripts from a CDN; the schema stays
        description="X-ray age from a frontal chest radiograph. Research software, "
                    "not a medical device.",
    )
    app.state.estimator, app.state.pool = estimator, pool
    _install_error_handlers(app)

    @app.get("/healthz", response_model=Health, tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process is up and the model is loaded."""
        return {"status": "ok"}

    @app.get("/v1/model", tags=["model"], responses={401: _ERRORS[401]})
    async def model_card() -> dict[str, Any]:
        """The model card: preprocessing, training data, metrics, calibration, limits."""
        return estimator.card.to_dict()

    @app.post("/v1/predict", response_model=Prediction, tags=["model"],
              responses=_ERRORS)
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="DICOM, PNG or JPEG radiograph")],
        age_years: Annotated[float | None, Form(ge=0, le=130, description=(
            "chronological age, years (overrides the DICOM header)"))] = None,
        sex: Annotated[Literal["M", "F", "O"] | None, Form()] = None,
        heatmap: Annotated[bool, Form(description="return the heat map overlay")] = False,
        sr: Annotated[bool, Form(description="return a DICOM SR (DICOM uploads)")] = False,
        fhir: Annotated[bool, Form(description="return a FHIR Observation")] = False,
        q_age_years: Annotated[float | None, Query(alias="age_years", ge=0, le=130)] = None,
        q_sex: Annotated[Literal["M", "F", "O"] | None, Query(alias="sex")] = None,
        q_heatmap: Annotated[bool, Query(alias="heatmap")] = False,
        q_sr: Annotated[bool, Query(alias="sr")] = False,
        q_fhir: Annotated[bool, Query(alias="fhir")] = False,
        patient_id: Annotated[str | None, Form(max_length=64, description=(
            "patient identifier for the FHIR subject of a non-DICOM upload"))] = None,
        study_uid: Annotated[str | None, Form(max_length=64, pattern=r"^[0-9.]+$",
                                              description=("Study Instance UID for the FHIR "
                                                           "derivedFrom of a non-DICOM upload"))
                             ] = None,
    ) -> dict[str, Any]:
        """Estimate the X-ray age of one radiograph.

        Form fields and query parameters are equivalent (form wins). The format is
        read from the content; the part's content type and file name are ignored.
        """
        ticket: Ticket = request.state.xrayage_ticket
        data = await file.read()
        options = _Options(heatmap or q_heatmap, sr or q_sr, fhir or q_fhir,
                           {"patient_id": patient_id, "study_uid": study_uid,
                            "patient_system": fhir_patient_system})
        age = age_years if age_years is not None else q_age_years
        try:
            return await pool.run(ticket, lambda: _predict(
                estimator, data, age, sex or q_sex, options))
        except _RefusedError as exc:
            logger.info("upload refused (%d %s): %s", exc.code, exc.error, exc.detail)
            return JSONResponse({"detail": exc.detail, "code": exc.error},  # type: ignore[return-value]
                                status_code=exc.code)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    known = frozenset(getattr(r, "path", "") for r in app.routes)
    app.add_middleware(GuardMiddleware, pool=pool, api_key=api_key,
                       max_upload_bytes=max_upload_bytes, timeout_s=timeout_s,
                       known_paths=known, uploads=uploads)
    redact.install()
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error JSON ``{"detail": ..., "code": ...}``: HTTP errors, validation, 500s."""

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = getattr(exc, "code", None) or error_code(exc.status_code)
        return JSONResponse({"detail": exc.detail, "code": code}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        where = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:]) or 'request'}: {e['msg']}"
                          for e in errors)
        return JSONResponse({"detail": f"invalid request: {where}", "code": "invalid_request",
                             "errors": errors}, status_code=422)

    async def internal(_: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error (%s)", type(exc).__name__)
        return JSONResponse({"detail": "internal error: the server failed on this request; "
                             "it was logged without its content", "code": "internal_error"},
                            status_code=500)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, internal)


_STATUS = {FailureKind.TOO_LARGE: 413, FailureKind.UNSUPPORTED: 415,
           FailureKind.NON_FINITE: 422}
"""HTTP status of an input failure (400 for the others); its ``code`` is the kind."""


def _predict(estimator: XRayAge, data: bytes, age_years: float | None, sex: str | None,
             options: _Options) -> dict[str, Any]:
    """Estimate and format one upload (runs in a worker thread)."""
    item = PredictInput(data, "upload", age_years, sex)
    est = next(estimator.predict_many([item], heatmap=options.heatmap,
                                      keep_radiograph=options.heatmap))
    if est.failure is not None:
        raise _RefusedError(_STATUS.get(est.failure.kind, 400), est.failure.message,
                            est.failure.kind.value)
    card = estimator.card
    result: dict[str, Any] = est.to_record()
    del result["path"], result["error"]
    result["qc_messages"] = est.quality.messages
    result["interval_coverage"] = (None if card.conformal is None or est.age_interval_lower
                                   is None else card.conformal.coverage)
    result["model"] = {"name": card.name, "version": card.version}
    if options.heatmap and est.heatmap is not None and est.radiograph is not None:
        image = overlay(est.radiograph.pixels, est.heatmap, card.preprocessing, max_side=768)
        buf = io.BytesIO()
        image.save(buf, "PNG")
        result["heatmap_png_base64"] = base64.b64encode(buf.getvalue()).decode("ascii")
    if options.sr or options.fhir:
        result.update(_clinical_outputs(est, estimator, options))
    return result


def _clinical_outputs(est: AgeEstimate, estimator: XRayAge,
                      options: _Options) -> dict[str, Any]:
    """The DICOM SR and FHIR Observation, built by :mod:`xrayage.outputs`."""
    out: dict[str, Any] = {"notes": []}
    if est.xray_age is None:
        out["notes"].append("sr/fhir: no X-ray age (the quality checks rejected the image)")
        return out
    from ..outputs import to_dicom_sr, to_fhir_observation

    card = estimator.card

    def sr() -> None:
        buf = io.BytesIO()
        to_dicom_sr(est, card).save_as(buf, enforce_file_format=True)
        out["sr_dicom_base64"] = base64.b64encode(buf.getvalue()).decode("ascii")

    def fhir() -> None:
        context = options.fhir_context
        out["fhir_observation"] = json.loads(to_fhir_observation(
            est, card, patient_system=context.get("patient_system"),
            patient_id=context.get("patient_id"),
            study_uid=context.get("study_uid")).model_dump_json())

    for wanted, build in ((options.sr, sr), (options.fhir, fhir)):
        if not wanted:
            continue
        try:
            build()
        except ClinicalOutputError as exc:
            out["notes"].append(str(exc))
        except MissingExtraError as exc:  # highdicom or fhir.resources
            raise _RefusedError(501, str(exc)) from None
        except (ValueError, TypeError, ArithmeticError) as exc:  # e.g. a value FHIR refuses
            raise _RefusedError(422, f"{'sr' if build is sr else 'fhir'}: this estimate "
                                f"cannot be encoded ({type(exc).__name__})",
                                "output_invalid") from None
    return out
