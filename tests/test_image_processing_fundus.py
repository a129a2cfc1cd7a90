"""FundusImageProcessor: conversions, geometry, errors, per-call overrides and save/load round trips."""

import ast
import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from retvlp.maskedclip import image_processing_fundus
from retvlp.maskedclip.image_processing_fundus import FundusImageProcessor

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Largest difference between 8-bit Pillow resizing and float resizing of the same picture, in normalised
# units: ~1 grey level / 255 / 0.224.
RESIZE_ATOL = 0.03


def smooth_image(height=60, width=80, seed=0) -> np.ndarray:
    """A smooth random uint8 RGB picture (HWC)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((height // 10, width // 10, 3)) * 255).astype(np.uint8)
    return np.asarray(PIL.Image.fromarray(small).resize((width, height), PIL.Image.Resampling.BICUBIC)).copy()


def pixels(processor, images, **kwargs) -> np.ndarray:
    return processor(images, **kwargs)["pixel_values"].numpy()


@pytest.fixture
def processor():
    return FundusImageProcessor(size=32)


# ----------------------------------------------------------------------------- basics
def test_output_shape_and_dtype():
    processor = FundusImageProcessor()
    out = processor(PIL.Image.fromarray(smooth_image(300, 250)))
    assert set(out.keys()) == {"pixel_values"}
    assert isinstance(out["pixel_values"], torch.Tensor)
    assert out["pixel_values"].shape == (1, 3, 224, 224)
    assert out["pixel_values"].dtype == torch.float32
    batch = processor([smooth_image(50, 70, seed=i) for i in range(3)])["pixel_values"]
    assert batch.shape == (3, 3, 224, 224)
    assert not torch.equal(batch[0], batch[1])
    as_numpy = processor(smooth_image(), return_tensors="np")["pixel_values"]
    assert (
        isinstance(as_numpy, np.ndarray)
        and as_numpy.shape == (1, 3, 224, 224)
        and as_numpy.dtype == np.float32
    )


def test_normalisation_matches_hand_computation(processor):
    colour = np.array([200, 100, 50], dtype=np.uint8)
    image = np.broadcast_to(colour, (48, 64, 3)).copy()
    expected = (colour / 255.0 - MEAN) / STD  # e.g. red: (0.7843 - 0.485) / 0.229 = 1.3071
    out = pixels(processor, image)
    assert out.shape == (1, 3, 32, 32)
    for c in range(3):
        np.testing.assert_allclose(out[0, c], expected[c], atol=1e-5)
    np.testing.assert_allclose(out[0, 0, 0, 0], 1.30709, atol=1e-4)
    np.testing.assert_allclose(
        pixels(processor, image, do_normalize=False)[0, :, 5, 5], colour / 255.0, atol=1e-6
    )
    raw = pixels(processor, image, do_normalize=False, do_rescale=False)
    np.testing.assert_allclose(raw[0, :, 5, 5], colour.astype(np.float32), atol=1e-4)


def test_every_input_type_gives_the_same_result(processor, tmp_path):
    rgb = smooth_image()  # (60, 80, 3) uint8
    path = tmp_path / "fundus.png"
    PIL.Image.fromarray(rgb).save(path)
    reference = pixels(processor, PIL.Image.fromarray(rgb))

    exact = {  # 8-bit inputs all go through the same Pillow path: identical results
        "str path": str(path),
        "Path": path,
        "numpy HWC uint8": rgb,
        "numpy CHW uint8": rgb.transpose(2, 0, 1).copy(),
        "torch CHW uint8": torch.from_numpy(rgb.transpose(2, 0, 1).copy()),
        "torch HWC uint8": torch.from_numpy(rgb.copy()),
        "list": [PIL.Image.fromarray(rgb)],
        "tuple": (rgb,),
    }
    for name, image in exact.items():
        np.testing.assert_array_equal(pixels(processor, image), reference, err_msg=name)

    rgb16 = rgb.astype(np.uint16) * 257
    rgbf = rgb.astype(np.float32) / 255.0
    approx = {  # 16-bit / float inputs are resized in float: equal up to 8-bit rounding
        "numpy HWC uint16": rgb16,
        "numpy CHW uint16": rgb16.transpose(2, 0, 1).copy(),
        "numpy HWC float32": rgbf,
        "numpy CHW float64": rgbf.transpose(2, 0, 1).astype(np.float64),
        "torch CHW float32": torch.from_numpy(rgbf.transpose(2, 0, 1).copy()),
        "torch CHW float16": torch.from_numpy(rgbf.transpose(2, 0, 1).copy()).half(),
        "torch CHW uint16": torch.from_numpy(rgb16.transpose(2, 0, 1).copy()),
    }
    for name, image in approx.items():
        out = pixels(processor, image)
        assert out.shape == reference.shape, name
        np.testing.assert_allclose(out, reference, atol=RESIZE_ATOL, err_msg=name)
        assert np.abs(out - reference).mean() < 0.005, name

    batch = np.stack([rgb, smooth_image(seed=1)])
    expected = np.concatenate([reference, pixels(processor, smooth_image(seed=1))])
    np.testing.assert_array_equal(pixels(processor, batch), expected)  # BHWC numpy
    np.testing.assert_array_equal(
        pixels(processor, torch.from_numpy(batch).permute(0, 3, 1, 2)), expected
    )  # BCHW
    np.testing.assert_allclose(pixels(processor, batch.astype(np.float32) / 255), expected, atol=RESIZE_ATOL)


def test_no_resize_when_already_at_size(processor):
    rgb = smooth_image(32, 32)
    out = pixels(processor, rgb, do_normalize=False, do_rescale=False)
    np.testing.assert_array_equal(out[0], rgb.transpose(2, 0, 1).astype(np.float32))
    out_float = pixels(processor, rgb.astype(np.float32) / 255, do_normalize=False, do_rescale=False)
    np.testing.assert_allclose(out_float[0], rgb.transpose(2, 0, 1), atol=1e-3)


# ------------------------------------------------------------------------ colour modes
def _rgb01(processor, image):
    """Output on the 0..1 scale (no normalisation), shape (3, H, W)."""
    return pixels(processor, image, do_normalize=False)[0]


@pytest.mark.parametrize(
    "image",
    [
        PIL.Image.new("L", (32, 32), 100),
        np.full((32, 32), 100, dtype=np.uint8),
        np.full((32, 32, 1), 100, dtype=np.uint8),
        torch.full((1, 32, 32), 100, dtype=torch.uint8),
        np.full((32, 32), 100 * 257, dtype=np.uint16),
    ],
    ids=["PIL-L", "numpy-2D", "numpy-HW1", "torch-1HW", "numpy-2D-uint16"],
)
def test_grayscale_becomes_three_equal_channels(processor, image):
    out = _rgb01(processor, image)
    assert out.shape == (3, 32, 32)
    np.testing.assert_allclose(out, 100 / 255, atol=1e-6)


def test_alpha_is_composited_on_black(processor):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :16, 3] = 255  # opaque left half
    rgba[:, 16:, 3] = 0  # transparent right half
    for image in (PIL.Image.fromarray(rgba), rgba, torch.from_numpy(rgba).permute(2, 0, 1)):
        out = _rgb01(processor, image)
        expected = np.broadcast_to(np.array([200, 100, 50])[:, None, None] / 255, (3, 32, 16))
        np.testing.assert_allclose(out[:, :, :16], expected, atol=1e-6)
        np.testing.assert_allclose(out[:, :, 16:], 0.0, atol=1e-6)
    half = rgba.copy()
    half[..., 3] = 128
    np.testing.assert_allclose(_rgb01(processor, half)[0], 200 * 128 / 255 / 255, atol=1 / 255)
    la = PIL.Image.merge("LA", [PIL.Image.new("L", (32, 32), 90), PIL.Image.new("L", (32, 32), 0)])
    np.testing.assert_allclose(_rgb01(processor, la), 0.0, atol=1e-6)


def test_palette_image_is_expanded(processor):
    palette_image = PIL.Image.new("P", (32, 32), 1)
    palette_image.putpalette([0, 0, 0, 10, 20, 30] + [0] * (3 * 254))
    out = _rgb01(processor, palette_image)
    np.testing.assert_allclose(out[:, 3, 3], np.array([10, 20, 30]) / 255, atol=1e-6)
    palette_image.info["transparency"] = 1  # index 1 transparent -> black
    np.testing.assert_allclose(_rgb01(processor, palette_image), 0.0, atol=1e-6)


def test_sixteen_bit_images_scale_by_257(processor, tmp_path):
    full = np.full((32, 32), 65535, dtype=np.uint16)
    pil16 = PIL.Image.fromarray(full)
    assert pil16.mode.startswith("I;16")
    np.testing.assert_allclose(_rgb01(processor, pil16), 1.0, atol=1e-6)  # 65535 / 257 = 255 -> 1.0
    np.testing.assert_allclose(_rgb01(processor, full), 1.0, atol=1e-6)
    np.testing.assert_allclose(_rgb01(processor, PIL.Image.new("I", (32, 32), 65535)), 1.0, atol=1e-6)
    np.testing.assert_allclose(
        _rgb01(processor, np.full((32, 32, 3), 257 * 37, np.uint16)), 37 / 255, atol=1e-6
    )
    path = tmp_path / "sixteen.png"
    PIL.Image.fromarray(np.full((32, 32), 32896, dtype=np.uint16)).save(path)  # 32896 = 128 * 257
    np.testing.assert_allclose(_rgb01(processor, path), 128 / 255, atol=1e-6)
    # Not clipped: mid-range 16-bit values stay mid-range.
    assert 0.49 < _rgb01(processor, np.full((32, 32), 32767, np.uint16)).mean() < 0.51


def test_cmyk_and_float_modes(processor):
    np.testing.assert_allclose(
        _rgb01(processor, PIL.Image.new("CMYK", (32, 32), (0, 0, 0, 0))), 1.0, atol=1e-6
    )
    cyan = _rgb01(processor, PIL.Image.new("CMYK", (32, 32), (255, 0, 0, 0)))
    np.testing.assert_allclose(cyan[:, 0, 0], [0.0, 1.0, 1.0], atol=1e-6)
    # float 0.5 -> 127.5 on the 0..255 scale, rounded once (half to even) like the training cache's uint8
    np.testing.assert_allclose(_rgb01(processor, PIL.Image.new("F", (32, 32), 0.5)), 128 / 255, atol=1e-6)
    np.testing.assert_allclose(_rgb01(processor, PIL.Image.new("1", (32, 32), 1)), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- geometry
def test_pad_to_square_keeps_aspect_ratio_wide():
    processor = FundusImageProcessor(size=64, pad_to_square=True)
    wide = np.full((100, 200, 3), 255, dtype=np.uint8)  # 200 wide x 100 high
    out = pixels(processor, wide, do_normalize=False)[0]
    # long side 200 -> 64, short side 100 -> 32: content in rows 0..31, zero padding in rows 32..63
    np.testing.assert_allclose(out[:, :32, :], 1.0, atol=1e-6)
    np.testing.assert_array_equal(out[:, 32:, :], 0.0)
    # With normalisation the pad region is black normalised: (0 - mean) / std.
    normalised = pixels(processor, wide)[0]
    np.testing.assert_allclose(
        normalised[:, 32:, :], np.broadcast_to((-MEAN / STD)[:, None, None], (3, 32, 64))
    )
    # The content is the aspect-preserving resize of the picture.
    picture = smooth_image(100, 200)
    expected = np.asarray(PIL.Image.fromarray(picture).resize((64, 32), PIL.Image.Resampling.BICUBIC))
    got = pixels(processor, picture, do_normalize=False, do_rescale=False)[0]
    np.testing.assert_array_equal(got[:, :32, :], expected.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(got[:, 32:, :], 0.0)


def test_pad_to_square_tall_and_float_path():
    processor = FundusImageProcessor(size=64)
    tall = np.ones((200, 100, 3), dtype=np.float32)  # 100 wide x 200 high, float path
    out = pixels(processor, tall, do_normalize=False, pad_to_square=True)[0]
    np.testing.assert_allclose(out[:, :, :32], 1.0, atol=1e-5)
    np.testing.assert_array_equal(out[:, :, 32:], 0.0)
    # Without pad_to_square the image is stretched to the full square.
    np.testing.assert_allclose(pixels(processor, tall, do_normalize=False)[0], 1.0, atol=1e-5)


def _disc_image(height=100, width=120, centre=(40, 70), radius=20, value=200):
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[disc, 0] = value  # only the red channel is bright: the max-channel rule must catch it
    image[disc, 1] = (xx[disc] % 50) + 20
    return image, disc


def test_crop_to_fov_crops_to_the_disc_box():
    processor = FundusImageProcessor(size=40)
    image, disc = _disc_image()
    rows, cols = np.nonzero(disc)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 60, 50, 90)
    box = image[20:61, 50:91]  # 41 x 41 box of the disc
    expected = pixels(processor, box)
    cropped = pixels(processor, image, crop_to_fov=True)
    np.testing.assert_array_equal(cropped, expected)
    assert not np.allclose(pixels(processor, image), expected)  # without cropping: different
    # Same crop on the float (tensor) path.
    as_float = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255)
    box_float = as_float[:, 20:61, 50:91]
    np.testing.assert_array_equal(pixels(processor, as_float, crop_to_fov=True), pixels(processor, box_float))
    # Dark noise below the threshold is not part of the field of view.
    noisy = image.copy()
    noisy[0:5, 0:5] = 10  # max channel 10 is not > 10
    np.testing.assert_array_equal(pixels(processor, noisy, crop_to_fov=True), expected)
    noisy[0, 0] = 11
    assert not np.array_equal(pixels(processor, noisy, crop_to_fov=True), expected)


def test_crop_to_fov_without_any_bright_pixel_does_not_crop():
    processor = FundusImageProcessor(size=40, crop_to_fov=True)
    dark = np.zeros((50, 70, 3), dtype=np.uint8)
    dark[10:20, 10:30] = 8  # everything <= threshold
    np.testing.assert_array_equal(pixels(processor, dark), pixels(processor, dark, crop_to_fov=False))
    dark_float = torch.from_numpy(dark.transpose(2, 0, 1).astype(np.float32) / 255)
    np.testing.assert_allclose(
        pixels(processor, dark_float), pixels(processor, dark, crop_to_fov=False), atol=RESIZE_ATOL
    )


# ----------------------------------------------------------------------------- errors
def _jpeg_bytes() -> bytes:
    noise = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_truncated_jpeg_raises_value_error_with_path(processor, tmp_path):
    data = _jpeg_bytes()
    good = tmp_path / "good.jpg"
    good.write_bytes(data)
    assert pixels(processor, good).shape == (1, 3, 32, 32)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as info:
        processor(str(bad))
    assert str(bad) in str(info.value)
    with pytest.raises(ValueError, match=r"images\[1\]"):
        processor([good, bad])


def test_non_image_empty_and_missing_files(processor, tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image\n")
    with pytest.raises(ValueError, match="not an image") as info:
        processor(text_file)
    assert str(text_file) in str(info.value)

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty") as info:
        processor(str(empty))
    assert str(empty) in str(info.value)

    missing = tmp_path / "does_not_exist.png"
    with pytest.raises(FileNotFoundError) as info:
        processor(str(missing))
    assert str(missing) in str(info.value)

    with pytest.raises(ValueError, match="directory"):
        processor(str(tmp_path))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ([], "empty list"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "zero-sized"),
        (np.zeros((10, 0), dtype=np.float32), "zero-sized"),
        (PIL.Image.new("RGB", (0, 5)), "zero-sized"),
        (np.full((8, 8, 3), np.nan, dtype=np.float32), "NaN or Inf"),
        (torch.tensor([[[0.5, np.inf]]]).expand(3, 4, 2), "NaN or Inf"),
        (np.zeros((8, 8, 5), dtype=np.uint8), "channel"),
        (np.zeros((5, 8, 8), dtype=np.uint8), "channel"),
        (np.zeros((10,), dtype=np.uint8), "2-D or 3-D"),
        (np.zeros((8, 8, 3), dtype=np.int32), "unsupported dtype"),
        (torch.zeros((3, 8, 8), dtype=torch.int64), "unsupported tensor dtype"),
        (np.full((8, 8, 3), 255.0, dtype=np.float32), r"\[0, 1\]"),
        (42, "unsupported image type int"),
        (b"\x89PNG", "unsupported image type bytes"),
        (None, "No images"),
        ([np.zeros((8, 8, 3), np.uint8), [np.zeros((8, 8, 3), np.uint8)]], "nested"),
        (
            [np.zeros((32, 32, 3), np.uint8), PIL.Image.new("L", (32, 32)), 3.5],
            r"images\[2\]: unsupported image type float",
        ),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "empty batch"),
    ],
)
def test_bad_inputs_raise_value_error(processor, image, message):
    with pytest.raises(ValueError, match=message):
        processor(image)


def test_bad_arguments(processor):
    image = smooth_image()
    with pytest.raises(TypeError, match="do_center_crop"):
        processor(image, do_center_crop=True)
    with pytest.raises(ValueError, match="size"):
        processor(image, size=0)
    with pytest.raises(ValueError, match="image_std"):
        processor(image, image_std=[0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match="return_tensors"):
        processor(image, return_tensors="tf")
    with pytest.raises(ValueError, match="resample"):
        FundusImageProcessor(resample=99)
    with pytest.raises(ValueError, match="resample"):
        processor(image, resample="bicubic")


# ------------------------------------------------------------------ overrides & round trip
def test_per_call_overrides_do_not_change_the_processor(processor):
    image = smooth_image(50, 100)
    assert pixels(processor, image, size=48).shape == (1, 3, 48, 48)
    assert processor.size == 32
    padded = pixels(processor, image, pad_to_square=True)
    np.testing.assert_array_equal(padded, pixels(FundusImageProcessor(size=32, pad_to_square=True), image))
    assert processor.pad_to_square is False
    custom = pixels(processor, image, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    unnormalised = pixels(processor, image, do_normalize=False)
    np.testing.assert_allclose(custom, (unnormalised - 0.5) / 0.5, atol=1e-5)
    lanczos = pixels(processor, image, resample=PIL.Image.Resampling.LANCZOS)
    assert not np.array_equal(lanczos, pixels(processor, image))
    np.testing.assert_allclose(
        pixels(processor, image.astype(np.float32) / 255, resample=PIL.Image.Resampling.LANCZOS),
        lanczos,
        atol=RESIZE_ATOL,
    )
    assert pixels(processor, image, size={"height": 40, "width": 40}).shape == (1, 3, 40, 40)


def test_save_and_load_round_trip(tmp_path):
    processor = FundusImageProcessor(
        size=48,
        resample=PIL.Image.Resampling.BILINEAR,
        pad_to_square=True,
        crop_to_fov=True,
        fov_threshold=20,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.3, 0.4],
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == 48 and saved["resample"] == 2 and saved["pad_to_square"] is True
    assert saved["crop_to_fov"] is True and saved["fov_threshold"] == 20
    assert saved["image_mean"] == [0.5, 0.4, 0.3] and saved["image_std"] == [0.2, 0.3, 0.4]
    assert saved["image_processor_type"] == "FundusImageProcessor"

    loaded = FundusImageProcessor.from_pretrained(tmp_path)
    for name in FundusImageProcessor.valid_kwargs.__annotations__:
        assert getattr(loaded, name) == getattr(processor, name), name
    assert loaded.to_dict() == processor.to_dict()
    image, _ = _disc_image()
    np.testing.assert_array_equal(pixels(loaded, image), pixels(processor, image))
    # Defaults survive too, and from_pretrained kwargs override saved values.
    FundusImageProcessor().save_pretrained(tmp_path / "default")
    default = FundusImageProcessor.from_pretrained(tmp_path / "default", size=64)
    assert default.size == 64 and default.image_mean == (0.485, 0.456, 0.406) and default.resample == 3


# ------------------------------------------------------------------ size limits (shared with the data checks)
@pytest.mark.parametrize(("height", "width"), [(1, 1), (4, 2000), (31, 64)])
def test_images_below_min_size_are_refused_like_validation(processor, tmp_path, height, width):
    array = np.full((height, width, 3), 128, dtype=np.uint8)
    path = tmp_path / "thumb.png"
    PIL.Image.fromarray(array).save(path)
    message = rf"only {width}x{height} pixels, smaller than min_size=32 .*min_size="
    for image in (array, PIL.Image.fromarray(array), torch.from_numpy(array).permute(2, 0, 1), str(path)):
        with pytest.raises(ValueError, match=message):
            processor(image)
    with pytest.raises(ValueError, match=r"images\[1\]: image is only"):
        processor([smooth_image(), array])
    # the option lowers the threshold, per processor or per call
    small = min(height, width)
    assert pixels(FundusImageProcessor(size=8, min_size=small), array).shape == (1, 3, 8, 8)
    assert pixels(processor, array, min_size=small).shape == (1, 3, processor.size, processor.size)


def test_min_size_is_the_data_checks_threshold_and_is_validated(tmp_path):
    from retvlp.data import validation
    from retvlp.data.cache import ImageGeometry

    assert validation.DEFAULT_MIN_SIZE == image_processing_fundus.DEFAULT_MIN_SIZE == 32
    assert FundusImageProcessor().min_size == 32
    for bad in (0, -1, 2.5, True, "32"):
        with pytest.raises(ValueError, match="min_size must be a positive int"):
            FundusImageProcessor()(smooth_image(), min_size=bad)
    FundusImageProcessor(min_size=40).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["min_size"] == 40
    assert FundusImageProcessor.from_pretrained(tmp_path).min_size == 40
    # the image cache has already applied the run's own check: its processor must not add a second one
    assert ImageGeometry(size=8).image_processor().min_size == 1


def test_decompression_bomb_is_named_as_such(processor, tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    PIL.Image.fromarray(smooth_image(64, 64)).save(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses over 2 x 1000 pixels
    message = r"big\.png: decompression bomb: 4,096 pixels > limit 2,000"
    with pytest.raises(ValueError, match=message) as error:
        processor(str(path))
    assert "truncated" not in str(error.value)


def test_module_imports_only_allowed_libraries():
    """The file is shipped with checkpoints for trust_remote_code: no retvlp imports allowed."""
    tree = ast.parse(Path(image_processing_fundus.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports are not allowed in image_processing_fundus.py"
            roots.add(node.module.split(".")[0])
    assert roots <= {
        "__future__",
        "math",
        "os",
        "re",
        "collections",
        "typing",
        "numpy",
        "PIL",
        "torch",
        "transformers",
    }
