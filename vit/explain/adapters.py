"""What the explainers need to know of a model, in one place: one adapter per ViT family.

    adapter = adapter_for(model)        # one ConfigError line naming what is supported, else
    adapter.grid(images)                # the (grid_h, grid_w) patch grid of these images
    adapter.num_prefix_tokens           # [CLS], distillation and register tokens before patches
    trace = adapter.trace(x, last=L)    # blocks 0..L run by the model's own forward_features:
                                        #   each block's input tokens (B, N, D) and keyword
                                        #   arguments (RoPE, shared relative-position bias)
    adapter.run_block(i, x, kwargs)     # block i on tokens (B, N, D) -> (B, N, D)
    adapter.logits(tokens)              # last block's output -> logits (final norm, pool, head)
    adapter.pool_row(tokens)            # (B, N): how the pooled feature reads the last tokens
    adapter.gradcam_layer(i)            # the module whose output Grad-CAM weighs (norm1)
    adapter.keep_kwargs(kwargs, keep)   # a block's kwargs for a sequence cut to `keep` patches
    with adapter.session(): ...         # eval mode, full precision, fused attention, frozen
                                        #   parameters; every flag restored on the way out

An adapter reads the model's own modules and runs its own code: the tokens come from its
``forward_features`` (stopped by a hook where the explainer has what it needs), the blocks are
called as the model calls them, and each block's attention is seen through
``vit.explain.attention_calls`` where the family computes it. No model code is copied. Families
(``FAMILIES``): the package's own ViT; timm's VisionTransformer (ViT, DeiT, DeiT-III, CLIP,
SigLIP's attention-pool head, average pooling, registers with or without ``no_embed_class``:
DINOv2), VisionTransformerDistilled (DeiT distilled), Eva (EVA-02, DINOv3, the RoPE ViTs),
Beit, VisionTransformerRelPos and NaFlexVit. Adding one is one entry of ``FAMILIES`` and,
where its block keywords need cutting for token dropping, one ``keep_kwargs``.

The pooled feature, which the class-free methods (rollout, attention) start from:
``token`` reads [CLS]; a distilled DeiT averages its class and distillation heads, so both
tokens count half; ``avg`` reads the mean of the patch tokens (of every token when the model
pools its prefix too); ``max`` gives each token the share of channels where it is the maximum
(``avgmax``: half of each); ``map`` (attention pool) reads each token by the pool's own
attention, heads and latent queries averaged.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vit.errors import ConfigError
from vit.explain.attention_calls import AttentionCall, intercept, record
from vit.explain.inputs import eval_mode

__all__ = ["Adapter", "Trace", "adapter_for", "FAMILIES", "supported_families"]

POOLS = ("token", "distilled", "avg", "max", "avgmax", "map")
MLP_CHUNK = 256  # tokens per MLP call in the passes without a graph (``_mlp_in_chunks``)


@dataclass
class Trace:
    """What one run of the model's forward_features left: block inputs first..last (B, N, D),
    every block's keyword arguments up to ``last``, and block ``last``'s output."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    output: torch.Tensor | None = None


class _Stop(Exception):
    """Raised by a hook once the forward pass has given what was asked: it ends the pass."""


