"""Balance statistics and oversampling factors (Moore et al., ICASSP 2023, section 2).

Pure numpy, no I/O. Multi-label data is a sequence of per-clip label-index arrays; every
function also accepts a `MultiLabels` (the same thing in compressed-row form, which is what
the CSV parser and the store return, and what makes 2M clips cheap).

Notation follows the paper: N clips, K classes, N_k clips labelled k,
  prior            p_k = N_k / N                                         (eq. 1)
  imbalance ratio  rho = max_k N_k / min_k N_k                            (eq. 2)
  Gini             G = 1 + 1/K - 2 sum_k sum_{l<=k} p_(l) / (K sum_k p_k)  (eq. 3 + 1/K)
  oversampling     m_j = max_{k in clip j} (1 / p_k)^beta                 (eq. 4)
                   M_j = round(m_j / min_j m_j) >= 1, halves up           (eq. 5)

The method of balancing is a hyperparameter too (the paper's last paragraph). The field's
samplers fit one formula, a *scheme*: m_j = (agg over clip j's labels k of 1 / (N_k + c))^beta,
M_j = round(m_j / min m), with the exponent outside the aggregation, so beta = 0 is no balancing
and beta = 1 a scheme's published setting (`SCHEMES`):
  moore   max, c = 0      the paper's eq. 4 (the exponent commutes with the max)
  psla    sum, c = 0.01   PSLA, AST, AudioMAE, EAT (and in expectation PANNs' class round-robin)
  passt   sum, c = 100    PaSST, EfficientAT
A *recipe* is how a field's training code balances: a scheme's weights (or PANNs' class
round-robin), how an epoch is drawn from them (data/draws.py) and the epoch length E (`RECIPES`):
  moore          moore weights, each clip exactly M_j times a pass (repeats)   the paper
  psla           psla weights, repeats
  passt-repeats  passt weights, repeats
  ast            psla weights, N draws with replacement                        AST, PSLA
  audiomae       psla weights, 200,000 draws without replacement an epoch      AudioMAE, EAT
  passt          passt weights, 100,000 draws without replacement an epoch     PaSST, EfficientAT
  panns          each class an equal share of the draws, a clip at random within its class (round robin)
`NAME@E` is recipe NAME with an epoch of E draws (a draw recipe only: `passt@5000`).
Classes with no clips have no prior (1/p_k is infinite): they are left out of rho and G with
a warning that lists them, and ignored when a clip's factor is computed.

The Gini is the standard one, 0 for even priors and below 1 however uneven: the paper's eq. 3
as printed is 1/K less (-1/K for even priors: -0.14 with 7 classes, -0.0019 on AudioSet's 527,
where both agree with its Tables 1 and 2 to two decimals).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from data.cli import InputError

__all__ = [
    "MultiLabels", "as_multilabels", "class_counts", "priors", "priors_from_counts", "imbalance_ratio",
    "gini", "rarest_label_count", "rarest_label_order", "Scheme", "SCHEMES", "scheme", "oversampling_factors",
    "round_half_up", "oversampled_counts", "oversampled_stats", "clip_weights", "DRAWS", "Recipe", "RECIPES",
    "recipe",
]


@dataclass(frozen=True)
class MultiLabels:
    """Per-clip label indices in compressed-row form: clip j has `indices[offsets[j]:offsets[j+1]]`."""

    offsets: np.ndarray  # int64 [n_clips + 1]
    indices: np.ndarray  # int64 [n_labels]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, j: int) -> np.ndarray:
        return self.indices[self.offsets[j]:self.offsets[j + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Labels per clip, int64 [n_clips]."""
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> "MultiLabels":
        """The clips at `rows`, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = np.repeat(self.offsets[rows] - offsets[:-1], lengths)
        return MultiLabels(offsets, self.indices[np.arange(offsets[-1]) + starts])

    def multi_hot(self, n_classes: int) -> np.ndarray:
        """Float32 [n_clips, n_classes] 0/1 matrix."""
        out = np.zeros((len(self), n_classes), dtype=np.float32)
        out[np.repeat(np.arange(len(self)), self.lengths), self.indices] = 1.0
        return out


def as_multilabels(labels: Sequence[Sequence[int]] | MultiLabels) -> MultiLabels:
    """Convert a sequence of per-clip label-index arrays to `MultiLabels` (no copy if already one)."""
    if isinstance(labels, MultiLabels):
        return labels
    arrays = [np.asarray(l, dtype=np.int64).ravel() for l in labels]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    indices = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return MultiLabels(offsets, indices)


def class_counts(labels, n_classes: int, weights: np.ndarray | None = None) -> np.ndarray:
    """N_k: clips labelled k, int64 [n_classes]; with per-clip `weights` [n_clips], their sum."""
    ml = as_multilabels(labels)
    w = None if weights is None else np.repeat(np.asarray(weights, dtype=np.float64), ml.lengths)
    counts = np.bincount(ml.indices, weights=w, minlength=n_classes)
    if weights is None or np.issubdtype(np.asarray(weights).dtype, np.integer):
        return np.rint(counts).astype(np.int64)
    return counts


def priors_from_counts(counts: np.ndarray, n_clips: int) -> np.ndarray:
    """p_k = N_k / N (eq. 1) from class counts N_k [n_classes] of N clips, float64 [n_classes]
    (all zero when N = 0). Every prior in the project is computed here."""
    return np.asarray(counts, dtype=np.float64) / max(int(n_clips), 1)


def priors(labels, n_classes: int) -> np.ndarray:
    """p_k = N_k / N (eq. 1) of `labels`, float64 [n_classes]."""
    ml = as_multilabels(labels)
    return priors_from_counts(class_counts(ml, n_classes), len(ml))


def _nonzero(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    empty = np.flatnonzero(counts <= 0)
    if len(empty):
        shown = ", ".join(map(str, empty[:20])) + (" ..." if len(empty) > 20 else "")
        warnings.warn(f"{len(empty)} class(es) with no clips excluded: {shown}", stacklevel=3)
    return counts[counts > 0]


def imbalance_ratio(counts: np.ndarray) -> float:
    """rho = max_k N_k / min_k N_k over classes with clips (eq. 2). Accepts counts or priors."""
    c = _nonzero(counts)
    return float(c.max() / c.min())


def gini(counts: np.ndarray) -> float:
    """G = 1 + 1/K - 2 sum_k sum_{l<=k} p_(l) / (K sum p) over priors sorted ascending: the
    standard Gini coefficient, 0 when every class is equally frequent (the paper's eq. 3 plus
    1/K; see the module docstring). Accepts counts or priors (the formula is scale-free); empty
    classes are excluded."""
    p = np.sort(_nonzero(counts))
    k = len(p)
    return float(1.0 + 1.0 / k - 2.0 * np.cumsum(p).sum() / (k * p.sum()))


def _rarest_per_clip(ml: MultiLabels, values: np.ndarray, clip_ids=None) -> np.ndarray:
    """min over clip j's labels of `values` (ignoring non-positive entries), float64 [n_clips]."""
    v = np.asarray(values, dtype=np.float64)[ml.indices]
    v = np.where(v > 0, v, np.inf)
    lengths = ml.lengths
    if (lengths == 0).any():
        j = int(np.flatnonzero(lengths == 0)[0])
        raise ValueError(f"clip {_name(j, clip_ids)} has no labels")
    out = np.minimum.reduceat(v, ml.offsets[:-1]) if len(ml) else np.zeros(0)
    bad = np.flatnonzero(~np.isfinite(out))
    if len(bad):
        names = ", ".join(_name(j, clip_ids) for j in bad[:5])
        raise ValueError(f"{len(bad)} clip(s) carry only classes with no training clips: {names}")
    return out


