"""How an epoch is drawn: the draw modes of the balancing recipes (data/balance.py RECIPES). Pure numpy.

A recipe at an exponent beta weighs clip j by its scheme's m_j = w_j^beta (beta = 0: all alike)
and draws an epoch of E clips:
  repeats      clip j exactly M_j = round(m_j / min m) times (E = sum M_j): the paper's way
  replacement  E independent draws, clip j with probability m_j / sum m: a multinomial, as
               torch's WeightedRandomSampler(replacement=True) draws for AST and PSLA
  subset       E distinct clips by successive weighted sampling without replacement (each next
               clip with probability proportional to m_j among those not drawn yet), as
               torch.multinomial(m, E, replacement=False) draws for AudioMAE, EAT and PaSST.
               Drawn as the E smallest of X_j / m_j, X_j ~ Exp(1) (exponential keys, which is
               also how torch draws it): the same distribution of the drawn set.
  round_robin  PANNs: classes take turns, class k getting a share s_k = N_k^(1 - beta) / sum_l
               N_l^(1 - beta) of the draws (equal shares at beta = 1, PANNs' setting: E s_k an
               epoch, the fraction rounded up or down at random, unbiased), and each turn of a
               class takes the next clip of a shuffled cycle through its clips, reshuffled each
               time round; the cycles run on from epoch to epoch. At beta = 0 every (clip,
               label) pair is drawn alike, so a clip with L labels comes L times as often: unlike
               the other recipes, round robin is not the raw data at beta = 0.
The draws of an epoch are a function of (seed, epoch) alone (`EpochDraw.counts`); their order
is the stream's (data/stream.py).

The expected draws of clip j an epoch (`EpochDraw.expected`): M_j; E m_j / sum m; for subset its
inclusion probability, about 1 - exp(-lambda m_j) with lambda solving sum_j (1 - exp(-lambda m_j))
= E (`inclusion_probabilities`: where the E-th smallest key falls, exact as E grows); for round
robin the sum over j's labels k of E s_k / N_k.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from data.balance import (MultiLabels, as_multilabels, class_counts, clip_weights, gini, imbalance_ratio,
                          oversampling_factors, rarest_label_count, recipe)
from data.cli import InputError

__all__ = ["EpochDraw", "epoch_draw", "check_epoch", "inclusion_probabilities", "exposure_stats"]

_TAG = 0xD4A3           # keys the draws' random numbers apart from the stream's order
_NEWTON_STEPS = 200     # `inclusion_probabilities`: Newton steps at most (a few dozen at AudioSet's size)


@dataclass(frozen=True)
class EpochDraw:
    """The draws of every epoch of a split of `clips` clips under one recipe at one beta."""
    recipe: str
    draw: str                           # data/balance.py DRAWS
    beta: float
    length: int                         # E: draws an epoch
    clips: int                          # N
    weights: np.ndarray                 # float64 [N]: M_j (repeats), m_j / max m (replacement, subset); [0] for round robin
    members: MultiLabels | None = None  # round robin: class k's clips are members[k], ascending
    quota: np.ndarray | None = None     # round robin: float64 [K] draws of class k an epoch, E s_k

    def counts(self, seed: int, epoch: int) -> np.ndarray:
        """Draws of each clip in epoch `epoch`, int64 [N] summing to E; a function of (seed, epoch)."""
        if self.draw == "repeats":
            return self.weights.astype(np.int64)
        rng = np.random.default_rng([seed, epoch, _TAG])
        if self.draw == "replacement":
            return rng.multinomial(self.length, self.weights / self.weights.sum()).astype(np.int64)
        if self.draw == "subset":
            with np.errstate(divide="ignore"):
                keys = rng.standard_exponential(self.clips) / self.weights
            out = np.zeros(self.clips, np.int64)
            out[np.argpartition(keys, self.length - 1)[:self.length]] = 1
            return out
        return self._round_robin(seed, epoch, rng)

    def _round_robin(self, seed: int, epoch: int, rng: np.random.Generator) -> np.ndarray:
        """Round robin's counts: class k's q_k turns of the epoch are positions [a_k, a_k + q_k)
        of its run of cycles, a_k = floor(epoch E s_k) (where the earlier epochs left it, to within
        one turn); cycle c of class k is a permutation of its clips drawn from (seed, k, c)."""
        sizes = np.diff(self.members.offsets).astype(np.int64)
        turns = _apportion(self.quota, self.length, rng)
        first = np.floor(epoch * self.quota).astype(np.int64)
        out = np.zeros(self.clips, np.int64)
        for k in np.flatnonzero(turns):
            n, a, b = int(sizes[k]), int(first[k]), int(first[k] + turns[k])  # positions [a, b)
            clips = self.members[k].astype(np.int64)
            (c0, i0), (c1, i1) = divmod(a, n), divmod(b, n)
            if c0 == c1:
                out[_cycle(clips, (seed, k, c0))[i0:i1]] += 1
                continue
            out[_cycle(clips, (seed, k, c0))[i0:]] += 1
            out[clips] += c1 - c0 - 1                                        # whole cycles
            out[_cycle(clips, (seed, k, c1))[:i1]] += 1
        return out

    def expected(self) -> np.ndarray:
        """Expected draws of each clip an epoch, float64 [N] (see the module docstring)."""
        if self.draw == "repeats":
            return self.weights.astype(np.float64)
        if self.draw == "replacement":
            return self.length * self.weights / self.weights.sum()
        if self.draw == "subset":
            return inclusion_probabilities(self.weights, self.length)
        sizes = np.diff(self.members.offsets)
        per_turn = np.repeat(np.divide(self.quota, sizes, out=np.zeros(len(sizes)), where=sizes > 0), sizes)
        return np.bincount(self.members.indices, weights=per_turn, minlength=self.clips)


def _cycle(clips: np.ndarray, key: tuple[int, ...]) -> np.ndarray:
    """`clips` in the order of their permutation drawn from `key` (seed, class, cycle)."""
    return clips[np.random.default_rng([*key, _TAG]).permutation(len(clips))]


def _apportion(quota: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integers summing to `total` (= sum of `quota`, float64 [K]), each quota_k rounded down or
    up with the chance of its fraction (systematic sampling in a random class order), int64 [K]."""
    base = np.floor(quota).astype(np.int64)
    order = rng.permutation(len(quota))
    left = total - int(base.sum())                        # the fractions' sum, an integer
    cum = np.minimum(np.cumsum((quota - base)[order]), left)
    cum[-1] = left
    u = rng.random()
    ups = np.floor(cum + u) - np.floor(np.concatenate([[0.0], cum[:-1]]) + u)
    base[order] += ups.astype(np.int64)
    return base


