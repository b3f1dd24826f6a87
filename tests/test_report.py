"""sweep.report on a realistic sweep output built without Ray: the synthetic store, validation
traces and selection as sweep.run makes them, and per-beta predictions whose per-class quality
depends on beta and the class's training prior (rare classes gain from balancing, common ones
lose: the paper's Fig. 3 pattern), written exactly as sweep.winners and sweep.driver write them."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from scipy.stats import linregress

from data.cli import InputError
from data.balance import gini, imbalance_ratio, oversampled_stats
from sweep.config import load_config, to_dict
from sweep.metrics import classification_metrics
from sweep.predictions import save_predictions
from sweep.prepare import prepare
from sweep.report import FIGURES, build_report
from sweep.report.__main__ import main
from sweep.rundir import predictions_path
from sweep.trial import Arm
from sweep.winners import judge, results_row, selection_summary
from sweep.confidence import confidence
from sweep.select import TrialTrace, select_overall, select_per_arm, select_trial
from sweep.bootstrap import paired_bootstrap, prior_shift_metrics
from sweep.report.tables import format_results

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
BETAS, LRS = (0.0, 0.5, 1.0), (3e-4, 1e-3)


def _scores(targets: np.ndarray, train_prior: np.ndarray, beta: float, lr: float, seed: int) -> np.ndarray:
    """Sigmoid scores whose per-class separation grows with beta for rare classes and shrinks for
    common ones."""
    rng = np.random.default_rng(seed)
    rarity = -np.log10(train_prior)
    rarity = (rarity - rarity.mean()) / rarity.std()
    sep = 1.4 - 0.35 * rarity + beta * (0.5 * rarity - 0.15) + 0.1 * np.log10(lr / 1e-3)
    logit = -2 + 2 * np.maximum(sep, 0.1) * targets + rng.normal(size=targets.shape)
    return (1 / (1 + np.exp(-logit))).astype(np.float32)


def write_sweep_output(store, run_dir: Path, betas=BETAS, lrs=LRS, n_evals: int = 24, seeds=(0,),
                       schemes=("moore",), unlearned=lambda trial, y: y) -> Path:
    """results.json and predictions/<scheme>-beta=<b>/seed=<s>/<split>.npz as `python -m sweep.run`
    writes them (sweep/winners.py), from made-up traces and scores; `unlearned(trial, trace)` may
    replace a trial's trace (e.g. by one at chance)."""
    cfg = prepare(load_config(SMOKE, [f"data.store={store.root}", f"run.run_dir={run_dir}", "data.synth=null",
                                      f"sweep.betas={list(betas)}", f"sweep.lrs={list(lrs)}",
                                      f"sweep.seeds={list(seeds)}", f"sweep.schemes={list(schemes)}"]))
    run_dir = Path(cfg.run.run_dir)
    train_prior = store.class_counts("train") / store.split_info("train")["clips"]
    rng = np.random.default_rng(0)
    every = cfg.train.eval_every_examples
    traces = []
    for i, trial in enumerate(cfg.sweep.trials):
        x = every * np.arange(1, n_evals + 1)
        peak = (0.35 + 0.4 * (1 - trial.beta)) * n_evals  # balanced trials peak earlier
        y = 1.2 + 0.9 * (1 - np.exp(-3 * x / (every * peak))) - 0.02 * np.maximum(x / every - peak, 0)
        y += 0.05 * trial.beta + 0.02 * cfg.sweep.schemes.index(trial.scheme) + rng.normal(0, 0.04, n_evals)
        y = unlearned(trial, y)
        ckpts = [str(run_dir / "ray" / f"trial_{i}" / f"checkpoint_{j:06d}") for j in range(n_evals)]
        traces.append(TrialTrace(trial, x, y, y / 4, ckpts, start=0.0))
    per_arm = select_per_arm(traces, cfg.sweep.rule)
    several = cfg.sweep.several_schemes
    rows = []
    for arm in cfg.sweep.arms:  # as sweep.winners.evaluate_winners
        evaluated = {}
        for sel in per_arm[arm].picks:
            t, metrics = sel.trial, {}
            for k, split in enumerate(cfg.data.eval_splits):
                targets = store.labels(split).multi_hot(store.n_classes).astype(np.float32)
                scores = _scores(targets, train_prior, t.beta + 0.1 * cfg.sweep.schemes.index(t.scheme), t.lr,
                                 seed=100 * k + int(10 * t.beta) + 1000 * t.seed + len(t.scheme))
                res = {"scores": scores, "targets": targets, "clip_ids": store.clip_ids(split),
                       "metrics": classification_metrics(targets, scores)}
                save_predictions(predictions_path(run_dir, arm, t.seed, split), res)
                metrics[split] = res["metrics"]
            evaluated[t] = (sel.examples_to_peak, metrics)
        rows.append(results_row(per_arm[arm], arm.label(several), evaluated))
    selection = selection_summary(select_overall(per_arm), per_arm, cfg)
    picks = {t.trial: select_trial(t, cfg.sweep.rule).val_dprime for t in traces}
    conf = confidence(picks, {t: v + rng.normal(0, 0.05, 200) for t, v in picks.items()}, 200)
    summary = {"selection": selection, **judge(cfg, per_arm, conf, 99), "rows": rows, "failed": [], "diverged": [],
               "traces": [{"trial": t.trial.key, "scheme": t.trial.scheme, "beta": t.trial.beta,
                           "label": t.trial.arm.label(several), "lr": t.trial.lr, "seed": t.trial.seed,
                           "examples": t.examples.tolist(), "dprime": t.dprime.tolist(), "start": t.start} for t in traces],
               "eval_splits": cfg.data.eval_splits, "config": to_dict(cfg), "wall_seconds": 1.0}
    (run_dir / "results.json").write_text(json.dumps(summary, indent=1, default=float))
    return run_dir


