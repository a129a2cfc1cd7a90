"""IBQ visual tokenizer (KeepFIT V2's appearance codebook, METHODS.md §2): configuration, model, quantiser.

`retvlp.registration` registers the config and model with `AutoConfig` / `AutoModel` and marks them for
``trust_remote_code`` export (``save_pretrained`` writes ``auto_map`` and copies the three code files next to the
weights), as the family registry (`retvlp.families`) lists them.

`quantization_ibq.py` and `modeling_support.py` are generated copies of `retvlp/common/` (`python
utils/check_copies.py --fix`), which `save_pretrained` writes next to the weights and ``trust_remote_code`` loading
imports standalone. Inside the installed package the copies are never imported: the line below first binds
`retvlp.ibq.quantization_ibq` (and `modeling_support`) to the `retvlp.common` modules in ``sys.modules``, so there
is one `IBQQuantization` (and one of each function) for the tokenizer and KeepFIT, not look-alikes.
"""

from ..common import bind_shared

bind_shared(__name__, "modeling_support", "quantization_ibq")

from .configuration_ibq import IBQTokenizerConfig  # noqa: E402
from .modeling_ibq import IBQTokenizerModel, IBQTokenizerOutput, IBQTokenizerPreTrainedModel  # noqa: E402
from .quantization_ibq import (  # noqa: E402
    IBQLosses,
    IBQQuantization,
    code_histogram,
    codebook_perplexity,
    codebook_usage,
    entropy_loss,
    ibq_losses,
    ibq_quantize,
    perplexity_from_histogram,
    usage_from_histogram,
)

__all__ = [
    "IBQLosses",
    "IBQQuantization",
    "IBQTokenizerConfig",
    "IBQTokenizerModel",
    "IBQTokenizerOutput",
    "IBQTokenizerPreTrainedModel",
    "code_histogram",
    "codebook_perplexity",
    "codebook_usage",
    "entropy_loss",
    "ibq_losses",
    "ibq_quantize",
    "perplexity_from_histogram",
    "usage_from_histogram",
]
