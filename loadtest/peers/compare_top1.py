"""Check that the peer answers like slimserve: the same top-1 class on every image of a folder
(raw body and multipart for the peer, raw body pinned to the variant for slimserve), and the
peer's preprocessing byte-identical to the committed reference crop
(`models/testdata/chelsea.crop224.rgb`). Exit status 1 on any disagreement."""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import uuid
from pathlib import Path

import numpy as np

import peerlib

TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def post(url: str, data: bytes, ctype: str, headers: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"content-type": ctype, **(headers or {})})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def multipart(field: str, name: str, data: bytes, ctype: str) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slimserve", required=True, help="base URL of slimserve")
    ap.add_argument("--peer", required=True, help="base URL of the peer")
    ap.add_argument("--variant", default="full")
    ap.add_argument("--images", type=Path, default=peerlib.REPO / "models" / "testdata")
    ap.add_argument("--models", type=Path, default=peerlib.REPO / "models")
    a = ap.parse_args()

    bad = 0
    ref = a.models / "testdata" / "chelsea.crop224.rgb"
    if ref.exists():
        pre = peerlib.Preprocess(peerlib.manifest(a.models)["preprocess"])
        crop = np.frombuffer(ref.read_bytes(), dtype=np.uint8).reshape(224, 224, 3).astype(np.float32)
        want = ((crop.transpose(2, 0, 1) - pre.mean) / pre.std)[None]
        got = pre((a.models / "testdata" / "chelsea.png").read_bytes())
        same = got.shape == want.shape and np.array_equal(got, want)
        print(f"peer preprocessing of chelsea.png vs chelsea.crop224.rgb: {'identical' if same else 'DIFFERENT'}")
        bad += not same

    agree = 0
    files = sorted(p for p in a.images.iterdir() if p.suffix.lower() in TYPES)
    print("| image | slimserve top-1 (score) | peer raw top-1 (score) | peer multipart top-1 | agree |")
    print("|---|---|---|---|---|")
    for p in files:
        data, ctype = p.read_bytes(), TYPES[p.suffix.lower()]
        s = post(f"{a.slimserve}/classify?top_k=1", data, ctype, {"x-variant": a.variant})["predictions"][0]
        r = post(f"{a.peer}/classify?top_k=1", data, ctype)["predictions"][0]
        m = post(f"{a.peer}/classify?top_k=1", *multipart("image", p.name, data, ctype))["predictions"][0]
        ok = s["index"] == r["index"] == m["index"]
        agree += ok
        print(f"| {p.name} | {s['index']} {s['label']} ({s['score']:.4f}) | {r['index']} {r['label']} "
              f"({r['score']:.4f}) | {m['index']} {m['label']} | {'yes' if ok else 'NO'} |")
    print(f"top-1 agreement: {agree}/{len(files)} images")
    sys.exit(1 if bad or agree < len(files) or not files else 0)


if __name__ == "__main__":
    main()
