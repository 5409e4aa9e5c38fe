"""Table of a bench/compare_torch.sh run: items/s of every implementation (the range over the
rounds), pe against the best peer of its precision class (the ratio taken within each round,
then its range), the cosines to PyTorch float32, and pe's and the best peer's share of the CPU's
peak (how far either could still go: 1.2x a peer at 70% of the peak needs 84%)."""

import collections
import json
import sys

CLASSES = {
    "f32": ("pe", ["torch", "ort", "ov"]),
    "bf16": ("pe-bf16", ["torch-bf16", "ov-bf16"]),
    "int8": ("pe-int8", ["ort-int8", "ov-int8"]),
}
# The peaks (`pe bench --peak`) each class is held to: the highest this CPU has (AMX tiles
# where present, which pe's bf16 and int8 kernels then use; without bf16 or int8 dot products,
# float32 FMA and the AVX2 int8 kernel's byte-pair step, on which the AVX2 kernels run).
PEAK = {"f32": ["f32_gflops"], "bf16": ["bf16_gflops", "amx_bf16_gflops", "f32_gflops"],
        "int8": ["int8_gops", "amx_int8_gops", "int8_avx2_gops", "int16_gops"]}
NAMES = {"torch": "PyTorch", "torch-bf16": "PyTorch autocast", "ort": "ORT", "ort-int8": "ORT int8",
         "ov": "OpenVINO", "ov-bf16": "OpenVINO bf16", "ov-int8": "OpenVINO int8"}

# Lines that are not JSON (a library's progress output) are skipped.
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
# Each rate's best over the run's peak measurements (a disturbed one reads low, never high).
peak = {}
for p in (l for l in lines if l.get("impl") == "peak"):
    for k, v in p.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("threads",):
            peak[k] = v if peak.get(k) is None else max(peak[k], v)
        else:
            peak.setdefault(k, v)
rows = [l for l in lines if l.get("impl") != "peak"]
# (preset, tower, batch, impl) -> per-round results, in the order they were measured.
runs = collections.defaultdict(list)
for r in rows:
    runs[(r["preset"], r["tower"], r["batch_size"], r["impl"])].append(r)


def span(values, fmt="{:.2f}"):
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def rate(values):
    """Items/s with three or four significant digits (G14 runs at 0.04 images/s)."""
    return span(values, "{:.4f}" if values and max(values) < 1 else "{:.2f}")


if peak:
    fmt = lambda k: "-" if peak.get(k) is None else f"{peak[k]:.0f}"
    print(f"Peaks on {peak.get('threads')} threads: float32 FMA {fmt('f32_gflops')} GFLOP/s, "
          f"bf16 dot {fmt('bf16_gflops')} GFLOP/s, int8 dot {fmt('int8_gops')} GOP/s, "
          f"int16 multiply-add {fmt('int16_gops')} GOP/s, int8 AVX2 pairs {fmt('int8_avx2_gops')} GOP/s, "
          f"AMX bf16 {fmt('amx_bf16_gflops')} GFLOP/s, AMX int8 {fmt('amx_int8_gops')} GOP/s.\n")
print("| preset, tower, batch | class | pe items/s | peers items/s (cosine) | pe / best peer | "
      "pe cosine | pe share of peak | best peer's share |")
print("|---|---|---|---|---|---|---|---|")
for preset, tower, batch in sorted({k[:3] for k in runs}, key=lambda k: (k[1], "TSBLG".index(k[0][0]), k[2])):
    for cls, (ours, peers) in CLASSES.items():
        mine = runs.get((preset, tower, batch, ours), [])
        theirs = {p: runs.get((preset, tower, batch, p), []) for p in peers}
        if not mine and not any(theirs.values()):
            continue
        cells = []
        for p, rs in theirs.items():
            if rs:
                cos = min(r["cosine_min"] for r in rs)
                cells.append(f"{NAMES[p]} {rate([r['items_per_s'] for r in rs])} ({cos:.4f})")
        ratios, bests = [], []
        for i, r in enumerate(mine):
            best = max((rs[i] for rs in theirs.values() if len(rs) > i), key=lambda b: b["items_per_s"], default=None)
            if best:
                ratios.append(r["items_per_s"] / best["items_per_s"])
                bests.append(best)
        share = peer_share = "-"
        limit = max((peak.get(k) or 0 for k in PEAK[cls]), default=0)
        pct = lambda rs: span([r["items_per_s"] * r["flops_per_item"] / 1e9 / limit * 100 for r in rs], "{:.0f}") + "%"
        if mine and limit:
            share = pct(mine)
        if bests and limit:
            peer_share = pct(bests)
        print(f"| {preset} {tower}, {batch} | {cls} | {rate([r['items_per_s'] for r in mine])} | "
              f"{'; '.join(cells) or '-'} | {span(ratios)}x | "
              f"{min((r['cosine_min'] for r in mine), default=float('nan')):.4f} | {share} | {peer_share} |")