def _members(ml: MultiLabels, n_classes: int) -> MultiLabels:
    """The clips of each class in compressed-row form (row k: class k's clips, ascending)."""
    clip = np.repeat(np.arange(len(ml), dtype=np.int64), ml.lengths)[np.argsort(ml.indices, kind="stable")]
    offsets = np.zeros(n_classes + 1, np.int64)
    np.cumsum(np.bincount(ml.indices, minlength=n_classes), out=offsets[1:])
    return MultiLabels(offsets, clip.astype(np.min_scalar_type(max(len(ml) - 1, 0))))


def epoch_draw(labels, n_classes: int, name: str, beta: float, clip_ids=None) -> EpochDraw:
    """How the epochs of `labels` (a training split: its own class counts weigh it) are drawn by
    the recipe `name` (data/balance.py `recipe`) at exponent `beta`. An InputError for an unknown
    recipe or an epoch that cannot be drawn without replacement, a ValueError for a negative beta."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    r, ml = recipe(name), as_multilabels(labels)
    counts = class_counts(ml, n_classes)
    length = len(ml) if r.epoch is None else r.epoch
    if r.draw == "repeats":
        m = oversampling_factors(ml, beta, counts, r.scheme, clip_ids)
        return EpochDraw(r.name, r.draw, beta, int(m.sum()), len(ml), m.astype(np.float64))
    if r.draw == "round_robin":
        rarest_label_count(ml, counts, clip_ids)  # names a clip without a class that has clips
        share = np.where(counts > 0, np.maximum(counts, 1).astype(np.float64) ** (1.0 - beta), 0.0)
        return EpochDraw(r.name, r.draw, beta, length, len(ml), np.zeros(0), _members(ml, n_classes),
                         length * share / share.sum())
    check_epoch(name, len(ml))
    w = clip_weights(ml, counts, r.scheme, clip_ids)
    m = np.exp(beta * (np.log(w) - np.log(w.max()))) if len(w) else w   # (w / max w)^beta, in (0, 1]
    return EpochDraw(r.name, r.draw, beta, length, len(ml), m)


def check_epoch(name: str, clips: int) -> None:
    """An InputError naming the recipe `name` if it cannot draw an epoch from `clips` clips: a
    subset epoch longer than the split."""
    r = recipe(name)
    if r.draw == "subset" and r.epoch > clips:
        raise InputError(f"recipe {name!r} draws {r.epoch:,} clips an epoch without replacement and the split has "
                         f"{clips:,}: give a shorter epoch, e.g. {name.partition('@')[0]}@{max(1, clips // 10)}")


def inclusion_probabilities(weights: np.ndarray, length: int) -> np.ndarray:
    """pi_j, the chance that clip j is among `length` = E clips drawn without replacement by
    successive weighted sampling, float64 [N]: 1 - exp(-lambda w_j), lambda solving sum_j pi_j = E
    (Newton's method from below, where the sum is concave in lambda: every step stays below).
    Clips of weight 0 are never drawn; E at least the clips of positive weight draws them all."""
    w = np.asarray(weights, dtype=np.float64)
    if length >= int((w > 0).sum()):
        return (w > 0).astype(np.float64)
    lam = length / w.sum()                     # sum_j (1 - exp(-lam w_j)) <= lam sum w = E
    for _ in range(_NEWTON_STEPS):
        left = length + np.expm1(-lam * w).sum()           # E - sum pi_j >= 0
        if left <= 1e-9 * length:
            break
        lam += left / (w * np.exp(-lam * w)).sum()
    return -np.expm1(-lam * w)


def exposure_stats(labels, per_clip: np.ndarray, n_classes: int) -> dict:
    """The exposure of classes to `per_clip` draws of each clip [N] (e.g. expected draws an
    epoch): {exposure (per class, sum over its clips, in class-index order), gini and
    imbalance_ratio of it over the classes with clips, max_clip_exposure (the largest per_clip)}."""
    ml = as_multilabels(labels)
    per_clip = np.asarray(per_clip, dtype=np.float64)
    exposure = class_counts(ml, n_classes, weights=per_clip)
    present = exposure[class_counts(ml, n_classes) > 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class none of whose clips is drawn: left out, as an empty class
        return {"exposure": exposure.tolist(), "gini": gini(present), "imbalance_ratio": imbalance_ratio(present),
                "max_clip_exposure": float(per_clip.max(initial=0.0))}
