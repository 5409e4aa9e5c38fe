"""The peers of `pe` on a CPU, one measurement per process: PyTorch eager (float32, bfloat16
autocast), ONNX Runtime (float32, dynamic int8), OpenVINO (float32, bf16, int8 via NNCF), and pe
itself through its Python package, all on the same random-weight open_clip model and the same
inputs. Not part of CI; `bench/compare_torch.sh` drives it and writes the table.

    python bench/peers.py prepare --preset B16 --tower image --batch 8 --dir bench/.peers
    python bench/peers.py run --impl ort-int8 --preset B16 --tower image --batch 8 --threads 2

`prepare` (once per preset, tower and batch) writes the weights (safetensors, open_clip's
layout, which pe loads), the ONNX exports, the inputs and PyTorch float32's outputs.
`run` loads one implementation, runs one warm-up batch and ITERS timed ones, and prints one
JSON line: items/s (median batch), peak RSS, load time, and the cosine of its outputs to
PyTorch float32's (the lowest over the batch).
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLASSES = (ROOT / "crates/perception-encoder/data/imagenet_classes.txt").read_text().splitlines()
# pe's preset -> open_clip's model name.
PRESETS = {
    "T16": ("PE-Core-T16-384", "PE-Core-T-16-384"),
    "S16": ("PE-Core-S16-384", "PE-Core-S-16-384"),
    "B16": ("PE-Core-B16-224", "PE-Core-B-16"),
    "L14": ("PE-Core-L14-336", "PE-Core-L-14-336"),
    "G14": ("PE-Core-G14-448", "PE-Core-bigG-14-448"),
}
IMPLS = ["torch", "torch-bf16", "ort", "ort-int8", "ov", "ov-bf16", "ov-int8", "pe", "pe-bf16", "pe-int8"]


def prompts(n):
    # The same prompts as `pe bench --tower text`.
    return [f"a photo of a {CLASSES[(i * 37) % len(CLASSES)]}." for i in range(n)]


def paths(d, preset, tower, batch):
    d = pathlib.Path(d)
    stem = d / f"{preset}-{tower}"
    return {
        "weights": d / f"{preset}.safetensors",
        "onnx": stem.with_suffix(".onnx"),
        "onnx_int8": d / f"{preset}-{tower}-int8.onnx",
        "input": d / f"{preset}-{tower}-b{batch}-input.npy",
        "ref": d / f"{preset}-{tower}-b{batch}-torch.npy",
        "calib": d / f"{preset}-{tower}-calib.npy",
        "flops": d / f"{preset}-{tower}-flops.json",
    }


class Tower:
    """One tower of an open_clip model as a module of one input (for torch.onnx.export)."""

    def __new__(cls, model, tower):
        import torch

        class _T(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, x):
                f = self.m.encode_image(x) if tower == "image" else self.m.encode_text(x)
                return torch.nn.functional.normalize(f, dim=-1)

        return _T().eval()


def drop_unused_text(model, tower):
    """Frees the text tower of a model whose image tower alone is timed."""
    if tower == "image" and hasattr(model, "text"):
        model.text = None


def torch_model(preset, weights=None, tower=None):
    """open_clip's model with random weights, or those of `weights`; with `tower="image"` its text
    tower is dropped first (G14's whole model is 10 GB, its image tower 7.5)."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(PRESETS[preset][1], pretrained=None).eval()
    drop_unused_text(model, tower)
    if weights is not None:
        from safetensors import safe_open

        # Tensor by tensor into the model's own: never a second copy of the weights.
        own = model.state_dict()
        with torch.no_grad(), safe_open(str(weights), framework="pt") as f:
            for k in own:
                own[k].copy_(f.get_tensor(k))
    return model


def prepare(a):
    import torch

    p = paths(a.dir, a.preset, a.tower, a.batch)
    if all(f.exists() for f in p.values()):
        return  # all of it is deterministic (seeded), so made once
    p["weights"].parent.mkdir(parents=True, exist_ok=True)
    if not p["weights"].exists():
        from safetensors.torch import save_file

        # pe reads the whole model's file whichever tower it runs.
        model = torch_model(a.preset)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p["weights"]))
        drop_unused_text(model, a.tower)
    else:
        model = torch_model(a.preset, p["weights"], a.tower)
    tower = Tower(model, a.tower)
    if a.tower == "image":
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        g = torch.Generator().manual_seed(1)
        x = torch.rand(a.batch, 3, size, size, generator=g) * 2 - 1
        calib = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    else:
        import open_clip

        tok = open_clip.get_tokenizer(PRESETS[a.preset][1])
        x = tok(prompts(a.batch))
        calib = tok(prompts(504)[500:])
    if not p["onnx"].exists():
        # Dynamic batch, so one export serves every batch size; external data past 2 GB.
        torch.onnx.export(tower, (x,), str(p["onnx"]), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False,
                          opset_version=17)
    if not p["flops"].exists():
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:  # it needs autograd: not under no_grad or inference_mode
            tower(x[:1])
        p["flops"].write_text(json.dumps({"flops_per_item": counter.get_total_flops()}))
    # Inputs other than the measured ones, for OpenVINO's int8 calibration.
    np.save(p["calib"], calib.numpy())
    np.save(p["input"], x.numpy())
    with torch.inference_mode():
        np.save(p["ref"], tower(x).numpy())
    # Quantized without the PyTorch model in memory (G14: 7.5 GB each, and this machine has 24).
    del model, tower
    import gc

    gc.collect()
    if not p["onnx_int8"].exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        external = p["onnx"].stat().st_size < 2**20  # its weights are in files of their own (past 2 GB)
        quantize_dynamic(str(p["onnx"]), str(p["onnx_int8"]), weight_type=QuantType.QInt8, per_channel=True,
                         use_external_data_format=external)


