"""Exception and warning classes: every one that xrayage defines lives here.

Every problem with an input radiograph raises :class:`XRayAgeInputError` (a
``ValueError``), so a caller can process a batch and handle one bad file without
stopping the others. A missing optional dependency raises :class:`MissingExtraError`
(see :func:`xrayage.extras.require`). The modules that used to define
:class:`CohortDataError` (:mod:`xrayage.cohort`) and :class:`ClinicalOutputError`
(:mod:`xrayage.outputs`) still re-export them.
"""

from __future__ import annotations


class XRayAgeError(Exception):
    """Base class of every xrayage error."""


class XRayAgeInputError(XRayAgeError, ValueError):
    """An input radiograph cannot be read or used.

    The message names the cause and, where it helps, what to do next. It never holds
    patient identifiers.
    """


class ImageTooLargeError(XRayAgeInputError):
    """The image has more pixels than allowed (a possible decompression bomb).

    Raise the limit with ``max_pixels=`` if the image is genuine.
    """


class UnsupportedFormatError(XRayAgeInputError):
    """The bytes are neither DICOM nor an image format xrayage reads."""


class ModelError(XRayAgeError, RuntimeError):
    """A model file or model card is missing, corrupt or inconsistent."""


class ModelNotFoundError(ModelError, ValueError):
    """The model named is not there, or the file given is not a model: bad usage or input.

    The command line exits 2 for it, as for any bad input, and 1 for other model errors
    (a bundled model's file missing or corrupt).
    """


class MissingExtraError(XRayAgeError, ImportError):
    """An optional dependency group (a pip extra) is needed but not installed."""

    def __init__(self, feature: str, extra: str, cause: BaseException | None = None) -> None:
        super().__init__(
            f"{feature} needs the '{extra}' extra: pip install 'xrayage[{extra}]'"
            + (f" ({cause})" if cause else "")
        )
        self.extra = extra


class CohortDataError(XRayAgeError, ValueError):
    """A cohort table cannot be analysed as asked (missing column, bad values, too few events).

    The message names the column and says what to change.
    """


class ClinicalOutputError(XRayAgeError, ValueError):
    """An estimate cannot be turned into the requested clinical output.

    The message names the input file and the reason (no X-ray age, not a DICOM
    source, ...); it never holds patient identifiers.
    """


class XRayAgeWarning(UserWarning):
    """Base class of xrayage warnings."""


class XRayAgeDeprecationWarning(XRayAgeWarning, FutureWarning):
    """A deprecated name or file format was used; it still works, but will not for long.

    For example a predictions CSV with the legacy ``chronological_age`` column instead of
    ``age_years``. It is a :class:`FutureWarning`, so Python shows it to the users of the
    command line by default, not only to developers.
    """
