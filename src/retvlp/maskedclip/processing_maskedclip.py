"""Processor for MaskedCLIP: a :class:`FundusImageProcessor` plus a BERT WordPiece tokenizer.

Everything lives in the shared :class:`FundusVisionTextProcessor` (`processing_fundus.py`, generated from
`retvlp/common/`); this subclass keeps the name that MaskedCLIP checkpoints' ``processor_config.json`` names
(``"processor_class": "MaskedCLIPProcessor"``), so existing checkpoints load unchanged. Copied next to saved
checkpoints for ``trust_remote_code`` loading: it imports only its flat siblings.

Typical use (online, once)::

    from transformers import AutoTokenizer
    from retvlp.maskedclip import FundusImageProcessor, MaskedCLIPProcessor

    # Bio_ClinicalBERT has a CASED vocabulary: load it with AutoTokenizer, which reads its
    # tokenizer files (do_lower_case=False); do not build a default BertTokenizer (it lower-cases).
    tokenizer = AutoTokenizer.from_pretrained("emilyalsentzer/Bio_ClinicalBERT")
    processor = MaskedCLIPProcessor(image_processor=FundusImageProcessor(), tokenizer=tokenizer)
    processor.save_pretrained("my-processor")  # later: MaskedCLIPProcessor.from_pretrained("my-processor")

Offline (tests, demo), use ``retvlp.tokenization.tiny_tokenizer()`` instead of the Hub tokenizer.
"""

from __future__ import annotations

from .image_processing_fundus import FundusImageProcessor
from .processing_fundus import FundusVisionTextProcessor


class MaskedCLIPProcessor(FundusVisionTextProcessor):
    r"""Wraps a :class:`FundusImageProcessor` (default: `FundusImageProcessor()`, 224 px, ImageNet
    normalisation) and a BERT tokenizer; `max_length` defaults to 77. See :class:`FundusVisionTextProcessor`."""

    def __init__(self, image_processor=None, tokenizer=None, max_length: int = 77, **kwargs):
        if image_processor is None:
            image_processor = FundusImageProcessor()
        super().__init__(image_processor, tokenizer, max_length=max_length, **kwargs)


__all__ = ["MaskedCLIPProcessor"]
