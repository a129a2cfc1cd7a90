"""Decode and preprocess colour fundus photographs (torch / numpy / Pillow only, no torchvision).

The ONE image decode of the package. The training image cache (`retvlp.data.cache`), the data checks
(`retvlp.data.validation`, which only adds its problem reports on top) and :class:`FundusImageProcessor` all
go through :func:`decode_image` and :func:`fit_to_square`, so a file gives the same pixels in training and at
inference, bit for bit. This module is self-contained on purpose: it is copied next to saved checkpoints so
that ``AutoImageProcessor.from_pretrained(path, trust_remote_code=True)`` works without ``retvlp`` installed.
It imports only the standard library, numpy, Pillow, torch and transformers.

Pipeline (per image, then batched):

1. **Decode** (:func:`decode_image`) every input to RGB on a 0..255 scale. 8-bit sources become an 8-bit RGB
   PIL image; deeper sources (16-bit, 32-bit integer, float) become a float32 ``(3, H, W)`` tensor that is
   NOT rounded yet, so no precision is lost before the resize:

   * ``str`` / ``os.PathLike`` paths are opened with Pillow and fully decoded (``Image.load()``), so
     truncated or corrupt files fail here with a ``ValueError`` naming the file.
   * ``RGB``: as is. ``1`` / ``L``: grey replicated to three channels (``1`` gives 0 / 255). ``P``: expanded
     through its palette. ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV``: Pillow's conversion to RGB.
   * Transparency (``RGBA`` / ``LA`` / ``PA`` / ``RGBa`` / ``La``, a palette with a transparency entry,
     arrays with 2 or 4 channels) is **composited on black**, ``c * alpha / 255``, which matches the dark
     fundus background. 8-bit data is rounded to the nearest integer (exact integer arithmetic), deeper data
     stays float.
   * 16-bit (``I;16*`` modes, ``uint16`` arrays): divided by 257, so 65535 maps to exactly 255. ``I`` (32-bit
     integer) images must lie in 0..65535 and are then read as 16-bit; other ranges are refused.
   * Float (``F`` mode, e.g. float TIFF; float arrays / tensors): must be finite and lie in [0, 1] (values up
     to 1e-3 outside are clamped), then multiplied by 255. Other ranges are refused with a ``ValueError``
     naming the range and the fix; no per-image rescaling is guessed (it would change the intensities of
     every image differently).
   * numpy arrays / torch tensors: 2-D (grayscale) or 3-D with 1 (gray), 2 (gray + alpha), 3 (RGB) or
     4 (RGBA) channels, channels-last (HWC) or channels-first (CHW). When both ends of the shape look
     like a channel axis (e.g. ``(3, 4, 3)``) numpy arrays are read as HWC and torch tensors as CHW.
     A 4-D array / tensor is a batch (BHWC or BCHW). dtypes: ``uint8``, ``uint16``, floating point.

   Every decoded image must be at least ``min_size`` pixels on its shorter side (default 32, the same
   threshold as ``retvlp validate-data --min-size``): smaller inputs are thumbnails or placeholders, not
   fundus photographs, and raise a ``ValueError`` naming the size and the option. A file whose header
   claims more pixels than Pillow allows (``2 x PIL.Image.MAX_IMAGE_PIXELS``) is reported as a
   decompression bomb.

2. **Geometry** (:func:`fit_to_square`): crop to the field of view (``crop_to_fov=True``: the bounding box of
   the pixels whose largest channel value is ``> fov_threshold`` on the 0..255 scale; nothing is cropped when
   no pixel passes), then **resize** (antialiased, ``resample`` is a Pillow filter, bicubic by default) to
   ``size x size`` (aspect ratio not preserved) or, with ``pad_to_square=True``, so that the LONG side equals
   ``size``, followed by zero padding (black) at the bottom and right. 8-bit images are resized by Pillow;
   deeper images by ``torch.nn.functional.interpolate(..., antialias=True)`` (nearest, bilinear, bicubic)
   or Pillow's float (``F``) mode for the other filters. Then the image is **quantised once**: clamped to
   [0, 255] and rounded to the nearest integer (half to even), giving ``(size, size, 3)`` ``uint8`` — what
   the training cache stores, and what the processor continues from.

3. **Rescale** (``x * rescale_factor``, computed as ``x / 255`` for the default ``1/255`` so that it matches the
   training batches bit for bit) and **normalise** (``(x - mean) / std``) in torch, once for the whole batch.
   Output: ``pixel_values`` float32 ``(B, 3, size, size)``.

Invalid inputs raise ``ValueError`` with the reason (and the file path for file inputs, the list index
for list inputs); a missing file raises ``FileNotFoundError`` naming the path.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import PIL.Image
import PIL.ImageChops
import torch
import torch.nn.functional as F
from transformers import BaseImageProcessor, BatchFeature

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Pillow filters that torch.nn.functional.interpolate reproduces (antialiased where relevant).
_TORCH_MODES = {
    int(PIL.Image.Resampling.NEAREST): ("nearest-exact", False),
    int(PIL.Image.Resampling.BILINEAR): ("bilinear", True),
    int(PIL.Image.Resampling.BICUBIC): ("bicubic", True),
}
_VALID_RESAMPLE = {int(r) for r in PIL.Image.Resampling}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Tolerance when checking that float images lie in [0, 1] (values inside it are clamped).
_FLOAT_RANGE_TOL = 1e-3
# Smallest allowed shorter side, in pixels. `retvlp.data.validation` imports this constant (the data checks and
# the processor must agree on what is "tiny"); it is defined here because this module imports no retvlp.
DEFAULT_MIN_SIZE = 32


class FundusImagesKwargs(TypedDict, total=False):
    """Per-call keyword arguments of :class:`FundusImageProcessor` (also its saved attributes)."""

    size: int | None
    resample: int | None
    pad_to_square: bool | None
    crop_to_fov: bool | None
    fov_threshold: float | int | None
    min_size: int | None
    do_rescale: bool | None
    rescale_factor: float | int | None
    do_normalize: bool | None
    image_mean: float | list[float] | tuple[float, ...] | None
    image_std: float | list[float] | tuple[float, ...] | None


def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}" if where else message)


def _bomb_message(error: Exception) -> str:
    """Pillow's DecompressionBombError, said plainly: its message holds the pixel count and the limit."""
    numbers = [int(n) for n in re.findall(r"(\d+) pixels", str(error))]
    limit = 2 * PIL.Image.MAX_IMAGE_PIXELS if PIL.Image.MAX_IMAGE_PIXELS else None
    pixels = f"{numbers[0]:,} pixels" if numbers else "too many pixels"
    bound = f"{limit:,}" if limit else "Pillow's limit"
    return (
        f"decompression bomb: {pixels} > limit {bound} (2 x PIL.Image.MAX_IMAGE_PIXELS); a corrupt header or a "
        "malicious file: downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine"
    )


