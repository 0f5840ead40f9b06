"""Image preprocessing as the reference does it (REFERENCE.md §3.7), NHWC float32 output.

`square`: CLIPImageProcessor (resize shortest side, bicubic; centre crop; rescale; normalise).
`pad`: expand2square with the CLIP mean colour first, then the same.
`resize`: BLIP-2's `Blip2ImageEvalProcessor` (MINIGPT4.md §3.3): square bicubic resize through PIL
to uint8, aspect ratio not kept, no crop.
`random_resized_crop`: `blip2_image_train` of MiniGPT-4's first release (MINIGPT4.md §3.3):
torchvision's `RandomResizedCrop(size, scale=(0.5, 1.0), BICUBIC)` on a PIL image, drawn from a
numpy Generator the caller passes (the draw is the pipeline's, so a resumed run repeats it).
Each step reproduces
transformers' PIL backend bit for bit (PIL bicubic on uint8, the same integer crop offsets,
float64 rescale cast to float32, float32 normalise), with the rescale+normalise done by a
256-entry table per channel instead of per-pixel float math.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from PIL import Image

from sgv_jax.constants import CLIP_MEAN, CLIP_STD

ASPECTS = ("square", "pad", "resize", "random_resized_crop")
# blip2_image_train's crop: area fraction and torchvision's default aspect-ratio range (§3.3).
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Preprocessing parameters; defaults are clip-vit-large-patch14-336's (§3.7)."""

    size: int = 336
    aspect: str = "square"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        if self.aspect not in ASPECTS:
            raise ValueError(f"unknown image aspect {self.aspect!r}; expected one of {ASPECTS}")

    @property
    def background(self) -> tuple[int, int, int]:
        """expand2square fill: `int(x * 255)` of the mean, (122, 116, 104) for CLIP (§3.7)."""
        return tuple(int(x * 255) for x in self.mean)


def normalization_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[256, 3] float32: the normalised value of each uint8 level per channel, computed with
    transformers' dtypes (`rescale`: float64 multiply then float32; `normalize`: float32)."""
    levels = (np.arange(256, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    return (levels[:, None] - mean32) / std32


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA's expand2square: paste onto a square of side max(w, h), centred (§3.7)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    offset = (0, (width - height) // 2) if width > height else ((height - width) // 2, 0)
    result.paste(image, offset)
    return result


def resize_shortest_edge(image: Image.Image, size: int) -> Image.Image:
    """`get_resize_output_image_size(default_to_square=False)` + PIL bicubic resize."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    if (new_w, new_h) == (width, height):
        # PIL returns a copy for an identity resize; skip the work.
        return image
    return image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC, reducing_gap=None)


def resize_square(image: Image.Image, size: int) -> Image.Image:
    """torchvision `Resize((size, size), BICUBIC)` on a PIL image: PIL's bicubic, uint8 out."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), resample=Image.Resampling.BICUBIC)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float] = CROP_SCALE,
                            ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """torchvision `RandomResizedCrop.get_params`: (top, left, height, width) of the crop; ten
    tries at a random area and log-uniform aspect ratio, then a centre crop as fallback."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """transformers `center_crop` offsets on [H, W, C] (the image is never smaller here)."""
    height, width = pixels.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return pixels[top:top + size, left:left + size]


class ImageProcessor:
    """Callable: PIL image (any mode) -> [size, size, 3] float32 normalised pixels."""

    def __init__(self, config: ImageConfig = ImageConfig()):
        self.config = config
        self._table = normalization_table(config.mean, config.std)
        self._channel = np.arange(3)

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        """`rng` draws the crop of `random_resized_crop` (and is required for it)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.config.aspect == "random_resized_crop":
            if rng is None:
                raise ValueError("aspect 'random_resized_crop' draws its crop from an rng; pass one")
            top, left, h, w = random_resized_crop_box(*image.size, rng)
            # torchvision F.resized_crop on PIL: crop, then resize((size, size), BICUBIC).
            image = image.crop((left, top, left + w, top + h))
            return self._table[np.asarray(resize_square(image, self.config.size)), self._channel]
        if self.config.aspect == "resize":
            return self._table[np.asarray(resize_square(image, self.config.size)), self._channel]
        if self.config.aspect == "pad":
            image = expand2square(image, self.config.background)
        image = resize_shortest_edge(image, self.config.size)
        pixels = center_crop(np.asarray(image), self.config.size)
        return self._table[pixels, self._channel]

    def blank(self) -> np.ndarray:
        """The zero image text-only samples carry (§3.5)."""
        return np.zeros((self.config.size, self.config.size, 3), np.float32)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Opens and fully decodes an image file (a truncated file raises here, not later)."""
    with Image.open(path) as image:
        image.load()
        # convert() returns a new image that outlives the file; for RGB, copy() does.
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
