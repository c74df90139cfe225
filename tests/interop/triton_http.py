"""Interop: Triton's own HTTP client (tritonclient[http]) against slimserve's
Open Inference Protocol (KServe v2) endpoints.

Usage: python triton_http.py HOST:PORT
The FP32 tensor is computed with models/common.py, the models pipeline's one
preprocessing function (PIL), so it matches what the server itself computes.
"""
from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))
from common import preprocess  # noqa: E402  (models/common.py)

TESTDATA = ROOT / "models" / "testdata"


def classify(url: str, png: bytes, variant: str | None) -> dict:
    req = urllib.request.Request(f"http://{url}/classify", data=png, method="POST")
    req.add_header("Content-Type", "image/png")
    req.add_header("X-SLA-Ms", "30000")
    if variant:
        req.add_header("X-Variant", variant)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


# The FP32 tensor comes from PIL, the server's own preprocessing from the
# image crate: the two differ in the last bits, which can flip a top-1 that is
# a tie. A flip is accepted only to /classify's second class, and only when
# /classify itself puts the two within this many points of probability.
TIE = 0.05


def agrees(got: int, ref: dict, what: str) -> bool:
    """`got` is /classify's top-1, or its runner-up where the two tie."""
    p = ref["predictions"]
    if got == p[0]["index"]:
        return True
    if len(p) > 1 and got == p[1]["index"] and p[0]["score"] - p[1]["score"] <= TIE:
        print(f"  {what}: top-1 {got} is /classify's runner-up, a tie "
              f"({p[0]['score']:.3f} vs {p[1]['score']:.3f})")
        return True
    return False


def variants(url: str) -> list[str]:
    with urllib.request.urlopen(f"http://{url}/v1/variants", timeout=30) as r:
        return [v["name"] for v in json.load(r)["variants"]]


def expect_error(what: str, fn) -> None:
    try:
        fn()
    except InferenceServerException as e:
        print(f"  ok: {what} -> {e.status()} {e.message()}")
        return
    raise AssertionError(f"{what}: expected an InferenceServerException")