def _name(j: int, clip_ids) -> str:
    return repr(clip_ids[j]) if clip_ids is not None else f"#{j}"


def rarest_label_count(labels, counts: np.ndarray, clip_ids=None) -> np.ndarray:
    """r_j: the clip count of clip j's rarest label, int64 [n_clips].

    For every beta > 0, M_j is a non-increasing function of r_j, so clips sorted by ascending
    r_j put the clips with M_j >= c in a prefix, for every c and every beta.
    """
    return _rarest_per_clip(as_multilabels(labels), counts, clip_ids).astype(np.int64)


def rarest_label_order(labels, n_classes: int) -> np.ndarray:
    """The rows of `labels` sorted by ascending r_j (their own class counts), ties in the
    given order: the row order of a store's training split (see data/store.py), int64 [n_clips]."""
    ml = as_multilabels(labels)
    return np.argsort(rarest_label_count(ml, class_counts(ml, n_classes)), kind="stable").astype(np.int64)


@dataclass(frozen=True)
class Scheme:
    """A way to weigh clip j from its labels' training counts N_k: m_j = (agg over k of
    1 / (N_k + offset))^beta, agg "max" or "sum" (see the module docstring)."""
    name: str
    aggregation: str
    offset: float


SCHEMES = {s.name: s for s in (Scheme("moore", "max", 0.0), Scheme("psla", "sum", 0.01), Scheme("passt", "sum", 100.0))}


