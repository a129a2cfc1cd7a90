"""One canonical image decode: a file sent through the training cache (decode, check, resize, store uint8, read,
normalise as the step batches do) and through `FundusImageProcessor` gives IDENTICAL tensors, for every image
mode a fundus collection may hold (16-bit PNG, float TIFF / float arrays, palette, CMYK, RGBA, greyscale...),
and values the decode refuses are refused by both paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from retvlp.common.image_processing_fundus import FundusImageProcessor, decode_image, fit_to_square
from retvlp.data.cache import CACHE_FORMAT_VERSION, ImageGeometry, build_image_cache, read_pixels
from retvlp.data.manifest import HFImageRef, ManifestRecord

try:  # the step batches' normalisation (moved out of training/data.py by the data-layer split)
    from retvlp.data.transforms import augment_and_normalize
except ImportError:  # pragma: no cover - before the split
    from retvlp.training.data import augment_and_normalize

HEIGHT, WIDTH = 44, 56


def _fundus(seed: int = 0) -> np.ndarray:
    """A float picture in [0, 1] (HEIGHT, WIDTH, 3): a bright disc with smooth detail on a black background,
    so that resizing, cropping to the field of view and sub-8-bit precision all matter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    disc = ((yy - HEIGHT / 2) ** 2 + (xx - WIDTH / 2 - 3) ** 2) < (HEIGHT / 2 - 3) ** 2
    base = (
        0.25 + 0.5 * np.sin(xx[..., None] / 5.0 + np.arange(3)) ** 2 + 0.05 * rng.random((HEIGHT, WIDTH, 3))
    )
    return np.clip(base * disc[..., None], 0.0, 1.0)


def _grey(seed: int = 0) -> np.ndarray:
    return _fundus(seed).mean(axis=2)


def _write_inputs(folder) -> dict[str, object]:
    """name -> what the processor gets (a path, or an array for the float-array case)."""
    rgb8 = np.rint(_fundus(1) * 255).astype(np.uint8)
    grey = _grey(2)
    inputs: dict[str, object] = {}

    def save(name, image, **kwargs):
        path = folder / name
        image.save(path, **kwargs)
        inputs[name] = str(path)

    save("rgb.png", PIL.Image.fromarray(rgb8))
    save("grey_l.png", PIL.Image.fromarray(np.rint(grey * 255).astype(np.uint8), "L"))
    save("bilevel.png", PIL.Image.fromarray(grey > 0.3).convert("1"))
    # 16-bit: values that are not multiples of 257, so the precision below 8 bits is there to keep
    save("grey_16bit.png", PIL.Image.fromarray(np.rint(grey * 65535).astype(np.uint16)))
    save("grey_int32.tiff", PIL.Image.fromarray(np.rint(grey * 65535).astype(np.int32), "I"))
    save("grey_float32.tiff", PIL.Image.fromarray(grey.astype(np.float32), "F"))
    palette = PIL.Image.fromarray(rgb8).quantize(colors=32)
    assert palette.mode == "P"
    save("palette.png", palette)
    palette.info["transparency"] = 0
    save("palette_transparent.png", palette, transparency=0)
    cmyk = PIL.Image.fromarray(rgb8).convert("CMYK")
    save("cmyk.jpg", cmyk, quality=95)
    save("cmyk.tiff", cmyk)
    alpha = np.rint(np.linspace(0, 255, WIDTH))[None, :].repeat(HEIGHT, 0).astype(np.uint8)
    save("rgba.png", PIL.Image.fromarray(np.dstack([rgb8, alpha]), "RGBA"))
    save("grey_alpha.png", PIL.Image.fromarray(np.dstack([rgb8[..., 0], alpha]), "LA"))
    return inputs


def _records(paths: list[str]) -> list[ManifestRecord]:
    return [
        ManifestRecord(
            image=path, text=None, labels=(), group=None, source="images.csv", row=i, role="unpaired"
        )
        for i, path in enumerate(paths, 1)
    ]


