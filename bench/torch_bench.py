"""PyTorch side of the benchmark: open_clip's PE-Core-B-16 (random weights; numerically the
same model as the reference) on CPU, timed like `pe bench`: one warm-up batch, then N timed
batches; prints one JSON object with the same fields."""

import argparse
import json
import pathlib
import resource
import statistics
import time

import torch
import open_clip

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLASSES = (ROOT / "crates/perception-encoder/data/imagenet_classes.txt").read_text().splitlines()


def prompts(n):
    # The same prompts as `pe bench --tower text`.
    return [f"a photo of a {CLASSES[(i * 37) % len(CLASSES)]}." for i in range(n)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="PE-Core-B-16")
    p.add_argument("--tower", choices=["image", "text"], default="image")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantization of nn.Linear layers")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = open_clip.create_model(a.model, pretrained=None).eval()
    if a.int8:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    load_s = time.perf_counter() - t0
    if a.tower == "image":
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        x = torch.rand(a.batch_size, 3, size, size) * 2 - 1
        fn = lambda: model.encode_image(x, normalize=True)
    else:
        tok = open_clip.get_tokenizer(a.model)
        x = tok(prompts(a.batch_size))
        fn = lambda: model.encode_text(x, normalize=True)

    def step():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            return fn().float().sum().item()

    step()
    ms = []
    for _ in range(a.iters):
        t = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t) * 1e3)
    med = statistics.median(ms)
    print(json.dumps({
        "impl": "pytorch",
        "model": a.model,
        "tower": a.tower,
        "dtype": "bf16-autocast" if a.bf16 else ("int8" if a.int8 else "f32"),
        "batch_size": a.batch_size,
        "threads": a.threads,
        "iters": a.iters,
        "items_per_s": a.batch_size / (med / 1e3),
        "ms_per_batch_median": med,
        "ms_per_batch_min": min(ms),
        "ms_per_batch_max": max(ms),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_s": load_s,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