def scheme(name: str) -> Scheme:
    """The scheme called `name`; an InputError naming the known ones otherwise."""
    if name not in SCHEMES:
        raise InputError(f"unknown balancing scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name]


DRAWS = ("repeats", "replacement", "subset", "round_robin")  # how an epoch is drawn (data/draws.py)


@dataclass(frozen=True)
class Recipe:
    """A named way of balancing: the scheme whose weights it draws by (None: class round robin),
    how an epoch is drawn (`DRAWS`) and E, the draws an epoch (None: the split's clip count, or
    sum M_j for repeats)."""
    name: str
    scheme: str | None
    draw: str
    epoch: int | None = None


RECIPES = {r.name: r for r in (
    Recipe("moore", "moore", "repeats"), Recipe("psla", "psla", "repeats"), Recipe("passt-repeats", "passt", "repeats"),
    Recipe("ast", "psla", "replacement"), Recipe("audiomae", "psla", "subset", 200_000),
    Recipe("passt", "passt", "subset", 100_000), Recipe("panns", None, "round_robin"))}


def recipe(name: str) -> Recipe:
    """The recipe called `name`, or `NAME@E` (recipe NAME with epochs of E draws); an InputError
    naming the known ones otherwise."""
    base, sep, epoch = name.partition("@")
    if base not in RECIPES:
        raise InputError(f"unknown balancing recipe {name!r}; known: {', '.join(RECIPES)} (NAME@E: epochs of E draws)")
    r = RECIPES[base]
    if not sep:
        return r
    if r.draw == "repeats":
        raise InputError(f"recipe {name!r}: {base} draws each clip M_j times a pass (sum M_j draws); "
                         f"an epoch length applies to {', '.join(d for d in DRAWS if d != 'repeats')} recipes")
    if not epoch.isdigit() or int(epoch) < 1:
        raise InputError(f"recipe {name!r}: the epoch length after '@' must be an integer >= 1, got {epoch!r}")
    return Recipe(name, r.scheme, r.draw, int(epoch))


def clip_weights(labels, counts: np.ndarray | None = None, method: str = "moore", clip_ids=None) -> np.ndarray:
    """m_j at beta = 1 by the scheme `method`: agg over clip j's labels k of 1 / (N_k + c),
    float64 [n_clips] (> 0). `counts` are the training class counts N_k [n_classes], by default
    those of `labels` themselves; a class with none is ignored."""
    s = scheme(method)
    ml = as_multilabels(labels)
    if counts is None:
        counts = class_counts(ml, int(ml.indices.max()) + 1 if len(ml.indices) else 0)
    counts = np.asarray(counts, dtype=np.float64)
    rarest = _rarest_per_clip(ml, counts, clip_ids)  # every clip has a class with training clips
    if s.aggregation == "max":  # max_k 1 / (N_k + c) = 1 / (min_k N_k + c): the rarest label
        return 1.0 / (rarest + s.offset)
    per_label = np.where(counts[ml.indices] > 0, 1.0 / (counts[ml.indices] + s.offset), 0.0)
    return np.add.reduceat(per_label, ml.offsets[:-1]) if len(ml) else np.zeros(0)


def oversampling_factors(labels, beta: float, counts: np.ndarray | None = None, method: str = "moore",
                         clip_ids=None) -> np.ndarray:
    """M_j: integer repeats of clip j per pass, int64 [n_clips], every entry >= 1, by the scheme
    `method` (eq. 4-5 for "moore").

    `counts` are the training class counts N_k [n_classes], by default those of `labels`
    themselves; a class with none is ignored in a clip's weight. beta = 0 gives all ones (the
    raw data), beta = 1 the scheme's published setting. m_j / min m is computed as a ratio
    (for moore, of the rarest labels' counts), and rounded half-up: an exact tie such as
    45/10 = 4.5 gives 5 even where floating point lands a hair below 4.5.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    weight = clip_weights(labels, counts, method, clip_ids)
    if beta == 0 or len(weight) == 0:
        return np.ones(len(weight), dtype=np.int64)
    return round_half_up((weight / weight.min()) ** beta)       # m_j / min_j m_j >= 1


def round_half_up(x: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Nearest integer, int64 [...]; halves go up, and so does anything within `rtol` (relative)
    below a half, which is where an exact tie computed in floating point can land."""
    x = np.asarray(x, dtype=np.float64)
    return np.floor(x + 0.5 + rtol * np.abs(x)).astype(np.int64)


def oversampled_counts(labels, factors: np.ndarray, n_classes: int) -> np.ndarray:
    """N'_k: clips labelled k when clip j counts `factors[j]` times, int64 [n_classes]."""
    return class_counts(labels, n_classes, weights=np.asarray(factors, dtype=np.int64))


def oversampled_stats(labels, beta: float, n_classes: int, method: str = "moore") -> dict:
    """Statistics of the oversampled set at `beta` under the scheme `method`: the paper's Table 2
    row plus epoch size. Returns {scheme, beta, imbalance_ratio, gini, epoch_length (sum M_j),
    max_repeat (max M_j)}."""
    ml = as_multilabels(labels)
    m = oversampling_factors(ml, beta, class_counts(ml, n_classes), method)
    counts = oversampled_counts(ml, m, n_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already warned about by the caller's table 1 row
        return {"scheme": method, "beta": float(beta), "imbalance_ratio": imbalance_ratio(counts),
                "gini": gini(counts), "epoch_length": int(m.sum()), "max_repeat": int(m.max())}
