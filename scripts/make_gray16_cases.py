#!/usr/bin/env python3
"""Make 16-bit grayscale PNGs and what the reference transform gives for them: Pillow opens them
as `I;16`, resizes the 16-bit samples (BILINEAR) and `convert("RGB")` clips to 255. Writes
crates/perception-encoder/tests/data/gray16/ with the SHA-256 of the resized RGB bytes at each
size. Needs Pillow and numpy (PyPI).

    /tmp/v/bin/python scripts/make_gray16_cases.py
"""
import hashlib
import io
import json
import pathlib

import numpy as np
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/perception-encoder/tests/data/gray16"
SIZES = [5, 16, 40]


def cases():
    y, x = np.mgrid[0:23, 0:37]
    yield "wide_range.png", ((x * 1771 + y * 977) % 65536).astype(np.uint16)
    yield "dark.png", ((x * 7 + y * 5) % 400).astype(np.uint16)
    y, x = np.mgrid[0:5, 0:7]
    yield "small_dark.png", (x * 37 + y * 11 + 200).astype(np.uint16)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {"pillow": Image.__version__, "sizes": SIZES, "cases": {}}
    for name, arr in cases():
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        (OUT / name).write_bytes(buf.getvalue())
        img = Image.open(io.BytesIO(buf.getvalue()))
        assert img.mode == "I;16", img.mode
        expected["cases"][name] = {
            str(s): hashlib.sha256(img.resize((s, s), Image.BILINEAR).convert("RGB").tobytes()).hexdigest()
            for s in SIZES
        }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"{len(expected['cases'])} cases in {OUT}")


if __name__ == "__main__":
    main()
