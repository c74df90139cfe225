"""Draw the ladder's accuracy/latency front as an SVG (no plotting library needed).

    python models/front.py BENCH_JSON [OUT_SVG [TITLE]]

Latency: the batch-1, one-worker medians of `slimserve bench --batch-sizes 1 --workers 1`
(its JSON); accuracy: top1 in variants.toml (dev/). A rung is on the front when no other rung is
both faster and more accurate (issue 15's definition); a rung that another equals in accuracy
at less latency is on it but marked "tie" (the router takes the faster of the two). Off-front
rungs are drawn hollow.
"""
from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def latencies(bench: dict) -> dict[str, float]:
    """Variant -> median batch-1 one-worker latency (ms) from a `slimserve bench` JSON; the
    median over the cells of a variant measured several times in one run (they alternate)."""
    out: dict[str, list[float]] = {}
    for v in bench["variants"]:
        for c in v.get("cells", []):
            if c.get("batch") == 1 and c.get("workers") == 1:
                out.setdefault(v["name"], []).append(c["median_image_ms"])
    return {k: sorted(x)[len(x) // 2] for k, x in out.items()}


def front(points: dict[str, tuple[float, float]]) -> set[str]:
    return {a for a, (la, ta) in points.items()
            if not any(lb < la and tb > ta for b, (lb, tb) in points.items() if b != a)}


def tied(points: dict[str, tuple[float, float]]) -> dict[str, str]:
    """Front rungs that another equals in accuracy at less latency, with that rung."""
    return {a: b for a, (la, ta) in points.items() for b, (lb, tb) in points.items()
            if b != a and lb < la and tb == ta}


def svg(points: dict[str, tuple[float, float]], off: dict[str, str], title: str) -> str:
    W, H, L, R, T, B = 720, 440, 70, 170, 40, 60
    xs = [p[0] for p in points.values()]
    ys = [p[1] for p in points.values()]
    x0, x1 = 0.0, max(xs) * 1.08
    y0, y1 = max(0.0, min(ys) - 0.05), min(1.0, max(ys) + 0.03)
    px = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)
    py = lambda y: H - B - (y - y0) / (y1 - y0) * (H - T - B)
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
          f'<rect width="{W}" height="{H}" fill="white"/>',
          f'<text x="{L}" y="22" font-size="14">{title}</text>',
          f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
          f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
          f'<text x="{(L + W - R) / 2}" y="{H - 20}" text-anchor="middle">tract latency, batch 1, one thread (ms)</text>',
          f'<text x="18" y="{(T + H - B) / 2}" transform="rotate(-90 18 {(T + H - B) / 2})" text-anchor="middle">top-1 on dev/</text>']
    step = 5 if x1 > 30 else 2
    for t in range(0, int(x1) + 1, step):
        el.append(f'<line x1="{px(t):.1f}" y1="{H - B}" x2="{px(t):.1f}" y2="{H - B + 5}" stroke="black"/>'
                  f'<text x="{px(t):.1f}" y="{H - B + 18}" text-anchor="middle">{t}</text>')
    t = round(y0, 1)
    while t <= y1 + 1e-9:
        if t >= y0:
            el.append(f'<line x1="{L - 5}" y1="{py(t):.1f}" x2="{W - R}" y2="{py(t):.1f}" stroke="#ddd"/>'
                      f'<text x="{L - 8}" y="{py(t) + 4:.1f}" text-anchor="end">{100 * t:.0f} %</text>')
        t = round(t + 0.05, 2)
    on = sorted((p for n, p in points.items() if n not in off), key=lambda p: p[0])
    if len(on) > 1:
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in on)
        el.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    for n, (x, y) in points.items():
        hollow = n in off
        el.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{"white" if hollow else "#1f77b4"}" '
                  f'stroke="{"#d62728" if hollow else "#1f77b4"}" stroke-width="2"/>')
        if hollow:  # right of and below the point: the front's labels sit left of and above theirs
            el.append(f'<text x="{px(x) + 8:.1f}" y="{py(y) + 16:.1f}">{n} (off the front)</text>')
        else:
            el.append(f'<text x="{px(x) - 8:.1f}" y="{py(y) - 7:.1f}" text-anchor="end">{n}</text>')
    el.append("</svg>")
    return "\n".join(el) + "\n"


def main() -> None:
    bench = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "front.svg"
    manifest = tomllib.loads((HERE / "variants.toml").read_text())
    lat = latencies(bench)
    points = {v["name"]: (lat[v["name"]], v["top1"]) for v in manifest["variant"] if v["name"] in lat}
    measured_front = front(points)
    ties = tied(points)
    off = {n: "measured" for n in points if n not in measured_front}
    for n in points:
        state = "on the front" if n in measured_front else "OFF the front"
        if n in measured_front and n in ties:
            state += f" (tie: {ties[n]} as accurate, faster)"
        print(f"{n:<12} {points[n][0]:6.1f} ms  {100 * points[n][1]:5.1f} %  {state}")
    out.write_text(svg(points, off, sys.argv[3] if len(sys.argv) > 3 else "accuracy / latency front"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
