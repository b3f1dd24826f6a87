"""The whole sweep, simulated: what racing and a self-refining beta grid save against the
stopping rule alone, and how often they give the answer of every arm trained to twice the cap.

    python bench/sweep_sim.py                    # JSON; 500 simulated sweeps on every core
    python bench/sweep_sim.py --sweeps 50

Each simulated sweep is a world shaped like the paper's (AudioSet, AST): validation d' rises from
chance to its peak and then slowly falls, peaking after 104M examples at beta 0 and 33M at beta
1 (geometric in between), with three learning rates per beta (a good one; one too small, four
times slower and lower at its peak; one too large, three times faster and 0.2 d' lower); the
best beta is anywhere in [0, 1] and the true difference between betas spans 0 to 0.05 d' (drawn
per sweep); every raw evaluation has training noise (0.02 d'); the validation split adds each
arm's sampling error and its bootstrap resamples, paired across arms like a 1,836-clip split's
(sd 0.03 d', correlation 0.9 between arms); an evaluation every 3,072,000 examples, a cap of
240M. Three sweeps run in each world, driving the project's own decision code (sweep/select.py
stopping and selection, sweep/racing.py, sweep/refine.py, sweep/confidence.py):

    reference    a fine grid (betas every 0.1) trained to twice the cap: the answer
    rule         the paper's 7 betas x 3 learning rates under the stopping rule alone: today's compute
    raced        a coarse grid (0, 0.5, 1) with racing and refinement down to 0.1, a new arm
                 without the learning rates eliminated in both its neighbours: the method

and the report gives the compute of `raced` against `rule`, and how often `raced` (and, for
scale, `rule`) gives the reference's answer: its selected beta when the reference's verdict is
resolved, else a beta among the reference's contenders (p_best >= 0.05); split by whether the
reference's best beta is a slow learner (beta < 0.5) or a fast one, and the true d' lost
against the reference's pick.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.confidence import P_PLAUSIBLE, confidence, verdict  # noqa: E402
from sweep.racing import RaceTrace, race  # noqa: E402
from sweep.refine import refine, ruled_out  # noqa: E402
from sweep.select import StoppingRule, TrialTrace, select_overall, select_per_arm, select_trial, settled  # noqa: E402
from sweep.trial import Arm, Trial  # noqa: E402

EVERY = 3_072_000
CAP = 240_000_000
SLOW, FAST = 104e6, 33e6          # examples to the peak at beta 0 and beta 1
LRS = {"small": 1e-5, "good": 1e-4, "large": 1e-3}
PAPER_BETAS = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
FINE_BETAS = [round(0.1 * i, 1) for i in range(11)]
COARSE_BETAS, STEP, MAX_ARMS = [0.0, 0.5, 1.0], 0.1, 7
RULE = StoppingRule(7, 5, 2.0)
RESAMPLES, SIGMA, VALID_SD, PAIRED = 200, 0.02, 0.03, 0.9
P_ELIMINATE = 0.01                # sweep.racing_p


@dataclass
class World:
    """One simulated sweep's truth: the peak d' of the good learning rate at each beta
    (`peak(beta)`), and the validation split's draw (its per-arm sampling error and resamples)."""
    seed: int
    best_beta: float
    spread: float
    shared: np.ndarray = field(default=None)   # [resamples]: the resamples' effect common to every arm
    series: dict = field(default_factory=dict)  # trial -> its whole observed series (to twice the cap)

    def __post_init__(self):
        self.shared = np.random.default_rng([self.seed, 0]).normal(size=RESAMPLES)

    def peak(self, beta: float) -> float:
        """The good learning rate's peak d' at `beta`: 2.5, less up to `spread` away from the best beta."""
        return 2.5 - self.spread * (beta - self.best_beta) ** 2 / max(self.best_beta, 1 - self.best_beta) ** 2

    def curve(self, trial: Trial, examples: np.ndarray) -> np.ndarray:
        """True validation d' [evals] of a trial at `examples` seen: a broad peak."""
        t_peak = SLOW * (FAST / SLOW) ** trial.beta
        height = self.peak(trial.beta)
        if trial.lr == LRS["small"]:
            t_peak, height = 4 * t_peak, height - 0.3
        elif trial.lr == LRS["large"]:
            t_peak, height = t_peak / 3, height - 0.2
        x = examples / t_peak
        return height * np.sqrt(x * np.exp(1 - x))

    def observed(self, trial: Trial, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(examples, d' as evaluated, d' per resample [evals, resamples], d' before training) of a
        trial's first `n` evaluations: the true curve, training noise, and the validation split's
        error for the trial's arm (paired across arms through `shared`)."""
        if trial not in self.series:
            rng = np.random.default_rng([self.seed, int(trial.beta * 1000), int(trial.lr * 1e7)])
            arm = np.random.default_rng([self.seed, int(trial.beta * 1000)])
            own = math.sqrt(1 - PAIRED) * arm.normal(size=RESAMPLES + 1)
            error = VALID_SD * (math.sqrt(PAIRED) * np.concatenate([[0.0], self.shared]) + own)
            examples = EVERY * np.arange(1, 2 * CAP // EVERY + 2)
            start = float(rng.normal(0, SIGMA))
            d = self.curve(trial, examples) + rng.normal(0, SIGMA, examples.size) + error[0]
            self.series[trial] = (examples, d, d[:, None] + error[None, 1:], start)
        examples, d, resampled, start = self.series[trial]
        return examples[:n], d[:n], resampled[:n], start


def _trace(world: World, trial: Trial, n: int) -> TrialTrace:
    examples, d, _, start = world.observed(trial, n)
    return TrialTrace(trial, examples, d, d / 4, [None] * n, start)


def _train(world: World, trials: list[Trial], done: dict[Trial, int], cap: int, stopping: bool,
           racing: bool, lr_out: dict[Arm, dict[float, float]] | None = None) -> dict[Trial, int]:
    """Train `trials` side by side, an evaluation at a time, from nothing, beside the finished
    `done` ({trial: evaluations}): each stops when its pick settles (`stopping`), at the cap, or
    when racing eliminates it (a learning rate not its arm's best is added to `lr_out`: arm ->
    {lr: p}). Returns every trial's evaluations."""
    evals = dict(done)
    running = {t: 0 for t in trials}
    labels = {t.arm: f"beta={t.beta:g}" for t in [*done, *trials]}
    while running:
        for t in list(running):
            running[t] += 1
            n = running[t]
            examples, d, _, start = world.observed(t, n)
            if n * EVERY >= cap or (stopping and settled(d, examples, RULE, start)):
                evals[t] = running.pop(t)
        if racing and running:
            state = {**evals, **running}
            traces = [RaceTrace(t, *world.observed(t, n)[:3], finished=t not in running) for t, n in state.items()]
            for e in race(traces, RULE, cap, P_ELIMINATE, labels):
                evals[e.trial] = running.pop(e.trial)
                if e.level == "lr" and lr_out is not None:
                    lr_out.setdefault(e.trial.arm, {})[e.trial.lr] = e.p
    return evals


def _answer(world: World, evals: dict[Trial, int], out: set[Trial] = frozenset()) -> dict:
    """The selection, its verdict and contenders on the trials' traces (racing's `out` not among
    the contenders), as sweep/winners.py makes them."""
    traces = [_trace(world, t, n) for t, n in evals.items() if t not in out]
    per_arm = select_per_arm(traces, RULE)
    best = select_overall(per_arm)
    full = {t.trial: s.val_dprime for t in traces if (s := select_trial(t, RULE))}
    h = RULE.window // 2
    samples = {}
    for t in traces:
        sel = select_trial(t, RULE)
        if sel:
            samples[t.trial] = world.observed(t.trial, len(t.dprime))[2][sel.index - h:sel.index + h + 1].mean(axis=0)
    conf = confidence(full, samples, RESAMPLES)
    labels = {a: f"beta={a.beta:g}" for a in per_arm}
    v = verdict(conf, labels, [a for a, s in per_arm.items() if not s.converged],
                [a for a, s in per_arm.items() if not s.learned], 1836, CAP)
    contenders = {a.beta for a, p in conf["p_best"].items() if p >= P_PLAUSIBLE} | {best.arm.beta}
    return {"beta": best.arm.beta, "resolved": v.resolved, "contenders": sorted(contenders),
            "p_best": {a.beta: p for a, p in conf["p_best"].items()}, "selected": best.arm}


def _grid(betas: list[float]) -> list[Trial]:
    return [Trial("moore", b, lr, 0) for b in betas for lr in LRS.values()]


def raced(world: World) -> tuple[dict, int]:
    """The method: a coarse grid, racing, refinement (a new arm without the learning rates
    eliminated in both its neighbours); (answer, examples trained)."""
    betas, evals, lr_out = list(COARSE_BETAS), {}, {}
    new = _grid(betas)
    while new:
        evals = _train(world, new, evals, CAP, stopping=True, racing=True, lr_out=lr_out)
        out = {t for t in evals if _eliminated(world, evals, t)}
        standing = _answer(world, evals, out)
        arms = [Arm("moore", b) for b in betas]
        added = refine(arms, standing["selected"], {Arm("moore", b): p for b, p in standing["p_best"].items()},
                       standing["resolved"], STEP, MAX_ARMS)
        betas += [a.beta for a in added]
        arms += added
        skipped = {a: ruled_out(a, arms, lr_out) for a in added}
        lr_out.update({a: lrs for a, lrs in skipped.items() if lrs})
        new = [t for t in _grid([a.beta for a in added]) if t.lr not in skipped[t.arm]]
    out = {t for t in evals if _eliminated(world, evals, t)}
    return _answer(world, evals, out), sum(evals.values()) * EVERY


def _eliminated(world: World, evals: dict[Trial, int], trial: Trial) -> bool:
    """Racing stopped it: it ended before its pick settled and before the cap."""
    examples, d, _, start = world.observed(trial, evals[trial])
    return evals[trial] * EVERY < CAP and not settled(d, examples, RULE, start)


def one_world(seed: int) -> dict:
    """The three sweeps of one world (see the module docstring)."""
    rng = np.random.default_rng([seed, 1])
    world = World(seed, best_beta=float(rng.uniform(0, 1)), spread=float(rng.uniform(0, 0.05)))
    reference = _answer(world, _train(world, _grid(FINE_BETAS), {}, 2 * CAP, stopping=False, racing=False))
    rule_evals = _train(world, _grid(PAPER_BETAS), {}, CAP, stopping=True, racing=False)
    rule = _answer(world, rule_evals)
    ours, spent = raced(world)

    def same(answer):
        return bool(answer["beta"] == reference["beta"] if reference["resolved"] else answer["beta"] in reference["contenders"])
    return {"seed": seed, "best_beta": world.best_beta, "spread": world.spread, "reference": reference["beta"],
            "reference_resolved": reference["resolved"], "raced": ours["beta"], "same": same(ours),
            "rule": rule["beta"], "same_rule": same(rule),
            "lost": float(world.peak(reference["beta"]) - world.peak(ours["beta"])),
            "slow": reference["beta"] < 0.5, "compute_raced": spent, "compute_rule": sum(rule_evals.values()) * EVERY}


def summary(rows: list[dict]) -> dict:
    """The report over simulated sweeps (see the module docstring)."""
    def part(rs):
        if not rs:
            return {"sweeps": 0}
        return {"sweeps": len(rs), "same_answer": round(float(np.mean([r["same"] for r in rs])), 4),
                "same_answer_rule": round(float(np.mean([r["same_rule"] for r in rs])), 4),
                "mean_dprime_lost": round(float(np.mean([r["lost"] for r in rs])), 5)}
    compute = sum(r["compute_raced"] for r in rows) / sum(r["compute_rule"] for r in rows)
    return {"sweeps": len(rows), "compute_vs_rule": round(compute, 4),
            **{f"all_{k}": v for k, v in part(rows).items() if k != "sweeps"},
            "reference_resolved": round(float(np.mean([r["reference_resolved"] for r in rows])), 4),
            "slow_best": part([r for r in rows if r["slow"]]), "fast_best": part([r for r in rows if not r["slow"]])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/sweep_sim.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweeps", type=int, default=500, help="simulated sweeps (default 500)")
    p.add_argument("--processes", type=int, default=None, help="worker processes (default: every core)")
    a = p.parse_args(argv)
    with multiprocessing.Pool(a.processes) as pool:
        rows = pool.map(one_world, range(a.sweeps))
    print(json.dumps({**summary(rows), "worst": sorted(rows, key=lambda r: -r["lost"])[:5]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
