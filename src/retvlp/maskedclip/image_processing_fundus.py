"""Image processor for colour fundus photographs (torch / numpy / Pillow only, no torchvision).

This module is self-contained on purpose: it is copied verbatim next to saved checkpoints so that
``AutoImageProcessor.from_pretrained(path, trust_remote_code=True)`` works without ``retvlp`` installed.
It must therefore import only the standard library, numpy, Pillow, torch and transformers.

Pipeline (per image, then batched):

1. **Decode / convert** every input to RGB on a 0..255 scale:

   * ``str`` / ``os.PathLike`` paths are opened with Pillow and fully decoded (``Image.load()``), so
     truncated or corrupt files fail here with a ``ValueError`` naming the file.
   * PIL modes: ``L`` / ``1`` are replicated to three channels; ``P`` is expanded through its palette;
     ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV`` are converted by Pillow; ``RGBA`` / ``LA`` / ``PA`` (and
     palette images with a transparency entry) are **composited on black** (``rgb * alpha / 255``),
     which matches the dark fundus background; 16-bit modes (``I;16*`` and ``I``, values 0..65535)
     are divided by 257 so that 65535 maps to exactly 255; ``F`` images are treated like float arrays
     (values in [0, 1]).
   * numpy arrays / torch tensors: 2-D (grayscale) or 3-D with 1 (gray), 2 (gray + alpha), 3 (RGB) or
     4 (RGBA) channels, channels-last (HWC) or channels-first (CHW). When both ends of the shape look
     like a channel axis (e.g. ``(3, 4, 3)``) numpy arrays are read as HWC and torch tensors as CHW.
     A 4-D array / tensor is a batch (BHWC or BCHW). dtypes: ``uint8`` (0..255), ``uint16``
     (0..65535, divided by 257), floating point in [0, 1] (multiplied by 255; NaN / Inf and values
     outside [0, 1] are rejected).

   Every decoded image must be at least ``min_size`` pixels on its shorter side (default 32, the same
   threshold as ``retvlp validate-data --min-size``): smaller inputs are thumbnails or placeholders, not
   fundus photographs, and raise a ``ValueError`` naming the size and the option. A file whose header
   claims more pixels than Pillow allows (``2 x PIL.Image.MAX_IMAGE_PIXELS``) is reported as a
   decompression bomb.

2. **Crop to the field of view** (``crop_to_fov=True``): crop to the bounding box of the pixels whose
   largest channel value is ``> fov_threshold`` (0..255 scale). If no pixel passes, nothing is cropped.

3. **Resize** (antialiased, ``resample`` is a Pillow filter, bicubic by default): to ``size x size``
   (aspect ratio not preserved), or, with ``pad_to_square=True``, so that the LONG side equals ``size``
   (aspect ratio preserved), followed by zero padding (black, i.e. pixel value 0 *before* rescaling and
   normalisation) at the bottom and right to a ``size x size`` square. 8-bit images are resized by
   Pillow; 16-bit / float images by ``torch.nn.functional.interpolate(..., antialias=True)`` (nearest,
   bilinear, bicubic) or by Pillow's float (``F``) mode for the other filters, then clamped to [0, 255].

4. **Rescale** (``x * rescale_factor``) and **normalise** (``(x - mean) / std``) in torch, once for the
   whole batch. Output: ``pixel_values`` float32 ``(B, 3, size, size)``.

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
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Pillow filters that torch.nn.functional.interpolate reproduces (antialiased where relevant).
_TORCH_MODES = {
    int(PIL.Image.Resampling.NEAREST): ("nearest-exact", False),
    int(PIL.Image.Resampling.BILINEAR): ("bilinear", True),
    int(PIL.Image.Resampling.BICUBIC): ("bicubic", True),
}
_VALID_RESAMPLE = {int(r) for r in PIL.Image.Resampling}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
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

        size = params["size"]
        items = self._flatten(images)
        uint8_buffer = None  # (B, size, size, 3) for images resized by Pillow in 8 bit
        float_items: list[tuple[int, torch.Tensor]] = []
        for index, (where, image) in enumerate(items):
            canonical = self._to_canonical(image, where)
            self._check_min_size(canonical, params["min_size"], where)
            if params["crop_to_fov"]:
                canonical = self._crop_to_fov(canonical, params["fov_threshold"])
            resized = self._resize(canonical, size, params["resample"], params["pad_to_square"])
            if isinstance(resized, PIL.Image.Image):
                if uint8_buffer is None:
                    uint8_buffer = np.zeros((len(items), size, size, 3), dtype=np.uint8)
                uint8_buffer[index, : resized.height, : resized.width] = np.asarray(resized)
            else:
                float_items.append((index, resized))

        if uint8_buffer is not None:
            batch = torch.from_numpy(uint8_buffer).permute(0, 3, 1, 2).to(torch.float32)
        else:
            batch = torch.zeros((len(items), 3, size, size), dtype=torch.float32)
        for index, tensor in float_items:
            batch[index, :, : tensor.shape[1], : tensor.shape[2]] = tensor

        if params["do_rescale"]:
            batch = batch * float(params["rescale_factor"])
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

    # ---------------------------------------------------------------- decoding
    def _to_canonical(self, image: Any, where: str) -> PIL.Image.Image | torch.Tensor:
        """Return an RGB 8-bit PIL image, or a float32 ``(3, H, W)`` tensor on the 0..255 scale."""
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            loc = f"{where} ({path})" if where else path
            pil = self._open(path, loc)
            return self._pil_to_canonical(pil, loc)
        if isinstance(image, PIL.Image.Image):
            return self._pil_to_canonical(image, where)
        if isinstance(image, torch.Tensor):
            tensor = image.detach().cpu()
            if tensor.dtype in (torch.float16, torch.bfloat16):
                tensor = tensor.to(torch.float32)
            if tensor.dtype not in (torch.uint8, torch.uint16, torch.float32, torch.float64):
                raise _fail(
                    where,
                    f"unsupported tensor dtype {tensor.dtype}; expected uint8, uint16 or float in [0, 1]",
                )
            return self._array_to_canonical(tensor.numpy(), where, prefer_channels_first=True)
        if isinstance(image, np.ndarray):
            return self._array_to_canonical(image, where, prefer_channels_first=False)
        raise _fail(
            where,
            f"unsupported image type {type(image).__name__}; expected a file path, PIL.Image.Image, "
            "numpy.ndarray or torch.Tensor (or a list of them)",
        )

    @staticmethod
    def _open(path: str, loc: str) -> PIL.Image.Image:
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
            raise ValueError(
                f"{loc}: image file is truncated or corrupt ({type(err).__name__}: {err})"
            ) from err
        return pil

    @staticmethod
    def _check_min_size(image: PIL.Image.Image | torch.Tensor, min_size: int, where: str) -> None:
        """Refuse images whose shorter side is below `min_size` (the data checks' "tiny-image")."""
        width, height = image.size if isinstance(image, PIL.Image.Image) else (image.shape[2], image.shape[1])
        if min(width, height) < min_size:
            raise _fail(
                where,
                f"image is only {width}x{height} pixels, smaller than min_size={min_size} (its shorter side "
                "must be at least that); probably a thumbnail or placeholder: pass the full image, or lower "
                "the processor's min_size option (FundusImageProcessor(min_size=...) or "
                "processor(images, min_size=...))",
            )

    def _pil_to_canonical(self, pil: PIL.Image.Image, where: str) -> PIL.Image.Image | torch.Tensor:
        if pil.width == 0 or pil.height == 0:
            raise _fail(where, f"zero-sized image ({pil.width}x{pil.height})")
        mode = pil.mode
        if mode == "RGB":
            return pil
        if mode in _SIXTEEN_BIT_MODES or mode == "F":
            return self._array_to_canonical(
                np.asarray(pil), where, prefer_channels_first=False, pil_mode=mode
            )
        if mode == "P" and "transparency" in pil.info:
            pil = pil.convert("RGBA")
            mode = "RGBA"
        if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = pil.convert("RGBA")
            canvas = PIL.Image.new("RGB", rgba.size, (0, 0, 0))
            canvas.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
            return canvas
        try:
            return pil.convert("RGB")
        except (ValueError, OSError) as err:
            raise _fail(where, f"cannot convert PIL mode {mode!r} to RGB ({err})") from err

    def _array_to_canonical(
        self, array: np.ndarray, where: str, prefer_channels_first: bool, pil_mode: str | None = None
    ) -> PIL.Image.Image | torch.Tensor:
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
            return self._pil_to_canonical(PIL.Image.fromarray(data), where)
        if (dtype.kind == "u" and dtype.itemsize == 2) or pil_mode in _SIXTEEN_BIT_MODES:
            if pil_mode == "I" and (array.min() < 0 or array.max() > 65535):
                raise _fail(where, "32-bit integer ('I' mode) image with values outside the 16-bit range")
            values = array.astype(np.float32) / 257.0
        elif np.issubdtype(dtype, np.floating):
            values = array.astype(np.float32)
            if not np.isfinite(values).all():
                raise _fail(where, "image contains NaN or Inf values")
            low, high = float(values.min()), float(values.max())
            if low < -_FLOAT_RANGE_TOL or high > 1 + _FLOAT_RANGE_TOL:
                raise _fail(
                    where,
                    f"float images must have values in [0, 1], got range [{low:.4g}, {high:.4g}] "
                    "(pass uint8 for 0..255 data)",
                )
            values = np.clip(values, 0.0, 1.0) * 255.0
        else:
            raise _fail(where, f"unsupported dtype {dtype}; expected uint8, uint16 or float in [0, 1]")

        tensor = torch.from_numpy(np.ascontiguousarray(values)).permute(2, 0, 1)
        if channels in (2, 4):  # composite on black
            tensor = tensor[:-1] * (tensor[-1:] / 255.0)
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
        return tensor.contiguous()

    # ------------------------------------------------------------- geometry
    @staticmethod
    def _crop_to_fov(
        image: PIL.Image.Image | torch.Tensor, threshold: float
    ) -> PIL.Image.Image | torch.Tensor:
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

    @staticmethod
    def _target_size(height: int, width: int, size: int, pad_to_square: bool) -> tuple[int, int]:
        if not pad_to_square:
            return size, size
        if height >= width:
            return size, max(1, min(size, round(width * size / height)))
        return max(1, min(size, round(height * size / width))), size

    def _resize(
        self, image: PIL.Image.Image | torch.Tensor, size: int, resample: int, pad_to_square: bool
    ) -> PIL.Image.Image | torch.Tensor:
        if isinstance(image, PIL.Image.Image):
            out_h, out_w = self._target_size(image.height, image.width, size, pad_to_square)
            if (image.height, image.width) == (out_h, out_w):
                return image
            return image.resize((out_w, out_h), resample=resample)
        height, width = image.shape[1:]
        out_h, out_w = self._target_size(height, width, size, pad_to_square)
        if (height, width) == (out_h, out_w):
            return image
        if resample in _TORCH_MODES:
            mode, antialias = _TORCH_MODES[resample]
            resized = F.interpolate(image[None], size=(out_h, out_w), mode=mode, antialias=antialias)[0]
        else:  # filters torch lacks (lanczos, box, hamming...): Pillow's float mode, channel by channel
            channels = [
                np.asarray(PIL.Image.fromarray(c.numpy(), mode="F").resize((out_w, out_h), resample=resample))
                for c in image
            ]
            resized = torch.from_numpy(np.stack(channels))
        return resized.clamp_(0.0, 255.0)


__all__ = ["DEFAULT_MIN_SIZE", "FundusImageProcessor"]
