"""Image preprocessing against transformers' CLIPImageProcessor (REFERENCE.md §3.7).

Without torchvision (not in our requirements) transformers 5 runs its PIL backend, the same
PIL bicubic resize the reference's transformers 4.31 used. Our output is required to equal it
bit for bit (tolerance 0), in `square` mode and in `pad` mode (LLaVA's expand2square first).
"""

import numpy as np
import pytest
from PIL import Image

from sgv_jax.constants import CLIP_MEAN, CLIP_STD
from sgv_jax.data import images

SIZES = [(640, 480), (480, 640), (336, 336), (100, 37), (37, 100), (1001, 999), (7, 300)]


def _reference_expand2square(img, background):
    # LLaVA train.py expand2square, as REFERENCE.md §3.7 describes it.
    width, height = img.size
    if width == height:
        return img
    if width > height:
        result = Image.new(img.mode, (width, width), background)
        result.paste(img, (0, (width - height) // 2))
        return result
    result = Image.new(img.mode, (height, height), background)
    result.paste(img, ((height - width) // 2, 0))
    return result


@pytest.fixture(scope="module")
def hf_processor():
    transformers = pytest.importorskip("transformers")

    def make(size):
        proc = transformers.CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size},
            image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
        assert proc.backend == "pil"
        return proc
    return make


def _random_image(width, height, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image.convert(mode) if mode != "RGB" else image


@pytest.mark.parametrize("aspect", ["square", "pad"])
@pytest.mark.parametrize("size", [336, 28])
def test_equals_clip_image_processor_bit_for_bit(hf_processor, aspect, size):
    ours = images.ImageProcessor(images.ImageConfig(size=size, aspect=aspect))
    proc = hf_processor(size)
    for seed, (width, height) in enumerate(SIZES):
        image = _random_image(width, height, seed)
        ref_in = image
        if aspect == "pad":
            ref_in = _reference_expand2square(image, tuple(int(x * 255) for x in CLIP_MEAN))
        expected = proc(ref_in, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        got = ours(image)
        assert got.shape == (size, size, 3) and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected, err_msg=f"{width}x{height}")


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_other_modes_convert_like_the_processor(hf_processor, mode):
    image = _random_image(90, 60, 3, mode)
    expected = hf_processor(28)(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    got = images.ImageProcessor(images.ImageConfig(size=28))(image)
    np.testing.assert_array_equal(got, expected)


def test_pad_background_is_the_clip_mean_colour():
    assert images.ImageConfig().background == (122, 116, 104)
    padded = images.expand2square(Image.new("RGB", (4, 2), (0, 0, 0)), (122, 116, 104))
    pixels = np.asarray(padded)
    assert padded.size == (4, 4)
    assert (pixels[0] == (122, 116, 104)).all() and (pixels[1] == 0).all()


def test_blank_image_for_text_only_samples():
    blank = images.ImageProcessor(images.ImageConfig(size=28)).blank()
    assert blank.shape == (28, 28, 3) and not blank.any()


def test_unknown_aspect_is_rejected():
    with pytest.raises(ValueError, match="crop"):
        images.ImageConfig(aspect="crop")


@pytest.mark.parametrize("size", [224, 28])
def test_resize_equals_blip_image_processor_bit_for_bit(size):
    # MiniGPT-4's Blip2ImageEvalProcessor = Resize((s, s), BICUBIC) on PIL -> uint8 -> /255 ->
    # normalise (MINIGPT4.md §3.3); HF's BlipImageProcessor with its PIL backend is the same
    # computation (MINIGPT4.md §6.9), so it is the reference here.
    transformers = pytest.importorskip("transformers")
    proc = transformers.BlipImageProcessor(
        size={"height": size, "width": size}, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    assert proc.backend == "pil"
    ours = images.ImageProcessor(images.ImageConfig(size=size, aspect="resize"))
    for seed, (width, height) in enumerate(SIZES):
        image = _random_image(width, height, seed)
        expected = proc(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        got = ours(image)
        assert got.shape == (size, size, 3)
        np.testing.assert_array_equal(got, expected)
