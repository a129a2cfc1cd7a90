"""Sizes and limits the run config checks, importable without torch, transformers or datasets, so that a
config typo is reported before any of them loads (`training/pretrain.py` reads the config first).

`DEFAULT_MIN_SIZE` is the image processor's own threshold (`common/image_processing_fundus.py`, which is
copied next to checkpoints and cannot import this module); `tests/test_data_validation.py` checks the two agree.
"""

from __future__ import annotations

DEFAULT_MIN_SIZE = 32  # pixels, the shorter side; smaller images are refused by the checks and the processor
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit with its default Image.MAX_IMAGE_PIXELS

_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(text: str | int) -> int:
    """`"50GB"`, `"1.5 TiB"`, `"800M"`, `"0"` or an int → bytes (powers of 1000 for kB/MB/GB/TB, of 1024 for
    KiB/MiB/GiB/TiB and single letters K/M/G/T)."""
    if isinstance(text, int):
        return text
    value = str(text).strip().lower().replace(" ", "")
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(number) :]
    try:
        if unit not in _UNITS:
            raise ValueError
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise ValueError(
            f"cannot read the size {text!r}: write e.g. 50GB, 800MiB or a number of bytes"
        ) from None
