"""The names of the evaluation protocols, in a module that imports nothing: the command line lists them in its
help without loading the evaluation code (`retvlp --help` stays fast)."""

TASKS = ("zero-shot", "few-shot", "linear-probe", "finetune", "lora")
FEW_SHOT_METHODS = ("clip-adapter", "tip-adapter", "tip-adapter-f")

__all__ = ["FEW_SHOT_METHODS", "TASKS"]
