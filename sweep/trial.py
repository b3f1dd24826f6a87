"""What one trial is: an arm (a balancing recipe at an exponent beta) trained at a learning rate
from a seed, and every name it goes by.

    trial = Trial("ast", 0.5, 1e-3, 0)
    trial.arm.label(several_schemes=True)     # 'ast beta=0.5': tables, p_best, the console
    trial.name(several_schemes=True, several_seeds=False)   # 'ast beta=0.5 lr=0.001': MLflow
    trial.key                                 # 'ast-beta=0.5-lr=0.001-seed=0': its Train run
                                              # directory and MLflow tag, the same in every attempt
    trial.tune_config / Trial.from_tune(cfg)  # what Tune searches and shows

An arm is one way of balancing; beta = 0 (no balancing) is one arm whatever the recipe. The
field `scheme` holds the recipe's name (data/balance.py RECIPES: moore, ast, passt@5000, ...;
the name results.json rows and Tune's config keep). The trial's key does not depend on Tune's
trial ids, so a resumed sweep, or one continued to a higher cap, finds every trial's
checkpoints and MLflow run again.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Arm", "Trial"]


def _num(x: float) -> str:
    """A number as it appears in names: the shortest form that tells distinct values apart."""
    return f"{x:.10g}"


@dataclass(frozen=True, order=True)
class Arm:
    """One way of balancing: a recipe (data/balance.py RECIPES, in the field `scheme`) at an exponent beta."""
    scheme: str
    beta: float

    def label(self, several_schemes: bool) -> str:
        """The arm's name in tables, on the console, in p_best: `beta=<b>`, with its recipe first
        (`ast beta=<b>`) when the sweep has several recipes and beta > 0."""
        b = f"beta={self.beta:g}"
        return b if not several_schemes or self.beta == 0 else f"{self.scheme} {b}"

    @property
    def key(self) -> str:
        """A path part: `<recipe>-beta=<b>` (the predictions of its picks live under it)."""
        return f"{self.scheme}-beta={_num(self.beta)}"


@dataclass(frozen=True)
class Trial:
    """One trial of the sweep: an arm at a learning rate from a seed."""
    scheme: str
    beta: float
    lr: float
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def arm(self) -> Arm:
        return Arm(self.scheme, self.beta)

    def name(self, several_schemes: bool, several_seeds: bool) -> str:
        """Its name in MLflow and in messages: the arm's label, `lr=<lr>`, and `seed=<s>` when the
        sweep has replicate seeds."""
        return f"{self.arm.label(several_schemes)} lr={self.lr:g}" + (f" seed={self.seed}" if several_seeds else "")

    @property
    def key(self) -> str:
        """Its stable identity: the name of its Train run directory and its MLflow tag `trial`."""
        return f"{self.arm.key}-lr={_num(self.lr)}-seed={self.seed}"

    @property
    def tune_config(self) -> dict:
        """The point Tune searches: {arm: {scheme, beta}, lr, seed}."""
        return {"arm": {"scheme": self.scheme, "beta": self.beta}, "lr": self.lr, "seed": self.seed}

    @classmethod
    def from_tune(cls, config: dict) -> Trial:
        """The trial of a config Tune gives a trainable (`tune_config`, perhaps with more keys)."""
        return cls(config["arm"]["scheme"], config["arm"]["beta"], config["lr"], config["seed"])
