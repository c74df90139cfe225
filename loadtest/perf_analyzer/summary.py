"""Side-by-side table of perf_analyzer (HTTP, gRPC) and /classify runs.

Usage: python summary.py OUT_DIR VARIANT   (files written by run.sh)
"""
import csv
import json
import sys
from pathlib import Path

out, variant = Path(sys.argv[1]), sys.argv[2]


def pa(proto: str, model: str) -> dict[int, tuple[float, float, float]]:
    rows = {}
    with open(out / f"pa-{proto}-{model}.csv") as f:
        for r in csv.DictReader(f):
            rows[int(r["Concurrency"])] = (
                float(r["Inferences/Second"]),
                float(r["p50 latency"]) / 1e3,
                float(r["p99 latency"]) / 1e3,
            )
    return rows


steps = json.load(open(out / "classify" / "results.json"))["steps"]
classify = {
    s["concurrency"]: (s["throughput_rps"], s["latency_all_ms"]["p50"], s["latency_all_ms"]["p99"])
    for s in steps
}
runs = {
    "/classify (PNG)": classify,
    f"HTTP v2 {variant}_image (PNG)": pa("http", f"{variant}_image"),
    f"gRPC v2 {variant}_image (PNG)": pa("grpc", f"{variant}_image"),
    f"HTTP v2 {variant} (FP32 tensor)": pa("http", variant),
    f"gRPC v2 {variant} (FP32 tensor)": pa("grpc", variant),
}
bench = json.load(open(out / "bench.json"))
cell = bench["variants"][0]["cells"][0]
engine = cell["images_per_sec"]
print(
    f"slimserve bench, {variant}, batch 1, {cell['workers']} workers: {engine:.1f} images/s "
    f"(median {cell['median_image_ms']:.1f} ms/image); preprocessing per image: "
    + ", ".join(f"{p['file']} {p['total_ms']:.2f} ms" for p in bench["preprocess"])
)
print()
print("| path | best req/s | vs engine (bench) |")
print("|---|---:|---:|")
for name, rows in runs.items():
    best = max(t for t, _, _ in rows.values())
    print(f"| {name} | {best:.1f} | {best / engine:.2f} |")
print()
print(f"| path | concurrency | req/s | p50 ms | p99 ms | req/s vs /classify | p50 vs /classify |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, rows in runs.items():
    for c in sorted(rows):
        t, p50, p99 = rows[c]
        base = classify.get(c)
        rt = f"{t / base[0]:.2f}" if base else ""
        rp = f"{p50 / base[1]:.2f}" if base else ""
        print(f"| {name} | {c} | {t:.1f} | {p50:.1f} | {p99:.1f} | {rt} | {rp} |")
