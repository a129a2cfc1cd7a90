"""KeepFIT V2's run-config section (`keepfit:` in a run file), apart from its task so that reading
and checking a run file imports no torch or models (`family_parts.section_of`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import Fail, FamilySection
from .family_parts import register_section

MODALITIES = ("CFP", "FFA", "OCT")


@dataclass
class KeepFitSection(FamilySection):
    """`keepfit:` — the public (categorical) and elite (paired) rows per step and the expert-knowledge prompts.

    Prompts come from the per-modality templates of the expert-knowledge dictionary
    (retvlp/data/expert_knowledge.json, merged with `expert_knowledge`, a user JSON of the same layout); with
    probability `label_augmentation` a class name is replaced by / extended with one of its descriptions."""

    categorical_batch_size: int = 16  # public p (paper: 1:1 with the elite rows)
    paired_batch_size: int = 16  # elite m (image + expert caption)
    modality: str = "CFP"  # CFP | FFA | OCT
    expert_knowledge: str | None = None
    label_augmentation: float = 0.5  # probability

    batch_keys: ClassVar[tuple[str, ...]] = ("categorical_batch_size", "paired_batch_size")
    pretrained_towers: ClassVar[tuple[str, ...]] = ("vision", "text")

    def validate(self, section_name: str, fail: Fail) -> None:
        super().validate(section_name, fail)
        if not (self.categorical_batch_size and self.paired_batch_size):
            fail(
                "KeepFIT trains on categorical (public) and elite (paired) data together: set both "
                f"{section_name}.categorical_batch_size and {section_name}.paired_batch_size > 0 (1:1 in the paper)."
            )
        if not 0.0 <= self.label_augmentation <= 1.0:
            fail(
                f"{section_name}.label_augmentation is a probability in [0, 1], got {self.label_augmentation}."
            )
        if self.modality not in MODALITIES:
            fail(f"{section_name}.modality={self.modality!r}; choose one of {list(MODALITIES)}.")


register_section("keepfit", KeepFitSection)