@pytest.fixture(scope="module")
def report(synth_store, tmp_path_factory):
    """The report of a 3-beta x 2-lr sweep, through the CLI, with the beta = 0.5 predictions
    copied in as an extra model (a dir of <split>.npz)."""
    run_dir = write_sweep_output(synth_store, tmp_path_factory.mktemp("sweep") / "run")
    copy = shutil.copytree(run_dir / "predictions" / "moore-beta=0.5" / "seed=0", run_dir.parent / "copy")
    assert main(["--run-dir", str(run_dir), "--extra", f"COPY={copy}"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    tables = json.loads((run_dir / "report" / "tables.json").read_text())
    return run_dir, results, tables, synth_store


def _pred(run_dir, beta, split, seed=0, scheme="moore"):
    with np.load(predictions_path(run_dir, Arm(scheme, beta), seed, split)) as f:
        return {k: f[k] for k in f.files}


def _same_cell(a: dict, b: dict) -> bool:
    """Two table cells {abs, rel, ci95: [lo, hi]} equal to rounding (pytest.approx compares
    flat values only)."""
    return set(a) == set(b) and all(a[k] == pytest.approx(b[k]) for k in a)


def test_imbalance_tables(report):
    run_dir, results, t, store = report
    splits = results["eval_splits"]
    assert [r["partition"] for r in t["table1"]] == ["train", "valid", *splits]
    assert [r["role"] for r in t["table1"]] == ["train", "validation"] + ["eval"] * len(splits)
    for r in t["table1"]:
        c = store.class_counts(r["partition"])
        assert r["clips"] == store.split_info(r["partition"])["clips"]
        assert r["imbalance_ratio"] == pytest.approx(imbalance_ratio(c)) and r["gini"] == pytest.approx(gini(c))
    assert [r["beta"] for r in t["table2"]] == [r["beta"] for r in results["rows"]] == list(BETAS)
    assert [r["label"] for r in t["table2"]] == [f"beta={b:g}" for b in BETAS]
    for r in t["table2"]:  # the moore recipe: its expected exposure is the oversampled set's
        want = oversampled_stats(store.labels("train"), r["beta"], store.n_classes, "moore")
        assert (r["recipe"], r["scheme"], r["draw"]) == ("moore", "moore", "repeats")
        assert [r[k] for k in ("imbalance_ratio", "gini", "epoch_length", "max_clip_exposure")] == pytest.approx(
            [want[k] for k in ("imbalance_ratio", "gini", "epoch_length", "max_repeat")])
    assert t["table2"][0]["max_clip_exposure"] == 1 and t["table2"][-1]["gini"] < t["table2"][0]["gini"]


def test_metric_tables_consistent_with_results(report):
    run_dir, results, t, _ = report
    splits, rows = results["eval_splits"], results["rows"]
    assert t["baseline_beta"] == 0 and t["n_resamples"] >= 1000
    for name, key in (("table3", "dprime"), ("table4", "mAP")):
        table = t[name]
        assert [r["name"] for r in table] == [f"beta={r['beta']:g}" for r in rows] + ["COPY"]
        for row, res in zip(table, rows):
            assert (row["beta"], row["lr"]) == (res["beta"], res["lr"])
            for s in splits:
                cell = row[s]
                assert set(cell) == {"abs", "rel", "ci95", "undefined"} and cell["undefined"] == 0
                assert cell["abs"] == res["eval"][s][key]
                assert cell["rel"] == pytest.approx(res["eval"][s][key] - rows[0]["eval"][s][key], abs=1e-9)
                lo, hi = cell["ci95"]
                assert lo <= cell["rel"] <= hi, (name, row["name"], s, cell)
                if row["beta"] == 0:
                    assert cell["rel"] == 0 and lo <= 0 <= hi
                else:
                    assert hi - lo > 0
        copy, half = table[-1], next(r for r in table if r["beta"] == 0.5)
        assert copy["beta"] is None and all(_same_cell(copy[s], half[s]) for s in splits)


def test_ci_is_the_paired_bootstrap(report):
    """One bootstrap pass per model gives sweep.bootstrap.paired_bootstrap's interval exactly."""
    run_dir, results, t, _ = report
    s = results["eval_splits"][1]
    a, b = _pred(run_dir, 0.0, s), _pred(run_dir, 1.0, s)
    for name, key in (("table3", "dprime"), ("table4", "mAP")):
        boot = paired_bootstrap(a["targets"], a["scores"], b["scores"], key, n_resamples=t["n_resamples"], seed=0)
        cell = next(r for r in t[name] if r["beta"] == 1.0)[s]
        assert cell["ci95"] == pytest.approx(list(boot["ci95"]), abs=1e-12)
        assert cell["rel"] == pytest.approx(boot["diff"], abs=1e-12)


def test_fig3_regression_equals_linregress(report):
    run_dir, results, t, store = report
    f3 = t["fig3"]
    assert f3["betas"] == [0.0, 1.0] and f3["classes"] == store.classes
    prior = store.class_counts("train") / store.split_info("train")["clips"]
    for s in results["eval_splits"]:
        lo, hi = (classification_metrics(p["targets"], p["scores"])["ap"]
                  for p in (_pred(run_dir, 0.0, s), _pred(run_dir, 1.0, s)))
        delta = hi - lo
        np.testing.assert_allclose(np.array(f3[s]["delta_ap"], dtype=float), delta, atol=1e-12)
        ok = np.isfinite(delta)
        fit = linregress(np.log10(prior[ok]), delta[ok])
        got = f3[s]
        assert (got["slope"], got["intercept"], got["r"], got["p"]) == pytest.approx(
            (fit.slope, fit.intercept, fit.rvalue, fit.pvalue), rel=1e-9)
        assert got["n_classes"] == ok.sum() and got["slope_ci95"][0] <= got["slope"] <= got["slope_ci95"][1]
        assert got["slope"] < 0  # the fixture's rare classes gain from balancing


def test_prior_shift_rows(report):
    run_dir, results, t, store = report
    splits = results["eval_splits"]
    rows = {(r["name"], r["split"], r["under_prior_of"]): r for r in t["prior_shift"]}
    names = [r["name"] for r in t["table4"]]
    assert set(rows) == {(n, s, o) for n in names for s in splits for o in splits if o != s}
    for r in results["rows"]:
        for s in splits:
            p = _pred(run_dir, r["beta"], s)
            for o in splits:
                if o == s:
                    continue
                got = rows[(f"beta={r['beta']:g}", s, o)]
                other = store.class_counts(o) / store.split_info(o)["clips"]
                want = prior_shift_metrics(p["targets"], p["scores"], other)
                assert got["mAP"] == pytest.approx(want["mAP"], abs=1e-12)
                assert got["mAP_own_prior"] == pytest.approx(r["eval"][s]["mAP"], abs=1e-12)
                assert got["dprime"] == pytest.approx(r["eval"][s]["dprime"], abs=1e-12)
                assert 0 < got["ess_min"] <= len(p["targets"])


def test_markdown_and_figures(report):
    run_dir, results, t, _ = report
    md = (run_dir / "report" / "report.md").read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "Table 4", "Fig. 3", "Prior shift", "Convergence"):
        assert heading in md
    assert "| COPY |" in md and "NaN" not in md
    assert t["figures"] == list(FIGURES)
    for name in FIGURES:
        path = run_dir / "report" / name
        assert path.stat().st_size > 15_000 and f"]({name})" in md
        img = matplotlib.image.imread(path)
        assert img.shape[0] > 300 and img.shape[1] > 500
        assert img[..., :3].std() > 0.05 and (img[..., :3] < 0.5).mean() > 0.005  # drawn, not blank
    assert [c["examples_to_peak"] for c in t["convergence"]] == [r["examples_to_peak"] for r in results["rows"]]


def test_per_class_csv(report):
    from sklearn.metrics import average_precision_score, roc_auc_score
    run_dir, results, t, store = report
    for s in results["eval_splits"]:
        assert f"per_class_{s}.csv" in t["per_class"]
        with (run_dir / "report" / f"per_class_{s}.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [r["mid"] for r in rows] == store.mids and [r["name"] for r in rows] == store.classes
        assert [int(r[f"{s}_positives"]) for r in rows] == store.class_counts(s).tolist()
        assert [int(r["train_clips"]) for r in rows] == store.class_counts("train").tolist()
        assert {f"AP {m}" for m in ("beta=0", "beta=0.5", "beta=1", "COPY")} <= set(rows[0])
        for beta in BETAS:
            p = _pred(run_dir, beta, s)
            for k, r in enumerate(rows):
                y = p["targets"][:, k]
                if 0 < y.sum() < len(y):
                    assert float(r[f"AP beta={beta:g}"]) == pytest.approx(average_precision_score(y, p["scores"][:, k]), abs=1e-6)
                    assert float(r[f"AUC beta={beta:g}"]) == pytest.approx(roc_auc_score(y, p["scores"][:, k]), abs=1e-6)
                elif y.sum() == 0:
                    assert r[f"AP beta={beta:g}"] == ""  # no positives: undefined, left empty


def test_extra_single_npz_out_of_order_and_errors(report, tmp_path):
    """One npz of one split, clips shuffled: aligned by clip id, a row with that split only."""
    run_dir = shutil.copytree(report[0], tmp_path / "run")
    s = report[1]["eval_splits"][1]
    p = _pred(run_dir, 1.0, s)
    order = np.random.default_rng(1).permutation(len(p["clip_ids"]))
    np.savez(tmp_path / "one.npz", **{k: v[order] for k, v in p.items()})
    t = json.loads((build_report(run_dir, 200, {"ONE": tmp_path / "one.npz"}) / "tables.json").read_text())
    one, full = t["table4"][-1], next(r for r in t["table4"] if r["beta"] == 1.0)
    assert one["name"] == "ONE" and one[report[1]["eval_splits"][0]] is None
    assert _same_cell(one[s], full[s])
    assert {(r["split"], r["under_prior_of"]) for r in t["prior_shift"] if r["name"] == "ONE"} == \
        {(s, report[1]["eval_splits"][0])}
    bad = dict(p, targets=1 - p["targets"])
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(InputError, match="targets differ"):
        build_report(run_dir, 10, {"BAD": tmp_path / "bad.npz"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no predictions of the eval splits"):
        build_report(run_dir, 10, {"E": tmp_path / "empty"})
    with pytest.raises(SystemExit):
        main(["--run-dir", str(run_dir), "--extra", "no-equals-sign"])
    assert main(["--run-dir", str(tmp_path / "empty")]) == 2  # one line: no results.json


def test_extra_either_style_and_json(report, tmp_path, capsys):
    """--extra A=x B=y is --extra A=x --extra B=y; --json lists the files written."""
    run_dir = shutil.copytree(report[0], tmp_path / "run")
    copy = str(run_dir.parent / "copy")
    shutil.copytree(run_dir / "predictions" / "moore-beta=1" / "seed=0", copy)
    base = ["--run-dir", str(run_dir), "--resamples", "20"]
    assert main([*base, "--extra", f"A={copy}", f"B={copy}", "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    out = run_dir / "report"
    assert written["report"] == str(out / "report.md") and written["tables"] == str(out / "tables.json")
    spaced = json.loads((out / "tables.json").read_text())
    assert written["figures"] == [str(out / f) for f in spaced["figures"]] and written["figures"]
    assert written["per_class"] == [str(out / f"per_class_{s}.csv") for s in spaced["eval_splits"]]
    assert all(Path(f).is_file() for f in [written["report"], *written["figures"], *written["per_class"]])
    assert [r["name"] for r in spaced["table4"]][-2:] == ["A", "B"]
    assert main([*base, "--extra", f"A={copy}", "--extra", f"B={copy}"]) == 0
    assert capsys.readouterr().out.startswith(f"report written to {out / 'report.md'}\n")
    assert json.loads((out / "tables.json").read_text())["table4"] == spaced["table4"]


def test_single_beta_sweep(report, tmp_path):
    """A sweep with one beta left: the tables, no comparison figures."""
    run_dir = shutil.copytree(report[0], tmp_path / "run")
    results = json.loads((run_dir / "results.json").read_text())
    results["rows"] = results["rows"][1:2]
    (run_dir / "results.json").write_text(json.dumps(results))
    t = json.loads((build_report(run_dir, 10) / "tables.json").read_text())
    assert t["baseline_beta"] == 0.5 and t["fig3"] is None
    assert t["figures"] == ["validation_traces.png", "examples_to_peak.png"]
    assert sorted(p.name for p in (run_dir / "report").glob("*.png")) == sorted(t["figures"])  # none stale
    assert all(r[s]["rel"] == 0 for r in t["table4"] for s in results["eval_splits"])


def test_format_results_text():
    """results.txt: Tables 3-4 to 3 / 4 decimals, change vs the baseline (beta = 0, else the
    smallest beta), unsettled picks marked and named; mean +- sd over seeds; p_best and the verdict."""
    def row(b, seeds):
        picks = [{"seed": s, "learned": True, "converged": b != 1.0, "examples_to_peak": 12_000, "evaluations": 24}
                 for s in seeds]
        return {"scheme": "moore", "beta": b, "label": f"beta={b:g}", "lr": 3e-4, "learned": True, "converged": b != 1.0,
                "seeds": picks, "eval": {"ev": {"dprime": 1.5 + b, "mAP": 0.25 + b / 10}},
                "eval_sd": {"ev": {"dprime": 0.1, "mAP": 0.01}}}
    summary = {"rows": [row(1.0, [0]), row(0.0, [0])], "eval_splits": ["ev"], "p_best": {"beta=0": 0.2, "beta=1": 0.8},
               "config": {"sweep": {"schemes": ["moore"]}}, "failed": [], "diverged": [],
               "selection": {"label": "beta=1", "lr": 3e-4, "val_dprime": 2.0, "seeds": [0], "examples_to_peak": 12_000,
                             "not_converged": [{"label": "beta=1", "status": "NOT CONVERGED", "cap_to_settle": 24_000}]},
               "verdict": {"resolved": False, "provisional": True, "word": "provisional", "text": "NOT CONVERGED ..."}}
    assert format_results(summary).splitlines() == [
        "Table 3: d' (absolute, change vs beta=0)",
        "arm           lr                        ev",
        "beta=0    0.0003           1.500 (+0.000)",
        "beta=1    0.0003           2.500 (+1.000)  NOT CONVERGED",
        "",
        "Table 4: mAP (absolute, change vs beta=0)",
        "arm           lr                        ev",
        "beta=0    0.0003          0.2500 (+0.0000)",
        "beta=1    0.0003          0.3500 (+0.1000)  NOT CONVERGED",
        "",
        "NOT CONVERGED: beta=1 (picked at 12,000 examples, evaluation 24 was the last): the cap "
        "(train.max_examples) came before the pick was settled; raise it",
        "",
        "p_best (probability of being best on validation - PROVISIONAL, an arm is unsettled): beta=0 0.20, beta=1 0.80",
        "verdict: provisional: NOT CONVERGED ...",
        "provisional: best on validation: beta=1 lr=0.0003 (smoothed validation d' 2.000 at its pick after 12,000 "
        "examples; beta=1 NOT CONVERGED (needs train.max_examples >= 24,000); 0 failed or diverged trial(s))"]
    assert format_results({**summary, "rows": summary["rows"][:1]}).splitlines()[:3] == [
        "Table 3: d' (absolute, change vs beta=1)", "arm           lr                        ev",
        "beta=1    0.0003           2.500 (+0.000)  NOT CONVERGED"]
    psla = {**row(0.5, [0, 1]), "scheme": "psla", "label": "psla beta=0.5"}
    seeds = format_results({**summary, "rows": [psla, row(0.0, [0, 1]), row(1.0, [0, 1])],
                            "config": {"sweep": {"schemes": ["moore", "psla"]}}}).splitlines()
    assert seeds[0] == "Table 3: d' (absolute, change vs beta=0), mean +- sd over 2 seeds"
    assert seeds[1:5] == ["arm                  lr                        ev",
                          "beta=0           0.0003    1.500+-0.100 (+0.000)",
                          "beta=1           0.0003    2.500+-0.100 (+1.000)  NOT CONVERGED",
                          "psla beta=0.5    0.0003    2.000+-0.100 (+0.500)"]
    assert "beta=1 seed 1 (picked at 12,000" in seeds[12]


def test_without_beta_0_the_printed_tables_and_the_report_share_their_baseline(synth_store, tmp_path):
    """With beta = 0 not swept, results.txt and report.md both measure changes from the smallest
    beta, and their numbers agree."""
    run_dir = write_sweep_output(synth_store, tmp_path / "run", betas=(0.5, 1.0), lrs=(1e-3,), n_evals=12)
    build_report(run_dir, n_resamples=50)
    tables = json.loads((run_dir / "report" / "tables.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    text = format_results(results)
    assert tables["baseline_beta"] == 0.5 and "change vs beta=0.5" in text
    assert "vs beta=0.5" in (run_dir / "report" / "report.md").read_text()
    split = results["eval_splits"][0]
    rel = {r["beta"]: r[split]["rel"] for r in tables["table3"]}
    printed = {float(line.split()[0].removeprefix("beta=")): float(line.split()[3].strip("()"))
               for line in text.splitlines()[2:4]}
    assert rel[0.5] == printed[0.5] == 0 and printed[1.0] == pytest.approx(rel[1.0], abs=5e-4)


def test_no_pyplot_or_global_backend():
    """Importing the report and drawing a figure leave matplotlib's global state alone: no pyplot,
    the backend as the environment set it."""
    code = ("import sys, matplotlib, tempfile, pathlib; import sweep.report, sweep.report.figures as F; "
            "F.examples_to_peak(pathlib.Path(tempfile.mkdtemp()) / 'x.png', "
            "[{'label': 'beta=0', 'lr': 1e-3, 'examples_to_peak': 100}]); "
            "assert 'matplotlib.pyplot' not in sys.modules; assert matplotlib.rcParams['backend'] == 'svg'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1],
                   env={**os.environ, "MPLBACKEND": "svg"})


def test_two_recipes_report_every_arm_once(synth_store, tmp_path):
    """The recipes moore and ast at beta 0.5 and 1 with beta = 0 once: five arms in every table,
    the baseline first, Fig. 3 the first recipe's largest beta, the figures drawn, p_best per arm;
    Table 2 says how each arm draws (ast: N draws with replacement an epoch)."""
    run_dir = write_sweep_output(synth_store, tmp_path / "run", lrs=(1e-3,), n_evals=12, schemes=("moore", "ast"))
    build_report(run_dir, n_resamples=50)
    t = json.loads((run_dir / "report" / "tables.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    arms = ["beta=0", "moore beta=0.5", "moore beta=1", "ast beta=0.5", "ast beta=1"]
    assert [r["label"] for r in results["rows"]] == arms and set(results["p_best"]) == set(arms)
    assert [r["name"] for r in t["table4"]] == [r["label"] for r in t["table2"]] == arms
    assert [(r["recipe"], r["draw"]) for r in t["table2"]] == [("moore", "repeats")] * 3 + [("ast", "replacement")] * 2
    clips = synth_store.split_info("train")["clips"]
    assert t["table2"][3]["epoch_length"] == clips != t["table2"][1]["epoch_length"]  # the recipes draw differently
    assert t["table2"][4]["max_clip_exposure"] < t["table2"][2]["max_clip_exposure"]  # N draws an epoch, not sum M_j
    assert t["baseline"] == "beta=0" and t["fig3"]["models"] == ["beta=0", "moore beta=1"]
    assert t["figures"] == list(FIGURES)
    assert (run_dir / "predictions" / "ast-beta=0.5" / "seed=0").is_dir()
    md = (run_dir / "report" / "report.md").read_text()
    assert "| ast beta=1 | replacement |" in md and f": {results['selection']['label']}**" in md
    text = format_results(results)
    assert all(any(line.startswith(a + " ") for line in text.splitlines()) for a in arms)


def test_an_arm_that_did_not_learn_shows_no_result(synth_store, tmp_path):
    """beta = 1 at chance throughout (it never left its start): results.txt and report.md show no
    result for it, its change from the baseline is not reported, Fig. 3 (beta 1 vs 0) is not
    drawn, the trace panel says so, and p_best is drawn as provisional."""
    rng = np.random.default_rng(5)
    run_dir = write_sweep_output(synth_store, tmp_path / "run", lrs=(1e-3,), n_evals=12,
                                 unlearned=lambda t, y: 0.03 + rng.normal(0, 0.03, y.size) if t.beta == 1 else y)
    results = json.loads((run_dir / "results.json").read_text())
    row = {r["label"]: r for r in results["rows"]}["beta=1"]
    assert not row["learned"] and row["status"] == "did not learn" and results["verdict"]["provisional"]
    assert "beta=1 did not learn within the cap" in results["verdict"]["text"]
    late = {r["label"]: r for r in results["selection"]["not_converged"]}
    assert late["beta=1"]["status"] == "did not learn" and late["beta=1"]["cap_to_settle"] >= 2 * 960
    text = format_results(results).splitlines()
    line = next(x for x in text if x.startswith("beta=1 "))
    assert "no result" in line and line.endswith("did not learn within the cap") and "(+" not in line
    build_report(run_dir, n_resamples=50)
    t = json.loads((run_dir / "report" / "tables.json").read_text())
    assert t["fig3"] is None and "fig3_delta_ap_vs_prior.png" not in t["figures"]
    assert all(r["learned"] is False and all(r[s] is None for s in results["eval_splits"])
               for r in t["table3"] if r["name"] == "beta=1")
    md = (run_dir / "report" / "report.md").read_text()
    assert "no result (did not learn)" in md and "**did not learn**" in md and "Provisional p_best" in md


def test_fig3_with_fewer_than_3_classes_is_shown_without_a_line():
    """An evaluation split where only 2 classes have a delta-AP: Fig. 3's table keeps the points
    and fits no line (3 are needed), instead of failing the whole report."""
    from sweep.report.tables import fig3_table
    ap = {"lo": {"ap": np.array([0.5, 0.6, np.nan, np.nan])}, "hi": {"ap": np.array([0.7, 0.5, np.nan, 0.4])}}
    f3 = fig3_table({"ev": ap}, {"label": "lo", "beta": 0.0}, {"label": "hi", "beta": 1.0},
                    np.array([0.1, 0.01, 0.001, 0.0001]), ["a", "b", "c", "d"], n_resamples=10)
    assert f3["ev"]["n_classes"] == 2 and "slope" not in f3["ev"] and f3["ev"]["delta_ap"][0] == pytest.approx(0.2)


def test_the_report_needs_neither_ray_nor_torch(report):
    """`python -m sweep.report --run-dir DIR` builds the report with ray and torch never imported:
    it reads results.json and the saved predictions (numpy), nothing of the training stack."""
    run_dir = report[0]
    code = ("import runpy, sys\n"
            f"sys.argv = ['sweep.report', '--run-dir', {str(run_dir)!r}, '--resamples', '20']\n"
            "try:\n    runpy.run_module('sweep.report', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('ray', 'torch', 'mlflow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip().splitlines()[-1] == "[]"
