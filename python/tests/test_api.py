"""The Python API against the reference fixtures (the Rust tests' tolerances), the reference's
names, errors as Python exceptions, and threads."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from safetensors.numpy import load_file

import perception_encoder as pe

FIXTURES = pathlib.Path(os.environ.get("PE_FIXTURES", pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"))
if not (FIXTURES / "README.md").is_file():
    if os.environ.get("PE_REQUIRE_FIXTURES") == "1":
        raise RuntimeError(f"PE_REQUIRE_FIXTURES=1 but no fixtures at {FIXTURES}")
    pytest.skip(f"no fixtures at {FIXTURES} (set PE_FIXTURES)", allow_module_level=True)

IMAGES = FIXTURES / "images"


def close(ours, expected, what):
    """The fixtures' rule: max|ours - expected| <= 1e-5 * max(1, max|expected|)."""
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    assert ours.shape == expected.shape, f"{what}: shape {ours.shape} != {expected.shape}"
    tol = 1e-5 * max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(ours - expected).max())
    assert diff <= tol, f"{what}: max diff {diff} > {tol}"


@pytest.fixture(scope="module", params=["tiny-cls", "tiny-nocls"])
def tiny(request):
    name = request.param
    model = pe.Model(config=FIXTURES / f"{name}.json", weights=FIXTURES / f"{name}.safetensors")
    return name, model, load_file(str(FIXTURES / f"{name}.expected.safetensors"))


def test_encode_image_from_files_and_pixels(tiny):
    name, model, exp = tiny
    files = [str(IMAGES / "cat.png"), str(IMAGES / "dog.png")]
    close(model.encode_image(files), exp["image_embed_norm_native"], f"{name} encode_image(paths)")
    close(model.encode_image(exp["pixels_native"]), exp["image_embed_norm_native"], f"{name} encode_image(pixels)")
    close(
        model.encode_image(exp["pixels_native"], normalize=False), exp["image_embed_native"], f"{name} raw"
    )
    for v in ("nonsquare", "mixed"):
        close(model.encode_image(exp[f"pixels_{v}"]), exp[f"image_embed_norm_{v}"], f"{name} {v}")
    # The same images as bytes, as uint8 arrays, and as pathlib paths.
    as_bytes = [open(f, "rb").read() for f in files]
    close(model.encode_image(as_bytes), exp["image_embed_norm_native"], f"{name} encode_image(bytes)")
    close(model.encode_image([pathlib.Path(f) for f in files]), exp["image_embed_norm_native"], "pathlib")
    out = model.encode_image(files[0])
    assert out.shape == (1, model.embed_dim) and out.dtype == np.float32 and out.flags.c_contiguous


def test_uint8_arrays_are_pillow_decoded_pixels(tiny):
    name, model, _ = tiny
    decoded = load_file(str(FIXTURES / "decoded_pixels.safetensors"))
    key = next(k for k in decoded if "cat" in k)
    px = decoded[key]
    assert px.dtype == np.uint8 and px.ndim == 3
    close(model.encode_image(px), model.encode_image(str(IMAGES / "cat.png")), f"{name} array vs file")
    np.testing.assert_array_equal(
        pe.transform(px, size=model.image_size), pe.transform(str(IMAGES / "cat.png"), size=model.image_size)
    )


def test_encode_text_and_tokenize(tiny):
    name, model, exp = tiny
    meta = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    prompts = meta["prompts"]
    ids = pe.tokenize(prompts, context_length=model.context_length)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, exp["text_ids"])
    close(model.encode_text(prompts), exp["text_embed_norm"], f"{name} encode_text")
    close(model.encode_text(exp["text_ids"], normalize=False), exp["text_embed"], f"{name} encode_text(ids)")
    tok = pe.get_text_tokenizer(model.context_length)
    np.testing.assert_array_equal(tok(prompts), exp["text_ids"])