GEOMETRIES = {
    "square-bicubic": dict(size=32),
    "pad-crop-bilinear": dict(
        size=40, pad_to_square=True, crop_to_fov=True, resample=PIL.Image.Resampling.BILINEAR
    ),
    "upscale-lanczos": dict(size=64, resample=PIL.Image.Resampling.LANCZOS),  # Pillow's F mode for float data
    "nearest": dict(size=24, resample=PIL.Image.Resampling.NEAREST),
}
NORMALISATIONS = {"imagenet": dict(do_normalize=True), "keepfit-none": dict(do_normalize=False)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return _write_inputs(tmp_path_factory.mktemp("modes"))


def _normalisation(processor: FundusImageProcessor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the step batches apply after /255 (`training.data.image_normalization`)."""
    if not processor.do_normalize:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


@pytest.mark.parametrize("normalisation", list(NORMALISATIONS))
@pytest.mark.parametrize("geometry_name", list(GEOMETRIES))
def test_training_cache_and_processor_give_identical_tensors(inputs, tmp_path, geometry_name, normalisation):
    processor = FundusImageProcessor(**GEOMETRIES[geometry_name], **NORMALISATIONS[normalisation])
    geometry = ImageGeometry.from_image_processor(processor)
    names = list(inputs)
    cache = build_image_cache(
        _records([inputs[name] for name in names]),
        geometry,
        tmp_path / "cache",
        num_proc=1,
        show_progress=False,
    )
    assert [p for p in cache.problems if p.severity == "error"] == []
    assert all(cache.dataset["ok"])
    mean, std = _normalisation(processor)
    trained = augment_and_normalize(read_pixels(cache.dataset, range(len(names))), None, None, mean, std)
    inferred = processor(images=[inputs[name] for name in names])["pixel_values"]
    assert trained.dtype == inferred.dtype == torch.float32 and trained.shape == inferred.shape
    for index, name in enumerate(names):
        assert torch.equal(trained[index], inferred[index]), f"{name}: training and inference pixels differ"
        # the same file as an already opened PIL image
        with PIL.Image.open(inputs[name]) as opened:
            opened.load()
            assert torch.equal(processor(images=opened)["pixel_values"][0], inferred[index]), name


def test_float_and_16_bit_arrays_match_the_cached_files(inputs, tmp_path):
    """The cache reads files; the same values handed to the processor as numpy arrays / tensors (float grey,
    float RGB, uint16) give the same tensors as the cached float TIFF / 16-bit PNG."""
    processor = FundusImageProcessor(size=32, crop_to_fov=True)
    geometry = ImageGeometry.from_image_processor(processor)
    paths = [inputs["grey_float32.tiff"], inputs["grey_16bit.png"]]
    cache = build_image_cache(_records(paths), geometry, tmp_path / "cache", num_proc=1, show_progress=False)
    mean, std = _normalisation(processor)
    trained = augment_and_normalize(read_pixels(cache.dataset, [0, 1]), None, None, mean, std)

    grey = np.asarray(PIL.Image.open(inputs["grey_float32.tiff"]))
    assert grey.dtype == np.float32
    for array in (grey, np.repeat(grey[..., None], 3, axis=2), torch.from_numpy(grey.copy())[None]):
        assert torch.equal(processor(images=array)["pixel_values"][0], trained[0])
    sixteen = np.asarray(PIL.Image.open(inputs["grey_16bit.png"])).astype(np.uint16)
    assert torch.equal(processor(images=sixteen)["pixel_values"][0], trained[1])
    # and the decode + geometry functions themselves are what the cache stored
    stored = read_pixels(cache.dataset, [0])[0]
    assert np.array_equal(geometry.fit(decode_image(grey)), stored)
    assert np.array_equal(fit_to_square(decode_image(grey), size=32, crop_to_fov=True), stored)


def test_hugging_face_dataset_rows_match_the_processor(inputs, tmp_path):
    """Records pointing into a `datasets.Dataset` (encoded bytes, or images the dataset decodes itself) go
    through the same decode: the cached pixels equal the processor's for the same files."""
    import datasets

    names = ["grey_16bit.png", "grey_float32.tiff", "rgba.png", "cmyk.jpg", "palette_transparent.png"]
    encoded = [{"bytes": Path(inputs[name]).read_bytes(), "path": None} for name in names]
    processor = FundusImageProcessor(size=32, pad_to_square=True)
    expected = processor(images=[inputs[name] for name in names])["pixel_values"]
    mean, std = _normalisation(processor)
    for decode in (False, True):
        dataset = datasets.Dataset.from_dict(
            {"image": encoded}, features=datasets.Features({"image": datasets.Image(decode=decode)})
        )
        records = [
            ManifestRecord(
                image=HFImageRef(dataset, i, "image"),
                text=None,
                labels=(),
                group=None,
                source="hf:x",
                row=i + 1,
                role="unpaired",
            )
            for i in range(len(names))
        ]
        cache = build_image_cache(
            records,
            ImageGeometry.from_image_processor(processor),
            tmp_path / f"cache{decode}",
            num_proc=1,
            show_progress=False,
        )
        assert all(cache.dataset["ok"]), cache.problems
        trained = augment_and_normalize(read_pixels(cache.dataset, range(len(names))), None, None, mean, std)
        assert torch.equal(trained, expected), f"decode={decode}"


def test_deep_images_are_rounded_once_after_the_resize(tmp_path):
    """16-bit data is resized in float and rounded once: detail below 8 bits survives a downscale (rounding
    to uint8 first, the old cache path, loses it)."""
    values = np.zeros((64, 64), np.uint16)
    values[:, 0::2] = 257 * 100 + 100  # 100.39 -> 100 when rounded first
    values[:, 1::2] = 257 * 100 + 200  # 100.78 -> 101 when rounded first
    processor = FundusImageProcessor(
        size=32, resample=PIL.Image.Resampling.BOX, do_rescale=False, do_normalize=False
    )
    out = processor(images=values)["pixel_values"][0]
    assert torch.all(out == 101)  # mean 100.58 rounds to 101; rounding first gives (100 + 101) / 2 = 100.5
    assert torch.equal(out, out.round())  # the processor's values are the cache's uint8 levels


def test_out_of_range_values_are_refused_by_both_paths(tmp_path):
    float255 = tmp_path / "float_0_255.tiff"
    PIL.Image.fromarray((_grey(3) * 255).astype(np.float32), "F").save(float255)
    negative = tmp_path / "int_negative.tiff"
    PIL.Image.fromarray((np.rint(_grey(4) * 1000) - 10).astype(np.int32), "I").save(negative)
    good = tmp_path / "good.png"
    PIL.Image.fromarray(np.rint(_fundus(5) * 255).astype(np.uint8)).save(good)

    cache = build_image_cache(
        _records([str(float255), str(negative), str(good)]),
        ImageGeometry(size=32),
        tmp_path / "cache",
        num_proc=1,
        show_progress=False,
    )
    assert list(cache.dataset["ok"]) == [False, False, True]
    errors = {p.image: p for p in cache.problems if p.severity == "error"}
    assert set(errors) == {str(float255), str(negative)}
    assert all(p.kind == "unreadable-image" and p.source == "images.csv" for p in errors.values())
    assert "float images must have values in [0, 1], got range [0, " in errors[str(float255)].message
    assert "outside the 16-bit range 0..65535" in errors[str(negative)].message

    processor = FundusImageProcessor(size=32)
    with pytest.raises(ValueError, match=r"float_0_255\.tiff.*values in \[0, 1\]"):
        processor(images=str(float255))
    with pytest.raises(ValueError, match=r"int_negative\.tiff.*outside the 16-bit range"):
        processor(images=str(negative))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        processor(images=_fundus(6) * 255)


def test_cache_format_version_was_bumped_for_the_unified_decode():
    assert CACHE_FORMAT_VERSION >= 2
