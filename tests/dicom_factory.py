"""Build small synthetic DICOM files with pydicom, for reader and QC tests."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)


def chest_phantom(rows: int = 320, cols: int = 288, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth synthetic 'chest' (bright mediastinum, dark lungs) in stored units."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    lungs = np.exp(
        -(((x - cols * 0.3) / (cols * 0.15)) ** 2 + ((y - rows * 0.5) / (rows * 0.3)) ** 2)
    )
    lungs += np.exp(
        -(((x - cols * 0.7) / (cols * 0.15)) ** 2 + ((y - rows * 0.5) / (rows * 0.3)) ** 2)
    )
    img = 0.8 - 0.6 * lungs + 0.05 * rng.standard_normal((rows, cols))
    top = 2**bits - 1
    return np.clip(img * top, 0, top).astype(np.uint16 if bits > 8 else np.uint8)


def make_dataset(pixels: np.ndarray | None = None, **attrs: Any) -> Dataset:
    """A DX-for-presentation dataset holding `pixels` (uint8/uint16, 2-D, 3-D frames or RGB)."""
    if pixels is None:
        pixels = chest_phantom()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientAge = "Test^Patient", "X1", "M", "055Y"
    ds.StudyDate = "20200101"
    rgb = pixels.ndim == 3 and pixels.shape[-1] == 3
    frames = pixels.shape[0] if pixels.ndim == 3 and not rgb else 1
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = ds.BitsAllocated if pixels.dtype == np.uint8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def to_bytes(ds: Dataset, transfer_syntax: str | None = None, **encode: Any) -> bytes:
    """Serialise a dataset, compressing it first if a transfer syntax is given."""
    if transfer_syntax is not None:
        ds.compress(transfer_syntax, **encode)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


__all__ = ["CTImageStorage", "chest_phantom", "make_dataset", "to_bytes"]
