"""In-process engine timing: slimserve's tract path (`slimserve bench`) against onnxruntime on
the same ONNX files, one thread, interleaved rounds, medians per round, ratios per variant.

Each round runs every engine configuration once, alternating which goes first (tract, ort, then
ort, tract, ...), so that a machine whose speed drifts (other load, clocks) shifts both sides
alike. Within a round each (variant, batch) cell is the median batch time over `--seconds` of
back-to-back runs divided by the batch size, as `slimserve bench` computes it; both engines get
the same input (every value 0.1, as `slimserve bench` feeds). Reported: the median over rounds
of those per-round medians, their range, and the median of the per-round ratios.

int8-weight files (constant DequantizeLinear before float convolutions) are also timed on an
f32-weight twin folded offline into --twin-dir (never inside the repository): onnxruntime runs
those DequantizeLinear nodes at every inference, slimserve folds them at load.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import peerlib


def ort_cell(sess, name: str, batch: int, seconds: float) -> float:
    """Median ms per image of back-to-back runs of `batch` images for `seconds`."""
    x = np.full((batch, 3, 224, 224), 0.1, dtype=np.float32)
    for _ in range(2):
        sess.run(None, {name: x})
    times = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until or len(times) < 3:
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3 / batch


def tract_round(binary: str, models: Path, variants: list[str], batches: list[int], seconds: float,
                extra: list[str], scratch: Path) -> dict:
    """One `slimserve bench` run (1 worker): {(variant, batch): ms per image}."""
    out = scratch / "bench.json"
    empty = scratch / "no-images"  # skip the preprocessing figures: not part of this comparison
    empty.mkdir(exist_ok=True)
    cmd = [binary, "bench", "--models", str(models), "--variants", ",".join(variants),
           "--batch-sizes", ",".join(map(str, batches)), "--workers", "1",
           "--seconds", str(seconds), "--images", str(empty), "--json", str(out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"slimserve bench failed ({shlex.join(cmd)}):\n{r.stdout}\n{r.stderr}")
    rep = json.loads(out.read_text())
    cells = {}
    for v in rep["variants"]:
        for c in v["cells"]:
            if c["workers"] == 1:
                cells[(v["name"], c["batch"])] = c["median_image_ms"]
    return cells


def fmt_range(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}–{max(xs):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slimserve", required=True, help="the slimserve binary (release build)")
    ap.add_argument("--models", type=Path, default=peerlib.REPO / "models")
    ap.add_argument("--variants", default="", help="comma separated (default: all in the manifest)")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0, help="measurement per cell and round")
    ap.add_argument("--tract", action="append", default=[], metavar="LABEL=ARGS",
                    help="a tract configuration: label and extra `slimserve bench` arguments "
                         "(repeatable; default: tract= with none), e.g. 'stock=--some-flag'")
    ap.add_argument("--twin-dir", type=Path, default=None,
                    help="where the f32-weight twins go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="write every per-round figure here")
    a = ap.parse_args()

    import onnxruntime as ort

    man = peerlib.manifest(a.models)
    names = [v for v in a.variants.split(",") if v] or [v["name"] for v in man["variant"]]
    batches = [int(b) for b in a.batches.split(",") if b]
    configs = []
    for t in a.tract or ["tract="]:
        label, _, extra = t.partition("=")
        configs.append((label or "tract", shlex.split(extra)))

    print(f"CPU: {peerlib.cpu_line()}")
    print(f"onnxruntime {ort.__version__} (CPUExecutionProvider, 1 intra-op thread, sequential, "
          f"ORT_ENABLE_ALL); slimserve bench --workers 1; load average at start {peerlib.load_average()}")
    print(f"{a.rounds} rounds × {a.seconds:g} s per cell, batches {batches}, variants {names}\n")

    scratch_ctx = tempfile.TemporaryDirectory(prefix="slimserve-peers-")
    scratch = Path(scratch_ctx.name)
    twin_dir = a.twin_dir or scratch / "twins"
    # (variant, file kind) -> (session, input name); kinds: "own" file, "f32 twin"
    sessions = {}
    for n in names:
        v = peerlib.variant(man, n)
        path = a.models / v["file"]
        if v.get("resize"):  # a resolution rung: onnxruntime runs the graph the server builds
            sys.path.insert(0, str(peerlib.REPO / "models"))
            import common

            rung = scratch / f"{n}.graph.onnx"
            common.with_resize(path, rung, v["resize"])
            path = rung
        s = peerlib.session(path)
        sessions[(n, "own")] = (s, s.get_inputs()[0].name)
        dq = peerlib.constant_dequantize_count(path)
        # a QDQ file (activations quantized too) is left alone: onnxruntime fuses it into
        # integer kernels; only weight-only files get a twin
        if dq and not peerlib.quantizes_activations(path):
            twin = twin_dir / (path.stem + ".f32twin.onnx")
            folded = peerlib.fold_dequantize(path, twin)
            t = peerlib.session(twin)
            x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
            d = float(np.max(np.abs(s.run(None, {sessions[(n, "own")][1]: x})[0]
                                    - t.run(None, {t.get_inputs()[0].name: x})[0])))
            print(f"{n}: folded {folded} constant DequantizeLinear into {twin} "
                  f"(max |logit difference| vs its own file: {d:.2e})")
            sessions[(n, "f32 twin")] = (t, t.get_inputs()[0].name)
    print()

    # results[(engine, variant, kind, batch)] = [ms/img per round]
    results: dict[tuple, list[float]] = {}
    for r in range(a.rounds):
        def run_tract():
            for label, extra in configs:
                cells = tract_round(a.slimserve, a.models, names, batches, a.seconds, extra, scratch)
                for (n, b), ms in cells.items():
                    results.setdefault((label, n, "own", b), []).append(ms)

        def run_ort():
            for (n, kind), (s, inp) in sessions.items():
                for b in batches:
                    results.setdefault(("onnxruntime", n, kind, b), []).append(ort_cell(s, inp, b, a.seconds))

        order = (run_tract, run_ort) if r % 2 == 0 else (run_ort, run_tract)
        t0 = time.time()
        for f in order:
            f()
        row = "  ".join(
            f"{n} b{b}: " + " ".join(
                f"{results[(lab, n, 'own', b)][-1]:.1f}" for lab, _ in configs
            ) + f" / {results[('onnxruntime', n, 'own', b)][-1]:.1f}"
            for n in names for b in batches if (configs[0][0], n, "own", b) in results
        )
        print(f"round {r + 1}/{a.rounds} ({'tract first' if r % 2 == 0 else 'ort first'}, "
              f"{time.time() - t0:.0f} s, load {peerlib.load_average()}): tract / ort ms/img  {row}", flush=True)

    print("\nms per image: median over rounds [range of the per-round medians]; "
          "ratio = median of the per-round ratios tract ÷ onnxruntime [range]\n")
    print("| variant | batch | engine | tract ms/img | ort ms/img (own file) | ratio "
          "| ort ms/img (f32 twin) | ratio vs twin |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    summary = []
    for n in names:
        for b in batches:
            ort_own = results.get(("onnxruntime", n, "own", b))
            ort_twin = results.get(("onnxruntime", n, "f32 twin", b))
            for label, _ in configs:
                tr = results.get((label, n, "own", b))
                if not tr:
                    continue
                ratio = [t / o for t, o in zip(tr, ort_own)]
                cells = [n, str(b), label, fmt_range(tr), fmt_range(ort_own), fmt_range(ratio)]
                rec = {"variant": n, "batch": b, "engine": label,
                       "tract_ms": statistics.median(tr), "ort_ms": statistics.median(ort_own),
                       "ratio": statistics.median(ratio), "tract_rounds": tr, "ort_rounds": ort_own}
                if ort_twin:
                    rt = [t / o for t, o in zip(tr, ort_twin)]
                    cells += [fmt_range(ort_twin), fmt_range(rt)]
                    rec.update(ort_twin_ms=statistics.median(ort_twin), ratio_twin=statistics.median(rt),
                               ort_twin_rounds=ort_twin)
                else:
                    cells += ["–", "–"]
                print("| " + " | ".join(cells) + " |")
                summary.append(rec)
    if len(batches) > 1 and 1 in batches:
        print("\nper-image time of the larger batches ÷ batch 1 (median of per-round ratios):")
        for n in names:
            parts = []
            for eng in [c[0] for c in configs] + ["onnxruntime"]:
                for kind in ("own", "f32 twin"):
                    one = results.get((eng, n, kind, 1))
                    if not one:
                        continue
                    for b in batches:
                        if b != 1 and (eng, n, kind, b) in results:
                            q = [x / y for x, y in zip(results[(eng, n, kind, b)], one)]
                            k = "" if kind == "own" else " twin"
                            parts.append(f"{eng}{k} b{b}/b1 {statistics.median(q):.2f}")
            print(f"  {n}: " + ", ".join(parts))
    if len(configs) > 1:
        base = configs[0][0]
        print(f"\ntract configurations ÷ {base} (median of per-round ratios):")
        for n in names:
            for b in batches:
                ref = results.get((base, n, "own", b))
                for label, _ in configs[1:]:
                    other = results.get((label, n, "own", b))
                    if ref and other:
                        q = [x / y for x, y in zip(other, ref)]
                        print(f"  {n} b{b}: {label} ÷ {base} = {statistics.median(q):.2f}")
    print(f"\nload average at end {peerlib.load_average()}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "cpu": peerlib.cpu_line(), "onnxruntime": ort.__version__, "rounds": a.rounds,
            "seconds": a.seconds, "batches": batches, "variants": names,
            "tract_configs": [{"label": l, "args": e} for l, e in configs], "summary": summary,
        }, indent=2))
        print(f"wrote {a.json}")
    scratch_ctx.cleanup()


if __name__ == "__main__":
    main()
