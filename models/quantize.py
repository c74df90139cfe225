"""int8 variants: static QDQ post-training quantisation (onnxruntime) and weight-only int8."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

import common


class _Reader:
    """CalibrationDataReader over preprocessed calibration images."""

    def __init__(self, xs: np.ndarray, batch: int = 1):
        self.batches = [xs[i : i + batch] for i in range(0, len(xs), batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {"input": self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


class _Take:
    """At most n batches of another reader (lets histogram calibration run chunk by chunk)."""

    def __init__(self, reader, n):
        self.reader, self.n = reader, n
        self.first = reader.get_next()

    def get_next(self):
        if self.first is not None:
            first, self.first = self.first, None
            self.n -= 1
            return first
        if self.n <= 0:
            return None
        self.n -= 1
        return self.reader.get_next()


def _chunked_histograms(chunk: int = 20):
    """onnxruntime's histogram calibrators (Entropy, Percentile) keep every intermediate tensor
    of every calibration image in memory before histogramming (~12 GB for 200 images here).
    Their histogram collector merges across calls, so feed them `chunk` images at a time."""
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    if getattr(HistogramCalibrater.collect_data, "_chunked", False):
        return
    orig = HistogramCalibrater.collect_data

    def collect_data(self, data_reader):
        while True:
            sub = _Take(data_reader, chunk)
            if sub.first is None:
                return
            orig(self, sub)

    collect_data._chunked = True
    HistogramCalibrater.collect_data = collect_data


def pre_process(src: Path, dst: Path) -> Path:
    """onnxruntime's quantisation pre-processing: symbolic shape inference + graph optimisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    return dst


def first_and_last(path: Path) -> list[str]:
    """Names of the stem conv (first Conv) and the classifier (Gemm / last MatMul)."""
    g = onnx.load(str(path)).graph
    convs = [n.name for n in g.node if n.op_type == "Conv"]
    fcs = [n.name for n in g.node if n.op_type in ("Gemm", "MatMul")]
    return [convs[0]] + fcs[-1:]


def static_qdq(src: Path, dst: Path, calib: np.ndarray, method: str = "Entropy",
               exclude: list[str] | None = None, extra: dict | None = None) -> Path:
    """Static QDQ quantisation, per-channel int8 weights, int8 activations, calibrated on `calib`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    _chunked_histograms()
    options = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "Percentile":
        options["CalibPercentile"] = 99.999
        options["CalibTensorRangeSymmetric"] = False
    options.update(extra or {})
    quantize_static(
        str(src),
        str(dst),
        _Reader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        nodes_to_exclude=exclude or [],
        extra_options=options,
    )
    return dst


def weight_only(src: Path, dst: Path) -> Path:
    """int8 weights (symmetric, per output channel) + DequantizeLinear feeding the float Conv/Gemm.

    Activations stay float; the file is ~4x smaller. Biases stay float.
    """
    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes = []
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm") or n.input[1] not in inits:
            continue
        if n.op_type == "Gemm":
            assert next((a.i for a in n.attribute if a.name == "transB"), 0) == 1, "expects Gemm transB=1"
        name = n.input[1]
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale.reshape(-1, *([1] * (w.ndim - 1)))), -127, 127).astype(np.int8)
        g.initializer.remove(inits[name])
        g.initializer.extend([
            numpy_helper.from_array(q, name + "_quantized"),
            numpy_helper.from_array(scale, name + "_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "_zero_point"),
        ])
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [name + "_quantized", name + "_scale", name + "_zero_point"], [name],
            name=name + "_DequantizeLinear", axis=0))
    # DequantizeLinear nodes first keeps the node list topologically sorted
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return dst


def check_symbolic_batch(path: Path) -> None:
    g = onnx.load(str(path)).graph
    for vi in list(g.input) + list(g.output):
        d = vi.type.tensor_type.shape.dim[0]
        assert d.dim_param and not d.dim_value, f"{path.name}: {vi.name} has no symbolic batch dim"
    assert [i.name for i in g.input] == ["input"] and [o.name for o in g.output] == ["logits"]
    assert not any(n.op_type == "Softmax" for n in g.node)
