"""Meta's Perception Encoder on the CPU, without torch: the Rust library behind a thin layer,
numpy in and out.

    import perception_encoder as pe
    model = pe.Model("PE-Core-B16-224")                 # the Hugging Face cache, like the CLI
    emb = model.encode_image(["cat.jpg", "dog.jpg"])      # float32 (2, 1024), normalized
    txt = model.encode_text(["a cat", "a dog"])
    probs = model.classify(["cat.jpg"], ["a cat", "a dog"])

The reference's names are here too (``CLIP.from_config``, ``get_image_transform``,
``get_text_tokenizer``), so a script ports by changing its imports; they take and return numpy
arrays where the reference takes and returns tensors.
"""

import os

import numpy as np

from . import _native
from ._native import list_models, release_freed_memory, set_threads

__all__ = [
    "Model",
    "CLIP",
    "tokenize",
    "transform",
    "list_models",
    "set_threads",
    "release_freed_memory",
    "get_image_transform",
    "get_text_tokenizer",
]

# The reference's zero-shot template when none is given: the label itself.
_DEFAULT_TEMPLATES = ["{}"]


def _is_single_image(x):
    if isinstance(x, (str, bytes, os.PathLike)):
        return True
    if isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim in (2, 3):
        return True
    return _is_pil(x)


def _is_pil(x):
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert")


