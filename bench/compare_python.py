#!/usr/bin/env python3
"""From Python, side by side in one run: `perception_encoder` (this repository's package) and
open_clip's PE-Core-B-16 in PyTorch, both with random weights, encode_image on float32 pixels
and encode_text on strings (tokenizing included), batch 1 and 8, float32 and bfloat16 (pe's
bf16 dtype; PyTorch's bf16 autocast), same threads, alternating so machine noise hits both.
Prints a Markdown table of items/s and the ratio. Not part of CI.

    python bench/compare_python.py --weights B16.safetensors [--threads 2] [--rounds 2]

Needs torch, open_clip_torch and perception_encoder in one environment; the weights file is a
random PE-Core-B16-224 checkpoint (`cargo run --release -p perception-encoder --example
random_checkpoint -- PE-Core-B16-224 B16.safetensors`).
"""

import argparse
import statistics
import time

import numpy as np
import open_clip
import torch

import perception_encoder as pe

PROMPTS = [f"a photo of a {w}." for w in ("cat", "dog", "bicycle", "mountain", "diagram", "person", "car", "tree")]


def timed(fn, iters):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ours = {d: pe.Model("PE-Core-B16-224", weights=a.weights, dtype=d, threads=a.threads) for d in ("f32", "bf16")}
    theirs = open_clip.create_model("PE-Core-B-16", pretrained=None).eval()
    tok = open_clip.get_tokenizer("PE-Core-B-16")
    rows = {}
    for _ in range(a.rounds):
        for tower in ("image", "text"):
            for batch in (1, 8):
                for dtype in ("f32", "bf16"):
                    if tower == "image":
                        x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32)
                        xt = torch.from_numpy(x)
                        run_pe = lambda: ours[dtype].encode_image(x)

                        def run_torch():
                            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
                                return theirs.encode_image(xt, normalize=True).float().numpy()
                    else:
                        texts = (PROMPTS * batch)[:batch]
                        run_pe = lambda: ours[dtype].encode_text(texts)

                        def run_torch():
                            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
                                return theirs.encode_text(tok(texts), normalize=True).float().numpy()
                    t_torch = timed(run_torch, a.iters)
                    t_pe = timed(run_pe, a.iters)
                    rows.setdefault((tower, batch, dtype), []).append((batch / t_pe, batch / t_torch))
    print(f"{a.threads} threads, torch {torch.__version__}, open_clip {open_clip.__version__}, {a.rounds} rounds (ranges)\n")
    print("| tower, batch | dtype | perception_encoder items/s | open_clip (PyTorch) items/s | ratio |")
    print("|---|---|---|---|---|")
    for (tower, batch, dtype), r in rows.items():
        ours_s, theirs_s = [x[0] for x in r], [x[1] for x in r]
        ratios = [o / t for o, t in r]
        rng = lambda v, f: f"{min(v):{f}}-{max(v):{f}}" if len(v) > 1 else f"{v[0]:{f}}"
        print(f"| {tower}, {batch} | {dtype} | {rng(ours_s, '.2f')} | {rng(theirs_s, '.2f')} | {rng(ratios, '.2f')}x |")


if __name__ == "__main__":
    main()
