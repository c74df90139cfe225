"""What the peer scripts share: the manifest, the machine's CPU, onnxruntime sessions, the
slimserve-identical preprocessing, and the f32-weight twin of an int8-weight file."""
from __future__ import annotations

import io
import os
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni")


def manifest(models: Path) -> dict:
    with open(models / "variants.toml", "rb") as f:
        return tomllib.load(f)


def variant(man: dict, name: str) -> dict:
    for v in man["variant"]:
        if v["name"] == name:
            return v
    raise SystemExit(f"variant {name!r} not in the manifest (have {[v['name'] for v in man['variant']]})")


def cpu_line() -> str:
    """'<model name>; flags: avx2 yes, ...; N CPUs' from /proc/cpuinfo."""
    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "model name" and model == "?":
                model = val.strip()
            elif key == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)
    return f"{model}; {have}; {os.cpu_count()} CPUs"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def session(path: Path, threads: int = 1):
    """onnxruntime as a user runs it: default graph optimisations (ORT_ENABLE_ALL),
    CPU provider, `threads` intra-op threads, sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class Preprocess:
    """The manifest's [preprocess] exactly as `models/common.py` (which the Rust server
    replicates byte for byte, `src/preprocess.rs`): RGB; shorter side to `resize_shorter` with
    Pillow's antialiased BILINEAR, the longer side rounded half up; centre crop `crop` at
    ((w - crop) // 2, (h - crop) // 2); (x - mean) / std per channel; NCHW."""

    def __init__(self, spec: dict):
        if spec.get("layout", "NCHW") != "NCHW" or spec.get("color", "RGB") != "RGB":
            raise SystemExit(f"unsupported preprocess layout/color: {spec}")
        self.shorter = int(spec["resize_shorter"])
        self.crop = int(spec["crop"])
        self.mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        s = self.shorter
        if w <= h:
            nw, nh = s, (h * s + w // 2) // w
        else:
            nw, nh = (w * s + h // 2) // h, s
        img = img.resize((nw, nh), Image.BILINEAR)
        c = self.crop
        left, top = (nw - c) // 2, (nh - c) // 2
        img = img.crop((left, top, left + c, top + c))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
        return np.ascontiguousarray(((x - self.mean) / self.std)[None])


def constant_dequantize_count(path: Path) -> int:
    """DequantizeLinear nodes whose inputs are all initializers (weights stored as int8)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return sum(
        1
        for n in m.graph.node
        if n.op_type == "DequantizeLinear" and all((not i) or i in inits for i in n.input)
    )


def quantizes_activations(path: Path) -> bool:
    """A QDQ file (QuantizeLinear on activations): onnxruntime fuses it into integer kernels."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(n.op_type == "QuantizeLinear" for n in m.graph.node)


def fold_dequantize(src: Path, dst: Path) -> int:
    """Write `src` with every constant DequantizeLinear replaced by its f32 result (an
    initializer of the same name as the node's output): the f32-weight twin. onnxruntime keeps
    such nodes (its constant folding skips DequantizeLinear so that QDQ fusions can see them)
    and so runs them at every inference. Returns the number of nodes folded."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    keep, folded, produced = [], 0, []
    for n in g.node:
        if n.op_type != "DequantizeLinear" or not all((not i) or i in inits for i in n.input):
            keep.append(n)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("block_size", 0):
            raise SystemExit(f"{src}: blocked DequantizeLinear {n.name} is not supported")
        x = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        zp = (
            numpy_helper.to_array(inits[n.input[2]]).astype(np.float32)
            if len(n.input) > 2 and n.input[2]
            else np.zeros_like(scale)
        )
        if scale.ndim == 1 and x.ndim > 0:
            # per-axis: scale and zero point run along `axis` (default 1)
            shape = [1] * x.ndim
            shape[int(attrs.get("axis", 1)) % x.ndim] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        produced.append(numpy_helper.from_array(((x - zp) * scale).astype(np.float32), n.output[0]))
        folded += 1
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    remaining = [i for i in g.initializer if i.name in used]
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(remaining + produced)
    onnx.checker.check_model(m)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(dst))
    return folded
