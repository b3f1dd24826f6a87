"""On-device, batch-level augmentation of raw log-mel spectrograms: SpecAugment and MixUp.

Both work on a whole batch [batch, frames, mels] of raw (not yet normalised) log-mel on
any device, with no Python loop over examples, and draw every random number from an
optional `torch.Generator` on the batch's device, so a seeded generator gives the same
augmentation on every run.

- SpecAugment (Park et al., 2019, https://arxiv.org/abs/1904.08779), AST's setting: one
  frequency mask and one time mask per example, width floor(U * param), uniform start,
  value 0 in the raw log-mel domain (so masks are applied before normalisation).
- MixUp (Zhang et al., 2018, https://arxiv.org/abs/1710.09412) in the energy domain as in
  Moore et al. (2023): log(lam * exp(x) + (1 - lam) * exp(x')), lam ~ Beta(alpha, alpha)
  per example, every example mixed with another one of the batch (`partners`: a random
  derangement, so no example is its own partner and each is a partner once); labels mixed
  with the same lam.

Order in `augment`: MixUp, then SpecAugment. AST mixes waveforms before computing the
spectrogram and masks that spectrogram, so a masked band is empty in the training input;
masking before mixing would let the partner's energy fill the band.
"""
from __future__ import annotations

import math

import torch

from model.config import AugmentConfig

__all__ = ["AugmentConfig", "spec_augment", "partners", "energy_mixup", "augment"]


def _uniform(n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """n draws of U[0, 1) in float32 on like's device."""
    return torch.rand(n, generator=generator, device=like.device)


def _mask(size: int, param: int, batch: int, like: torch.Tensor,
          generator: torch.Generator | None) -> torch.Tensor:
    """Boolean [batch, size]: one band per row, width floor(U * param) (< size), start
    floor(U * (size - width)), as torchaudio's FrequencyMasking / TimeMasking."""
    width = (_uniform(batch, like, generator) * min(param, size)).floor()
    start = (_uniform(batch, like, generator) * (size - width)).floor()
    pos = torch.arange(size, device=like.device)
    return (pos >= start[:, None]) & (pos < (start + width)[:, None])


def spec_augment(x: torch.Tensor, freqm: int, timem: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """x raw log-mel [batch, frames, mels] -> a new tensor with one frequency band (width
    < freqm bins) and one time band (width < timem frames) per example set to 0.
    A param of 0 skips that mask."""
    batch, frames, mels = x.shape
    keep = torch.ones(batch, frames, mels, dtype=torch.bool, device=x.device)
    if freqm > 0:
        keep &= ~_mask(mels, freqm, batch, x, generator)[:, None, :]
    if timem > 0:
        keep &= ~_mask(frames, timem, batch, x, generator)[:, :, None]
    return x.masked_fill(~keep, 0.0)


def _log_gamma(alpha: float, n: int, like: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
    """Logs of n draws of Gamma(alpha, 1) (alpha > 0), float32 on like's device, from normal
    and uniform draws of `generator` only (public ops, so a seeded generator repeats them).

    Marsaglia & Tsang (2000, https://doi.org/10.1145/358407.358414) for shape a >= 1:
    d = a - 1/3, c = 1 / sqrt(9 d), proposal v = (1 + c z)^3 with z ~ N(0, 1), accepted when
    v > 0 and log u < z^2 / 2 + d - d v + d log v (u ~ U(0, 1]); the draw is d v. Below 1 the
    same paper's boost: Gamma(alpha) = Gamma(alpha + 1) * u^(1 / alpha). Logs so that tiny
    alphas do not underflow to 0.

    Proposals come in rounds of 4 per draw (4 x n normals, 4 x n uniforms) and each draw takes
    its first accepted one, which is sequential rejection sampling; acceptance is >= 95 % per
    proposal for a >= 1, so one round almost always suffices (one host sync per round)."""
    a = alpha + 1.0 if alpha < 1 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    device = like.device
    out = torch.zeros(n, device=device)
    pending = torch.ones(n, dtype=torch.bool, device=device)
    while True:
        z = torch.randn(4, n, generator=generator, device=device)
        u = 1.0 - torch.rand(4, n, generator=generator, device=device)      # (0, 1]
        v = (1.0 + c * z) ** 3
        log_v = torch.log(v.clamp_min(torch.finfo(v.dtype).tiny))
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
        first = ok.to(torch.uint8).argmax(0, keepdim=True)                  # first accepted round
        found = ok.any(0)
        out = torch.where(pending & found, math.log(d) + log_v.gather(0, first)[0], out)
        pending &= ~found
        if not pending.any():
            break
    if alpha < 1:
        u = 1.0 - torch.rand(n, generator=generator, device=device)
        out = out + torch.log(u) / alpha
    return out


def sample_beta(alpha: float, n: int, like: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) in float32 on like's device, as G1 / (G1 + G2) with
    G ~ Gamma(alpha, 1) (see _log_gamma), computed as sigmoid(log G1 - log G2). Every random
    number comes from `generator`: the same seed gives the same draws."""
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    g1 = _log_gamma(alpha, n, like, generator)
    g2 = _log_gamma(alpha, n, like, generator)
    return torch.sigmoid(g1 - g2)


def partners(batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """MixUp partners [batch]: a random permutation with no fixed point (batch >= 2), each example
    the partner of exactly one other. The examples in a random order, each partnered with the
    next (the last with the first): one cycle through the batch. A plain random permutation
    leaves about one example a batch mixed with itself."""
    order = torch.randperm(batch, generator=generator, device=device)
    out = torch.empty_like(order)
    out[order] = order.roll(-1)
    return out


def energy_mixup(x: torch.Tensor, y: torch.Tensor, alpha: float,
                 generator: torch.Generator | None = None,
                 lam: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy-domain MixUp. x raw log-mel [batch, frames, mels] (natural log of energy),
    y targets [batch, classes] -> (log(lam exp(x) + (1 - lam) exp(x[perm])),
    lam y + (1 - lam) y[perm]), lam [batch] ~ Beta(alpha, alpha) unless given, perm = `partners`.
    Computed as logaddexp(x + log lam, x[perm] + log(1 - lam)) in float32 (no overflow,
    lam = 1 returns x exactly), cast back to x's dtype."""
    batch = x.shape[0]
    if lam is None:
        lam = sample_beta(alpha, batch, x, generator)
    lam = lam.to(device=x.device, dtype=torch.float32)
    perm = partners(batch, x.device, generator)
    xf = x.float()
    mixed = torch.logaddexp(xf + lam.log()[:, None, None], xf[perm] + torch.log1p(-lam)[:, None, None])
    targets = lam[:, None] * y.float() + (1 - lam[:, None]) * y.float()[perm]
    return mixed.to(x.dtype), targets.to(y.dtype)


def augment(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training augmentation of a raw log-mel batch x [batch, frames, mels], targets
    y [batch, classes]: MixUp, then SpecAugment with mask widths scaled to the geometry
    (freqm * mels / 128, timem * frames / 1024). Normalise afterwards."""
    if cfg.mixup:
        x, y = energy_mixup(x, y, cfg.mixup_alpha, generator)
    if cfg.specaugment:
        _, frames, mels = x.shape
        x = spec_augment(x, round(cfg.freqm * mels / 128), round(cfg.timem * frames / 1024), generator)
    return x, y
