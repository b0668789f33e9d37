"""A Vision Transformer, readable top to bottom.

    image (B, C, H, W)
      -> PatchEmbed: conv with stride = patch size          (B, P, D)   P = grid_h * grid_w
      -> prepend [CLS] + optional register tokens           (B, N, D)   N = prefix + P
      -> add learned position embedding (resampled bicubically when the grid differs)
      -> depth x pre-norm Block: x + Attention(LN(x)), x + Mlp(LN(x))
      -> final norm -> pool ([CLS] token or mean of patch tokens) -> Linear head

Parameter names follow timm's ``VisionTransformer``, so a timm state_dict of the same
configuration loads with ``strict=True`` and gives the same logits (tests/test_model.py).

Attention runs through ``F.scaled_dot_product_attention`` (FlashAttention on GPU). When asked
for attention weights (``return_attention=True``) it takes the explicit
``softmax(q @ k^T / sqrt(d))`` path instead and returns them; both paths compute the same function.

Presets by name (``create_model``) are in ``vit.models.presets``; ``from_timm`` is in
``vit.models.timm_interop``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ViTConfig",
    "VisionTransformer",
    "config_dict",
]

# The attention itself, given q, k, v (B, heads, N, head_dim) -> output (B, heads, N, head_dim).
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ViTConfig:
    """Everything needed to rebuild the architecture. Saved inside every checkpoint."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: float | None = None  # LayerScale init; None disables LayerScale
    reg_tokens: int = 0  # register tokens (Darcet et al. 2023), after [CLS]
    global_pool: str = "token"  # "token" ([CLS]) or "avg" (mean of patch tokens)
    drop_rate: float = 0.0  # dropout before the head
    attn_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over blocks

    def __post_init__(self) -> None:
        if self.img_size <= 0 or self.patch_size <= 0:
            raise ValueError(f"img_size and patch_size must be positive, got {self.img_size}, {self.patch_size}")
        if self.img_size % self.patch_size != 0:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.depth < 1 or self.num_classes < 0 or self.reg_tokens < 0:
            raise ValueError("depth must be >= 1, num_classes and reg_tokens >= 0")
        for name in ("drop_rate", "attn_drop_rate", "proj_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each to embed_dim (one conv)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)  # as trained
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.patch_size[0]
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not divisible by the patch size {p}")
        x = self.proj(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, P, D)


class Attention(nn.Module):
    """Multi-head self-attention; fused (SDPA) by default, explicit when weights are wanted."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, qk_norm: bool,
                 attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (B, N, D) -> q, k, v, each (B, heads, N, head_dim), q and k normalised."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, N, head_dim)
        return self.q_norm(q), self.k_norm(k), v

    def forward(
        self, x: torch.Tensor, return_attention: bool = False, attend: Attend | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``attend(q, k, v) -> (B, heads, N, head_dim)``, when given, replaces the attention
        itself for this call (explanations use it to see q, k, v and the output's gradient)."""
        B, N, D = x.shape
        q, k, v = self.heads(x)

        attn = None
        if attend is not None:
            x = attend(q, k, v)
        elif return_attention:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
            attn = attn.softmax(dim=-1)  # each row sums to 1
            x = self.attn_drop(attn) @ v  # (B, heads, N, head_dim)
        else:
            dropout_p = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)

        x = x.transpose(1, 2).reshape(B, N, D)  # heads back side by side
        x = self.proj_drop(self.proj(x))
        return x, attn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (Touvron et al. 2021, CaiT)."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + Attention(LN(x)), then x + Mlp(LN(x))."""

    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.qk_norm,
                              cfg.attn_drop_rate, cfg.proj_drop_rate)
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.proj_drop_rate)
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, return_attention: bool = False, attend: Attend | None = None,
        mlp_chunk: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``mlp_chunk``: run the MLP on that many tokens at a time. It acts on each token
        alone, so the result is the same with a fraction of the memory (for inference: while
        training, stochastic depth would draw per chunk)."""
        y, attn = self.attn(self.norm1(x), return_attention=return_attention, attend=attend)
        x = x + self.drop_path1(self.ls1(y))
        if mlp_chunk is None:
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), attn
        out = torch.empty_like(x)
        for start in range(0, x.shape[1], mlp_chunk):
            part = x[:, start:start + mlp_chunk]  # (B, chunk, D)
            out[:, start:start + mlp_chunk] = part + self.drop_path2(self.ls2(self.mlp(self.norm2(part))))
        return out, attn


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021). Build with a ``ViTConfig`` or with timm's keyword names:

    >>> VisionTransformer(img_size=32, patch_size=4, num_classes=10, embed_dim=192, depth=6, num_heads=3)
    """

    def __init__(self, config: ViTConfig | None = None, **kwargs: Any):
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("pass either a ViTConfig or keyword arguments, not both")
        cfg = config if config is not None else ViTConfig(**kwargs)
        self.config = cfg
        D = cfg.embed_dim
        self.num_classes = cfg.num_classes
        self.global_pool = cfg.global_pool
        self.embed_dim = self.num_features = D
        self.num_reg_tokens = cfg.reg_tokens
        self.num_prefix_tokens = 1 + cfg.reg_tokens  # [CLS] then registers, then patches

        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D)) if cfg.reg_tokens else None
        num_tokens = self.num_prefix_tokens + self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, D))

        # stochastic depth grows linearly from 0 (first block) to drop_path_rate (last block)
        drop_path_rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([Block(cfg, drop_path=r) for r in drop_path_rates])
        # timm names the final norm `fc_norm` (applied after pooling) when pooling by mean.
        use_fc_norm = cfg.global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(D, eps=1e-6)
        self.fc_norm = nn.LayerNorm(D, eps=1e-6) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """timm's scheme: trunc-normal(0.02) for linears and pos_embed, tiny tokens, zero head."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # --- the timm-style public API ---------------------------------------------------------

    def no_weight_decay(self) -> set[str]:
        """Parameters that AdamW should not decay (besides biases and norms)."""
        return {"pos_embed", "cls_token", "reg_token"}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layers for timm's layer-wise lr decay, as timm's ViT: the embeddings, each block (the
        final norm with the last one), then the head (unmatched names come last)."""
        return dict(
            stem=r"^cls_token|reg_token|pos_embed|patch_embed",
            blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head (zero-initialised) for a new number of classes."""
        if global_pool is not None and global_pool != self.global_pool:
            raise ValueError("changing global_pool after construction is not supported")
        self.num_classes = num_classes
        self.config = replace(self.config, num_classes=num_classes)
        device = self.cls_token.device
        self.head = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B = x.shape[0]
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(B, -1, -1))
        x = torch.cat(prefix + [x], dim=1)  # (B, N, D)
        pos_embed = self.pos_embed
        if grid != self.patch_embed.grid_size:  # another input size: resample the patch grid
            from timm.layers import resample_abs_pos_embed  # bicubic; timm takes seconds to import

            pos_embed = resample_abs_pos_embed(
                pos_embed, new_size=list(grid), old_size=list(self.patch_embed.grid_size),
                num_prefix_tokens=self.num_prefix_tokens)  # (1, prefix + h' * w', D)
        return x + pos_embed

    def _forward_tokens(
        self, x: torch.Tensor, return_attention: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"expected input of shape (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}"
            )
        x = self.embed(x)  # (B, N, D)
        attentions = []
        for block in self.blocks:
            x, attn = block(x, return_attention=return_attention)
            if attn is not None:
                attentions.append(attn)
        return self.norm(x), attentions

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> the first block's input tokens (B, N, D): patches, prefix, position."""
        p = self.patch_embed.patch_size[0]
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        x = self.patch_embed(x)  # (B, P, D)
        return self._pos_embed(x, grid)  # (B, N, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> normalised tokens (B, N, D)."""
        return self._forward_tokens(x, return_attention=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, D) -> logits (B, num_classes), or pooled features if pre_logits."""
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)  # mean of patch tokens
        else:
            x = x[:, 0]  # [CLS]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits; with ``return_attention=True`` also one (B, heads, N, N) tensor per block."""
        tokens, attentions = self._forward_tokens(x, return_attention)
        logits = self.forward_head(tokens)
        return (logits, attentions) if return_attention else logits


def config_dict(model: VisionTransformer) -> dict[str, Any]:
    """The model's architecture as plain data (what checkpoints store)."""
    return asdict(model.config)