def _image_items(images):
    """A list of paths, bytes and uint8 H x W x C arrays, from one image or many (a list, or a
    uint8 N x H x W x C array); PIL images become arrays as ``convert("RGB")`` gives them."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:
        return list(images)
    if _is_single_image(images):
        images = [images]
    items = []
    for x in images:
        if _is_pil(x):
            x = np.asarray(x.convert("RGB"))
        elif isinstance(x, os.PathLike):
            x = os.fspath(x)
        items.append(x)
    return items


def _pixels(x):
    """Preprocessed pixels (N, 3, H, W) as C-contiguous float32, or None if `x` is not."""
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ValueError(f"pixels must be (N, 3, H, W) float32; got shape {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)
    return None


def tokenize(texts, context_length=32):
    """Token ids ``(N, context_length)`` int64, as the reference's tokenizer makes them
    (lower-cased, ``<start>``/``<end>``, truncated to ``context_length``, zero-padded)."""
    if isinstance(texts, str):
        texts = [texts]
    return _native.tokenize(list(texts), context_length)


def transform(images, size=224, center_crop=False, max_pixels=None):
    """Model inputs ``(N, 3, size, size)`` float32 from images (paths, bytes of encoded images,
    uint8 H x W x 3 arrays, PIL images): the reference's resize (squash, or shorter side and
    centre crop), then ``(x / 255 - 0.5) / 0.5``."""
    return _native.transform(_image_items(images), size, center_crop, max_pixels)


class Model:
    """A Perception Encoder model.

    ``Model("PE-Core-B16-224")`` loads a preset from the Hugging Face cache (downloading it on
    first use; ``HF_HOME``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are honoured);
    ``Model(config="tiny.json", weights="tiny.pt")`` loads a config in the reference's JSON
    format and a checkpoint in any layout the CLI reads. ``dtype`` is ``"f32"`` (the
    reference's numbers), ``"bf16"`` or ``"int8"``; ``threads`` sets the kernels' threads for
    the whole process (as ``torch.set_num_threads``). ``towers`` is ``"both"``, ``"image"`` or
    ``"text"``: a model for one kind of input reads and holds only that tower (the other's
    methods then raise ``ValueError``).
    """

    def __init__(self, name=None, *, config=None, weights=None, dtype="f32", threads=None, towers="both"):
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            set_threads(threads)
        if config is not None:
            config = os.fspath(config)
        if weights is not None:
            weights = os.fspath(weights)
        self._m = _native._Model(name, config, weights, dtype, towers)

    def __repr__(self):
        return f"Model({self.name!r}, dtype={self.dtype!r})"

    @property
    def name(self):
        """The model's name."""
        return self._m.name

    @property
    def embed_dim(self):
        """The embedding dimension."""
        return self._m.embed_dim

    @property
    def image_size(self):
        """The input side in pixels."""
        return self._m.image_size

    @property
    def context_length(self):
        """The text context length (None for a vision-only model)."""
        return self._m.context_length

    @property
    def dtype(self):
        """The precision the model runs in."""
        return self._m.dtype

    def encode_image(self, images, normalize=True, batch_size=8, center_crop=False):
        """Image embeddings ``(N, D)`` float32. ``images``: a path, bytes of an encoded image, a
        uint8 H x W x 3 array or a PIL image, a list of those, a uint8 N x H x W x 3 array, or
        preprocessed float32 pixels ``(N, 3, H, W)`` (from :func:`transform`, as the
        reference's ``encode_image`` takes them)."""
        px = _pixels(images)
        if px is not None:
            return self._m.encode_pixels(px, normalize)
        return self._m.encode_images(_image_items(images), normalize, batch_size, center_crop)

    def encode_text(self, texts, normalize=True, batch_size=32):
        """Text embeddings ``(N, D)`` float32 of a string, a list of strings, or token ids
        ``(N, context_length)`` from :func:`tokenize`."""
        if isinstance(texts, np.ndarray) and texts.dtype.kind in "iu":
            return self._m.encode_ids(np.ascontiguousarray(texts, dtype=np.int64), normalize)
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be strings (or an integer array of token ids)")
        return self._m.encode_texts(texts, normalize, batch_size)

    def encode_video(self, path, frames=8, normalize=True):
        """Video embeddings ``(N, D)`` float32 of a video file or a list of them: ``frames``
        frames sampled by the reference benchmarks' rule, each through the image transform, the
        mean of the raw frame embeddings, then normalized if ``normalize`` (as the CLI). Needs ffmpeg."""
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        return self._m.encode_videos([os.fspath(p) for p in paths], frames, normalize)

    def forward_features(self, images, layer=-1, norm=True, strip_cls=False):
        """Token features ``(N, T, C)`` float32 after block ``layer`` (negative counts from the
        end), with the final LayerNorm if ``norm``, without the class token if ``strip_cls``;
        as the reference's ``forward_features``. ``images`` as :meth:`encode_image`."""
        px = _pixels(images)
        if px is None:
            px = transform(images, self.image_size)
        return self._m.forward_features(px, layer, norm, strip_cls)

    def classify(self, images, labels, templates=None):
        """Zero-shot class probabilities ``(N, L)`` float32: each label through ``templates``
        (strings holding ``{}``; default the label alone), the mean of the normalized prompt
        embeddings, softmax of ``exp(logit_scale) * cosine``."""
        if isinstance(labels, str):
            labels = [labels]
        templates = _DEFAULT_TEMPLATES if templates is None else list(templates)
        px = _pixels(images)
        if px is None:
            px = transform(images, self.image_size)
        return self._m.classify_pixels(px, list(labels), templates)

    @property
    def logit_scale(self):
        """``exp(logit_scale)``: the scale of the cosines in the softmax."""
        return self._m.logit_scale

    def __call__(self, image=None, text=None):
        """The reference's ``forward``: normalized image features, normalized text features
        (None for an input not given) and ``exp(logit_scale)``."""
        img = None if image is None else self.encode_image(image)
        txt = None if text is None else self.encode_text(text)
        return img, txt, self.logit_scale


class CLIP:
    """The reference's entry point: ``CLIP.from_config(name, pretrained=True)`` or
    ``CLIP.from_config(name, checkpoint_path=PATH)``; returns a :class:`Model`."""

    @staticmethod
    def from_config(name, pretrained=False, checkpoint_path=None, dtype="f32", threads=None):
        if checkpoint_path is not None:
            return Model(name, weights=checkpoint_path, dtype=dtype, threads=threads)
        if not pretrained:
            raise ValueError(
                "random initialisation is not offered: pass pretrained=True (the hub's weights) "
                "or checkpoint_path=PATH"
            )
        return Model(name, dtype=dtype, threads=threads)

    @staticmethod
    def available_configs():
        return list_models()


class _ImageTransform:
    def __init__(self, size, center_crop):
        self.size = size
        self.center_crop = center_crop

    def __call__(self, image):
        """One image (a PIL image, a path, bytes or a uint8 array) -> float32 ``(3, size, size)``,
        as the reference's transform returns a tensor of one image."""
        return transform([image] if _is_single_image(image) else image, self.size, self.center_crop)[0]

    def __repr__(self):
        return f"get_image_transform({self.size}, center_crop={self.center_crop})"


def get_image_transform(image_size, center_crop=False):
    """The reference's ``transforms.get_image_transform``: a callable from one image to
    float32 ``(3, image_size, image_size)``."""
    return _ImageTransform(image_size, center_crop)


class _TextTokenizer:
    def __init__(self, context_length):
        self.context_length = context_length

    def __call__(self, texts):
        """Texts -> int64 ``(N, context_length)``."""
        return tokenize(texts, self.context_length)


def get_text_tokenizer(context_length):
    """The reference's ``transforms.get_text_tokenizer``: a callable from texts to int64 ids
    ``(N, context_length)``."""
    return _TextTokenizer(context_length)