# ------------------------------------------------------------------------------------------------ decoding
DecodedImage = PIL.Image.Image | torch.Tensor  # 8-bit RGB PIL image, or float32 (3, H, W) on 0..255


def open_image(path: str | os.PathLike, where: str = "") -> PIL.Image.Image:
    """Open and fully decode an image file (stored mode, nothing converted); errors name the file."""
    path = os.fspath(path)
    loc = f"{where} ({path})" if where else path
    if not os.path.exists(path):
        raise FileNotFoundError(f"Image file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{loc}: is a directory, not an image file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{loc}: image file is empty (0 bytes)")
    try:
        with PIL.Image.open(path) as pil:
            pil.load()  # force a full decode so that truncated files fail here
    except PIL.Image.DecompressionBombError as err:
        raise ValueError(f"{loc}: {_bomb_message(err)}") from err
    except PIL.UnidentifiedImageError as err:
        raise ValueError(f"{loc}: not an image file, or an unsupported image format") from err
    except Exception as err:  # truncated / corrupt data: OSError, SyntaxError, struct.error...
        raise ValueError(f"{loc}: image file is truncated or corrupt ({type(err).__name__}: {err})") from err
    return pil


def decode_image(image: Any, where: str = "") -> DecodedImage:
    """The canonical decode (module docstring, step 1): a path, PIL image, numpy array or torch tensor → an
    8-bit RGB PIL image (8-bit sources) or a float32 ``(3, H, W)`` tensor on the 0..255 scale (deeper sources).
    `where` prefixes error messages (a list index, a file name)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        loc = f"{where} ({path})" if where else path
        return _decode_pil(open_image(path, where), loc)
    if isinstance(image, PIL.Image.Image):
        return _decode_pil(image, where)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.to(torch.float32)
        if tensor.dtype not in (torch.uint8, torch.uint16, torch.float32, torch.float64):
            raise _fail(
                where, f"unsupported tensor dtype {tensor.dtype}; expected uint8, uint16 or float in [0, 1]"
            )
        return _decode_array(tensor.numpy(), where, prefer_channels_first=True)
    if isinstance(image, np.ndarray):
        return _decode_array(image, where, prefer_channels_first=False)
    raise _fail(
        where,
        f"unsupported image type {type(image).__name__}; expected a file path, PIL.Image.Image, "
        "numpy.ndarray or torch.Tensor (or a list of them)",
    )


def decode_note(image: PIL.Image.Image) -> str | None:
    """What :func:`decode_image` does to a PIL image of this mode, in words (None for RGB: nothing)."""
    mode = image.mode
    if mode == "RGB":
        return None
    if mode in _SIXTEEN_BIT_MODES:
        return "16-bit grey scaled to 0..255 (/ 257), kept in float until resized, then rounded once"
    if mode == "I":
        return "32-bit integer grey read as 16-bit (/ 257), kept in float until resized, then rounded once"
    if mode == "F":
        return "float grey in [0, 1] scaled by 255, kept in float until resized, then rounded once"
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return "transparency composited on black (value * alpha / 255, rounded)"
    if mode in ("1", "L"):
        return "grey replicated to three channels"
    if mode == "P":
        return "expanded through its palette"
    return "converted with Pillow"


def _composite_uint8(rgba: np.ndarray) -> np.ndarray:
    """`(H, W, 4)` uint8 → `(H, W, 3)` uint8 composited on black: round(c * a / 255), exactly (c * a / 255 is
    never halfway between two integers, 255 being odd)."""
    colour = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    return ((colour * alpha + 127) // 255).astype(np.uint8)


def _decode_pil(pil: PIL.Image.Image, where: str) -> DecodedImage:
    if pil.width == 0 or pil.height == 0:
        raise _fail(where, f"zero-sized image ({pil.width}x{pil.height})")
    mode = pil.mode
    if mode == "RGB":
        return pil
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _decode_array(np.asarray(pil), where, prefer_channels_first=False, pil_mode=mode)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in pil.info):
        rgba = np.asarray(pil.convert("RGBA"))
        return PIL.Image.fromarray(_composite_uint8(rgba), "RGB")
    try:
        return pil.convert("RGB")
    except (ValueError, OSError) as err:
        raise _fail(where, f"cannot convert PIL mode {mode!r} to RGB ({err})") from err


def _float_values(array: np.ndarray, where: str) -> np.ndarray:
    """Float data in [0, 1] → float32 on 0..255; anything else is refused (no guessed rescaling)."""
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise _fail(
            where, "image contains NaN or Inf values; replace them (e.g. with 0) or re-export the image"
        )
    low, high = float(values.min()), float(values.max())
    if low < -_FLOAT_RANGE_TOL or high > 1 + _FLOAT_RANGE_TOL:
        raise _fail(
            where,
            f"float images must have values in [0, 1], got range [{low:.4g}, {high:.4g}]; scale them to "
            "[0, 1] (e.g. divide 0..255 data by 255), or pass / re-export the image as 8-bit or 16-bit integers",
        )
    return np.clip(values, 0.0, 1.0) * 255.0


def _decode_array(
    array: np.ndarray, where: str, prefer_channels_first: bool, pil_mode: str | None = None
) -> DecodedImage:
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        first, last = array.shape[0] in (1, 2, 3, 4), array.shape[-1] in (1, 2, 3, 4)
        if first and (prefer_channels_first or not last):
            array = np.moveaxis(array, 0, -1)
        elif not last:
            raise _fail(
                where,
                f"unsupported channel count in array of shape {tuple(array.shape)}; expected 1 (gray), "
                "2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, channels-first or channels-last",
            )
    else:
        raise _fail(
            where, f"expected a 2-D or 3-D image (or a 4-D batch), got {array.ndim}-D shape {array.shape}"
        )
    height, width, channels = array.shape
    if height == 0 or width == 0:
        raise _fail(where, f"zero-sized image (height={height}, width={width})")

    dtype = array.dtype
    if dtype == np.uint8:  # Pillow infers L / LA / RGB / RGBA from the shape
        data = np.ascontiguousarray(array[:, :, 0] if channels == 1 else array)
        return _decode_pil(PIL.Image.fromarray(data), where)
    if pil_mode == "I":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise _fail(
                where,
                f"32-bit integer ('I' mode) image with values in [{low}, {high}], outside the 16-bit range "
                "0..65535; re-export it as an 8-bit or 16-bit image (or as float in [0, 1])",
            )
        values = array.astype(np.float32) / 257.0
    elif (dtype.kind == "u" and dtype.itemsize == 2) or pil_mode in _SIXTEEN_BIT_MODES:
        values = array.astype(np.float32) / 257.0
    elif np.issubdtype(dtype, np.floating):
        values = _float_values(array, where)
    else:
        raise _fail(where, f"unsupported dtype {dtype}; expected uint8, uint16 or float in [0, 1]")

    tensor = torch.from_numpy(np.ascontiguousarray(values)).permute(2, 0, 1)
    if channels in (2, 4):  # composite on black
        tensor = tensor[:-1] * (tensor[-1:] / 255.0)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor.contiguous()


def image_size(image: DecodedImage) -> tuple[int, int]:
    """(width, height) of a decoded image."""
    return image.size if isinstance(image, PIL.Image.Image) else (int(image.shape[2]), int(image.shape[1]))


# ------------------------------------------------------------------------------------------------ geometry
def crop_to_field_of_view(image: DecodedImage, threshold: float) -> DecodedImage:
    """Crop to the bounding box of the pixels whose largest channel is `> threshold` (0..255 scale)."""
    if isinstance(image, PIL.Image.Image):
        r, g, b = image.split()
        brightest = PIL.ImageChops.lighter(PIL.ImageChops.lighter(r, g), b)
        mask = brightest.point([255 if v > threshold else 0 for v in range(256)])
        box = mask.getbbox()
        return image if box is None else image.crop(box)
    mask = image.amax(dim=0) > threshold
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    if rows.numel() == 0:
        return image
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return image[:, int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1]


def target_size(height: int, width: int, size: int, pad_to_square: bool) -> tuple[int, int]:
    """(height, width) of the resized content before padding."""
    if not pad_to_square:
        return size, size
    if height >= width:
        return size, max(1, min(size, round(width * size / height)))
    return max(1, min(size, round(height * size / width))), size


def resize(image: DecodedImage, size: int, resample: int, pad_to_square: bool) -> DecodedImage:
    """Resize to the target size (8-bit by Pillow, float by torch or Pillow's ``F`` mode), not yet padded."""
    if isinstance(image, PIL.Image.Image):
        out_h, out_w = target_size(image.height, image.width, size, pad_to_square)
        if (image.height, image.width) == (out_h, out_w):
            return image
        return image.resize((out_w, out_h), resample=resample)
    height, width = image.shape[1:]
    out_h, out_w = target_size(height, width, size, pad_to_square)
    if (height, width) == (out_h, out_w):
        return image
    if resample in _TORCH_MODES:
        mode, antialias = _TORCH_MODES[resample]
        return F.interpolate(image[None], size=(out_h, out_w), mode=mode, antialias=antialias)[0]
    # filters torch lacks (lanczos, box, hamming...): Pillow's float mode, channel by channel
    channels = [
        np.asarray(PIL.Image.fromarray(c.numpy(), mode="F").resize((out_w, out_h), resample=resample))
        for c in image
    ]
    return torch.from_numpy(np.stack(channels))


def quantize(image: DecodedImage) -> np.ndarray:
    """The single rounding step: a decoded (resized) image → `(H, W, 3)` uint8 (float: clamped to [0, 255],
    rounded half to even)."""
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image, dtype=np.uint8)
    return torch.round(image.clamp(0.0, 255.0)).to(torch.uint8).permute(1, 2, 0).numpy()


