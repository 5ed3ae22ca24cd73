"""Dataset adapters: each turns a public dataset's own layout into a list of :class:`Sample`.

A dataset is named by a spec string ``ADAPTER:PATH[?key=value&key=value]``:

==========  ====================================================  ==========================
adapter     PATH                                                  options
==========  ====================================================  ==========================
nih         image folder (``images_*/images`` or flat)            ``csv``, ``subset``
chexpert    ``train.csv``/``valid.csv`` or its folder             ``check``
padchest    image root with the labels CSV                        ``csv``, ``check``
mimic       MIMIC-CXR-JPG root                                    ``patients``, ``metadata``,
                                                                  ``labels``, ``check``
manifest    xrayage manifest CSV (or its folder)                  ``source``, ``check``
==========  ====================================================  ==========================

``check=0`` keeps rows whose image file is missing. For ``nih``, ``subset`` is ``all``,
``train_val`` or ``test`` (the official lists); when omitted and the lists are present it
defaults to ``train_val`` for training and ``test`` for evaluation.

Examples
--------
>>> parse_spec("manifest:/data/manifest.csv?source=nih_cxr14")
('manifest', '/data/manifest.csv', {'source': 'nih_cxr14'})
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import parse_qsl

from . import chexpert, manifest, mimic, nih, padchest
from .base import FRONTAL_VIEWS, Sample, filter_samples

logger = logging.getLogger(__name__)

ADAPTERS: dict[str, tuple[Callable[..., Any], str | None]] = {
    "nih": (nih.load, nih.LICENCE),
    "chexpert": (chexpert.load, chexpert.LICENCE),
    "padchest": (padchest.load, padchest.LICENCE),
    "mimic": (mimic.load, mimic.LICENCE),
    "manifest": (manifest.load, None),
}


@dataclass
class Dataset:
    """Samples read from one spec, with the licence they are used under."""

    spec: str
    adapter: str
    samples: list[Sample]
    licence: str

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for the model card's ``training_data``.

        The dataset is named by its samples' ``source`` values (``nih_cxr14``), and its spec
        made portable (:func:`portable_spec`): a card records no path of the machine that
        built it.
        """
        ages = [s.age_years for s in self.samples]
        sources = sorted({s.source for s in self.samples})
        name = ", ".join(s for s in sources if s) or self.adapter
        return {
            "name": name, "spec": portable_spec(self.spec), "adapter": self.adapter,
            "images": len(self.samples), "patients": len({s.patient_id for s in self.samples}),
            "sources": sources,
            "age_min": min(ages, default=None), "age_max": max(ages, default=None),
            "licence": self.licence,
        }


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split ``ADAPTER:PATH?key=value`` into ``(adapter, path, options)``."""
    name, sep, rest = spec.partition(":")
    if not sep or name not in ADAPTERS or not rest:
        raise ValueError(
            f"dataset spec {spec!r} must be ADAPTER:PATH with ADAPTER one of {sorted(ADAPTERS)}"
        )
    path, _, query = rest.partition("?")
    return name, path, dict(parse_qsl(query, keep_blank_values=True))


def portable_spec(spec: str) -> str:
    """The spec with every absolute path (the data path and path options) cut to its last part.

    For records that leave the machine, such as a model card: they name the file and the
    options, never a folder of the machine that read it. Relative paths are kept.

    >>> portable_spec("manifest:/srv/shared/data/manifest.csv?source=nih_cxr14")
    'manifest:manifest.csv?source=nih_cxr14'
    >>> portable_spec("nih:/mnt/nih/images?csv=/mnt/nih/Data_Entry_2017_v2020.csv.gz&subset=all")
    'nih:images?csv=Data_Entry_2017_v2020.csv.gz&subset=all'
    >>> portable_spec("manifest:data/manifest.csv")
    'manifest:data/manifest.csv'
    """
    name, path, options = parse_spec(spec)

    def cut(value: str) -> str:
        return PurePath(value).name if PurePath(value).is_absolute() else value

    query = "&".join(f"{k}={cut(v)}" for k, v in options.items())
    return f"{name}:{cut(path)}" + (f"?{query}" if query else "")


def check_spec(spec: str) -> None:
    """Check a spec without reading the dataset: adapter, options and that its path exists.

    Raises
    ------
    ValueError
        Bad syntax, an unknown adapter or option, or a path that does not exist.
    """
    name, path, options = parse_spec(spec)
    allowed = set(inspect.signature(ADAPTERS[name][0]).parameters) - {"root"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {sorted(unknown)}; allowed {sorted(allowed)}")
    if not Path(path).exists():
        raise ValueError(f"dataset spec {spec!r}: {path} does not exist")


def load_dataset(spec: str, role: str = "train") -> Dataset:
    """Read a dataset from its spec.

    Parameters
    ----------
    spec : str
        ``ADAPTER:PATH[?options]`` (see the module docstring).
    role : {'train', 'eval'}
        Chooses NIH's default official subset when ``subset`` is not given.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        Unknown adapter or option, missing table or columns, or no samples.
    """
    name, path, options = parse_spec(spec)
    load, licence = ADAPTERS[name]
    allowed = set(inspect.signature(load).parameters) - {"root"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {sorted(unknown)}; allowed {sorted(allowed)}")
    if name == "nih" and "subset" not in options and nih.has_official_lists(Path(path)):
        options["subset"] = "test" if role == "eval" else "train_val"
        logger.info("nih: using the official %s list", options["subset"])
    result = load(Path(path), **options)
    if name == "manifest":
        result, licence = result
    if not result:
        raise ValueError(f"{spec}: no usable samples (check the path and options)")
    return Dataset(spec=spec, adapter=name, samples=result, licence=licence or "unknown")


__all__ = [
    "ADAPTERS", "FRONTAL_VIEWS", "Dataset", "Sample", "check_spec", "filter_samples",
    "load_dataset", "parse_spec", "portable_spec",
]
