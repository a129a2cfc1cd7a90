"""Configuration of the IBQ visual tokenizer that learns KeepFIT V2's appearance codebook (METHODS.md §2).

Defaults give the codebook KeepFIT needs — K = 16384 codes of dimension 256 — behind a VQGAN-shaped
convolutional autoencoder with 16× downsampling (256 px images → 16 × 16 codes), trained with a
reconstruction loss (L1 by default) plus IBQ's quantisation losses (β = 0.25) and an optional entropy loss
(temperature 0.01). The paper fixes only the codebook size, code dimension, β and the loss list; the
encoder/decoder sizes follow the IBQ/VQGAN family (128 base channels, multipliers 1-1-2-2-4, 2 residual
blocks per level), without attention, perceptual or adversarial losses (METHODS: optional extras).

This file is copied next to saved checkpoints for ``trust_remote_code`` loading: it imports nothing from
``retvlp``.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

RECONSTRUCTION_LOSSES = ("l1", "l2")
CODEBOOK_INITS = ("uniform", "normal")


@strict
class IBQTokenizerConfig(PreTrainedConfig):
    r"""Configuration of [`IBQTokenizerModel`].

    in_channels (`int`, defaults to 3):
        Image channels (RGB fundus photographs).
    image_size (`int`, defaults to 256):
        Training resolution in pixels (square). The model is fully convolutional: any height and width that
        are multiples of [`downsampling_factor`] work; this value documents the resolution the codebook
        was trained at and must itself be such a multiple.
    base_channels (`int`, defaults to 128):
        Width of the first encoder level (and of the last decoder level).
    channel_multipliers (`tuple[int]`, defaults to `(1, 1, 2, 2, 4)`):
        Width of each resolution level as a multiple of `base_channels`. There is one 2× downsampling (encoder)
        / upsampling (decoder) between consecutive levels, so the downsampling factor is
        2^(len − 1) = 16 by default.
    num_res_blocks (`int`, defaults to 2):
        Residual blocks per level, in the encoder and (mirrored) in the decoder.
    num_mid_res_blocks (`int`, defaults to 2):
        Residual blocks at the lowest resolution, after the last encoder level and before the first decoder
        level (VQGAN puts an attention block between two; we keep the autoencoder purely convolutional).
    norm_num_groups (`int`, defaults to 32):
        Groups of every GroupNorm; each level width must be divisible by it.
    norm_eps (`float`, defaults to 1e-6):
        GroupNorm epsilon.
    codebook_size (`int`, defaults to 16384):
        K, the number of codes.
    code_dim (`int`, defaults to 256):
        D, the dimension of a code (the 1×1 convolutions map the encoder width to D and back).
    codebook_init (`str`, defaults to `"uniform"`):
        `"uniform"`: U(−1/K, 1/K), the VQGAN/IBQ initialisation (tiny codes, nearly uniform soft assignment at
        the start, so the soft path spreads gradient over all codes); `"normal"`: N(0, 1/D), codes of about
        unit norm.
    beta (`float`, defaults to 0.25):
        β of the codebook term β‖q_hard − sg(z)‖².
    quantizer_temperature (`float`, defaults to 1.0):
        T of the IBQ softmax: logits = z·Cᵀ / T.
    quantization_loss_weight (`float`, defaults to 1.0):
        Weight of the sum of the three quantisation terms in the total loss.
    entropy_loss_weight (`float`, defaults to 0.0):
        Weight of the entropy (code-usage) loss; 0 switches it off (and skips its computation).
    entropy_temperature (`float`, defaults to 0.01):
        Temperature of the softmax inside the entropy loss.
    reconstruction_loss (`str`, defaults to `"l1"`):
        `"l1"` (mean absolute error, as IBQ trains) or `"l2"` (mean squared error) between the image and its
        reconstruction, in the units of `pixel_values` (whatever normalisation the processor applied).
    """

    model_type = "ibq_tokenizer"

    in_channels: int = 3
    image_size: int = 256
    base_channels: int = 128
    channel_multipliers: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    num_mid_res_blocks: int = 2
    norm_num_groups: int = 32
    norm_eps: float | int = 1e-6
    codebook_size: int = 16384
    code_dim: int = 256
    codebook_init: str = "uniform"
    beta: float | int = 0.25
    quantizer_temperature: float | int = 1.0
    quantization_loss_weight: float | int = 1.0
    entropy_loss_weight: float | int = 0.0
    entropy_temperature: float | int = 0.01
    reconstruction_loss: str = "l1"

    @property
    def downsampling_factor(self) -> int:
        """Pixels per code along each side: 2^(number of levels − 1)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def level_channels(self) -> list[int]:
        """Width of every resolution level, highest resolution first."""
        return [self.base_channels * multiplier for multiplier in self.channel_multipliers]

    @property
    def num_tokens(self) -> int:
        """Codes per `image_size` image: (image_size / downsampling_factor)²."""
        return (self.image_size // self.downsampling_factor) ** 2

    def to_dict(self) -> dict:
        output = super().to_dict()
        if output.get("auto_map"):
            # transformers' `custom_object_save` takes every class whose name contains "Tokenizer" for a text
            # tokenizer and records it as a (slow, fast) pair, which `AutoModel`/`AutoConfig` cannot load.
            # Our classes are models and configs: store the plain "module.Class" reference.
            output["auto_map"] = {
                auto_class: _class_reference(reference)
                for auto_class, reference in output["auto_map"].items()
            }
        return output

    def validate_architecture(self):
        super().validate_architecture()
        for name in ("in_channels", "image_size", "base_channels", "codebook_size", "code_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"IBQTokenizerConfig.{name} must be ≥ 1, got {getattr(self, name)}.")
        if self.num_res_blocks < 1:
            # the residual blocks are where a level changes width, so every level needs one
            raise ValueError(f"IBQTokenizerConfig.num_res_blocks must be ≥ 1, got {self.num_res_blocks}.")
        if self.num_mid_res_blocks < 0:
            raise ValueError(
                f"IBQTokenizerConfig.num_mid_res_blocks must be ≥ 0, got {self.num_mid_res_blocks}."
            )
        if len(self.channel_multipliers) < 1 or any(m < 1 for m in self.channel_multipliers):
            raise ValueError(
                "IBQTokenizerConfig.channel_multipliers must be a non-empty sequence of positive integers, "
                f"got {self.channel_multipliers}."
            )
        if self.norm_num_groups < 1:
            raise ValueError(f"IBQTokenizerConfig.norm_num_groups must be ≥ 1, got {self.norm_num_groups}.")
        for width in self.level_channels:
            if width % self.norm_num_groups:
                raise ValueError(
                    f"IBQTokenizerConfig.norm_num_groups ({self.norm_num_groups}) must divide every level "
                    f"width base_channels × channel_multipliers = {self.level_channels}."
                )
        if self.image_size % self.downsampling_factor:
            raise ValueError(
                f"IBQTokenizerConfig.image_size ({self.image_size}) must be divisible by the downsampling "
                f"factor {self.downsampling_factor} (2^(len(channel_multipliers) − 1))."
            )
        if self.codebook_init not in CODEBOOK_INITS:
            raise ValueError(
                f"IBQTokenizerConfig.codebook_init must be one of {CODEBOOK_INITS}, got {self.codebook_init!r}."
            )
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                f"IBQTokenizerConfig.reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, "
                f"got {self.reconstruction_loss!r}."
            )
        for name in ("quantizer_temperature", "entropy_temperature", "norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"IBQTokenizerConfig.{name} must be > 0, got {getattr(self, name)}.")
        for name in ("beta", "quantization_loss_weight", "entropy_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"IBQTokenizerConfig.{name} must be ≥ 0, got {getattr(self, name)}.")


def _class_reference(reference):
    """`"module.Class"` from a (slow, fast)-style pair; anything else unchanged."""
    if isinstance(reference, (list, tuple)):
        names = [name for name in reference if name]
        if len(names) == 1:
            return names[0]
    return reference


__all__ = ["IBQTokenizerConfig"]
