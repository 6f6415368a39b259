"""Noise-conditional score networks s_θ(x, σ): a U-Net for images and an MLP for toy data.

The U-Net follows DDPM's layout (Ho et al. 2020, 35.7M parameters on CIFAR-10): residual blocks
with GroupNorm and SiLU, self-attention at chosen resolutions, and a down path joined to an up path
by skip connections. σ enters twice: sinusoidal features of log σ feed an MLP whose output biases
every residual block, and the output is divided by σ (NCSNv2 technique 3, Song & Ermon 2020:
s_θ(x, σ) = f_θ(x, σ)/σ), so that ‖s_θ‖ scales like the true score's 1/σ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODELS", "MLPScore", "UNet", "build_score_model", "count_parameters", "sigma_features"]


def sigma_features(sigma: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal features of log σ (the Transformer/DDPM position encoding), shape (N, 2·⌈width/2⌉).

    [sin(ω_k log σ), cos(ω_k log σ)] with ⌈width/2⌉ angular frequencies ω_k falling geometrically
    from 100 to 0.1 per unit of log σ: neighbouring levels of a geometric σ ladder (Δlog σ ≈ 0.04)
    are told apart by the fast ones, the whole ladder (log σ ∈ [-5, 4]) is spanned by the slow ones.
    Computed in float32 whatever the autocast state.
    """
    half = (width + 1) // 2
    omega = 100.0 * torch.exp(-math.log(1000.0) * torch.arange(half, device=sigma.device) / max(half - 1, 1))
    angles = torch.log(sigma.float())[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _sigma_batch(sigma: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """σ as a float32 vector of length `batch`; a python float or 0-dim tensor is broadcast."""
    sigma = torch.as_tensor(sigma, device=device, dtype=torch.float32)
    if sigma.ndim == 0:
        sigma = sigma.expand(batch)
    if sigma.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape ({batch},) (one σ per example), "
                         f"got shape {tuple(sigma.shape)}")
    return sigma


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most of 32, 16, 8, 4, 2 groups that splits `channels` into groups of ≥ 4, else 1 group.

    32 groups at DDPM's widths (≥ 128 channels). Groups of a single channel would subtract away the
    per-channel σ bias that ResBlock adds just before its second norm, leaving the block blind to σ.
    """
    groups = next((g for g in (32, 16, 8, 4, 2) if channels % g == 0 and channels // g >= 4), 1)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + Linear(emb); out = skip(x) + conv(dropout(SiLU(GN(h)))), last conv zero-initialised."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, out_channels)
        self.norm2 = _group_norm(out_channels)
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
    """Single-head self-attention over the H·W positions: x + proj(softmax(qkᵀ/√C) v), proj zero-initialised."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3 * c, height * width).transpose(1, 2).chunk(3, dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(1, 2).reshape(n, c, height, width))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: (N, C, H, W) → (N, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3x3 convolution: (N, C, H, W) → (N, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.ModuleList):
    """Blocks applied in order, each as block(h, emb)."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self:
            h = block(h, emb)
        return h


class UNet(nn.Module):
    """Noise-conditional U-Net (DDPM layout): forward(x (N,C,H,W), σ (N,)) → score estimate (N,C,H,W).

    Every output of the stem and of each down stage is kept; each up stage concatenates one of them
    (last in, first out) to its input, so the up path has num_res_blocks + 1 blocks per level.
    """

    def __init__(self, *, in_channels: int, image_size: int, base_channels: int = 128,
                 channel_mults: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: tuple[int, ...] = (16,), dropout: float = 0.1, scale_by_sigma: bool = True):
        super().__init__()
        if not channel_mults:
            raise ValueError("channel_mults must list at least one level, e.g. (1, 2, 2, 2)")
        levels = len(channel_mults)
        if image_size % 2 ** (levels - 1):
            raise ValueError(
                f"image_size={image_size} must be divisible by 2**(len(channel_mults)-1) = {2 ** (levels - 1)} "
                f"for channel_mults={tuple(channel_mults)}; use an image_size that is a multiple of "
                f"{2 ** (levels - 1)} or fewer channel_mults"
            )
        resolutions = [image_size // 2**k for k in range(levels)]
        unknown = sorted(set(attn_resolutions) - set(resolutions))
        if unknown:
            raise ValueError(f"attn_resolutions {unknown} do not occur in this U-Net; "
                             f"valid resolutions are {resolutions}")
        self.in_channels, self.image_size, self.scale_by_sigma = in_channels, image_size, scale_by_sigma
        self.feature_width = base_channels
        embed_dim = 4 * base_channels
        self.embed = nn.Sequential(nn.Linear(2 * ((base_channels + 1) // 2), embed_dim), nn.SiLU(),
                                   nn.Linear(embed_dim, embed_dim))
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels, channels = [base_channels], base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                stage = Stage([ResBlock(channels, base_channels * mult, embed_dim, dropout)])
                channels = base_channels * mult
                if resolutions[level] in attn_resolutions:
                    stage.append(Attention(channels))
                self.down.append(stage)
                skip_channels.append(channels)
            if level < levels - 1:
                self.down.append(Stage([Downsample(channels)]))
                skip_channels.append(channels)

        self.middle = Stage([ResBlock(channels, channels, embed_dim, dropout), Attention(channels),
                             ResBlock(channels, channels, embed_dim, dropout)])

        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            for index in range(num_res_blocks + 1):
                out_channels = base_channels * channel_mults[level]
                stage = Stage([ResBlock(channels + skip_channels.pop(), out_channels, embed_dim, dropout)])
                channels = out_channels
                if resolutions[level] in attn_resolutions:
                    stage.append(Attention(channels))
                if level > 0 and index == num_res_blocks:
                    stage.append(Upsample(channels))
                self.up.append(stage)

        self.head = nn.Sequential(_group_norm(channels), nn.SiLU(), nn.Conv2d(channels, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Score estimate at noise level σ > 0 (one per example, or one shared scalar)."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected input of shape (N, {', '.join(map(str, expected))}) as built "
                             f"(in_channels, image_size), got {tuple(x.shape)}")
        sigma = _sigma_batch(sigma, x.shape[0], x.device)
        emb = F.silu(self.embed(sigma_features(sigma, self.feature_width)))
        h = self.stem(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.head(h)
        if self.scale_by_sigma:
            out = out / sigma.to(out.dtype)[:, None, None, None]
        return out


class MLPScore(nn.Module):
    """Score network for D-dim toy data: f = MLP([x, features(log σ)]), `depth` hidden SiLU layers; → f/σ."""

    def __init__(self, *, dim: int = 2, hidden: int = 128, depth: int = 3, scale_by_sigma: bool = True):
        super().__init__()
        self.dim, self.hidden, self.scale_by_sigma = dim, hidden, scale_by_sigma
        layers: list[nn.Module] = [nn.Linear(dim + 2 * ((hidden + 1) // 2), hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Score estimate (N, D) at noise level σ > 0 (one per example, or one shared scalar)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected input of shape (N, {self.dim}) as built (dim={self.dim}), "
                             f"got {tuple(x.shape)}")
        sigma = _sigma_batch(sigma, x.shape[0], x.device)
        features = sigma_features(sigma, self.hidden).to(x.dtype)
        out = self.net(torch.cat([x, features], dim=1))
        if self.scale_by_sigma:
            out = out / sigma.to(out.dtype)[:, None]
        return out


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _unet(model_cfg, data_cfg) -> UNet:
    return UNet(in_channels=data_cfg.channels, image_size=data_cfg.image_size,
                base_channels=model_cfg.base_channels, channel_mults=tuple(model_cfg.channel_mults),
                num_res_blocks=model_cfg.num_res_blocks, attn_resolutions=tuple(model_cfg.attn_resolutions),
                dropout=model_cfg.dropout, scale_by_sigma=model_cfg.scale_by_sigma)


def _mlp(model_cfg, data_cfg) -> MLPScore:
    return MLPScore(dim=2, hidden=model_cfg.mlp_hidden, depth=model_cfg.mlp_depth,
                    scale_by_sigma=model_cfg.scale_by_sigma)


MODELS = {"unet": _unet, "mlp": _mlp}


def build_score_model(model_cfg, data_cfg) -> nn.Module:
    """The score network named by `model_cfg.kind` ('unet' or 'mlp'; the MLP is for 2-D toys)."""
    if model_cfg.kind not in MODELS:
        raise ValueError(f"unknown model kind {model_cfg.kind!r}; valid kinds: {', '.join(MODELS)}")
    return MODELS[model_cfg.kind](model_cfg, data_cfg)
