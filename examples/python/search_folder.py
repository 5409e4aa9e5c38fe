#!/usr/bin/env python3
"""Embed a folder of images to a numpy file, then search it by text or by image.

    python examples/python/search_folder.py index ~/Photos photos.npz
    python examples/python/search_folder.py search photos.npz "a red bicycle" --top 5

(`pe index` / `pe search` do this with an incremental index; this is the same in a few lines
of numpy, for notebooks and scripts.)
"""

import argparse
import os

import numpy as np

import perception_encoder as pe

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def load(model, config, weights, dtype):
    if config:
        return pe.Model(config=config, weights=weights, dtype=dtype)
    return pe.Model(model, dtype=dtype)


def index(args):
    model = load(args.model, args.config, args.weights, args.dtype)
    paths = sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(args.folder)
        for f in files
        if os.path.splitext(f)[1].lower() in EXTENSIONS and not f.startswith(".")
    )
    rows, kept = [], []
    for i in range(0, len(paths), 64):
        batch = paths[i : i + 64]
        try:
            rows.append(model.encode_image(batch, batch_size=8))
            kept += batch
        except ValueError:
            for p in batch:  # one bad file: embed the batch one by one, skipping it
                try:
                    rows.append(model.encode_image(p))
                    kept.append(p)
                except ValueError as e:
                    print(f"skipping {p}: {e}")
    np.savez(
        args.out,
        embeddings=np.concatenate(rows),
        paths=np.array(kept),
        model=args.model,
        config=args.config or "",
        weights=args.weights or "",
        dtype=args.dtype,
    )
    print(f"{len(kept)} images -> {args.out}")


def search(args):
    data = np.load(args.index)
    model = load(str(data["model"]), str(data["config"]), str(data["weights"]), str(data["dtype"]))
    q = model.encode_image(args.query) if os.path.isfile(args.query) else model.encode_text(args.query)
    scores = data["embeddings"] @ q[0]
    for rank, i in enumerate(np.argsort(-scores)[: args.top], 1):
        print(f"{rank}\t{scores[i]:.4f}\t{data['paths'][i]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(required=True)
    i = sub.add_parser("index")
    i.add_argument("folder")
    i.add_argument("out")
    i.add_argument("--model", default="PE-Core-B16-224")
    i.add_argument("--dtype", default="f32")
    i.add_argument("--config", help="a model config (with --weights) instead of a preset")
    i.add_argument("--weights")
    i.set_defaults(run=index)
    s = sub.add_parser("search")
    s.add_argument("index")
    s.add_argument("query", help="text, or the path of an image")
    s.add_argument("--top", type=int, default=10)
    s.set_defaults(run=search)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
