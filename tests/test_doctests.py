"""The examples in the package's docstrings run (doctest), so the documented API stays true.

Every module of ``src/xrayage`` whose source holds a ``>>>`` example is imported and its
examples run; a module that needs an optional extra which is not installed is skipped,
naming the missing package. Data-free and fast: part of ``-m "not slow and not data"``.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import xrayage

PACKAGE = Path(xrayage.__file__).resolve().parent


def modules_with_examples() -> list[str]:
    """Dotted names of the package's modules whose source holds a ``>>>`` example."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_core_modules_are_covered() -> None:
    found = set(modules_with_examples())
    for name in ("xrayage.io", "xrayage.quality", "xrayage.preprocess", "xrayage.calibration",
                 "xrayage.metrics", "xrayage.datasets", "xrayage.outputs._common"):
        assert name in found, f"{name} lost its docstring examples"


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # MissingExtraError is an ImportError too
        missing = getattr(exc, "name", None) or ""
        if missing.split(".")[0] == "xrayage":
            raise
        pytest.skip(f"{name} needs an optional extra that is not installed: {exc}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed (above)"