def _tokens(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # our blocks: (tokens, attention)


class Adapter:
    """The generic ViT layout (patch embedding, prefix tokens, ``blocks``, ``norm``,
    ``forward_head``); a family differs in its name and, where needed, ``keep_kwargs``."""

    family = "ViT"

    def __init__(self, model: nn.Module):
        self.model = model
        self.blocks = list(model.blocks)
        self.depth = len(self.blocks)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.patch_size = _patch_size(model)
        self.pool = _pool_kind(model)
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.num_heads = int(getattr(getattr(self.blocks[0], "attn", None), "num_heads", 0))
        if self.depth < 1:
            raise ConfigError(f"this {type(model).__name__} has no transformer blocks")

    def require_head(self, method: str) -> None:
        """The class-specific methods explain a logit: a model without a head (timm's
        ``num_classes=0``, a feature extractor) has none."""
        if self.num_classes < 1:
            raise ConfigError(f"{method} explains a class logit, and this "
                              f"{type(self.model).__name__} has no classifier head "
                              "(num_classes=0); rollout and attention need none, or create "
                              "it with num_classes=N")

    # --- shapes -------------------------------------------------------------------------

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        ph, pw = self.patch_size
        h, w = images.shape[-2:]
        if h % ph or w % pw:
            raise ConfigError(f"input size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        fixed = _fixed_size(self.model)
        if fixed is not None and (h, w) != fixed:
            raise ConfigError(f"this {type(self.model).__name__} takes {fixed[0]}x{fixed[1]} "
                              f"images, got {h}x{w}; resize them, or create the model with "
                              "dynamic_img_size=True")
        return h // ph, w // pw

    def prefix_names(self) -> list[str]:
        """What each prefix token is, in order: [CLS], [DIST] (distilled DeiT), registers."""
        registers = int(getattr(self.model, "num_reg_tokens", 0) or 0)
        distilled = int(getattr(self.model, "dist_token", None) is not None)
        named = ["[CLS]"] * (self.num_prefix_tokens - registers - distilled) + ["[DIST]"] * distilled
        return named + [f"register {i + 1}" for i in range(registers)]

    # --- running the model --------------------------------------------------------------

    def trace(self, images: torch.Tensor, *, first: int = 0, last: int | None = None,
              keep_inputs: bool = True, output: bool = True) -> Trace:
        """Run ``forward_features`` up to block ``last`` (default: the last), keeping block
        inputs from ``first`` on; the pass stops once block ``last`` has run (before it runs
        when its ``output`` is not wanted)."""
        last = self.depth - 1 if last is None else last
        trace, calls = Trace(), []  # calls: the attentions each block computed

        def count(call: AttentionCall) -> torch.Tensor:
            calls[-1] += 1
            return call.attend()

        def before(index: int) -> Any:
            def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
                trace.kwargs.append(dict(kwargs))
                calls.append(0)
                if keep_inputs and index >= first:
                    trace.inputs.append(args[0])
                if index == last and not output:
                    raise _Stop
            return hook

        def after(_module: nn.Module, _args: tuple, output: Any) -> None:
            trace.output = _tokens(output)
            raise _Stop

        handles = [b.register_forward_pre_hook(before(i), with_kwargs=True)
                   for i, b in enumerate(self.blocks[:last + 1])]
        handles.append(self.blocks[last].register_forward_hook(after))
        with _mlp_in_chunks(self.blocks, MLP_CHUNK, enabled=not torch.is_grad_enabled()), \
                intercept(count):
            self._run_features(images, handles)
        self._check_one_attention(calls if output else calls[:-1])
        return trace

    def _check_one_attention(self, calls: list[int]) -> None:
        """Every method reads one attention per block; parallel blocks (two attentions side by
        side) and differential attention (a difference of two) are refused, not half read."""
        for index, count in enumerate(calls):
            if count != 1:
                raise ConfigError(f"block {index} of this {type(self.model).__name__} computes "
                                  f"{count} attentions (parallel blocks or differential "
                                  "attention); the explanations need exactly one per block")

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The first block's input tokens (B, N, D), in the graph of ``images``, and its kwargs."""
        seen: dict[str, Any] = {}

        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.update(tokens=args[0], kwargs=dict(kwargs))
            raise _Stop

        self._run_features(images, [self.blocks[0].register_forward_pre_hook(
            hook, with_kwargs=True)])
        return seen["tokens"], seen["kwargs"]

    def _run_features(self, images: torch.Tensor, handles: list) -> None:
        self.grid(images)
        try:
            self.model.forward_features(images)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()

    def run_block(self, index: int, tokens: torch.Tensor, kwargs: dict[str, Any]
                  ) -> torch.Tensor:
        return _tokens(self.blocks[index](tokens, **kwargs))

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The last block's output tokens (B, N, D) -> logits (B, classes)."""
        return self.model.forward_head(self.model.norm(tokens))

    def keep_kwargs(self, kwargs: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
        """A block's keywords for the sequence of the prefix and the patches ``keep`` (B, K).
        Biases over the whole sequence are cut where they are used (``attention_calls``)."""
        del keep
        return kwargs

    def head_modules(self) -> list[nn.Module]:
        """What turns the last block's tokens into logits: final norms, pools, heads."""
        names = ("head", "norm", "fc_norm", "attn_pool", "head_dist")
        return [m for m in (getattr(self.model, n, None) for n in names) if isinstance(m, nn.Module)]

    def gradcam_layer(self, index: int) -> nn.Module:
        """The block's normalised input: ``norm1``, or ``in_norm`` of a parallel block (timm's
        ParallelScalingBlock, whose attention and MLP read the same normalised tokens)."""
        block = self.blocks[index]
        layer = getattr(block, "norm1", None) or getattr(block, "in_norm", None)
        if not isinstance(layer, nn.Module):
            raise ConfigError(f"Grad-CAM weighs a block's normalised input (norm1), which this "
                              f"{type(block).__name__} does not have")
        return layer

    # --- the pooled feature -------------------------------------------------------------

    def pool_row(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N) weights of the last block's output tokens in the pooled feature (sum 1)."""
        b, n = tokens.shape[:2]
        prefix = self.num_prefix_tokens
        row = tokens.new_zeros(b, n)
        if self.pool == "token":
            row[:, 0] = 1.0
        elif self.pool == "distilled":
            row[:, :2] = 0.5
        elif self.pool == "map":
            row = self._attention_pool_row(tokens)
        else:
            start = 0 if getattr(self.model, "pool_include_prefix", False) else prefix
            row[:, start:] = self._reduce_row(self.model.norm(tokens)[:, start:])
        return row

    def _reduce_row(self, normed: torch.Tensor) -> torch.Tensor:
        mean = torch.full(normed.shape[:2], 1.0 / normed.shape[1], device=normed.device)
        if self.pool == "avg":
            return mean
        winners = normed.argmax(dim=1)  # (B, D): the token of each channel's maximum
        share = torch.zeros_like(mean).scatter_add_(1, winners, torch.ones_like(
            winners, dtype=mean.dtype)) / normed.shape[-1]
        return share if self.pool == "max" else 0.5 * (share + mean)

    def _attention_pool_row(self, tokens: torch.Tensor) -> torch.Tensor:
        seen: dict[str, Any] = {}
        with intercept(record(seen)):
            self.logits(tokens)
        probs = seen["call"].probabilities().mean(dim=(1, 2))  # (B, keys): heads, latents
        row = tokens.new_zeros(tokens.shape[:2])
        row[:, tokens.shape[1] - probs.shape[1]:] = probs  # the pool may skip the prefix
        return row

    # --- the state explanations run in --------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[None]:
        """Eval mode and full precision, timm's fused-attention flags on (the attention is seen
        in ``F.scaled_dot_product_attention``), parameters frozen (autograd then reaches only
        the input, and ``.grad`` cannot change); every flag back as it was afterwards."""
        fused = [(m, m.fused_attn) for m in self.model.modules() if hasattr(m, "fused_attn")]
        frozen = [(p, p.requires_grad) for p in self.model.parameters()]
        with ExitStack() as stack:
            stack.enter_context(eval_mode(self.model))
            try:
                for m, _ in fused:
                    m.fused_attn = True
                for p, _ in frozen:
                    p.requires_grad_(False)
                yield
            finally:
                for m, flag in fused:
                    m.fused_attn = flag
                for p, flag in frozen:
                    p.requires_grad_(flag)


@contextmanager
def _mlp_in_chunks(blocks: list[nn.Module], size: int, *, enabled: bool) -> Iterator[None]:
    """Each block's ``mlp`` run on ``size`` tokens at a time, for the duration of the block.

    An MLP acts on each token alone, so the result is the same, while its (B, tokens, 4D)
    hidden layer, the peak of a forward pass, shrinks to ``size`` tokens: the kept block inputs
    of rollout then fit in the memory of one plain forward pass. Only without a graph (a
    backward pass would need every chunk's activations anyway). The module's own ``forward``
    is set on the instance and removed afterwards; nothing of its class is touched."""
    chunked = []
    for block in blocks if enabled else []:
        mlp = getattr(block, "mlp", None)
        if isinstance(mlp, nn.Module) and "forward" not in mlp.__dict__:
            mlp.forward = _chunked(mlp.forward, size)
            chunked.append(mlp)
    try:
        yield
    finally:
        for mlp in chunked:
            del mlp.forward


def _chunked(forward: Any, size: int) -> Any:
    def run(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] <= size:
            return forward(x)
        first = forward(x[:, :size])
        out = first.new_empty(*x.shape[:2], first.shape[-1])  # (B, N, D_out)
        out[:, :size] = first
        for start in range(size, x.shape[1], size):
            out[:, start:start + size] = forward(x[:, start:start + size])
        return out

    return run


class EvaAdapter(Adapter):
    """Eva: EVA-02, DINOv3 and the RoPE ViTs; the rotary embedding is a block keyword."""

    family = "Eva"

    def keep_kwargs(self, kwargs: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
        """The rotary embedding of the kept patches, gathered as timm's own patch dropout
        does (``apply_keep_indices_nlc``): (P, dim) -> (B, 1, K, dim) shared by the heads;
        a block's own (heads, P, dim) of mixed RoPE -> (B, heads, K, dim)."""
        from timm.layers import apply_keep_indices_nlc

        rope = kwargs.get("rope")
        if rope is None:
            return kwargs
        kept = apply_keep_indices_nlc(keep, rope, keep)
        return {**kwargs, "rope": kept.unsqueeze(1) if rope.ndim == 2 else kept}


def _pair(size: Any) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _patch_size(model: nn.Module) -> tuple[int, int]:
    """Pixels per patch token; for a hybrid (a CNN stem, timm's HybridEmbed) the stem's
    stride times the patch size on its feature map."""
    embed = getattr(model, "patch_embed", None) or getattr(model, "embeds", None)
    size = getattr(embed, "patch_size", None)
    if size is None:
        raise ConfigError(f"{type(model).__name__} has no patch embedding with a patch_size")
    ratio = _pair(getattr(embed, "feature_ratio", None) or 1)
    return _pair(size)[0] * ratio[0], _pair(size)[1] * ratio[1]


def _fixed_size(model: nn.Module) -> tuple[int, int] | None:
    """The one input size a timm model with a strict patch embedding accepts, else None."""
    embed = getattr(model, "patch_embed", None)
    if embed is None or not getattr(embed, "strict_img_size", False) \
            or getattr(model, "dynamic_img_size", False):
        return None
    return tuple(embed.img_size)


def _pool_kind(model: nn.Module) -> str:
    if getattr(model, "attn_pool", None) is not None:
        return "map"
    if getattr(model, "head_dist", None) is not None:
        return "distilled"
    pool = getattr(model, "global_pool", "token") or ""
    if pool not in POOLS:
        raise ConfigError(f"the explanations need a pooled feature; this "
                          f"{type(model).__name__} has global_pool={pool!r} (supported: "
                          f"{', '.join(POOLS)})")
    return pool


def _families() -> dict[type, type[Adapter]]:
    """Model class -> adapter. timm's classes only once timm is imported: a timm model cannot
    exist before, and importing timm takes seconds."""
    from vit.models.vision_transformer import VisionTransformer

    families: dict[type, type[Adapter]] = {VisionTransformer: Adapter}
    if "timm" not in sys.modules:
        return families
    from timm.models.beit import Beit
    from timm.models.eva import Eva
    from timm.models.naflexvit import NaFlexVit
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    families.update({TimmViT: Adapter, Eva: EvaAdapter, Beit: Adapter,
                     VisionTransformerRelPos: Adapter, NaFlexVit: Adapter})
    return families


FAMILIES = ("vit.VisionTransformer (this package)", "timm VisionTransformer (ViT, DeiT, "
            "DeiT-III, CLIP, SigLIP, DINOv2, registers)", "timm VisionTransformerDistilled "
            "(distilled DeiT)", "timm Eva (EVA-02, DINOv3, RoPE ViTs)", "timm Beit",
            "timm VisionTransformerRelPos", "timm NaFlexVit")


def supported_families() -> str:
    return "; ".join(FAMILIES)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model``'s family (subclasses count: DeiT distilled is a timm ViT);
    one ``ConfigError`` line naming the supported families for anything else."""
    if isinstance(model, Adapter):
        return model
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: what it wraps
    for cls in type(model).__mro__:
        adapter = _families().get(cls)
        if adapter is not None:
            return adapter(model)
    raise ConfigError(f"cannot explain a {type(model).__name__}: the explanations support "
                      f"ViT-family models ({supported_families()}); hierarchical backbones "
                      "(Swin, ...) and CNNs are not supported")
