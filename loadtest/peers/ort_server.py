"""The peer: the image-classifier server a user would write in an afternoon with FastAPI,
uvicorn and onnxruntime, to put beside slimserve.

- `uvicorn --workers 2` (one process per core), each with its own onnxruntime session, one
  intra-op thread, default graph optimisations;
- the manifest's preprocessing (`models/variants.toml` [preprocess], as `models/common.py` and
  `src/preprocess.rs`: RGB, shorter side to 256 with Pillow's antialiased bilinear, centre crop
  224, (x - 127) / 128, NCHW);
- `POST /classify` with the raw image as the body or a multipart field `image`,
  `?top_k=` (default 5), answering `{"variant", "predictions": [{"index", "label", "score"}],
  "timings"}` with softmax scores and an `X-Variant` header, like slimserve;
  `GET /health/ready`.

The handler decodes and runs the model inline (no thread pool): each worker process serves one
request at a time, which on one core per worker is the fastest simple arrangement. It has no
admission control or deadlines, as such a server usually has none: `X-SLA-Ms` is ignored, and
over capacity requests wait in the event loop until the client gives up.

    python ort_server.py --variant full --port 8091 --workers 2
"""
from __future__ import annotations

import argparse
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

import peerlib

MODELS = Path(os.environ.get("PEER_MODELS", peerlib.REPO / "models"))
VARIANT = os.environ.get("PEER_VARIANT", "full")
# another ONNX file for the same variant (e.g. an f32-weight twin); default: the manifest's
MODEL_FILE = os.environ.get("PEER_MODEL_FILE", "")
THREADS = int(os.environ.get("PEER_INTRA_OP_THREADS", "1"))

model = {}


@asynccontextmanager
async def lifespan(_app: FastAPI):
    """Load the model once per worker process, before it accepts requests."""
    man = peerlib.manifest(MODELS)
    v = peerlib.variant(man, VARIANT)
    sess = peerlib.session(Path(MODEL_FILE) if MODEL_FILE else MODELS / v["file"], THREADS)
    model.update(
        preprocess=peerlib.Preprocess(man["preprocess"]),
        labels=(MODELS / man.get("labels", "labels.txt")).read_text().splitlines(),
        session=sess,
        input=sess.get_inputs()[0].name,
    )
    yield


app = FastAPI(title="onnxruntime peer", lifespan=lifespan)


@app.get("/health/ready")
async def ready():
    return {"status": "ready", "variant": VARIANT}


@app.post("/classify")
async def classify(request: Request, top_k: int = Query(5, ge=1, le=100)):
    t0 = time.perf_counter()
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        form = await request.form()
        field = form.get("image")
        if field is None or isinstance(field, str):
            raise HTTPException(400, "multipart body has no file field named 'image'")
        data = await field.read()
    else:
        data = await request.body()
    if not data:
        raise HTTPException(400, "empty body")
    try:
        x = model["preprocess"](data)
    except Exception as e:  # Pillow raises several kinds for bad images
        raise HTTPException(400, f"not a decodable image: {e}") from None
    t1 = time.perf_counter()
    logits = model["session"].run(None, {model["input"]: x})[0][0]
    t2 = time.perf_counter()
    e = np.exp(logits - logits.max())
    p = e / e.sum()
    top = np.argsort(-logits, kind="stable")[:top_k]
    body = {
        "variant": VARIANT,
        "predictions": [{"index": int(i), "label": model["labels"][i], "score": float(p[i])} for i in top],
        "timings": {
            "preprocess_ms": round((t1 - t0) * 1e3, 3),
            "inference_ms": round((t2 - t1) * 1e3, 3),
            "total_ms": round((time.perf_counter() - t0) * 1e3, 3),
        },
    }
    return JSONResponse(body, headers={"x-variant": VARIANT})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=MODELS)
    ap.add_argument("--variant", default=VARIANT)
    ap.add_argument("--model-file", default=MODEL_FILE, help="ONNX file to serve instead of the manifest's")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8091)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--intra-op-threads", type=int, default=THREADS)
    a = ap.parse_args()
    # the worker processes import this module afresh: pass the settings on in the environment
    os.environ.update(PEER_MODELS=str(a.models.resolve()), PEER_VARIANT=a.variant,
                      PEER_MODEL_FILE=a.model_file, PEER_INTRA_OP_THREADS=str(a.intra_op_threads))
    import uvicorn

    uvicorn.run("ort_server:app", host=a.host, port=a.port, workers=a.workers,
                app_dir=str(Path(__file__).resolve().parent), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