def test_one_tower_alone(tiny):
    name, whole, exp = tiny
    paths = dict(config=FIXTURES / f"{name}.json", weights=FIXTURES / f"{name}.safetensors")
    image = pe.Model(**paths, towers="image")
    np.testing.assert_array_equal(image.encode_image(exp["pixels_native"]), whole.encode_image(exp["pixels_native"]))
    close(image.encode_image(exp["pixels_native"], normalize=False), exp["image_embed_native"], f"{name} image alone")
    assert image.context_length == whole.context_length
    with pytest.raises(ValueError, match="text tower was not loaded"):
        image.encode_text(["a cat"])
    text = pe.Model(**paths, towers="text")
    np.testing.assert_array_equal(text.encode_text(exp["text_ids"]), whole.encode_text(exp["text_ids"]))
    close(text.encode_text(exp["text_ids"], normalize=False), exp["text_embed"], f"{name} text alone")
    with pytest.raises(ValueError, match="vision tower was not loaded"):
        text.encode_image(exp["pixels_native"])
    with pytest.raises(ValueError, match="towers"):
        pe.Model(**paths, towers="audio")


def test_forward_features(tiny):
    name, model, exp = tiny
    for layer in (-1, 0, 1):
        for norm in (0, 1):
            for strip in (0, 1):
                key = f"features_native_layer{layer}_norm{norm}_strip{strip}"
                got = model.forward_features(exp["pixels_native"], layer=layer, norm=bool(norm), strip_cls=bool(strip))
                close(got, exp[key], f"{name} {key}")


def test_classify_matches_logits(tiny):
    name, model, exp = tiny
    meta = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    # The empty prompt is no label (classify refuses it); the softmax over the other four.
    keep = [i for i, p in enumerate(meta["prompts"]) if p]
    prompts = [meta["prompts"][i] for i in keep]
    probs = model.classify(exp["pixels_native"], prompts)
    logits = exp["logits_per_image"][:, keep].astype(np.float64)
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    close(probs, want, f"{name} classify")
    close(np.float32(model.logit_scale), exp["logit_scale_exp"], f"{name} logit_scale")
    img, txt, scale = model(exp["pixels_native"], meta["prompts"])
    close(scale * img @ txt.T, exp["logits_per_image"], f"{name} forward")
    with pytest.raises(ValueError, match="empty label"):
        model.classify(exp["pixels_native"], ["a cat", ""])


def test_transform_matches_the_reference():
    pre = load_file(str(FIXTURES / "preprocess.safetensors"))
    meta = json.loads((FIXTURES / "preprocess.json").read_text())["tensors"]
    for key, info in meta.items():
        got = pe.transform(str(FIXTURES / info["source"]), size=info["size"], center_crop=info["mode"] == "center_crop")
        # Every reference value is k/127.5 - 1: the same 8-bit k for every pixel (Pillow's resize).
        want = np.round((pre[key].astype(np.float32) + 1) * 127.5)
        np.testing.assert_array_equal(np.round((got[0] + 1) * 127.5), want, err_msg=key)
    assert len(meta) >= 4
    t = pe.get_image_transform(32)
    assert t(str(IMAGES / "cat.png")).shape == (3, 32, 32)


def test_encode_video_is_the_mean_of_its_frames(tiny):
    """8 frames by the benchmarks' rule (video.json), each decoded by ffmpeg here."""
    name, model, _ = tiny
    if shutil.which("ffmpeg") is None:
        if os.environ.get("PE_REQUIRE_FIXTURES") == "1":
            raise RuntimeError("PE_REQUIRE_FIXTURES=1 but there is no ffmpeg")
        pytest.skip("no ffmpeg")
    meta = json.loads((FIXTURES / "video.json").read_text())
    video = model.encode_video(str(FIXTURES / "dog.mp4"), frames=8)
    assert video.shape == (1, model.embed_dim)
    frames = []
    for i in meta["benchmark_indices_8"]:
        raw = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(FIXTURES / "dog.mp4"), "-vf", f"select=eq(n\\,{i})",
             "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
            capture_output=True, check=True,
        ).stdout
        frames.append(np.frombuffer(raw, np.uint8).reshape(meta["height"], meta["width"], 3))
    # As the reference's encode_video(normalize=False) and the CLI: the mean of the raw frame
    # embeddings, then normalized.
    mean = model.encode_image(frames, normalize=False).astype(np.float64).mean(0, keepdims=True)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    close(video, mean, f"{name} encode_video")


