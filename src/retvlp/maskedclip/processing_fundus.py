# Generated from src/retvlp/common/processing_fundus.py by utils/check_copies.py — do not edit;
# edit the source and run `python utils/check_copies.py --fix`.
"""The fundus vision-text processor both families share: a :class:`FundusImageProcessor` plus a BERT tokenizer.

`FundusVisionTextProcessor` holds everything (text checks, kwargs routing, saving, loading); each family's
processor is a thin subclass of it (`MaskedCLIPProcessor`, `KeepFitProcessor`) whose class name is what a
saved ``processor_config.json`` names. Like the image processor, this module is copied next to saved
checkpoints for ``trust_remote_code`` loading, so it imports nothing from ``retvlp`` except its flat sibling
``image_processing_fundus``.

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

import inspect
from typing import Any

from transformers import BatchFeature, ProcessorMixin

from .image_processing_fundus import FundusImageProcessor


class FundusVisionTextProcessor(ProcessorMixin):
    r"""Wraps a :class:`FundusImageProcessor` and a BERT tokenizer into a single processor.

    Args:
        image_processor (`FundusImageProcessor`, *optional*):
            Image processor; a default `FundusImageProcessor()` is created when omitted.
        tokenizer (`PreTrainedTokenizerBase`):
            A BERT WordPiece tokenizer (e.g. `AutoTokenizer.from_pretrained("emilyalsentzer/Bio_ClinicalBERT")`,
            which is cased, or `retvlp.tokenization.tiny_tokenizer()` offline).
        max_length (`int`, *optional*, defaults to 77):
            Default maximum caption length in tokens (including `[CLS]`/`[SEP]`); captions are truncated
            to it and padded to the longest caption of the batch. Saved with `save_pretrained`.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_length: int = 77, **kwargs):
        if image_processor is None:
            image_processor = FundusImageProcessor()
        if tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs a tokenizer (e.g. a BERT WordPiece tokenizer).")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
        self.max_length = max_length
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        cache_dir=None,
        force_download: bool = False,
        local_files_only: bool = False,
        token=None,
        revision: str = "main",
        **kwargs,
    ):
        """Load a processor saved with `save_pretrained` (a local folder or a Hub repository id).

        The tokenizer comes through `AutoTokenizer`, the image processor through :class:`FundusImageProcessor`
        itself, and the processor's own settings (`max_length`) from ``processor_config.json``; keyword
        arguments naming an `__init__` parameter (e.g. ``max_length=128``) override the saved value.

        Written here rather than inherited because `ProcessorMixin.from_pretrained` changed how it resolves
        sub-processors within 5.x (5.25 goes through `AutoImageProcessor`, which knows this class only once it
        is registered): a checkpoint's processor must load the same way on every transformers it supports, with
        or without `retvlp` imported.
        """
        from transformers import AutoTokenizer

        subfolder = kwargs.pop("subfolder", "")
        hub_kwargs = {
            "cache_dir": cache_dir,
            "force_download": force_download,
            "local_files_only": local_files_only,
            "revision": revision,
            "subfolder": subfolder,
        }
        if token is not None:
            hub_kwargs["token"] = token
        tokenizer_kwargs = dict(hub_kwargs)
        if (
            "trust_remote_code" in kwargs
        ):  # the folder's config names remote code; the tokenizer asks about it
            tokenizer_kwargs["trust_remote_code"] = kwargs.pop("trust_remote_code")
        for key in ("_from_auto", "_from_pipeline", "return_unused_kwargs"):
            kwargs.pop(key, None)

        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **tokenizer_kwargs)
        image_processor = FundusImageProcessor.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, **hub_kwargs)

        parameters = set(inspect.signature(cls.__init__).parameters) - {
            "self",
            "image_processor",
            "tokenizer",
        }
        parameters.discard("kwargs")
        init_kwargs = {key: value for key, value in processor_dict.items() if key in parameters}
        unknown = sorted(key for key in kwargs if key not in parameters)
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_pretrained got unexpected keyword argument(s) {unknown}; "
                f"it takes the Hub loading arguments and {sorted(parameters)}"
            )
        init_kwargs.update(kwargs)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **init_kwargs)

    @staticmethod
    def _check_text(text: Any) -> list[str]:
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)):
            texts = list(text)
            if not texts:
                raise ValueError("text is an empty list; pass at least one caption")
        else:
            raise ValueError(f"text must be a string or a list of strings, got {type(text).__name__}")
        for index, caption in enumerate(texts):
            if not isinstance(caption, str):
                raise ValueError(f"text[{index}] must be a string, got {type(caption).__name__}")
            if not caption.strip():
                raise ValueError(f"text[{index}] is empty or whitespace-only: {caption!r}")
        return texts

    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Any = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Tokenize captions and/or preprocess images.

        Args:
            text: a caption or a list of captions (non-empty, not whitespace-only).
            images: anything :class:`FundusImageProcessor` accepts (path, PIL image, array, tensor, list, batch).
            return_tensors: ``"pt"`` (default) or ``"np"``.
            **kwargs: keyword arguments of :class:`FundusImageProcessor` (``size``, ``pad_to_square``...) go to
                the image processor; everything else goes to the tokenizer and overrides the defaults
                ``max_length=self.max_length``, ``truncation=True``, ``padding="longest"``.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` (and `token_type_ids` when the tokenizer returns
            them) for text, and `pixel_values` for images.
        """
        if text is None and images is None:
            raise ValueError(f"{type(self).__name__} needs `text`, `images` or both")
        image_keys = set(FundusImageProcessor.valid_kwargs.__annotations__)
        image_kwargs = {k: v for k, v in kwargs.items() if k in image_keys}
        text_kwargs = {k: v for k, v in kwargs.items() if k not in image_keys}

        data: dict[str, Any] = {}
        if text is not None:
            texts = self._check_text(text)
            text_kwargs.setdefault("max_length", self.max_length)
            text_kwargs.setdefault("truncation", True)
            text_kwargs.setdefault("padding", "longest")
            data.update(self.tokenizer(texts, return_tensors=return_tensors, **text_kwargs))
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **image_kwargs))
        return BatchFeature(data=data)


__all__ = ["FundusVisionTextProcessor"]
