#!/usr/bin/env python3
"""Make the GIF test cases and Pillow's `Image.open(f).convert("RGB")` of each (SHA-256), in
crates/perception-encoder/tests/data/gif/. Needs Pillow (PyPI).

    /tmp/v/bin/python scripts/make_gif_cases.py
"""
import hashlib
import io
import json
import pathlib

from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/perception-encoder/tests/data/gif"


def palette_image(w, h, colours, seed=0):
    im = Image.new("P", (w, h))
    pal = [c for rgb in colours for c in rgb]
    im.putpalette(pal + [0] * (768 - len(pal)))
    im.putdata([(x * 7 + y * 3 + seed) % len(colours) for y in range(h) for x in range(w)])
    return im


def save(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "GIF", **kw)
    return buf.getvalue()


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 200), (17, 34, 51), (250, 128, 3)]


def cases():
    yield "plain.gif", save(palette_image(13, 7, COLOURS))
    yield "transparent.gif", save(palette_image(13, 7, COLOURS), transparency=0)
    yield "transparent_index3.gif", save(palette_image(9, 9, COLOURS, 2), transparency=3)
    grays = [(v, v, v) for v in (0, 40, 90, 160, 255)]
    yield "gray_palette.gif", save(palette_image(11, 5, grays))
    frames = [palette_image(8, 6, COLOURS, s) for s in range(3)]
    yield "animated.gif", save(frames[0], save_all=True, append_images=frames[1:], duration=50, loop=0)
    yield "animated_transparent.gif", save(
        frames[0], save_all=True, append_images=frames[1:], duration=50, transparency=1, disposal=2
    )
    yield "interlaced.gif", save(palette_image(16, 16, COLOURS, 5), interlace=True)
    rgb = Image.new("RGB", (10, 10))
    rgb.putdata([((x * 25) % 256, (y * 25) % 256, 128) for y in range(10) for x in range(10)])
    yield "from_rgb.gif", save(rgb)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {"pillow": Image.__version__, "cases": {}}
    for name, data in cases():
        (OUT / name).write_bytes(data)
        img = Image.open(io.BytesIO(data))
        expected["cases"][name] = {
            "mode": img.mode,
            "size": list(img.size),
            "rgb_sha256": hashlib.sha256(img.convert("RGB").tobytes()).hexdigest(),
        }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"{len(expected['cases'])} cases in {OUT}")


if __name__ == "__main__":
    main()
