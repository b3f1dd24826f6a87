"""The sweep's console: the 80-column progress table and its ETA bound, from Tune's trials."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweep.config import load_config
from sweep.console import eta_seconds
from sweep.progress import SweepProgress
from sweep.trial import Trial

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
    grid = [Trial("moore", b, 0.002, 0) for b in (0.0, 0.5, 1.0, 2.0)]
    progress = SweepProgress(_cfg(), grid, concurrency=1, every_s=0, log=False)
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
    rows = {line.split()[0]: line for line in out[2:6]}
    assert rows["beta=0"].rstrip().endswith("3.480@38k* settled") and "46,000" in rows["beta=0"]
    assert out[1].split() == ["arm", "lr", "examples", "val", "d'", "smoothed", "pick@examples", "status"]
    assert rows["beta=0.5"].split()[-1] == "running" and " - " in rows["beta=0.5"]
    assert rows["beta=1"].split()[-1] == rows["beta=2"].split()[-1] == "pending"
    assert out[6].startswith("* the best pick so far")


def test_a_trial_stopped_at_the_cap_is_not_converged(capsys):
    """Reported as its trial completes (Tune still says RUNNING then)."""
    capped = _trial("a", 0.0, "RUNNING", examples=60_000, val_dprime=4.7, val_dprime_smoothed=4.6,
                    val_dprime_pick=4.65, examples_to_pick=57_000, stopped="cap", learned=True, time_total_s=200.0)
    failed = _trial("b", 1.0, "ERROR")
    at_chance = _trial("c", 0.5, "TERMINATED", examples=60_000, val_dprime=0.04, val_dprime_smoothed=0.05,
                       val_dprime_pick=0.06, examples_to_pick=9_000, stopped="cap", learned=False, time_total_s=200.0)
    grid = [Trial("moore", b, 0.002, 0) for b in (0.0, 1.0, 0.5)]
    SweepProgress(_cfg(), grid, 1, log=False).on_trial_complete(0, [capped, failed, at_chance], capped)
    out = capsys.readouterr().out.splitlines()
    assert out[2].endswith("4.650@57k* NOT CONVERGED") and out[3].endswith("failed")
    assert out[4].endswith("did not learn")
    assert "3/3 trials done" in out[0] and "ETA after the first evaluation" in out[0]


def test_a_trial_trained_to_the_cap_whose_pick_settled_is_settled(capsys):
    """sweep.train_to_cap: every trial stops at the cap; its status says whether the pick settled."""
    done = _trial("a", 0.0, "RUNNING", examples=60_000, val_dprime=4.7, val_dprime_smoothed=4.6,
                  val_dprime_pick=4.65, examples_to_pick=20_000, stopped="cap", converged=True, time_total_s=200.0)
    SweepProgress(_cfg(), [Trial("moore", 0.0, 0.002, 0)], 1, log=False).on_trial_complete(0, [done], done)
    assert capsys.readouterr().out.splitlines()[2].endswith("4.650@20k* settled")


def test_replicate_seeds_are_rows_of_their_own(capsys):
    grid = [Trial("moore", b, 0.002, s) for b in (0.0, 1.0) for s in (0, 1)]
    t = _trial("a", 1.0, "RUNNING", seed=1, examples=2_000, val_dprime=1.0, val_dprime_smoothed=float("nan"),
               val_dprime_pick=float("nan"), examples_to_pick=0, time_total_s=20.0)
    SweepProgress(_cfg(seeds=(0, 1)), grid, 1, every_s=0, log=False).on_step_end(0, [t])
    out = capsys.readouterr().out.splitlines()
    assert [line.rsplit("0.002", 1)[0].strip() for line in out[2:]] == ["beta=0 s0", "beta=0 s1", "beta=1 s0", "beta=1 s1"]
    assert out[5].split()[-1] == "running" and max(len(line) for line in out) <= 80


def test_schemes_name_their_trials(capsys):
    """With several schemes an arm is `<scheme> beta=<b>`; beta 0 is one arm, named by its beta."""
    cfg = _cfg(schemes=("moore", "passt"), seeds=(0, 1))
    grid = [Trial(a.scheme, a.beta, 0.002, seed) for a in cfg.sweep.arms for seed in (0, 1)]
    t = _trial("a", 1.0, "RUNNING", scheme="passt", seed=1, examples=2_000, val_dprime=1.0,
               val_dprime_smoothed=float("nan"), val_dprime_pick=float("nan"), examples_to_pick=0, time_total_s=20.0)
    SweepProgress(cfg, grid, 1, every_s=0, log=False).on_step_end(0, [t])
    out = capsys.readouterr().out.splitlines()
    names = [line.split("0.002")[0].strip() for line in out[2:]]
    assert names[:2] == ["beta=0 s0", "beta=0 s1"] and "passt beta=1 s1" in names and len(names) == 2 * len(cfg.sweep.arms)
    assert out[2 + names.index("passt beta=1 s1")].split()[-1] == "running" and max(len(line) for line in out) <= 80


def _summary(verdict: dict, late: list[dict], seeds=(0, 1), learned=True) -> dict:
    return {"selection": {"label": "psla beta=1", "lr": 1e-3, "val_dprime": 0.452, "seeds": list(seeds),
                          "examples_to_peak": 320, "not_converged": late},
            "p_best": {"beta=0": 0.3, "psla beta=1": 0.7}, "verdict": verdict, "rows": [{"learned": learned}],
            "failed": [], "diverged": [{"trial": "x"}]}


def test_the_answer_names_arms_and_says_when_it_is_provisional():
    from sweep.console import answer_lines
    late = [{"label": "psla beta=1", "status": "NOT CONVERGED", "cap_to_settle": 640},
            {"label": "beta=0", "status": "did not learn", "cap_to_settle": 1920}]
    p_best, verdict, line = answer_lines(_summary({"resolved": False, "provisional": True, "word": "provisional",
                                                   "text": "..."}, late))
    assert p_best == ("p_best (probability of being best on validation - PROVISIONAL, an arm is unsettled): "
                      "beta=0 0.30, psla beta=1 0.70")
    assert verdict == "verdict: provisional: ..."
    assert line == ("provisional: best on validation: psla beta=1 lr=0.001 (smoothed validation d' 0.452 over 2 seeds "
                    "at its pick after 320 examples; psla beta=1 NOT CONVERGED (needs train.max_examples >= 640), "
                    "beta=0 did not learn (needs train.max_examples >= 1,920); 1 failed or diverged trial(s))")
    settled = answer_lines(_summary({"resolved": True, "provisional": False, "word": "resolved", "text": "..."}, [], [0]))
    assert settled[0].startswith("p_best (probability of being best on validation): ")
    assert settled[2].startswith("selected: psla beta=1 lr=0.001 (smoothed validation d' 0.452 at its pick after 320")
    assert "every pick settled" in settled[2]
    none = answer_lines(_summary({"resolved": False, "provisional": True, "word": "provisional", "text": "..."}, late,
                                 learned=False))
    assert none[2].startswith("no answer (no arm learned): highest on validation: ")


def test_in_a_log_only_what_changed_is_printed(capsys):
    """Not a terminal: the first print has every row, a later one only the rows that changed,
    and nothing at all when nothing did."""
    grid = [Trial("moore", b, 0.002, 0) for b in (0.0, 1.0)]
    progress = SweepProgress(_cfg(), grid, concurrency=1, every_s=0, log=True)
    a = _trial("a", 0.0, "RUNNING", examples=2_000, val_dprime=1.0, val_dprime_smoothed=float("nan"),
               val_dprime_pick=float("nan"), examples_to_pick=0, time_total_s=20.0)
    progress.on_step_end(0, [a])
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 4 and first[2].split()[0] == "beta=0" and first[3].split()[0] == "beta=1"
    progress.on_step_end(0, [a])
    assert capsys.readouterr().out == ""
    a.last_result = {**a.last_result, "examples": 4_000}
    progress.on_step_end(0, [a])
    later = capsys.readouterr().out.splitlines()
    assert len(later) == 3 and later[2].split()[0] == "beta=0" and "4,000" in later[2]


def test_a_failed_trial_is_one_line_naming_it_and_its_error(capsys):
    """Tune's traceback print is off (sweep/environment.py): the progress prints the table and one
    line on stderr with the trial and the last line of its recorded error, or why there is none."""
    grid = [Trial("moore", 1.0, 0.002, 0)]
    progress = SweepProgress(_cfg(), grid, 1, log=False)
    for error, shown in ((lambda: "Traceback ...\n  File x\nStoreError: part-00003.parquet: row group 7 is unreadable\n",
                          "StoreError: part-00003.parquet: row group 7 is unreadable"),
                         (lambda: None, "(no error recorded)"),
                         (lambda: (_ for _ in ()).throw(EOFError("pickle data was truncated")),
                          "(its error file cannot be read: EOFError: pickle data was truncated)")):
        failed = _trial("a", 1.0, "ERROR")
        failed.get_error = error
        progress.on_trial_error(0, [failed], failed)
        captured = capsys.readouterr()
        assert captured.out.splitlines()[2].endswith("failed")
        assert captured.err == f"trial beta=1 lr=0.002 failed: {shown}\n"