def fit_to_square(
    image: DecodedImage,
    *,
    size: int,
    resample: int = int(PIL.Image.Resampling.BICUBIC),
    pad_to_square: bool = False,
    crop_to_fov: bool = False,
    fov_threshold: float = 10,
) -> np.ndarray:
    """The canonical geometry (module docstring, step 2): a decoded image → `(size, size, 3)` uint8 (crop to
    the field of view, resize, round once, zero-pad bottom / right). The training cache stores exactly this."""
    if crop_to_fov:
        image = crop_to_field_of_view(image, fov_threshold)
    pixels = quantize(resize(image, size, int(resample), pad_to_square))
    if pixels.shape[:2] == (size, size):
        return np.ascontiguousarray(pixels)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[: pixels.shape[0], : pixels.shape[1]] = pixels
    return out


class FundusImageProcessor(BaseImageProcessor):
    r"""Preprocess colour fundus photographs into ``pixel_values`` (see the module docstring for details).

    Args:
        size (`int`, *optional*, defaults to 224):
            Side of the square output, in pixels.
        resample (`int` / `PIL.Image.Resampling`, *optional*, defaults to `PIL.Image.Resampling.BICUBIC`):
            Pillow resampling filter (antialiased).
        pad_to_square (`bool`, *optional*, defaults to `False`):
            Resize so the long side equals `size` (keeping the aspect ratio), then zero-pad bottom/right to
            a square (the KeepFIT reference preprocessing). When `False` the image is resized to
            `size x size` directly.
        crop_to_fov (`bool`, *optional*, defaults to `False`):
            Crop to the bounding box of the circular field of view before resizing.
        fov_threshold (`float`, *optional*, defaults to 10):
            A pixel belongs to the field of view when its largest channel value (0..255 scale) is larger.
        min_size (`int`, *optional*, defaults to 32):
            Smallest allowed shorter side of an input image, in pixels (checked before any crop or resize);
            smaller images raise a `ValueError`. Same default as the data checks (`retvlp validate-data`).
        do_rescale (`bool`, *optional*, defaults to `True`):
            Multiply the 0..255 values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Rescaling factor.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Normalise with `image_mean` / `image_std`.
        image_mean (`float` or `list[float]`, *optional*, defaults to the ImageNet mean):
            Per-channel mean (1 or 3 values).
        image_std (`float` or `list[float]`, *optional*, defaults to the ImageNet std):
            Per-channel standard deviation (1 or 3 values, non-zero).

    Every argument can be overridden per call: ``processor(images, size=448, pad_to_square=True)``.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = FundusImagesKwargs

    # Class-level defaults (used by `_set_attributes` for arguments left to `None`).
    size = 224
    resample = int(PIL.Image.Resampling.BICUBIC)
    pad_to_square = False
    crop_to_fov = False
    fov_threshold = 10
    min_size = DEFAULT_MIN_SIZE
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD

    def __init__(
        self,
        size: int = 224,
        resample: int = PIL.Image.Resampling.BICUBIC,
        pad_to_square: bool = False,
        crop_to_fov: bool = False,
        fov_threshold: float = 10,
        min_size: int = DEFAULT_MIN_SIZE,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        **kwargs,
    ):
        # Unknown keys (e.g. `image_processor_type`, `auto_map` from a saved file) become plain attributes.
        super().__init__(**kwargs)
        self._set_attributes(
            size=size,
            resample=resample,
            pad_to_square=pad_to_square,
            crop_to_fov=crop_to_fov,
            fov_threshold=fov_threshold,
            min_size=min_size,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
        )

    # ------------------------------------------------------------------ kwargs
    def _standardize_kwargs(self, **kwargs) -> dict[str, Any]:
        """Validate and bring the processing arguments to canonical form (int size, tuple mean/std...)."""
        out = dict(kwargs)
        if "size" in out and out["size"] is not None:
            out["size"] = self._standardize_size(out["size"])
        if "resample" in out and out["resample"] is not None:
            resample = out["resample"]
            if (
                isinstance(resample, bool)
                or not isinstance(resample, (int, np.integer))
                or int(resample) not in _VALID_RESAMPLE
            ):
                raise ValueError(f"resample must be a PIL.Image.Resampling filter, got {resample!r}")
            out["resample"] = int(resample)
        if "min_size" in out and out["min_size"] is not None:
            min_size = out["min_size"]
            if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
                raise ValueError(f"min_size must be a positive int (pixels), got {min_size!r}")
            out["min_size"] = int(min_size)
        for key in ("fov_threshold", "rescale_factor"):
            value = out.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"{key} must be a finite number, got {value!r}")
                if key == "rescale_factor" and value <= 0:
                    raise ValueError(f"rescale_factor must be positive, got {value!r}")
        for key in ("image_mean", "image_std"):
            value = out.get(key)
            if value is None:
                continue
            values = [value] if isinstance(value, (int, float)) else list(value)
            if len(values) not in (1, 3) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
            ):
                raise ValueError(f"{key} must be one or three finite numbers, got {value!r}")
            if key == "image_std" and any(v == 0 for v in values):
                raise ValueError(f"image_std must not contain zeros, got {value!r}")
            out[key] = tuple(float(v) for v in values)
        return out

    @staticmethod
    def _standardize_size(size: Any) -> int:
        if isinstance(size, dict):
            if set(size) == {"height", "width"} and size["height"] == size["width"]:
                size = size["height"]
            elif set(size) == {"shortest_edge"}:
                size = size["shortest_edge"]
            else:
                raise ValueError(f"size must be an int (square side) or a square size dict, got {size!r}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        return int(size)

    def _resolve_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        names = list(self.valid_kwargs.__annotations__)
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.preprocess got unexpected keyword argument(s) {unknown}; valid: {names}"
            )
        params = {name: getattr(self, name, None) for name in names}
        params.update({k: v for k, v in kwargs.items() if v is not None})
        params = self._standardize_kwargs(**params)
        for name in names:
            if params.get(name) is None:
                raise ValueError(f"{name} must be set, got None")
        return params

    # -------------------------------------------------------------- entry points
    def __call__(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Same as :meth:`preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Preprocess one image or a batch of images.

        Args:
            images: a path (``str`` / ``os.PathLike``), a ``PIL.Image.Image``, a numpy array or torch tensor
                (2-D, HWC, CHW), a list / tuple of those, or a 4-D batch array / tensor (BHWC or BCHW).
            return_tensors: ``"pt"`` (default) for a torch tensor, ``"np"`` for a numpy array, ``None`` for a
                list of per-image ``(3, size, size)`` numpy arrays.
            **kwargs: per-call overrides of the constructor arguments (see :class:`FundusImagesKwargs`).

        Returns:
            `BatchFeature` with ``pixel_values`` float32 of shape ``(B, 3, size, size)``.
        """
        params = self._resolve_kwargs(kwargs)
        return_tensors = getattr(return_tensors, "value", return_tensors)
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")

        items = self._flatten(images)
        size = params["size"]
        buffer = np.zeros((len(items), size, size, 3), dtype=np.uint8)
        for index, (where, image) in enumerate(items):
            buffer[index] = self._to_uint8(image, where, params)
        batch = torch.from_numpy(buffer).permute(0, 3, 1, 2).to(torch.float32)

        if params["do_rescale"]:
            factor = float(params["rescale_factor"])
            divisor = 1.0 / factor
            # x / 255 rather than x * (1/255): the two differ in the last bit for half the 8-bit values, and
            # the training batches (read from the uint8 cache) divide.
            batch = batch / divisor if divisor.is_integer() else batch * factor
        if params["do_normalize"]:
            mean = torch.tensor(params["image_mean"], dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(params["image_std"], dtype=torch.float32).view(-1, 1, 1)
            batch = (batch - mean) / std
        batch = batch.contiguous()

        if return_tensors == "pt":
            pixel_values: Any = batch
        elif return_tensors == "np":
            pixel_values = batch.numpy()
        else:
            pixel_values = list(batch.numpy())
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=None)

    def to_uint8(self, image: Any, where: str = "", **kwargs) -> np.ndarray:
        """One image → `(size, size, 3)` uint8 before rescaling and normalisation: :func:`decode_image`, the
        `min_size` check, then :func:`fit_to_square` (what the training cache stores for the same file).
        `kwargs`: per-call overrides, as for :meth:`preprocess`."""
        return self._to_uint8(image, where, self._resolve_kwargs(kwargs))

    def _to_uint8(self, image: Any, where: str, params: dict[str, Any]) -> np.ndarray:
        decoded = decode_image(image, where)
        self._check_min_size(decoded, params["min_size"], where)
        return fit_to_square(
            decoded,
            size=params["size"],
            resample=params["resample"],
            pad_to_square=params["pad_to_square"],
            crop_to_fov=params["crop_to_fov"],
            fov_threshold=params["fov_threshold"],
        )

    # ------------------------------------------------------------- input layout
    @staticmethod
    def _is_array(x: Any) -> bool:
        return isinstance(x, (np.ndarray, torch.Tensor))

    def _flatten(self, images: Any) -> list[tuple[str, Any]]:
        """Return ``[(location for error messages, single image), ...]``."""
        if images is None:
            raise ValueError("No images provided (got None)")
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError("No images provided: got an empty list")
            items = []
            for i, image in enumerate(images):
                where = f"images[{i}]"
                if isinstance(image, (list, tuple)):
                    raise _fail(where, "nested lists of images are not supported; pass a flat list")
                if self._is_array(image) and image.ndim == 4:
                    raise _fail(where, "4-D batches inside a list are not supported; pass the batch itself")
                items.append((where, image))
            return items
        if self._is_array(images) and images.ndim == 4:
            if images.shape[0] == 0:
                raise ValueError(f"No images provided: got an empty batch of shape {tuple(images.shape)}")
            return [(f"images[{i}]", images[i]) for i in range(images.shape[0])]
        return [("", images)]

    @staticmethod
    def _check_min_size(image: DecodedImage, min_size: int, where: str) -> None:
        """Refuse images whose shorter side is below `min_size` (the data checks' "tiny-image")."""
        width, height = image_size(image)
        if min(width, height) < min_size:
            raise _fail(
                where,
                f"image is only {width}x{height} pixels, smaller than min_size={min_size} (its shorter side "
                "must be at least that); probably a thumbnail or placeholder: pass the full image, or lower "
                "the processor's min_size option (FundusImageProcessor(min_size=...) or "
                "processor(images, min_size=...))",
            )


__all__ = [
    "DEFAULT_MIN_SIZE",
    "FundusImageProcessor",
    "crop_to_field_of_view",
    "decode_image",
    "decode_note",
    "fit_to_square",
    "open_image",
    "quantize",
    "resize",
]
