"""Noise-conditional score networks: a U-Net for images and an MLP for 2-D toys.

The U-Net follows DDPM's (Ho et al. 2020) layout: residual blocks with GroupNorm
and SiLU, self-attention at chosen resolutions, a down path and an up path joined
by skip connections. σ enters twice: a sinusoidal embedding of log σ is added to
every residual block, and the output is divided by σ (NCSNv2 technique 3,
s_θ(x, σ) = f_θ(x, σ)/σ), which makes ‖s_θ‖ scale like the true score's 1/σ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODELS", "MLPScore", "UNet", "build_score_model", "count_parameters"]


def _groups(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


def sigma_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of log σ (Transformer-style frequencies 1 … 1/10⁴), shape (N, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=sigma.device) / half)
    angles = torch.log(sigma.float())[:, None] * frequencies[None] * 100.0
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _sigma_batch(sigma: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, device=device, dtype=torch.float32)
    if sigma.ndim == 0:
        sigma = sigma.expand(batch)
    if sigma.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape ({batch},), got {tuple(sigma.shape)}")
    return sigma


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embed(emb)[:, :, None, None].to(h.dtype)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """Noise-conditional U-Net: forward(x (N,C,H,W), σ (N,)) → score estimate (N,C,H,W)."""

    def __init__(self, *, in_channels: int, image_size: int, base_channels: int = 128,
                 channel_mults: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: tuple[int, ...] = (16,), dropout: float = 0.1, scale_by_sigma: bool = True):
        super().__init__()
        levels = len(channel_mults)
        if image_size % 2 ** (levels - 1):
            raise ValueError(
                f"image_size={image_size} must be divisible by 2**(len(channel_mults)-1) = {2 ** (levels - 1)} "
                f"for channel_mults={tuple(channel_mults)}; use fewer levels or another image size"
            )
        resolutions = [image_size // 2**k for k in range(levels)]
        unknown = sorted(set(attn_resolutions) - set(resolutions))
        if unknown:
            raise ValueError(f"attn_resolutions {unknown} do not occur; the U-Net's resolutions are {resolutions}")
        self.in_channels, self.image_size, self.scale_by_sigma = in_channels, image_size, scale_by_sigma
        self.embed_dim = 4 * base_channels
        self.embed = nn.Sequential(nn.Linear(base_channels, self.embed_dim), nn.SiLU(),
                                   nn.Linear(self.embed_dim, self.embed_dim))
        self.base_channels = base_channels
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Down path: blocks per level, then a stride-2 conv; remember skip widths.
        self.down = nn.ModuleList()
        skips, channels = [base_channels], base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(channels, base_channels * mult, self.embed_dim, dropout)]
                channels = base_channels * mult
                if resolutions[level] in attn_resolutions:
                    blocks.append(Attention(channels))
                self.down.append(nn.ModuleList(blocks))
                skips.append(channels)
            if level < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(channels, channels, 3, stride=2, padding=1)]))
                skips.append(channels)

        self.middle = nn.ModuleList([ResBlock(channels, channels, self.embed_dim, dropout), Attention(channels),
                                     ResBlock(channels, channels, self.embed_dim, dropout)])

        # Up path: one more block per level than down, each taking a skip.
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                blocks = [ResBlock(channels + skips.pop(), base_channels * channel_mults[level], self.embed_dim,
                                   dropout)]
                channels = base_channels * channel_mults[level]
                if resolutions[level] in attn_resolutions:
                    blocks.append(Attention(channels))
                self.up.append(nn.ModuleList(blocks))
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(channels, channels, 3, padding=1)]))
        assert not skips, "every skip connection must be consumed by the up path"
        self.head = nn.Sequential(nn.GroupNorm(_groups(channels), channels), nn.SiLU(),
                                  nn.Conv2d(channels, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.image_size \
                or x.shape[-2] != self.image_size:
            raise ValueError(f"expected input (N, {self.in_channels}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        sigma = _sigma_batch(sigma, x.shape[0], x.device)
        emb = self.embed(sigma_embedding(sigma, self.base_channels))
        h = self.stem(x)
        hs = [h]
        for blocks in self.down:
            h = _run(blocks, h, emb)
            hs.append(h)
        h = _run(self.middle, h, emb)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = _run(blocks, h, emb)
        out = self.head(h)
        if self.scale_by_sigma:
            out = out / sigma.to(out.dtype).reshape(-1, 1, 1, 1)
        return out


def _run(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        h = block(h, emb) if isinstance(block, (ResBlock, Attention)) else block(h)
    return h


class MLPScore(nn.Module):
    """Score network for low-dimensional toys: forward(x (N,D), σ (N,)) → (N,D)."""

    def __init__(self, *, dim: int = 2, hidden: int = 128, depth: int = 3, scale_by_sigma: bool = True):
        super().__init__()
        self.dim, self.hidden, self.scale_by_sigma = dim, hidden, scale_by_sigma
        layers: list[nn.Module] = [nn.Linear(dim + hidden, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected input (N, {self.dim}), got {tuple(x.shape)}")
        sigma = _sigma_batch(sigma, x.shape[0], x.device)
        features = sigma_embedding(sigma, self.hidden).to(x.dtype)
        out = self.net(torch.cat([x, features], dim=1))
        if self.scale_by_sigma:
            out = out / sigma.to(out.dtype)[:, None]
        return out


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _unet(model_cfg, data_cfg) -> UNet:
    return UNet(in_channels=data_cfg.channels, image_size=data_cfg.image_size, base_channels=model_cfg.base_channels,
                channel_mults=tuple(model_cfg.channel_mults), num_res_blocks=model_cfg.num_res_blocks,
                attn_resolutions=tuple(model_cfg.attn_resolutions), dropout=model_cfg.dropout,
                scale_by_sigma=model_cfg.scale_by_sigma)


def _mlp(model_cfg, data_cfg) -> MLPScore:
    return MLPScore(dim=2, hidden=model_cfg.mlp_hidden, depth=model_cfg.mlp_depth,
                    scale_by_sigma=model_cfg.scale_by_sigma)


MODELS = {"unet": _unet, "mlp": _mlp}


def build_score_model(model_cfg, data_cfg) -> nn.Module:
    """The score network a config names (`model.kind`: unet or mlp)."""
    if model_cfg.kind not in MODELS:
        raise ValueError(f"unknown model.kind {model_cfg.kind!r}; choose one of {', '.join(MODELS)}")
    return MODELS[model_cfg.kind](model_cfg, data_cfg)
