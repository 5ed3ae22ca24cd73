"""Join two ``extract_maps.py`` files of the same images side by side (e.g. two input sizes).

The second file's blocks are numbered after the first's: with a first file of 13 blocks,
``g3:14-24`` selects the second file's blocks 1-11. Usage::

    python experiments/merge_maps.py g294.npz f197.npz --out m294_197.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first", type=np.load)
    p.add_argument("second", type=np.load)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if not (a.first["train_path"] == a.second["train_path"]).all():
        raise SystemExit("the two files hold different images")
    pools = [k for k in a.first.files if k.startswith("train_g") and k in a.second.files]
    out = {k: np.concatenate([a.first[k], a.second[k]], 1) for k in pools}
    # the labels: ages, patients, sex, view, paths
    out |= {k: a.first[k] for k in a.first.files if k.startswith("train_") and a.first[k].ndim == 1}
    out["channels"] = np.concatenate([a.first["channels"], a.second["channels"]])
    np.savez(a.out, **out)


if __name__ == "__main__":
    main()
