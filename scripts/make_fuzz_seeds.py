#!/usr/bin/env python3
"""Write the fuzz targets' seed corpora (crates/pe-fuzz/corpora/<target>/seed-*): small valid
inputs of each kind, made here rather than copied from the fixtures. Needs Pillow (PyPI).

    /tmp/v/bin/python scripts/make_fuzz_seeds.py
"""
import io
import json
import pathlib
import struct
import zipfile

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent / "crates/pe-fuzz/corpora"


def write(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def pickle_state_dict(entries):
    """A protocol-2 pickle of {key: tensor} as torch.save writes it (binary ints, BINPERSID)."""
    out = bytearray(b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01")
    for i, (key, storage, shape) in enumerate(entries):
        k = key.encode()
        out += b"X" + struct.pack("<I", len(k)) + k
        out += b"ctorch._utils\n_rebuild_tensor_v2\n("
        out += b"(X\x07\x00\x00\x00storagectorch\n" + storage.encode() + b"\n"
        out += b"X" + struct.pack("<I", len(str(i))) + str(i).encode() + b"X\x03\x00\x00\x00cpu"
        n = 1
        for d in shape:
            n *= d
        out += b"K" + bytes([n]) + b"tQK\x00("
        for d in shape:
            out += b"K" + bytes([d])
        out += b"t("
        stride = []
        acc = 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
        for s in stride:
            out += b"K" + bytes([s])
        out += b"t\x89h\x00)RtRs"
    out += b"."
    return bytes(out)


def pt(entries, sizes):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_state_dict(entries))
        for i, nbytes in enumerate(sizes):
            z.writestr(f"archive/data/{i}", bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256))
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


def safetensors(tensors):
    header, data = {}, b""
    for name, dtype, shape, size in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + size]}
        data += bytes((i * 7) % 256 for i in range(size))
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def image(fmt, mode, size=(5, 3), **kw):
    img = Image.new(mode, size)
    img.putdata([tuple((x * 40 + c * 90) % 256 for c in range(len(mode))) if len(mode) > 1 else (x * 40) % 256
                 for x in range(size[0] * size[1])])
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def main():
    write("pt", "float", pt([("logit_scale", "FloatStorage", [1]), ("visual.proj", "FloatStorage", [2, 3])], [4, 24]))
    write("pt", "half-long", pt([("w", "HalfStorage", [2, 2]), ("position_ids", "LongStorage", [1, 4])], [8, 32]))
    write("safetensors", "f32-bf16", safetensors([("logit_scale", "F32", [], 4), ("visual.proj", "BF16", [2, 3], 12)]))
    write("safetensors", "f16", safetensors([("visual.conv1.weight", "F16", [2, 1, 1, 1], 4)]))
    vision = {"patch_size": 8, "width": 16, "layers": 1, "heads": 2, "mlp_ratio": 4.0, "output_dim": 8,
              "image_size": 16}
    write("config", "vision", json.dumps({"vision": vision}).encode())
    text = {"context_length": 8, "width": 16, "heads": 2, "layers": 1, "output_dim": 8}
    write("config", "clip", json.dumps({"vision": {**vision, "use_cls_token": True, "pool_type": "attn"},
                                        "text": text}).encode())
    write("image", "png-rgb", image("PNG", "RGB"))
    write("image", "png-la", image("PNG", "LA"))
    write("image", "png-p", image("PNG", "P"))
    write("image", "jpeg-420", image("JPEG", "RGB", (17, 9), quality=50))
    write("image", "jpeg-prog", image("JPEG", "L", (9, 9), quality=50, progressive=True))
    write("image", "jpeg-cmyk", image("JPEG", "CMYK", (8, 8), quality=50))
    write("image", "gif", image("GIF", "P"))
    write("image", "bmp", image("BMP", "RGB"))
    write("image", "webp", image("WEBP", "RGB", lossless=True))
    write("image", "tiff", image("TIFF", "RGB"))
    png = image("PNG", "RGB")
    import base64
    b64 = base64.b64encode(png).decode()
    write("request", "text", b"\x00\x00" + json.dumps({"texts": ["a cat", "a dog"], "normalize": False}).encode())
    write("request", "image", b"\x01\x00" + json.dumps({"images": [b64, "data:image/png;base64," + b64]}).encode())
    write("request", "openai", b"\x02\x00" + json.dumps({"input": ["a cat", "data:image/png;base64," + b64],
                                                          "encoding_format": "base64"}).encode())
    write("request", "classify", b"\x03\x00" + json.dumps({"images": [b64], "labels": ["a", "b"],
                                                            "templates": ["{}."], "top_k": 1}).encode())
    multipart = (b"--X\r\nContent-Disposition: form-data; name=\"normalize\"\r\n\r\nfalse\r\n"
                 b"--X\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n" + png
                 + b"\r\n--X--\r\n")
    write("request", "multipart", b"\x01\x01" + multipart)
    write("tokenizer", "plain", b"a photo of a cat.")
    write("tokenizer", "html", b"&amp;lt;b&gt; caf\xc3\xa9 \xe2\x80\x9cquoted\xe2\x80\x9d <start_of_text> 123,456!!")
    write("tokenizer", "mojibake", "cafÃ© naïve ﬁne Ｆｕｌｌ e\u0301".encode())


if __name__ == "__main__":
    main()
