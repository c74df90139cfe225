"""Interop: Triton's own gRPC client (tritonclient[grpc]) against slimserve's
Open Inference Protocol gRPC service, plus the standard grpc.health.v1
service as Kubernetes' gRPC probes call it.

Usage: python triton_grpc.py HTTP_HOST:PORT GRPC_HOST:PORT
/classify (over HTTP) is the reference for every top-1.
"""
from __future__ import annotations

import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from triton_http import TESTDATA, agrees, classify, preprocess, variants


def health(channel: grpc.Channel, service: str) -> int:
    """grpc.health.v1.Health/Check, encoded by hand (field 1: service)."""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda s: (b"\x0a" + bytes([len(s)]) + s.encode()) if s else b"",
        response_deserializer=lambda b: b,
    )
    raw = check(service, timeout=10)
    # HealthCheckResponse{status = 1 (SERVING)} is b"\x08\x01".
    return raw[1] if raw[:1] == b"\x08" else 0


def expect_error(what: str, fn, code: str = "StatusCode.INVALID_ARGUMENT") -> None:
    try:
        fn()
    except InferenceServerException as e:
        assert e.status() == code, (what, e.status(), e.message())
        print(f"  ok: {what} -> {e.status()} {e.message()}")
        return
    raise AssertionError(f"{what}: expected an InferenceServerException")


def main() -> None:
    http_url, grpc_url = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(grpc_url)
    for s in ("", "inference.GRPCInferenceService"):
        assert health(channel, s) == 1, f"health({s!r}) not SERVING"
    print("grpc.health.v1: SERVING for '' and inference.GRPCInferenceService")

    client = grpcclient.InferenceServerClient(grpc_url)
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "slimserve", meta
    for ext in ("classification", "model_configuration", "statistics"):
        assert ext in meta["extensions"], meta
    print("server metadata:", meta)

    png_path = TESTDATA / "chelsea.png"
    png = png_path.read_bytes()
    x = preprocess(png_path)
    sla = {"x-sla-ms": "30000"}

    names = variants(http_url)
    for v in names:
        ref = classify(http_url, png, v)
        want = ref["predictions"][0]["index"]
        label = ref["predictions"][0]["label"]

        assert client.is_model_ready(v)
        md = client.get_model_metadata(v, as_json=True)
        assert md["name"] == v and md["versions"] == ["1"], md
        assert md["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}, md
        cfg = client.get_model_config(v, as_json=True)["config"]
        assert int(cfg["max_batch_size"]) >= 1, cfg
        assert cfg["input"][0]["data_type"] == "TYPE_FP32", cfg
        assert [int(d) for d in cfg["input"][0]["dims"]] == [3, 224, 224], cfg

        # Preprocessed FP32 tensor (raw_input_contents), one and two images.
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer(v, [inp], headers=sla, request_id="r1")
        got = int(np.argmax(res.as_numpy("logits")[0]))
        assert agrees(got, ref, f"{v} FP32"), (v, got, ref)
        assert res.get_response().id == "r1"
        print(f"  {v}: FP32 top-1 {got} (/classify {want})")
        xx = np.concatenate([x, x])
        inp = grpcclient.InferInput("input", list(xx.shape), "FP32")
        inp.set_data_from_numpy(xx)
        # Triton's timeout parameter (µs) and a gRPC deadline (s) as budgets.
        res = client.infer(v, [inp], timeout=30_000_000, client_timeout=30, priority=1)
        logits = res.as_numpy("logits")
        assert logits.shape == (2, 1000), logits.shape
        assert all(agrees(int(g), ref, f"{v} FP32 x2") for g in np.argmax(logits, axis=1)), (v, ref)

        # The encoded photo as BYTES, and the classification extension.
        img = grpcclient.InferInput("image", [1], "BYTES")
        img.set_data_from_numpy(np.array([png], dtype=np.object_))
        res = client.infer(f"{v}_image", [img], headers=sla)
        got = int(np.argmax(res.as_numpy("logits")[0]))
        assert got == want, (v, got, want)
        res = client.infer(
            f"{v}_image", [img], headers=sla,
            outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)],
        )
        first = res.as_numpy("logits")[0][0]
        first = first.decode() if isinstance(first, bytes) else str(first)
        score, index, name = first.split(":", 2)
        assert int(index) == want and name == label and float(score) > 0, first
        print(f"  {v}_image: BYTES top-1 {got}, classification {first}")

    ref = classify(http_url, png, None)
    img = grpcclient.InferInput("image", [1], "BYTES")
    img.set_data_from_numpy(np.array([png], dtype=np.object_))
    res = client.infer("slimserve", [img], headers=sla)
    got = int(np.argmax(res.as_numpy("logits")[0]))
    assert got == ref["predictions"][0]["index"], (got, ref)
    print(f"  slimserve (routed): top-1 {got} == /classify {ref['predictions'][0]['index']}")
    stats = client.get_inference_statistics("slimserve", as_json=True)
    assert int(stats["model_stats"][0]["inference_count"]) >= 1, stats

    # Malformed requests: clean status codes, the server keeps serving.
    v = names[0]
    bad = grpcclient.InferInput("input", [1, 3, 100, 100], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.float32))
    expect_error("wrong shape", lambda: client.infer(v, [bad]))
    bad = grpcclient.InferInput("input", [1, 3, 224, 224], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.int32))
    expect_error("wrong datatype", lambda: client.infer(v, [bad]))
    junk = grpcclient.InferInput("image", [1], "BYTES")
    junk.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    expect_error("not an image", lambda: client.infer("slimserve", [junk]))
    ok = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
    ok.set_data_from_numpy(x)
    expect_error("unknown model", lambda: client.infer("nope", [ok]), "StatusCode.NOT_FOUND")

    # A short raw buffer, sent with the client's own protobuf stubs.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    req = service_pb2.ModelInferRequest(model_name=v)
    t = req.inputs.add()
    t.name, t.datatype = "input", "FP32"
    t.shape.extend([1, 3, 224, 224])
    req.raw_input_contents.append(x.tobytes()[:1000])
    try:
        stub.ModelInfer(req, timeout=30)
        raise AssertionError("short raw buffer: expected an error")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        print(f"  ok: short raw buffer -> {e.code()} {e.details()}")
    try:
        stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=10)
        raise AssertionError("RepositoryIndex: expected UNIMPLEMENTED")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
        print(f"  ok: RepositoryIndex -> {e.code()}")

    assert client.is_server_live() and client.is_server_ready()
    res = client.infer(v, [ok], headers=sla)
    assert res.as_numpy("logits").shape == (1, 1000)
    client.close()
    print("triton grpc interop: OK")


if __name__ == "__main__":
    main()