def main() -> None:
    url = sys.argv[1]
    client = httpclient.InferenceServerClient(url, connection_timeout=60, network_timeout=120)
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "slimserve", meta
    for ext in ("classification", "binary_tensor_data", "model_configuration"):
        assert ext in meta["extensions"], meta
    print("server metadata:", meta)

    png_path = TESTDATA / "chelsea.png"
    png = png_path.read_bytes()
    x = preprocess(png_path)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32, (x.shape, x.dtype)

    def sla() -> dict:
        # A fresh dict per call: the client adds its own headers to it.
        return {"X-SLA-Ms": "30000"}


    names = variants(url)
    assert names
    for v in names:
        ref = classify(url, png, v)
        want = ref["predictions"][0]["index"]
        label = ref["predictions"][0]["label"]

        assert client.is_model_ready(v)
        md = client.get_model_metadata(v)
        assert md["name"] == v and md["versions"] == ["1"], md
        assert md["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}, md
        assert md["outputs"][0]["name"] == "logits", md
        cfg = client.get_model_config(v)
        assert cfg["max_batch_size"] >= 1, cfg
        assert cfg["input"][0]["data_type"] == "TYPE_FP32", cfg
        assert list(cfg["input"][0]["dims"]) == [3, 224, 224], cfg

        # FP32 tensor, binary and JSON, in and out.
        for binary in (True, False):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput("logits", binary_data=binary)
            res = client.infer(v, [inp], outputs=[out], headers=sla(), request_id="r1")
            logits = res.as_numpy("logits")
            assert logits.shape == (1, 1000), logits.shape
            got = int(np.argmax(logits[0]))
            assert agrees(got, ref, f"{v} FP32 binary={binary}"), (v, binary, got, ref)
            print(f"  {v}: FP32 binary={binary}: top-1 {got} (/classify {want})")

        # Two images in one request, Triton's timeout parameter (µs) as the budget.
        xx = np.concatenate([x, x])
        inp = httpclient.InferInput("input", list(xx.shape), "FP32")
        inp.set_data_from_numpy(xx)
        res = client.infer(v, [inp], timeout=30_000_000, priority=1)
        logits = res.as_numpy("logits")
        assert logits.shape == (2, 1000), logits.shape
        assert all(agrees(int(g), ref, f"{v} FP32 x2") for g in np.argmax(logits, axis=1)), (v, ref)

        # BYTES (encoded PNG) on V_image, via the binary extension.
        img = httpclient.InferInput("image", [1], "BYTES")
        img.set_data_from_numpy(np.array([png], dtype=np.object_))
        res = client.infer(f"{v}_image", [img], headers=sla())
        got = int(np.argmax(res.as_numpy("logits")[0]))
        assert got == want, (v, got, want)
        print(f"  {v}_image: BYTES top-1 {got} == /classify {want}")

        # Classification extension.
        res = client.infer(
            f"{v}_image",
            [img],
            outputs=[httpclient.InferRequestedOutput("logits", class_count=3)],
            headers=sla(),
        )
        cls = res.as_numpy("logits")
        assert cls.shape == (1, 3), cls.shape
        first = cls[0][0]
        first = first.decode() if isinstance(first, bytes) else str(first)
        score, index, name = first.split(":", 2)
        assert int(index) == want and name == label and float(score) > 0, first
        print(f"  {v}_image: classification {first}")

    # The routed model.
    ref = classify(url, png, None)
    img = httpclient.InferInput("image", [1], "BYTES")
    img.set_data_from_numpy(np.array([png], dtype=np.object_))
    md = client.get_model_metadata("slimserve")
    assert md["inputs"][0]["datatype"] == "BYTES", md
    res = client.infer("slimserve", [img], headers=sla())
    got = int(np.argmax(res.as_numpy("logits")[0]))
    assert got == ref["predictions"][0]["index"], (got, ref)
    print(f"  slimserve (routed): top-1 {got} == /classify {ref['predictions'][0]['index']}")

    # Malformed requests: clean exceptions, and the server keeps serving.
    v = names[0]
    bad = httpclient.InferInput("input", [1, 3, 100, 100], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.float32))
    expect_error("wrong shape", lambda: client.infer(v, [bad]))
    bad = httpclient.InferInput("input", [1, 3, 224, 224], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.int32))
    expect_error("wrong datatype", lambda: client.infer(v, [bad]))
    bad = httpclient.InferInput("pixels", [1, 3, 224, 224], "FP32")
    bad.set_data_from_numpy(x)
    expect_error("unknown input", lambda: client.infer(v, [bad]))
    junk = httpclient.InferInput("image", [1], "BYTES")
    junk.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    expect_error("not an image", lambda: client.infer("slimserve", [junk]))
    expect_error("unknown model", lambda: client.get_model_metadata("nope"))
    ok = httpclient.InferInput("input", [1, 3, 224, 224], "FP32")
    ok.set_data_from_numpy(x)
    expect_error("unknown model infer", lambda: client.infer("nope", [ok]))
    # A short binary buffer: the header promises 602112 bytes, 1000 follow.
    head = json.dumps({"inputs": [{
        "name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
        "parameters": {"binary_data_size": x.nbytes},
    }]}).encode()
    req = urllib.request.Request(
        f"http://{url}/v2/models/{v}/infer", data=head + x.tobytes()[:1000], method="POST"
    )
    req.add_header("Inference-Header-Content-Length", str(len(head)))
    req.add_header("Content-Type", "application/octet-stream")
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("short binary buffer: expected 400")
    except urllib.error.HTTPError as e:
        body = json.load(e)
        assert e.code == 400 and "error" in body, (e.code, body)
        print(f"  ok: short binary buffer -> {e.code} {body['error']}")

    assert client.is_server_live() and client.is_server_ready()
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer(v, [inp], headers=sla())
    assert res.as_numpy("logits").shape == (1, 1000)
    client.close()
    print("triton http interop: OK")


if __name__ == "__main__":
    main()
