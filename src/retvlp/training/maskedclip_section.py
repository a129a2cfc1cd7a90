"""MaskedCLIP's run-config section (`maskedclip:` in a run file), apart from its task so that reading
and checking a run file imports no torch or models (`family_parts.section_of`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .config import Fail, FamilySection
from .family_parts import register_section


@dataclass
class MaskedCLIPSection(FamilySection):
    """`maskedclip:` — rows per process per micro-step and the label prompts (METHODS.md §1)."""

    paired_batch_size: int = 16  # image–text pairs + categorical rows (paper: 720 global)
    unpaired_batch_size: int = 16  # images without text (MIM only; paper: 720 global)
    prompt_templates: list[str] = field(default_factory=lambda: ["a fundus photograph of {}"])

    batch_keys: ClassVar[tuple[str, ...]] = ("paired_batch_size", "unpaired_batch_size")
    pretrained_towers: ClassVar[tuple[str, ...]] = ("vision", "text")

    def validate(self, section_name: str, fail: Fail) -> None:
        super().validate(section_name, fail)
        if not self.prompt_templates or any("{}" not in t for t in self.prompt_templates):
            fail(
                f"{section_name}.prompt_templates must be non-empty strings, each with one '{{}}' for the class."
            )


register_section("maskedclip", MaskedCLIPSection)
