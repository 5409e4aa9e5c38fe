#!/usr/bin/env python3
"""Make a synthetic WebDataset corpus for the shard benchmark: SHARDS tar shards of PER images
each (KEY.jpg 256x256, as img2dataset resizes by default, KEY.txt caption, KEY.json metadata),
generated from a fixed seed (gradients, rectangles and ellipses in random colours), so every
run makes the same bytes.

    python bench/make_shards.py OUT_DIR [--shards 100] [--per 100] [--size 256]

Needs Pillow and numpy.
"""

import argparse
import io
import json
import os
import tarfile

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["square", "circle", "stripe", "blob"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def image(rng, size):
    """A gradient background with a few shapes, and a caption naming the first."""
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    grad = (a * (1 - t) + b * t).astype(np.uint8)
    im = Image.fromarray(np.broadcast_to(grad, (size, size, 3)).copy())
    d = ImageDraw.Draw(im)
    caption = None
    for _ in range(int(rng.integers(1, 5))):
        shape, colour = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        x1, y1 = x0 + rng.integers(size // 8, size // 2), y0 + rng.integers(size // 8, size // 2)
        box = [int(x0), int(y0), int(x1), int(y1)]
        if shape == "circle" or shape == "blob":
            d.ellipse(box, fill=colour)
        else:
            d.rectangle(box, fill=colour)
        caption = caption or f"a {colour} {shape} on a gradient"
    # Some texture, so the JPEGs are not trivially small.
    noise = rng.integers(-12, 13, (size, size, 3))
    px = np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), caption


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--shards", type=int, default=100)
    p.add_argument("--per", type=int, default=100)
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    total = 0
    for s in range(args.shards):
        path = os.path.join(args.out, f"{s:05d}.tar")
        tmp = path + ".tmp"
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(args.per):
                key = f"{s:05d}{i:04d}"
                jpeg, caption = image(rng, args.size)
                add(tar, f"{key}.jpg", jpeg)
                add(tar, f"{key}.txt", caption.encode())
                add(tar, f"{key}.json", json.dumps({"key": key, "caption": caption}).encode())
                total += 1
        os.replace(tmp, path)
    print(f"{total} images in {args.shards} shards in {args.out}")


if __name__ == "__main__":
    main()
