"""The sweep's console: the 80-column progress table and its ETA bound, from Tune's trials."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweep.config import load_config
from sweep.console import eta_seconds
from sweep.progress import SweepProgress

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _cfg(schemes=("moore",), seeds=(0,)):
    return load_config(SMOKE, ["train.max_examples=60000", f"sweep.schemes={list(schemes)}", f"sweep.seeds={list(seeds)}"])


def _trial(trial_id, beta, status, seed=0, scheme="moore", **result):
    return SimpleNamespace(trial_id=trial_id, config={"arm": {"scheme": scheme, "beta": beta}, "lr": 0.002, "seed": seed},
                           status=status, last_result=result or None)


def test_eta_is_the_time_to_the_cap_at_the_rate_seen():
    # two started trials with 40k and 10k examples to go, one pending (start-up + the cap)
    assert eta_seconds([40_000, 10_000, 60_000], 500.0, 1, 30.0, 1) == pytest.approx(110_000 / 500 + 30)
    assert eta_seconds([40_000, 10_000, 60_000], 500.0, 1, 30.0, 2) == pytest.approx((220 + 30) / 2)
    assert eta_seconds([1000], None, 0, 30.0, 1) is None


def test_progress_table_fits_80_columns_and_marks_the_best_pick(capsys):
    grid = [("moore", b, 0.002, 0) for b in (0.0, 0.5, 1.0, 2.0)]
    progress = SweepProgress(_cfg(), grid, concurrency=1, every_s=0)
    t0 = _trial("a", 0.0, "TERMINATED", examples=46_000, val_dprime=3.38, val_dprime_smoothed=3.40,
                val_dprime_pick=3.48, examples_to_pick=38_000, stopped="settled", time_total_s=140.0)
    t1 = _trial("b", 0.5, "RUNNING", examples=12_000, val_dprime=2.1, val_dprime_smoothed=float("nan"),
                val_dprime_pick=float("nan"), examples_to_pick=0, time_total_s=50.0)
    t2 = _trial("c", 1.0, "PENDING")  # beta 2: not created by Tune yet
    progress.on_trial_result(0, [t0, t1, t2], t1, {"examples": 2_000, "time_total_s": 30.0})
    progress.on_step_end(0, [t0, t1, t2])
    out = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in out) <= 80
    assert out[0].startswith("0:00:0") and "1/4 trials done" in out[0]
    # 48k examples + two pending trials' 60k at (12k - 2k) / (50 s - 30 s) = 500 examples/s, plus
    # their start-up (the mean of those seen: 30 s)
    assert f"ETA <= {-(-(168_000 / 500 + 2 * 30) // 60):.0f} min" in out[0]
    rows = {line.split()[0]: line for line in out[2:]}
    assert rows["0"].rstrip().endswith("3.480@38k* settled") and "46,000" in rows["0"]
    assert out[1].split() == ["beta", "lr", "examples", "val", "d'", "smoothed", "pick@examples", "status"]
    assert rows["0.5"].split()[-1] == "running" and " - " in rows["0.5"]
    assert rows["1"].split()[-1] == rows["2"].split()[-1] == "pending"


def test_a_trial_stopped_at_the_cap_is_not_converged(capsys):
    """Reported as its trial completes (Tune still says RUNNING then)."""
    capped = _trial("a", 0.0, "RUNNING", examples=60_000, val_dprime=4.7, val_dprime_smoothed=4.6,
                    val_dprime_pick=4.65, examples_to_pick=57_000, stopped="cap", time_total_s=200.0)
    failed = _trial("b", 1.0, "ERROR")
    SweepProgress(_cfg(), [("moore", 0.0, 0.002, 0), ("moore", 1.0, 0.002, 0)], 1).on_trial_complete(
        0, [capped, failed], capped)
    out = capsys.readouterr().out.splitlines()
    assert out[2].endswith("4.650@57k* NOT CONVERGED") and out[3].endswith("failed")
    assert "2/2 trials done" in out[0] and "ETA after the first evaluation" in out[0]


def test_a_trial_trained_to_the_cap_whose_pick_settled_is_settled(capsys):
    """sweep.train_to_cap: every trial stops at the cap; its status says whether the pick settled."""
    done = _trial("a", 0.0, "RUNNING", examples=60_000, val_dprime=4.7, val_dprime_smoothed=4.6,
                  val_dprime_pick=4.65, examples_to_pick=20_000, stopped="cap", converged=True, time_total_s=200.0)
    SweepProgress(_cfg(), [("moore", 0.0, 0.002, 0)], 1).on_trial_complete(0, [done], done)
    assert capsys.readouterr().out.splitlines()[2].endswith("4.650@20k* settled")


def test_replicate_seeds_are_rows_of_their_own(capsys):
    grid = [("moore", b, 0.002, s) for b in (0.0, 1.0) for s in (0, 1)]
    t = _trial("a", 1.0, "RUNNING", seed=1, examples=2_000, val_dprime=1.0, val_dprime_smoothed=float("nan"),
               val_dprime_pick=float("nan"), examples_to_pick=0, time_total_s=20.0)
    SweepProgress(_cfg(seeds=(0, 1)), grid, 1, every_s=0).on_step_end(0, [t])
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[2:]] == ["0/s0", "0/s1", "1/s0", "1/s1"]
    assert out[5].split()[-1] == "running" and max(len(line) for line in out) <= 80


def test_schemes_name_their_trials(capsys):
    """With several schemes a trial is `<scheme> <beta>`; beta 0 is one trial, named by its beta."""
    cfg = _cfg(schemes=("moore", "passt"), seeds=(0, 1))
    grid = [(s, b, 0.002, seed) for s, b in cfg.sweep.arms for seed in (0, 1)]
    t = _trial("a", 1.0, "RUNNING", scheme="passt", seed=1, examples=2_000, val_dprime=1.0,
               val_dprime_smoothed=float("nan"), val_dprime_pick=float("nan"), examples_to_pick=0, time_total_s=20.0)
    SweepProgress(cfg, grid, 1, every_s=0).on_step_end(0, [t])
    out = capsys.readouterr().out.splitlines()
    names = [line.split("0.002")[0].strip() for line in out[2:]]
    assert names[:2] == ["0/s0", "0/s1"] and "passt 1/s1" in names and len(names) == 2 * len(cfg.sweep.arms)
    assert out[2 + names.index("passt 1/s1")].split()[-1] == "running" and max(len(line) for line in out) <= 80


def test_the_answer_line_names_arms_and_says_when_it_is_provisional():
    from sweep.console import answer
    late = [{"label": "psla beta=1", "cap_to_settle": 640}]
    summary = {"selection": {"label": "psla beta=1", "lr": 1e-3, "val_dprime": 0.452, "seeds": [0, 1],
                             "examples_to_peak": 320, "not_converged": late},
               "verdict": "unresolved: ...", "failed": [], "diverged": [{"trial_id": "x"}]}
    assert answer(summary) == ("provisional: best on validation: psla beta=1 lr=0.001 (smoothed validation d' 0.452 "
                               "over 2 seeds after 320 examples; NOT CONVERGED for psla beta=1 (needs "
                               "train.max_examples >= 640); 1 failed or diverged trial(s))")
    settled = {**summary, "selection": {**summary["selection"], "seeds": [0], "not_converged": []},
               "verdict": "resolved: ..."}
    assert answer(settled).startswith("selected: psla beta=1 lr=0.001 (smoothed validation d' 0.452 after 320")
    assert "every pick settled" in answer(settled)
