"""Shared helpers: paths, the one preprocessing function, datasets, evaluation, MAC counting."""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image

MODELS_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("IMAGENET_SAMPLE", MODELS_DIR.parent.parent / "shared" / "imagenet-sample"))
SEED = 0

RESIZE_SHORTER = 256
CROP = 224
MEAN = 127.0
STD = 128.0


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
    except ImportError:
        pass


def resize_shorter(img):
    """Resize so the shorter side is 256 (Pillow bilinear, antialiased), the longer side
    rounded half up."""
    w, h = img.size
    if w <= h:
        nw, nh = RESIZE_SHORTER, (h * RESIZE_SHORTER + w // 2) // w
    else:
        nw, nh = (w * RESIZE_SHORTER + h // 2) // h, RESIZE_SHORTER
    return img.resize((nw, nh), Image.BILINEAR)


def crop224(path) -> np.ndarray:
    """RGB, resize shorter side to 256 (Pillow bilinear, antialiased), centre crop 224.

    Returns the HWC uint8 crop. The Rust server replicates this exactly.
    """
    img = resize_shorter(Image.open(path).convert("RGB"))
    nw, nh = img.size
    left, top = (nw - CROP) // 2, (nh - CROP) // 2
    img = img.crop((left, top, left + CROP, top + CROP))
    return np.asarray(img, dtype=np.uint8)


def normalize(crop: np.ndarray) -> np.ndarray:
    """HWC uint8 crop -> 1x3x224x224 float32, (x - 127) / 128."""
    x = (crop.astype(np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def preprocess(path) -> np.ndarray:
    """The single preprocessing function used for eval, calibration and reference data."""
    return normalize(crop224(path))


def synsets() -> list[tuple[str, str]]:
    lines = (DATA_DIR / "synsets.txt").read_text().splitlines()
    out = []
    for line in lines:
        wnid, name = line.split(maxsplit=1)
        out.append((wnid, name.strip()))
    assert len(out) == 1000, len(out)
    return out


def load_split(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Returns (N x 3 x 224 x 224 float32, labels, file names) for calib/ or dev/, sorted by name."""
    index = {wnid: i for i, (wnid, _) in enumerate(synsets())}
    files = sorted((DATA_DIR / split).glob("*.JPEG"))
    assert files, f"no images in {DATA_DIR / split}"
    xs = np.concatenate([preprocess(f) for f in files])
    ys = np.array([index[f.name.split("_", 1)[0]] for f in files], dtype=np.int64)
    return xs, ys, [f.name for f in files]


def topk_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = float(np.mean(order[:, 0] == labels))
    top5 = float(np.mean([labels[i] in order[i, :5] for i in range(len(labels))]))
    return top1, top5


def ort_session(path, disable_opt: bool = False, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if disable_opt:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_logits(path, xs: np.ndarray, disable_opt: bool = False, batch: int = 25) -> np.ndarray:
    sess = ort_session(path, disable_opt)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: xs[i : i + batch]})[0] for i in range(0, len(xs), batch)]
    return np.concatenate(outs)


def eval_onnx(path, xs, ys, disable_opt: bool = False) -> tuple[float, float]:
    return topk_accuracy(ort_logits(path, xs, disable_opt), ys)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- ONNX statistics

def with_resize(src, dst, size: int, crop: int = CROP) -> None:
    """Write `src` with a Resize of its NCHW input `input` to size x size in front (the graph the
    server builds for a variant with `resize = size`)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    s = np.float32(size) / np.float32(crop)
    if np.floor(np.float32(crop) * s) != size:  # as src/engine/rescale.rs:scale
        s = np.nextafter(s, np.float32(np.inf))
    assert int(np.floor(np.float32(crop) * s)) == size, (crop, size, s)
    resized = "slimserve_resized_input"
    for n in g.node:
        for i, name in enumerate(n.input):
            if name == "input":
                n.input[i] = resized
    scales = resized + "_scales"
    g.initializer.append(numpy_helper.from_array(np.array([1, 1, s, s], np.float32), scales))
    g.node.insert(0, helper.make_node("Resize", ["input", "", scales], [resized], name="slimserve_resize",
                                      mode="linear", coordinate_transformation_mode="half_pixel"))
    del g.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))



def _initializer_arrays(model):
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def count_params(path) -> int:
    """Number of weight/bias scalars (quantisation scales and zero points excluded)."""
    import onnx

    model = onnx.load(str(path))
    skip = set()
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            skip.update(n.input[1:])
    total = 0
    for t in model.graph.initializer:
        if t.name in skip:
            continue
        n = 1
        for d in t.dims:
            n *= d
        if n > 1:  # scalars are Clip bounds and the like, not weights
            total += n
    return int(total)


def count_macs(path) -> int:
    """Multiply-accumulates at batch 1 for Conv / Gemm / MatMul, using inferred shapes."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    # fix batch to 1 for inference
    for vi in list(model.graph.input) + list(model.graph.output):
        d = vi.type.tensor_type.shape.dim[0]
        d.ClearField("dim_param")
        d.dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    # weights behind DequantizeLinear keep the shape of the quantised tensor
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in shapes:
            shapes.setdefault(n.output[0], shapes[n.input[0]])
    macs = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = shapes[n.input[1]]
            out = shapes[n.output[0]]
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            cout, cin_g = w[0], w[1]
            k = int(np.prod(w[2:]))
            macs += out[0] * cout * int(np.prod(out[2:])) * cin_g * k
        elif n.op_type in ("Gemm", "MatMul"):
            a = shapes[n.input[0]]
            out = shapes[n.output[0]]
            trans_a = next((x.i for x in n.attribute if x.name == "transA"), 0)
            kdim = a[0] if (n.op_type == "Gemm" and trans_a) else a[-1]
            macs += int(np.prod(out)) * kdim
    return int(macs)


def load_resized(split: str, names: list[str] | None = None) -> list:
    """Images of a split (sorted by name, optionally only `names`) as normalised 3 x H x W float
    tensors, shorter side resized to 256 like `crop224` but not cropped (for augmentation)."""
    import torch

    out = []
    for f in sorted((DATA_DIR / split).glob("*.JPEG")):
        if names is not None and f.name not in names:
            continue
        img = resize_shorter(Image.open(f).convert("RGB"))
        x = (np.asarray(img, dtype=np.float32) - MEAN) / STD
        out.append(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))))
    return out
