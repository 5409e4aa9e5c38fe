"""Table of a compare_torch.sh run: best median per (tower, dtype, batch, impl) and the ratio."""

import collections
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = collections.defaultdict(float)
rss = {}
for r in rows:
    dtype = "bf16" if r["dtype"].startswith("bf16") else r["dtype"]
    key = (r["tower"], dtype, r["batch_size"], r["impl"])
    best[key] = max(best[key], r["items_per_s"])
    rss[key] = max(rss.get(key, 0), r["peak_rss_mb"])
print(f"| tower | dtype | batch | threads | PyTorch items/s | pe items/s | pe / PyTorch | peak RSS PyTorch / pe (MB) |")
print("|---|---|---|---|---|---|---|---|")
threads = rows[0]["threads"] if rows else "?"
for (tower, dtype, batch) in sorted({k[:3] for k in best}):
    t = best.get((tower, dtype, batch, "pytorch"))
    p = best.get((tower, dtype, batch, "pe"))
    ratio = f"{p / t:.2f}x" if t and p else "-"
    fmt = lambda v: f"{v:.2f}" if v else "-"
    print(f"| {tower} | {dtype} | {batch} | {threads} | {fmt(t)} | {fmt(p)} | {ratio} | "
          f"{rss.get((tower, dtype, batch, 'pytorch'), 0):.0f} / {rss.get((tower, dtype, batch, 'pe'), 0):.0f} |")
