"""The preprocessed cache: content, failures recorded, resumable, content-addressed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayage.card import PreprocessSpec
from xrayage.datasets import Sample, load_dataset
from xrayage.io import read_radiograph
from xrayage.preprocess import to_square
from xrayage.train.cache import ImageCache, build_cache, spec_key

from .conftest import write_nih_subset

SPEC = PreprocessSpec(image_size=64)


@pytest.fixture
def samples(tmp_path: Path, shared_data: Path) -> list[Sample]:
    real = load_dataset(f"manifest:{write_nih_subset(tmp_path, 6)}").samples
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(blank)
    extra = [Sample(corrupt, 40.0, patient_id="x:1"), Sample(blank, 41.0, patient_id="x:2")]
    return real + extra


@pytest.mark.data
def test_build_content_and_problems(tmp_path: Path, samples: list[Sample]) -> None:
    cache = build_cache(samples, SPEC, tmp_path / "cache", workers=2, progress=False)
    assert cache.directory.name == spec_key(SPEC)
    kept, where = cache.locate(samples)
    assert len(kept) == 6 and where.shape == (6, 2)
    img = cache.image(*where[0])
    assert img.dtype == np.uint8 and img.shape == (64, 64)
    expected = np.round(to_square(read_radiograph(kept[0].path).pixels, SPEC) * 255)
    np.testing.assert_array_equal(img, expected.astype(np.uint8))
    status = {Path(p["path"]).name: p for p in cache.problems()}
    assert status["corrupt.png"]["status"] == "failed" and status["corrupt.png"]["error"]
    assert status["blank.png"]["status"] == "rejected" and "blank" in status["blank.png"]["reasons"]


@pytest.mark.data
def test_resume_and_invalidation(tmp_path: Path, samples: list[Sample]) -> None:
    root = tmp_path / "cache"
    first = build_cache(samples[:3], SPEC, root, workers=0, progress=False)
    shards = sorted(first.directory.glob("shard_*.npy"))
    stamp = shards[0].stat().st_mtime_ns
    second = build_cache(samples, SPEC, root, workers=0, progress=False)
    assert shards[0].stat().st_mtime_ns == stamp  # not decoded again
    assert len(sorted(second.directory.glob("shard_*.npy"))) == 2
    assert len(ImageCache.open(second.directory).entries) == len(samples)
    # A changed file gets a new identity and is decoded again.
    changed = tmp_path / "copy.png"
    changed.write_bytes(samples[0].path.read_bytes())
    entry_count = len(second.entries)
    third = build_cache([Sample(changed, 50.0, patient_id="c")], SPEC, root, progress=False)
    assert len(third.entries) == entry_count + 1
    # Another preprocessing spec is another cache.
    other = build_cache(samples[:1], PreprocessSpec(image_size=32), root, progress=False)
    assert other.directory != first.directory and other.image(0, 0).shape == (32, 32)


@pytest.mark.data
def test_pickles_without_open_shards(tmp_path: Path, samples: list[Sample]) -> None:
    import pickle

    cache = build_cache(samples[:2], SPEC, tmp_path / "c", workers=0, progress=False)
    cache.image(0, 0)
    clone = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(clone.image(0, 1), cache.image(0, 1))
