"""Type stubs of perception_encoder (see the module's docstrings)."""

import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

ImageLike = Union[str, bytes, os.PathLike, npt.NDArray[np.uint8], "PIL.Image.Image"]  # noqa: F821
Images = Union[ImageLike, Sequence[ImageLike], npt.NDArray[np.uint8], npt.NDArray[np.float32]]
Texts = Union[str, Sequence[str], npt.NDArray[np.int64]]

def tokenize(texts: Union[str, Sequence[str]], context_length: int = 32) -> npt.NDArray[np.int64]: ...
def transform(
    images: Images, size: int = 224, center_crop: bool = False, max_pixels: Optional[int] = None
) -> npt.NDArray[np.float32]: ...
def list_models() -> List[str]: ...
def set_threads(n: int) -> int: ...
def get_image_transform(image_size: int, center_crop: bool = False) -> Callable[[ImageLike], npt.NDArray[np.float32]]: ...
def get_text_tokenizer(context_length: int) -> Callable[[Union[str, Sequence[str]]], npt.NDArray[np.int64]]: ...

class Model:
    def __init__(
        self,
        name: Optional[str] = None,
        *,
        config: Optional[Union[str, os.PathLike]] = None,
        weights: Optional[Union[str, os.PathLike]] = None,
        dtype: str = "f32",
        threads: Optional[int] = None,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def embed_dim(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def context_length(self) -> Optional[int]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def logit_scale(self) -> float: ...
    def encode_image(
        self, images: Images, normalize: bool = True, batch_size: int = 8, center_crop: bool = False
    ) -> npt.NDArray[np.float32]: ...
    def encode_text(self, texts: Texts, normalize: bool = True, batch_size: int = 32) -> npt.NDArray[np.float32]: ...
    def encode_video(
        self, path: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], frames: int = 8, normalize: bool = True
    ) -> npt.NDArray[np.float32]: ...
    def forward_features(
        self, images: Images, layer: int = -1, norm: bool = True, strip_cls: bool = False
    ) -> npt.NDArray[np.float32]: ...
    def classify(
        self, images: Images, labels: Union[str, Sequence[str]], templates: Optional[Sequence[str]] = None
    ) -> npt.NDArray[np.float32]: ...
    def __call__(
        self, image: Optional[Images] = None, text: Optional[Texts] = None
    ) -> Tuple[Optional[npt.NDArray[np.float32]], Optional[npt.NDArray[np.float32]], float]: ...

class CLIP:
    @staticmethod
    def from_config(
        name: str,
        pretrained: bool = False,
        checkpoint_path: Optional[Union[str, os.PathLike]] = None,
        dtype: str = "f32",
        threads: Optional[int] = None,
    ) -> Model: ...
    @staticmethod
    def available_configs() -> List[str]: ...
