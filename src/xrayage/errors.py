"""Exception and warning classes.

Every problem with an input radiograph raises :class:`XRayAgeInputError` (a
``ValueError``), so a caller can process a batch and handle one bad file without
stopping the others.
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


class MissingExtraError(XRayAgeError, ImportError):
    """An optional dependency group (a pip extra) is needed but not installed."""

    def __init__(self, feature: str, extra: str, cause: BaseException | None = None) -> None:
        super().__init__(
            f"{feature} needs the '{extra}' extra: pip install 'xrayage[{extra}]'"
            + (f" ({cause})" if cause else "")
        )
        self.extra = extra


class XRayAgeWarning(UserWarning):
    """Base class of xrayage warnings."""
