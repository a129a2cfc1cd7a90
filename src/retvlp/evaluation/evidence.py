"""Evidence maps: where in a fundus image a dual encoder finds each class (issue 27, item 5; library part).

- MaskedCLIP (ViT): `patch_text_similarity`, every CLIP-space patch token z = B(E_I(x)) sent through the
  model's own `visual_projection` (the map the pooled token takes to become the image embedding), cosine with
  each class's text embedding; `attention_rollout` (Abnar & Zuidema, 2020) of E_I's (and the bridge's)
  attention weights, `vision_attentions` collecting them under eager attention.
- KeepFIT (ResNet): `spatial_class_map`, the last feature map at each position through the same
  normalise → linear projection the pooled feature takes, cosine with each class; `grad_cam` on the last stage.
- Fine-tuned classifiers (`MaskedCLIPForImageClassification`, `KeepFitForImageClassification`):
  `classifier_class_map`, each patch token / feature position through the classification head.
- `upsample_to_image`, `overlay_png` (matplotlib, imported only there), and `evidence_maps`, choosing by family.

Class embeddings: pass the zero-shot prototypes (`features.class_prototypes`, `(C, P)`), so that a map shows the
same classes, embedded the same way, as the zero-shot scores. Every function leaves the model's mode and
weights as they were and reads a `...ForPreTraining` model through its released model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MASKEDCLIP_TYPE = "maskedclip"
KEEPFIT_TYPE = "keepfit"
SUPPORTED = "MaskedCLIPModel (model_type 'maskedclip') and KeepFitModel (model_type 'keepfit')"


# ---------------------------------------------------------------------------------------------- helpers
def _released(model):
    return getattr(model, "released_model", model)


def _model_type(model) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", ""))


def _require(model, model_type: str, what: str):
    # By model_type, not isinstance: a checkpoint loaded with trust_remote_code has its own copy of the class.
    model = _released(model)
    if _model_type(model) != model_type:
        raise ValueError(
            f"{what} needs a {model_type} dual encoder, got {type(model).__name__} "
            f"(model_type {_model_type(model)!r}). Supported: {SUPPORTED}."
        )
    if not getattr(model, "has_text_tower", True) or getattr(model, "visual_projection", None) is None:
        raise ValueError(f"{what} needs the model's visual projection; {type(model).__name__} has none.")
    return model


@contextlib.contextmanager
def _eval_mode(model):
    # Dropout / drop-path off and BatchNorm on its running statistics, as in evaluation; the caller's mode back.
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _text_matrix(text_embeds, like: torch.Tensor) -> torch.Tensor:
    """`(C, D)` class embeddings (numpy or torch) → L2-normalised float32 tensor on `like`'s device."""
    text = torch.as_tensor(
        np.asarray(text_embeds) if not isinstance(text_embeds, torch.Tensor) else text_embeds
    )
    if text.dim() != 2:
        raise ValueError(f"text_embeds must be (num_classes, projection_dim), got {tuple(text.shape)}.")
    return F.normalize(text.to(like.device, torch.float32), dim=-1)


def cosine_with_classes(embeds: torch.Tensor, text_embeds) -> torch.Tensor:
    """`(..., D)` embeddings (normalised here) × `(C, D)` class embeddings → `(..., C)` cosines, in float32."""
    text = _text_matrix(text_embeds, embeds)
    if embeds.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"Embeddings of width {embeds.shape[-1]} and class embeddings {tuple(text.shape)} must share D."
        )
    return F.normalize(embeds.float(), dim=-1) @ text.T