def load(a, p, x):
    """The implementation's batch function (numpy in, numpy out)."""
    impl = a.impl
    if impl.startswith("torch"):
        import torch

        torch.set_num_threads(a.threads)
        tower = Tower(torch_model(a.preset, p["weights"], a.tower), a.tower)
        tx = torch.from_numpy(x)
        bf16 = impl == "torch-bf16"

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return tower(tx).float().numpy()

        return run
    if impl.startswith("ort"):
        import onnxruntime as ort

        o = ort.SessionOptions()
        o.intra_op_num_threads = a.threads
        o.inter_op_num_threads = 1
        model = p["onnx_int8"] if impl == "ort-int8" else p["onnx"]
        s = ort.InferenceSession(str(model), o, providers=["CPUExecutionProvider"])
        return lambda: s.run(None, {"x": x})[0]
    if impl.startswith("ov"):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(p["onnx"]))
        if impl == "ov-int8":
            import nncf

            calib = np.load(p["calib"])
            data = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
            model = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
        precision = "bf16" if impl == "ov-bf16" else "f32"
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": a.threads,
                                                     "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": precision})
        req = compiled.create_infer_request()
        return lambda: np.array(req.infer({0: x})[0])
    if impl.startswith("pe"):
        import perception_encoder as pe

        dtype = {"pe": "f32", "pe-bf16": "bf16", "pe-int8": "int8"}[impl]
        # The timed tower alone, as the other implementations hold it.
        m = pe.Model(PRESETS[a.preset][0], weights=p["weights"], dtype=dtype, threads=a.threads, towers=a.tower)
        if a.tower == "image":
            return lambda: m.encode_image(x, batch_size=len(x))
        return lambda: m.encode_text(x, batch_size=len(x))
    raise SystemExit(f"unknown implementation {impl}")


def run(a):
    p = paths(a.dir, a.preset, a.tower, a.batch)
    x, ref = np.load(p["input"]), np.load(p["ref"])
    t0 = time.perf_counter()
    # stdout is the JSON line alone: libraries' progress bars (NNCF's) go to stderr.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        fn = load(a, p, x)
        y = fn()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    load_s = time.perf_counter() - t0
    ms = []
    for _ in range(a.iters):
        t = time.perf_counter()
        y = fn()
        ms.append((time.perf_counter() - t) * 1e3)
    y = np.asarray(y, dtype=np.float64)
    cos = (y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))
    med = statistics.median(ms)
    print(json.dumps({
        "impl": a.impl, "preset": a.preset, "tower": a.tower, "batch_size": a.batch,
        "threads": a.threads, "iters": a.iters, "items_per_s": a.batch / (med / 1e3),
        "ms_per_batch_median": med, "ms_per_batch_min": min(ms), "ms_per_batch_max": max(ms),
        "cosine_min": float(cos.min()), "load_and_first_s": load_s,
        "flops_per_item": json.loads(p["flops"].read_text())["flops_per_item"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["prepare", "run"])
    ap.add_argument("--impl", choices=IMPLS, default="torch")
    ap.add_argument("--preset", choices=list(PRESETS), default="B16")
    ap.add_argument("--tower", choices=["image", "text"], default="image")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dir", default=str(ROOT / "bench/.peers"))
    a = ap.parse_args()
    try:
        prepare(a) if a.what == "prepare" else run(a)
    except ImportError as e:
        sys.exit(f"{a.impl}: {e}")


if __name__ == "__main__":
    main()
