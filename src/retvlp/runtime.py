"""Process-level settings: glibc's malloc for CPU training on Linux, quiet model loading, and one accelerate
state per run.

A training step allocates and frees gigabytes of activations. glibc's default malloc returns large freed
blocks to the operating system at once, so the next step page-faults and zero-fills the same memory again:
on a 2-core machine that was 10–30 % of a ViT step and made step times jitter by as much. Keeping freed
memory in the process removes both. glibc reads these settings only at start-up, hence the re-exec.
"""

import contextlib
import logging
import os
import sys

GLIBC_KEEP_FREED_MEMORY = {
    "MALLOC_MMAP_THRESHOLD_": str(4 * 2**30),  # serve large blocks from the heap, not fresh mmaps
    "MALLOC_TRIM_THRESHOLD_": str(64 * 2**30),  # never hand freed heap memory back to the OS
    "MALLOC_TOP_PAD_": str(2**30),
}
_MARKER = "RETVLP_MALLOC_TUNED"


def reexec_with_tuned_malloc() -> None:
    """Restart the current Python command once with glibc told to keep freed memory (Linux only; a no-op
    elsewhere, when already applied, or when `RETVLP_MALLOC_TUNED` is set, e.g. to 0 to opt out). Call it
    at the start of `main()`: the process image is replaced, so the work before the call (the imports)
    is done again, and nothing after it runs twice."""
    if not sys.platform.startswith("linux") or os.environ.get(_MARKER) is not None:
        return
    environment = {**os.environ, **GLIBC_KEEP_FREED_MEMORY, _MARKER: "1"}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)


def malloc_is_tuned() -> bool:
    return os.environ.get(_MARKER) == "1"


class _HideLoadReports(logging.Filter):
    """Drops transformers' per-load state-dict tables ("... LOAD REPORT from: ..."). Our entry points load a
    vision tower out of a dual-encoder checkpoint or a pretraining model out of a released one many times
    per run, and each table lists dozens of keys that are expected to be missing or unused."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


_LOAD_REPORT_FILTER = _HideLoadReports()
VERBOSE_ENV = "RETVLP_VERBOSE"


@contextlib.contextmanager
def load_reports_hidden():
    """Within the block, transformers' load-report tables are hidden unless `RETVLP_VERBOSE=1`. The command-line
    entry points run inside it; importing retvlp as a library (or calling an entry point from a test or a
    notebook, afterwards) leaves transformers' logging as it was."""
    logger = logging.getLogger("transformers.modeling_utils")
    if os.environ.get(VERBOSE_ENV) == "1" or _LOAD_REPORT_FILTER in logger.filters:
        yield
        return
    logger.addFilter(_LOAD_REPORT_FILTER)
    try:
        yield
    finally:
        logger.removeFilter(_LOAD_REPORT_FILTER)


def fresh_accelerator(**kwargs):
    """An `accelerate.Accelerator(**kwargs)` whatever runs came before in this process.

    accelerate keeps one process-wide state and refuses a second Accelerator with other settings ("AcceleratorState
    has already been initialized and cannot be changed"): a bf16 pretraining followed by an fp32 fine-tune in one
    notebook (or one test worker) failed so. The previous run's state is forgotten; the process group (several
    processes) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(**kwargs)
