"""The text MLM stage's run-config section (`text-mlm:` in a run file), apart from its task so that reading
and checking a run file imports no torch or models (`family_parts.section_of`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import Fail, FamilySection
from .family_parts import register_section


@dataclass
class TextMLMSection(FamilySection):
    """`text-mlm:` — corpus passages per process per micro-step and BERT's masking rate."""

    text_batch_size: int = 16
    mlm_probability: float = 0.15  # fraction of tokens selected for prediction (BERT's 80/10/10)

    batch_keys: ClassVar[tuple[str, ...]] = ("text_batch_size",)

    def validate(self, section_name: str, fail: Fail) -> None:
        super().validate(section_name, fail)
        if not 0.0 < self.mlm_probability < 1.0:
            fail(f"{section_name}.mlm_probability must be in (0, 1), got {self.mlm_probability}.")


register_section("text-mlm", TextMLMSection)