def test_reference_aliases():
    assert "PE-Core-B16-224" in pe.list_models()
    assert pe.CLIP.available_configs() == pe.list_models()
    with pytest.raises(ValueError, match="pretrained=True"):
        pe.CLIP.from_config("PE-Core-B16-224")


def test_bad_inputs_raise_the_right_exceptions(tmp_path):
    model = pe.Model(config=FIXTURES / "tiny-cls.json", weights=FIXTURES / "tiny-cls.safetensors")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        model.encode_image(str(tmp_path / "absent.png"))
    with pytest.raises(FileNotFoundError):
        pe.Model(config=tmp_path / "none.json", weights=FIXTURES / "tiny-cls.safetensors")
    with pytest.raises(ValueError):
        model.encode_image(b"not an image at all")
    with pytest.raises(ValueError):
        model.encode_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError):
        model.encode_image([])
    with pytest.raises(ValueError):
        model.encode_text([1, 2])
    with pytest.raises(ValueError):
        model.encode_image([42])
    with pytest.raises(ValueError, match="dtype"):
        pe.Model(config=FIXTURES / "tiny-cls.json", weights=FIXTURES / "tiny-cls.safetensors", dtype="f8")
    with pytest.raises(ValueError):
        pe.Model("PE-Core-Nonexistent")
    with pytest.raises(ValueError):
        model.encode_text(np.full((1, 32), -1, np.int64))
    with pytest.raises(ValueError):
        pe.tokenize(["x"], context_length=1)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises((ValueError, RuntimeError)):
        pe.Model(config=FIXTURES / "tiny-cls.json", weights=bad)
    # A huge image is refused by its header before any pixel is decoded.
    with pytest.raises(ValueError, match="pixels"):
        pe.transform(str(IMAGES / "Rock-climbing-Canada-1920x1147.jpg"), size=32, max_pixels=1000)


def test_two_threads_encode_at_once_with_the_same_results():
    model = pe.Model(config=FIXTURES / "tiny-cls.json", weights=FIXTURES / "tiny-cls.safetensors")
    files = [str(IMAGES / f) for f in sorted(os.listdir(IMAGES))]
    want_img = model.encode_image(files)
    want_txt = model.encode_text(["a cat", "a dog", "a diagram"])
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(5):
                results[(i, "img")] = model.encode_image(files)
                results[(i, "txt")] = model.encode_text(["a cat", "a dog", "a diagram"])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(2):
        np.testing.assert_array_equal(results[(i, "img")], want_img)
        np.testing.assert_array_equal(results[(i, "txt")], want_txt)


