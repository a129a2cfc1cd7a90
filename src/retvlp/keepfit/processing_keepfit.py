"""Processor for KeepFIT V2: the fundus image processor at the reference preprocessing plus a BERT tokenizer.

KeepFIT's reference preprocessing (METHODS §2): the long side resized to 512 px keeping the aspect ratio, zero
padding at the bottom/right to a square, pixels scaled to [0, 1] WITHOUT mean/std normalisation; captions up
to 256 tokens. Everything else (text checks, kwargs routing, saving) is the shared `FundusVisionTextProcessor`,
which this flat folder carries as a generated copy (`processing_fundus.py`) for ``trust_remote_code`` loading.
"""

from __future__ import annotations

from .image_processing_fundus import FundusImageProcessor
from .processing_fundus import FundusVisionTextProcessor

KEEPFIT_IMAGE_SIZE = 512  # px
KEEPFIT_MAX_TEXT_LENGTH = 256  # tokens


def keepfit_image_processor(**overrides) -> FundusImageProcessor:
    """The reference preprocessing: 512 px, aspect-preserving resize + zero pad, no normalisation."""
    kwargs = dict(size=KEEPFIT_IMAGE_SIZE, pad_to_square=True, do_normalize=False)
    kwargs.update(overrides)
    return FundusImageProcessor(**kwargs)


class KeepFitProcessor(FundusVisionTextProcessor):
    r"""Wraps a :class:`FundusImageProcessor` (default: [`keepfit_image_processor`]) and a BERT tokenizer
    (Bio_ClinicalBERT, or `retvlp.tokenization.tiny_tokenizer()` offline); `max_length` defaults to 256."""

    def __init__(
        self, image_processor=None, tokenizer=None, max_length: int = KEEPFIT_MAX_TEXT_LENGTH, **kwargs
    ):
        if image_processor is None:
            image_processor = keepfit_image_processor()
        super().__init__(image_processor, tokenizer, max_length=max_length, **kwargs)


__all__ = ["KeepFitProcessor", "keepfit_image_processor"]
