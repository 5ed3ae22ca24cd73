"""``xrayage predict --engine ray``: same rows as local, resumes, exactly once under faults.

A local Ray (2 CPUs, no dashboard, small object store) started once for the module; the
tiny ONNX model; 40 NIH rows of the shared manifest plus a corrupt PNG, a lateral DICOM
(rejected) and a missing file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="needs the 'cluster' extra")
pytest.importorskip("pyarrow")

from xrayage.cli.main import main  # noqa: E402
from xrayage.engines.ray_engine import RayOptions, ShardInference, predict_ray  # noqa: E402
from xrayage.engines.shards import (  # noqa: E402
    leftover_shards,
    merge_shards,
    write_result_shard,
)
from xrayage.results import ResultWriter  # noqa: E402

from .conftest import write_nih_subset  # noqa: E402
from .dicom_factory import make_dataset, to_bytes  # noqa: E402
from .onnx_factory import build_tiny_model  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A 2-CPU local Ray for the module, always shut down."""
    from ray.data import DataContext

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 2**20,
             log_to_driver=False, configure_logging=False)
    DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """40 NIH rows (absolute paths) + a corrupt PNG, a lateral DICOM and a missing file."""
    root = tmp_path_factory.mktemp("inputs")
    path = write_nih_subset(root, 40)
    (root / "broken.png").write_bytes(b"\x89PNG garbage")
    (root / "lateral.dcm").write_bytes(to_bytes(make_dataset(ViewPosition="LL")))
    with open(path, "a", newline="") as handle:
        for name in ("broken.png", "lateral.dcm", "missing.png"):
            csv.writer(handle).writerow([str(root / name)])
    return path


def first_rows(manifest: Path, n: int, out: Path) -> Path:
    """A manifest with the first `n` rows of another."""
    with open(manifest, newline="") as handle:
        lines = handle.read().splitlines(keepends=True)
    out.write_text("".join(lines[: n + 1]))
    return out


def local_rows(manifest: Path, model: Path, out: Path) -> str:
    assert main(["predict", str(manifest), "-o", str(out), "--model", str(model)]) == 0
    return out.read_text()


@pytest.mark.slow
@pytest.mark.data
def test_same_rows_as_local_and_resumes(local_ray: None, tiny: Path, manifest: Path,
                                        tmp_path: Path) -> None:
    expected = local_rows(manifest, tiny, tmp_path / "local.csv")
    assert expected.count("\n") == 44 and ",error," in expected and ",reject," in expected
    out = tmp_path / "ray.csv"
    half = first_rows(manifest, 20, tmp_path / "half.csv")
    args = ["predict", "-o", str(out), "--model", str(tiny), "--engine", "ray",
            "--num-workers", "1"]
    assert main([*args[:1], str(half), *args[1:]]) == 0
    assert out.read_text().count("\n") == 21
    assert main([*args[:1], str(manifest), *args[1:]]) == 0  # resumes: only 23 new
    assert out.read_text() == expected  # same rows, same order, byte for byte
    assert not out.with_name("ray.csv.parts").exists()
    counts = predict_ray([manifest], out, model=str(tiny))  # nothing left to do
    assert counts == {"already": 43}


def _crashing_actor(marker: str) -> type[ShardInference]:
    """An actor class whose process dies (os._exit) on its first batch, once per marker."""

    class CrashOnce(ShardInference):
        def __call__(self, batch: Any) -> Any:
            if not os.path.exists(marker):
                Path(marker).write_text(str(os.getpid()))
                os._exit(1)  # a lost worker: no exception, no cleanup
            return super().__call__(batch)

    return CrashOnce


@pytest.mark.slow
@pytest.mark.data
def test_lost_actor_every_row_exactly_once(local_ray: None, tiny: Path, manifest: Path,
                                           tmp_path: Path) -> None:
    expected = local_rows(manifest, tiny, tmp_path / "local.jsonl")
    marker = tmp_path / "crashed"
    out = tmp_path / "ray.jsonl"
    options = RayOptions(num_workers=1, read_rows=8, max_retries=2)
    counts = predict_ray([manifest], out, model=str(tiny), options=options,
                         actor_class=_crashing_actor(str(marker)))
    assert marker.is_file()  # the actor did die once
    assert counts.get("duplicate", 0) == 0
    assert sum(v for k, v in counts.items() if k not in ("already", "duplicate")) == 43
    assert out.read_text() == expected


def test_merge_is_exactly_once_and_survives_a_killed_driver(tmp_path: Path) -> None:
    rows = [{"path": f"img{i}.png", "xray_age": 50.0 + i, "age_interval_lower": None,
             "age_interval_upper": None, "age_years": 40.0, "age_gap": 10.0 + i,
             "age_gap_corrected": None, "qc_status": "ok", "qc_reasons": ["no_view"],
             "error": None} for i in range(5)]
    parts = tmp_path / "out.csv.parts" / "rows"
    first = write_result_shard(rows[:3], parts)
    assert write_result_shard(rows[:3], parts) == first  # a retried batch: same shard
    write_result_shard(rows[2:], parts)  # overlaps row 2
    (parts / ".rows_x.parquet.tmp").write_bytes(b"half-written")  # never merged
    assert len(leftover_shards(parts)) == 2
    with ResultWriter(tmp_path / "out.csv") as writer:
        counts = merge_shards(leftover_shards(parts), writer)
    assert counts == {"ok": 5, "duplicate": 1}
    text = (tmp_path / "out.csv").read_text().splitlines()
    assert len(text) == 6 and text[1] == "img0.png,50.0,,,40.0,10.0,,ok,no_view,"
    assert leftover_shards(parts) == []


@pytest.mark.parametrize("extra", [[], ["-o", "x.csv", "--heatmaps", "h"]])
def test_cli_refuses_what_ray_cannot_do(extra: list[str], tmp_path: Path) -> None:
    args = ["predict", str(tmp_path), "--engine", "ray"]
    assert main([*args, *[str(tmp_path / e) if e in ("x.csv", "h") else e
                          for e in extra]]) == 2


@pytest.mark.slow
def test_a_successful_run_prints_nothing_of_ray(tiny: Path, manifest: Path,
                                                tmp_path: Path) -> None:
    """Started by the command (no cluster running): one summary line on stderr, no Ray log."""
    import subprocess
    import sys

    small = first_rows(manifest, 4, tmp_path / "small.csv")
    proc = subprocess.run(
        [sys.executable, "-m", "xrayage.cli.main", "predict", str(small), "-o",
         str(tmp_path / "out.csv"), "--model", str(tiny), "--engine", "ray",
         "--num-workers", "1"],
        capture_output=True, text=True, timeout=200,
        env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xrayage (ray): 4 inputs"), proc.stderr
