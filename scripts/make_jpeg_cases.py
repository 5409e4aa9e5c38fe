#!/usr/bin/env python3
"""Make the JPEG test cases and what Pillow decodes from them.

Writes small JPEGs into crates/perception-encoder/tests/data/jpeg/ and, in expected.json, for
each: Pillow's mode, size, the SHA-256 of `Image.open(f).tobytes()` (the pixels as opened) and
of `.convert("RGB").tobytes()`. The Rust tests compare our decoder with these hashes, so they
need no Python.

Needs Pillow (PyPI) and, from Debian, libjpeg-turbo-progs (cjpeg: subsamplings Pillow cannot
write, restart intervals) and libturbojpeg0 (2.x) with PyTurboJPEG<2 (PyPI) for a YCCK file.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install pillow numpy "PyTurboJPEG<2"
    apt-get install libjpeg-turbo-progs libturbojpeg0
    /tmp/v/bin/python scripts/make_jpeg_cases.py
"""
import hashlib
import io
import json
import pathlib
import subprocess
import tempfile

import numpy as np
from PIL import Image, features

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/perception-encoder/tests/data/jpeg"


def scene(w, h, seed=0):
    """A smooth gradient with sharp edges and noise: chroma detail that upsampling must get right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(x / 3.1 + seed) * np.cos(y / 4.7)
    g = (x * 255 / max(w - 1, 1)).clip(0, 255)
    b = np.where((x // 5 + y // 3) % 2 == 0, 230, 20).astype(np.float32)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def cjpeg(pixels, *args):
    with tempfile.TemporaryDirectory() as d:
        src = pathlib.Path(d) / "in.ppm"
        mode = "L" if pixels.ndim == 2 else "RGB"
        Image.fromarray(pixels, mode).save(src)
        return subprocess.run(["cjpeg", *args, str(src)], check=True, capture_output=True).stdout


def pillow(pixels, mode="RGB", **kw):
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", **kw)
    return buf.getvalue()


def with_exif_orientation(jpeg, orientation):
    img = Image.open(io.BytesIO(jpeg))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def ycck(w, h):
    from turbojpeg import TurboJPEG, TJPF_CMYK, TJSAMP_420

    cmyk = np.asarray(Image.fromarray(scene(w, h, 5)).convert("CMYK"))
    return TurboJPEG().encode(np.ascontiguousarray(cmyk), quality=90, pixel_format=TJPF_CMYK, jpeg_subsample=TJSAMP_420)


def cases():
    s = scene(61, 45)
    yield "s444.jpg", cjpeg(s, "-quality", "90", "-sample", "1x1")
    yield "s422.jpg", cjpeg(s, "-quality", "90", "-sample", "2x1")
    yield "s420.jpg", cjpeg(s, "-quality", "90", "-sample", "2x2")
    yield "s440.jpg", cjpeg(s, "-quality", "90", "-sample", "1x2")
    yield "s411.jpg", cjpeg(s, "-quality", "90", "-sample", "4x1")
    yield "s420_progressive.jpg", cjpeg(s, "-quality", "85", "-sample", "2x2", "-progressive")
    yield "s422_progressive.jpg", pillow(s, quality=80, subsampling=1, progressive=True)
    yield "s420_restart.jpg", cjpeg(s, "-quality", "90", "-sample", "2x2", "-restart", "1")
    yield "s444_restart_blocks.jpg", cjpeg(s, "-quality", "75", "-sample", "1x1", "-restart", "3B")
    yield "odd_1x37.jpg", pillow(scene(1, 37, 1), quality=90, subsampling=2)
    yield "odd_37x1.jpg", pillow(scene(37, 1, 2), quality=90, subsampling=2)
    yield "odd_17x9.jpg", pillow(scene(17, 9, 3), quality=90, subsampling=2)
    yield "odd_17x9_422.jpg", cjpeg(scene(17, 9, 3), "-quality", "90", "-sample", "2x1")
    yield "gray.jpg", cjpeg(scene(33, 20, 4)[..., 1], "-quality", "90")
    yield "gray_progressive.jpg", pillow(scene(33, 20, 4), mode="L", quality=90, progressive=True)
    yield "cmyk_adobe.jpg", pillow(scene(29, 23, 6), mode="CMYK", quality=90)
    yield "ycck_adobe.jpg", ycck(29, 23)
    for o in (3, 6, 8):
        yield f"exif_orientation_{o}.jpg", with_exif_orientation(pillow(scene(24, 16, 7), quality=90), o)
    yield "q100_444.jpg", pillow(s, quality=100, subsampling=0)
    yield "q20_420.jpg", pillow(s, quality=20, subsampling=2)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {
        "pillow": Image.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "cases": {},
    }
    for name, data in cases():
        (OUT / name).write_bytes(data)
        img = Image.open(io.BytesIO(data))
        img.load()
        expected["cases"][name] = {
            "mode": img.mode,
            "size": list(img.size),
            "sha256": hashlib.sha256(img.tobytes()).hexdigest(),
            "rgb_sha256": hashlib.sha256(img.convert("RGB").tobytes()).hexdigest(),
        }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"{len(expected['cases'])} cases in {OUT}")


if __name__ == "__main__":
    main()
