"""The IBQ tokenizer's run-config section (`ibq-tokenizer:` in a run file), apart from its task so that reading
and checking a run file imports no torch or models (`family_parts.section_of`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import FamilySection
from .family_parts import register_section


@dataclass
class IBQTokenizerSection(FamilySection):
    """`ibq-tokenizer:` — images of every role per process per micro-step."""

    image_batch_size: int = 16

    batch_keys: ClassVar[tuple[str, ...]] = ("image_batch_size",)


register_section("ibq-tokenizer", IBQTokenizerSection)
