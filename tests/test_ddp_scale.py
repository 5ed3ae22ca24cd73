"""Multi-process training as torchrun launches it: sample coverage per epoch, resume across sizes.

Two CPU processes (gloo) under ``torchrun --standalone``, on NIH rows of the shared data.
``test_train.py`` already trains through Lightning's own DDP launcher; here the launcher is
torchrun (the multi-node path of docs/scale.md), and we check what the ranks read and that
``last.ckpt`` moves between world sizes 2 -> 1 -> 2.

Run as a module (``torchrun ... -m tests.test_ddp_scale OUT MANIFEST``), this file is the
probe worker of :func:`test_each_sample_once_per_epoch_across_ranks`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs the [train] extra")
pytest.importorskip("lightning")

from .conftest import write_nih_subset  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.data,
              pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
WORLD, BATCH, EPOCHS = 2, 4, 2


def torchrun(args: list[str], nproc: int = WORLD) -> subprocess.CompletedProcess[str]:
    """Run under ``torchrun --standalone`` (free port, local rendezvous) with 1 thread each."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=280,
                          check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


# --------------------------------------------------------------------------- probe worker

def _probe(out: Path, manifest: Path) -> None:
    """Train 2 epochs on the real cache and data module, logging what each rank reads."""
    import lightning as L  # noqa: N812

    from xrayage.train.data import AgeDataModule, CachedImages
    from xrayage.train.fit import TrainConfig, prepare

    class Recording(CachedImages):
        read: list[int]

        def __getitem__(self, i: int) -> Any:
            self.read.append(int(i))
            return super().__getitem__(i)

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            images, ages = batch
            return ((images.float().mean((1, 2)) * self.w - ages) ** 2).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=1e-6)

        def on_train_epoch_start(self) -> None:
            train.read, val.read = [], []

        def on_train_epoch_end(self) -> None:
            loaders = {"train": self.trainer.train_dataloader,
                       "val": self.trainer.val_dataloaders}
            record = {"rank": self.global_rank, "n": {"train": len(train), "val": len(val)},
                      "read": {"train": train.read, "val": val.read},
                      "sampler": {k: [int(i) for i in v.sampler] for k, v in loaders.items()},
                      "sampler_type": type(loaders["train"].sampler).__name__}
            name = f"rank{self.global_rank}_epoch{self.current_epoch}.json"
            (out / name).write_text(json.dumps(record))

    cfg = TrainConfig(data=[f"manifest:{manifest}"], out=str(out), image_size=32,
                      val_fraction=0.2, progress=False, cache_workers=0)
    datasets, split, cache, _ = prepare(cfg)
    samples = [s for d in datasets for s in d.samples]
    train = Recording(cache, split.assign(samples, "train"))
    val = Recording(cache, split.assign(samples, "val"))
    train.read, val.read = [], []
    trainer = L.Trainer(accelerator="cpu", devices=WORLD, strategy="ddp", max_epochs=EPOCHS,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Probe(), AgeDataModule(train, val, batch_size=BATCH, num_workers=0))


# --------------------------------------------------------------------------- tests

def test_each_sample_once_per_epoch_across_ranks(tmp_path: Path) -> None:
    """What DistributedSampler + drop_last really give: the facts docs/scale.md states."""
    manifest = write_nih_subset(tmp_path, 39)  # 31 train, 8 val images
    out = tmp_path / "probe"
    out.mkdir()
    torchrun(["-m", "tests.test_ddp_scale", str(out), str(manifest)])
    orders: list[list[int]] = []
    for epoch in range(EPOCHS):
        ranks = [json.loads((out / f"rank{r}_epoch{epoch}.json").read_text())
                 for r in range(WORLD)]
        assert {r["sampler_type"] for r in ranks} == {"DistributedSampler"}
        n = ranks[0]["n"]["train"]
        assert n % WORLD == 1  # a size the world does not divide
        per_rank = math.ceil(n / WORLD)
        # The sampler shards the shuffled indices: together they cover every sample; the
        # last `pad` are repeats of the first ones so that every rank gets as many.
        yielded = [i for r in ranks for i in r["sampler"]["train"]]
        pad = per_rank * WORLD - n
        assert set(yielded) == set(range(n)) and len(yielded) == n + pad
        assert sum(c - 1 for c in Counter(yielded).values()) == pad
        # Each rank reads its own shard once, in the sampler's order, minus the incomplete
        # last batch (the training loader has drop_last=True).
        kept = per_rank // BATCH * BATCH
        for r in ranks:
            assert r["read"]["train"] == r["sampler"]["train"][:kept]
        reads = [set(r["read"]["train"]) for r in ranks]
        assert len(reads[0] & reads[1]) <= pad  # only a padded repeat can be read twice
        assert sum(len(x) for x in reads) >= n - WORLD * (BATCH - 1) - pad
        orders.append(yielded)
        # Validation: not shuffled, padded the same way, nothing dropped.
        nv = ranks[0]["n"]["val"]
        val_reads = [i for r in ranks for i in r["read"]["val"]]
        assert set(val_reads) == set(range(nv))
        assert len(val_reads) == math.ceil(nv / WORLD) * WORLD
    assert orders[0] != orders[1]  # reshuffled each epoch (set_epoch), same on every rank


def _train(out: Path, manifest: Path, cache: Path, steps: int, world: int,
           resume: Path | None = None) -> tuple[dict[str, Any], str]:
    exe = str(Path(sys.executable).parent / "xrayage")
    args = ["train", "--data", f"manifest:{manifest}", "--out", str(out),
            "--cache-dir", str(cache), "--backbone", "resnet18", "--image-size", "64",
            "--epochs", "10", "--max-steps", str(steps), "--batch-size", "4",
            "--num-workers", "0", "--no-progress", "--val-fraction", "0.2",
            "--accelerator", "cpu", "--devices", str(world), "--strategy", "ddp",
            *(["--resume", str(resume)] if resume else [])]
    done = torchrun([exe, *args], nproc=world)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt, done.stdout + done.stderr


def _adam_steps(ckpt: dict[str, Any]) -> set[int]:
    return {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}


def test_checkpoint_resumes_across_world_sizes(tmp_path: Path) -> None:
    manifest = write_nih_subset(tmp_path, 40)
    out, cache = tmp_path / "run", tmp_path / "cache"
    first, _ = _train(out, manifest, cache, steps=2, world=2)
    assert first["global_step"] == 2 and _adam_steps(first) == {2}
    saved = tmp_path / "world2.ckpt"
    shutil.copy(out / "checkpoints" / "last.ckpt", saved)
    second, log = _train(out, manifest, cache, steps=4, world=1, resume=saved)  # 2 -> 1
    assert f"Restored all states from the checkpoint at {saved}" in log
    assert second["global_step"] == 4 and _adam_steps(second) == {4}
    assert second["state_dict"].keys() == first["state_dict"].keys()
    third, log = _train(out, manifest, cache, steps=6, world=2,  # 1 -> 2
                        resume=out / "checkpoints" / "last.ckpt")
    assert "Restored all states from the checkpoint" in log
    assert third["global_step"] == 6 and _adam_steps(third) == {6}


if __name__ == "__main__":
    _probe(Path(sys.argv[1]), Path(sys.argv[2]))