# ------------------------------------------------------------------------------------------- MaskedCLIP
def maskedclip_token_embeddings(model, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP-space tokens `(..., hidden)` (rows of `get_image_features(...).last_hidden_state`, i.e. after the
    bridge and its LayerNorm) → L2-normalised embeddings `(..., projection_dim)`.

    The pooled token goes through exactly this (`visual_projection`, then normalisation) to become the image
    embedding, so a patch token's embedding lives in the space the zero-shot prototypes score."""
    model = _require(model, MASKEDCLIP_TYPE, "maskedclip_token_embeddings")
    return F.normalize(model.visual_projection(tokens).float(), dim=-1)


def _patch_grid(model, pixel_values: torch.Tensor, num_patches: int) -> tuple[int, int]:
    patch = getattr(model.config, "vision_config", model.config).patch_size
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else tuple(patch)
    grid = (pixel_values.shape[-2] // patch_h, pixel_values.shape[-1] // patch_w)
    if grid[0] * grid[1] != num_patches:
        raise ValueError(
            f"{num_patches} patch tokens do not fill the {grid} grid of {tuple(pixel_values.shape)}."
        )
    return grid


@torch.no_grad()
def patch_text_similarity(
    model, pixel_values: torch.Tensor, text_embeds, *, interpolate_pos_encoding: bool = False
) -> torch.Tensor:
    """MaskedCLIP: `(B, 3, H, W)` images, `(C, D)` class embeddings → `(B, C, h, w)` cosines in [−1, 1] of each
    patch's projected CLIP-space token with each class (h = H / patch_size, w = W / patch_size).

    The image embedding is `visual_projection(pool(z))` with z = B(E_I(x)) (final LayerNorm of E_I, bridge,
    bridge LayerNorm) and pool the cls token or the patch mean (`config.clip_image_pooling`); here every patch
    token of z takes the place of the pooled one. With mean pooling the (unnormalised) image embedding is the
    mean of these per-patch projections (the projection has no bias)."""
    model = _require(model, MASKEDCLIP_TYPE, "patch_text_similarity")
    with _eval_mode(model):
        tokens = model.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True
        ).last_hidden_state  # (B, 1 + N, hidden): z, cls first
        patches = tokens[:, 1:]
        h, w = _patch_grid(model, pixel_values, patches.shape[1])
        scores = cosine_with_classes(maskedclip_token_embeddings(model, patches), text_embeds)  # (B, N, C)
    return scores.transpose(1, 2).reshape(len(pixel_values), -1, h, w)


@torch.no_grad()
def vision_attentions(
    model, pixel_values: torch.Tensor, *, include_bridge: bool = True, interpolate_pos_encoding: bool = False
) -> tuple[torch.Tensor, ...]:
    """MaskedCLIP: the attention weights `(B, heads, T, T)` (T = 1 + patches) of every block of E_I, then of the
    bridge B when `include_bridge` (the image embedding is read after both), in order.

    SDPA and flash kernels never form the weights (the blocks return None), so the vision towers run with
    eager attention for this call: the vision sub-config's implementation is switched to "eager" and back."""
    model = _require(model, MASKEDCLIP_TYPE, "vision_attentions")
    vision_config = model.config.vision_config
    saved = vision_config._attn_implementation_internal
    vision_config._attn_implementation_internal = "eager"
    try:
        with _eval_mode(model), torch.no_grad():
            encoded = model.vision_model(
                pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, output_attentions=True
            )
            attentions = list(encoded.attentions)
            if include_bridge and model.bridge is not None:
                # The bridge's forward hands back no weights; its blocks do (MaskedCLIPLayer → (hidden, weights)).
                hidden = encoded.last_hidden_state
                for layer in model.bridge.layers:
                    hidden, weights = layer(hidden)
                    attentions.append(weights)
    finally:
        vision_config._attn_implementation_internal = saved
    if any(weights is None for weights in attentions):
        raise RuntimeError("The attention kernel returned no weights even under eager attention.")
    return tuple(attentions)


def attention_rollout(attentions: Sequence[torch.Tensor], discard_cls: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): `attentions`, one `(B, heads, T, T)` tensor per layer in
    forward order → `(B, h, w)` maps summing to 1 over the h·w = T − 1 (or T) patches of a square grid.

    Per layer: mean over heads, plus the identity (the residual connection carries each token's own state),
    rows renormalised; the rollout is the product Â_L ··· Â_1 (how much each input token feeds each output).

    `discard_cls=True`: token 0 is the cls token; the map is its row over the patch columns (its share of
    itself discarded), renormalised. `discard_cls=False`: every token is a patch (no cls token); the map is the
    mean row, what a mean-pooled representation draws from each patch."""
    if not attentions:
        raise ValueError("attention_rollout needs the attention weights of at least one layer.")
    first = attentions[0]
    tokens = first.shape[-1]
    eye = torch.eye(tokens, dtype=torch.float32, device=first.device)
    rollout = eye.expand(first.shape[0], tokens, tokens)
    for weights in attentions:
        layer = weights.float().mean(dim=1) + eye
        layer = layer / layer.sum(dim=-1, keepdim=True)
        rollout = layer @ rollout  # later layers act on the mixture the earlier ones made
    if discard_cls:
        relevance = rollout[:, 0, 1:]
    else:
        relevance = rollout.mean(dim=1)
    relevance = relevance / relevance.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    side = int(round(relevance.shape[-1] ** 0.5))
    if side * side != relevance.shape[-1]:
        raise ValueError(f"{relevance.shape[-1]} patch tokens do not form a square grid.")
    return relevance.reshape(-1, side, side)


# ---------------------------------------------------------------------------------------------- KeepFIT
def keepfit_position_embeddings(model, features: torch.Tensor) -> torch.Tensor:
    """KeepFIT: feature vectors `(..., C_feat)` → L2-normalised embeddings `(..., projection_dim)` through the
    model's own image projection P_v (`KeepFitModel.project`: L2-normalise → `visual_projection`), then
    normalised as `forward` does."""
    model = _require(model, KEEPFIT_TYPE, "keepfit_position_embeddings")
    return F.normalize(model.project(features, model.visual_projection).float(), dim=-1)


def _feature_map(model, pixel_values: torch.Tensor) -> torch.Tensor:
    fmap = model.get_image_features(pixel_values=pixel_values, return_dict=True).last_hidden_state
    if fmap.dim() != 4:
        raise ValueError(
            f"spatial maps need a convolutional feature map (batch, C, h, w); this vision tower gives "
            f"{tuple(fmap.shape)}."
        )
    return fmap


@torch.no_grad()
def spatial_class_map(model, pixel_values: torch.Tensor, text_embeds) -> torch.Tensor:
    """KeepFIT: `(B, 3, H, W)` images, `(C, D)` class embeddings → `(B, C, h, w)` cosines over the last ResNet
    feature map (h × w = 2 × 2 at 64 px, 7 × 7 at 224 px for ResNet-50).

    The image embedding is P_v(avgpool(f)) with P_v = normalise → linear. P_v applies to one feature vector, so
    it applies at each position: each position's embedding is the embedding an image whose feature map were that
    vector everywhere would get. Because of the normalisation inside P_v the pooled embedding is not the mean of
    these (it is P_v of the mean feature), unlike MaskedCLIP's mean pooling."""
    model = _require(model, KEEPFIT_TYPE, "spatial_class_map")
    with _eval_mode(model):
        fmap = _feature_map(model, pixel_values)  # (B, C_feat, h, w)
        embeds = keepfit_position_embeddings(model, fmap.permute(0, 2, 3, 1))  # (B, h, w, D)
        scores = cosine_with_classes(embeds, text_embeds)  # (B, h, w, C)
    return scores.permute(0, 3, 1, 2).contiguous()


def zero_shot_scores(model, text_embeds) -> Callable[[torch.Tensor], torch.Tensor]:
    """A `class_scores_fn` for `grad_cam`: images → `(B, C)` zero-shot logits exp(τ)·cos(image, class)."""
    released = _released(model)

    def scores(pixel_values: torch.Tensor) -> torch.Tensor:
        image = released.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        return released.clamped_logit_scale() * cosine_with_classes(image, text_embeds)

    return scores


def _last_stage(model):
    encoder = getattr(getattr(model, "vision_model", None), "encoder", None)
    stages = getattr(encoder, "stages", None)
    if not stages:
        raise ValueError(
            f"grad_cam needs a ResNet image tower (vision_model.encoder.stages); {type(model).__name__} has none."
        )
    return stages[-1]


def grad_cam(
    model, pixel_values: torch.Tensor, class_scores_fn: Callable[[torch.Tensor], torch.Tensor], target_class
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017) on the last ResNet stage of a KeepFIT model: `class_scores_fn`
    (images `(B, 3, H, W)` → scores `(B, C)`, e.g. `zero_shot_scores(model, prototypes)`, run on this model),
    `target_class` an int or `(B,)` ids → `(B, h, w)` maps in [0, 1].

    Channel weights are the spatial mean of d score / d activation; the map is ReLU(Σ_k weight_k · A_k), divided
    by its maximum (all zeros when nothing is positive). Gradients are taken with `torch.autograd.grad` on the
    activation only, so no parameter's `.grad` is touched."""
    model = _require(model, KEEPFIT_TYPE, "grad_cam")
    stage = _last_stage(model)
    captured = []
    handle = stage.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with _eval_mode(model), torch.enable_grad():
            scores = class_scores_fn(pixel_values)
            if len(captured) != 1:
                raise RuntimeError(
                    f"class_scores_fn ran the last stage {len(captured)} times; expected once."
                )
            activation = captured[0]
            target = torch.as_tensor(target_class, device=scores.device).long().reshape(-1)
            target = target.expand(len(scores)) if target.numel() == 1 else target
            chosen = scores.gather(1, target[:, None]).sum()  # images are independent: one backward for all
            (gradient,) = torch.autograd.grad(chosen, activation)
    finally:
        handle.remove()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1)).detach().float()
    peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return cam / peak[:, None, None]