def test_the_spark_example_embeds_a_dataframe(tmp_path):
    """examples/python/spark_embed.py on a real Spark local[2]: the same embeddings as
    encode_image, and null for a file that does not decode."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        if os.environ.get("PE_REQUIRE_FIXTURES") == "1":
            raise
        pytest.skip("no pyspark")
    import pyarrow.parquet as pq

    images = tmp_path / "images"
    images.mkdir()
    for f in ("cat.png", "dog.png", "synthetic_card.png"):
        shutil.copy(IMAGES / f, images / f)
    (images / "broken.png").write_bytes(b"not a PNG")
    out = tmp_path / "emb.parquet"
    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python" / "spark_embed.py"
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable))
    run = subprocess.run(
        [sys.executable, str(example), str(images / "*.png"), str(out), "--master", "local[2]",
         "--config", str(FIXTURES / "tiny-cls.json"), "--weights", str(FIXTURES / "tiny-cls.safetensors")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    table = pq.read_table(out).to_pydict()
    got = {pathlib.Path(p.replace("file:", "")).name: e for p, e in zip(table["path"], table["embedding"])}
    assert sorted(got) == ["broken.png", "cat.png", "dog.png", "synthetic_card.png"]
    assert got["broken.png"] is None
    model = pe.Model(config=FIXTURES / "tiny-cls.json", weights=FIXTURES / "tiny-cls.safetensors")
    for name in ("cat.png", "dog.png", "synthetic_card.png"):
        np.testing.assert_array_equal(np.array(got[name], np.float32), model.encode_image(str(images / name))[0])


def test_the_folder_example_indexes_and_finds_an_image(tmp_path):
    """examples/python/search_folder.py: a folder to a numpy file, then an image query finds
    itself first (score 1) and a text query ranks every image."""
    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python" / "search_folder.py"
    out = tmp_path / "photos.npz"
    cfg = ["--config", str(FIXTURES / "tiny-cls.json"), "--weights", str(FIXTURES / "tiny-cls.safetensors")]
    run = subprocess.run([sys.executable, str(example), "index", str(IMAGES), str(out)] + cfg, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"{len(os.listdir(IMAGES))} images" in run.stdout
    hit = subprocess.run([sys.executable, str(example), "search", str(out), str(IMAGES / "dog.png"), "--top", "2"],
                         capture_output=True, text=True)
    assert hit.returncode == 0, hit.stderr
    rank, score, path = hit.stdout.splitlines()[0].split("\t")
    assert (rank, path) == ("1", str(IMAGES / "dog.png")) and abs(float(score) - 1) < 1e-5, hit.stdout
    text = subprocess.run([sys.executable, str(example), "search", str(out), "a dog", "--top", "100"],
                          capture_output=True, text=True)
    assert len(text.stdout.splitlines()) == len(os.listdir(IMAGES)), text.stderr


def test_the_gil_is_released_while_the_model_runs():
    """Python code in another thread keeps running during a long encode call: with the GIL
    held for the call it could not (it would count near zero)."""
    model = pe.Model(config=FIXTURES / "tiny-cls.json", weights=FIXTURES / "tiny-cls.safetensors")
    big = str(IMAGES / "Rock-climbing-Canada-1920x1147.jpg")
    done = threading.Event()
    count = [0]

    def spin():
        while not done.is_set():
            count[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = count[0]
        model.encode_image([big] * 48, batch_size=16)
        during = count[0] - before
    finally:
        done.set()
        t.join()
    # About 10 M here; with the GIL held the spinner would get at most the one switch interval
    # (5 ms, a few hundred thousand iterations) before the call took the GIL.
    assert during > 2_000_000, f"the other thread ran only {during} iterations during encode_image"


RSS_PROBE = """
import os, sys, numpy as np
import perception_encoder as pe
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
a = np.ones(32 << 20)  # 256 MB through malloc
before = rss()
del a
kept = before - rss()
pe.release_freed_memory()
print(kept, before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
@pytest.mark.parametrize("keep", ["1", "0"])
def test_freed_memory_is_kept_for_reuse_until_released(keep):
    """The import keeps freed heap memory (a freed 256 MB buffer stays resident) unless
    PE_KEEP_FREED_MEMORY=0; release_freed_memory hands it back either way."""
    env = dict(os.environ, PE_KEEP_FREED_MEMORY=keep)
    out = subprocess.run([sys.executable, "-c", RSS_PROBE], env=env, capture_output=True, text=True, check=True)
    kept, released = (int(v) for v in out.stdout.split())
    mb = 1 << 20
    assert released > 240 * mb, out.stdout
    if keep == "1":
        assert kept < 16 * mb, f"the freed buffer was unmapped: {out.stdout}"
    else:
        assert kept > 240 * mb, f"the allocator's default should unmap it: {out.stdout}"