# ------------------------------------------------------------------------------------ fine-tuned classifiers
CLASSIFIERS = ("MaskedCLIPForImageClassification", "KeepFitForImageClassification")


@torch.no_grad()
def classifier_class_map(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """A fine-tuned classifier: `(B, 3, H, W)` → `(B, C, h, w)` class logits of each patch / position, what
    the head would output if that patch's token (that position's feature) were the pooled one.

    - `KeepFitForImageClassification` (global average pool → linear): the class activation map (Zhou et al.,
      2016), W·f_ij + b at each position of the last feature map; its mean over positions is the model's logits.
    - `MaskedCLIPForImageClassification`: each patch token through the head (`fc_norm` → linear with mean
      pooling; the final LayerNorm → linear with `pooling="cls"`), the classifier's counterpart of
      `patch_text_similarity`. With mean pooling the LayerNorm makes the logits differ from the map's mean.

    Other models raise ValueError naming their class (by class name, not isinstance: remote code has its own
    copy of each class)."""
    name = type(model).__name__
    if name not in CLASSIFIERS:
        raise ValueError(f"No classifier evidence map for {name}: supported are {', '.join(CLASSIFIERS)}.")
    with _eval_mode(model):
        if name == "KeepFitForImageClassification":
            from_tower = model.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
            if from_tower.dim() != 4:
                raise ValueError(
                    f"classifier_class_map needs a convolutional feature map; got {tuple(from_tower.shape)}."
                )
            logits = model.classifier(from_tower.permute(0, 2, 3, 1).float())  # (B, h, w, C)
            return logits.permute(0, 3, 1, 2).contiguous()
        use_cls = model.config.pooling == "cls"
        tokens = model.vision_model(pixel_values, apply_layernorm=use_cls).last_hidden_state[:, 1:]
        h, w = _patch_grid(model, pixel_values, tokens.shape[1])
        logits = model.classifier(tokens if use_cls else model.fc_norm(tokens)).float()  # (B, N, C)
    return logits.transpose(1, 2).reshape(len(pixel_values), -1, h, w)


# -------------------------------------------------------------------------------------- display and choice
def upsample_to_image(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`(B, h, w)` maps → `(B, H, W)` by bilinear interpolation (`align_corners=False`: cell centres align, as
    a patch / receptive-field grid lies on the image)."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be (batch, h, w), got {tuple(maps.shape)}.")
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def overlay_png(image_uint8: np.ndarray, heat, path: str | os.PathLike, title: str | None = None) -> str:
    """Save `image_uint8` `(H, W, 3)` with `heat` `(H, W)` (scaled to [0, 1] for display) over it as a PNG at
    `path`; returns the path. Uses matplotlib's Agg canvas directly: no pyplot, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.asarray(image_uint8)
    heat = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    if image.ndim != 3 or image.shape[2] != 3 or heat.shape != image.shape[:2]:
        raise ValueError(
            f"Expected an (H, W, 3) image and an (H, W) map, got {image.shape} and {heat.shape}."
        )
    heat = heat.astype(np.float64)
    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    figure = Figure(figsize=(4, 4.3 if title else 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(image)
    axes.imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png")
    return os.fspath(path)


def evidence_maps(model, pixel_values: torch.Tensor, text_embeds=None, method: str = "auto") -> torch.Tensor:
    """Evidence maps of a retvlp dual encoder, chosen by family:

    - MaskedCLIP: `"auto"` / `"patch_text"` → `patch_text_similarity` `(B, C, h, w)` (needs `text_embeds`);
      `"rollout"` (or `"auto"` without `text_embeds`) → `attention_rollout` of E_I and the bridge, `(B, 1, h, w)`.
    - KeepFIT: `"auto"` / `"spatial"` → `spatial_class_map` `(B, C, h, w)`; `"grad_cam"` → one Grad-CAM per
      class of the zero-shot logits, `(B, C, h, w)`. Both need `text_embeds`.

    Any other model raises ValueError naming its class and the supported ones."""
    released = _released(model)
    model_type = _model_type(released)
    if model_type == MASKEDCLIP_TYPE:
        if method == "rollout" or (method == "auto" and text_embeds is None):
            return attention_rollout(vision_attentions(released, pixel_values))[:, None]
        if method in ("auto", "patch_text"):
            _need_text(text_embeds, method)
            return patch_text_similarity(released, pixel_values, text_embeds)
    elif model_type == KEEPFIT_TYPE:
        if method in ("auto", "spatial"):
            _need_text(text_embeds, method)
            return spatial_class_map(released, pixel_values, text_embeds)
        if method == "grad_cam":
            _need_text(text_embeds, method)
            scores = zero_shot_scores(released, text_embeds)
            return torch.stack(
                [grad_cam(released, pixel_values, scores, c) for c in range(len(text_embeds))], dim=1
            )
    else:
        raise ValueError(
            f"No evidence maps for {type(released).__name__} (model_type {model_type!r}): supported are "
            f"{SUPPORTED}."
        )
    raise ValueError(f"Unknown evidence-map method {method!r} for {type(released).__name__}.")


def _need_text(text_embeds, method: str) -> None:
    if text_embeds is None:
        raise ValueError(
            f"method={method!r} needs text_embeds (C, D): the class prototypes of features.class_prototypes."
        )
