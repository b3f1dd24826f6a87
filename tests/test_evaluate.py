"""python -m sweep.evaluate: prior-shift re-scoring of saved predictions (every --target-prior
form) and evaluation of checkpoints on store splits (a trial checkpoint written by
save_checkpoint, a published-layout AST .pth with random weights)."""
import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from data.cli import InputError
from model.ast import create_ast, normalise
from model.config import ModelConfig
from model.augment import AugmentConfig
from model.step import OptimConfig, make_optimizer, train_step
from sweep.checkpoint import save_checkpoint
from sweep.history import TrialState
from sweep.trial import Trial
from sweep.evaluate import main
from sweep.predictions import save_predictions
from sweep.metrics import classification_metrics
from sweep.report.__main__ import main as report_main
from test_ast import published, reference_forward
from test_report import write_sweep_output

SPLIT = "eval_internal"


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(capsys, *argv) -> tuple[int, dict | str]:
    """The command with --json: (exit status, the printed JSON or, on an error, stderr)."""
    rc = main([str(a) for a in argv] + ["--json"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else err)


def _prior(store, split):
    return store.class_counts(split) / store.split_info(split)["clips"]


@pytest.fixture(scope="module")
def predictions(synth_store, tmp_path_factory):
    """Scores of the SPLIT clips, better for some classes than others; saved as the sweep does."""
    targets = synth_store.labels(SPLIT).multi_hot(synth_store.n_classes).astype(np.float32)
    rng = np.random.default_rng(0)
    sep = np.linspace(0.5, 3.0, targets.shape[1])
    scores = (1 / (1 + np.exp(-(sep * targets + rng.normal(size=targets.shape) - 1)))).astype(np.float32)
    path = tmp_path_factory.mktemp("pred") / f"{SPLIT}.npz"
    save_predictions(path, {"scores": scores, "targets": targets, "clip_ids": synth_store.clip_ids(SPLIT)})
    return path, targets, scores


def _ap_reweighted(y, s, pi_target, k):
    """Class k's AP with negatives weighted to prior pi_target (sklearn, independently)."""
    pi = y[:, k].mean()
    w = np.where(y[:, k] == 1, 1.0, pi * (1 - pi_target) / (pi_target * (1 - pi)))
    return average_precision_score(y[:, k], s[:, k], sample_weight=w)


def test_rescore_every_prior_form(synth_store, predictions, tmp_path, capsys):
    path, y, s = predictions
    own = classification_metrics(y, s)
    csv_path = tmp_path / "prior.csv"
    custom = np.linspace(0.01, 0.3, y.shape[1])
    with open(csv_path, "w", newline="") as f:  # rows in reverse class order, placed by `index`
        w = csv.writer(f)
        w.writerow(["index", "name", "prior"])
        w.writerows([i, f"c{i}", custom[i]] for i in reversed(range(y.shape[1])))
    forms = {"train": _prior(synth_store, "train"), "uniform": np.full(y.shape[1], y.mean()),
             SPLIT: y.mean(0), "eval_public": _prior(synth_store, "eval_public"), str(csv_path): custom}
    for spec, pi_target in forms.items():
        rc, out = _run(capsys, "--predictions", path, "--target-prior", spec, "--store", synth_store.root)
        assert rc == 0, out
        assert out["dprime"] == pytest.approx(own["dprime"], abs=1e-12)  # d' does not move
        assert out["AUC"] == pytest.approx(own["mAUC"], abs=1e-12)
        assert out["mAP_own_prior"] == pytest.approx(own["mAP"], abs=1e-12)
        per = out["per_class"]
        assert [c["class"] for c in per] == synth_store.classes and not out["excluded"]
        np.testing.assert_allclose([c["prior_target"] for c in per], pi_target, atol=1e-12)
        want = [_ap_reweighted(y, s, pi_target[k], k) for k in range(y.shape[1])]
        np.testing.assert_allclose([c["ap_target_prior"] for c in per], want, rtol=0, atol=1e-7)
        assert out["mAP_target_prior"] == pytest.approx(np.mean(want), abs=1e-7)
        ess = np.array([c["ess"] for c in per])
        assert (ess > 0).all() and (ess <= len(y) + 1e-9).all() and out["ess_min"] == pytest.approx(ess.min())
        if spec == SPLIT:  # the set's own prior: nothing re-weighted
            assert out["mAP_target_prior"] == pytest.approx(own["mAP"], abs=1e-12)
            np.testing.assert_allclose(ess, len(y))
        else:
            assert abs(out["mAP_target_prior"] - own["mAP"]) > 1e-3
    # uniform and csv need no store
    rc, out = _run(capsys, "--predictions", path, "--target-prior", "uniform")
    assert rc == 0 and out["per_class"][0]["class"] == "0"
    # without --json: a readable summary of the same numbers
    assert main(["--predictions", str(path), "--target-prior", "uniform"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == f"{path} ({len(y):,} clips, {y.shape[1]} classes) under the prior uniform:"
    assert text[1] == (f"  mAP {own['mAP']:.4f} under its own prior, {out['mAP_target_prior']:.4f} under the "
                       f"target prior; d' {own['dprime']:.3f} and AUC {own['mAUC']:.4f} do not depend on it")


def test_rescore_errors(synth_store, predictions, tmp_path, capsys):
    path = predictions[0]
    rc, err = _run(capsys, "--predictions", path, "--target-prior", "train")
    assert rc == 2 and "needs --store" in err
    rc, err = _run(capsys, "--predictions", path, "--target-prior", "nope", "--store", synth_store.root)
    assert rc == 2 and "no split 'nope'" in err
    short = tmp_path / "short.csv"
    short.write_text("prior\n0.1\n0.2\n")
    rc, err = _run(capsys, "--predictions", path, "--target-prior", short)
    assert rc == 2 and "2 classes, the predictions 24" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("prior\n" + "1.5\n" * 24)
    rc, err = _run(capsys, "--predictions", path, "--target-prior", bad)
    assert rc == 2 and "not in [0, 1]" in err
    with pytest.raises(SystemExit):
        main(["--predictions", str(path)])


def _eval_batches(store, split):
    batches = list(store.iter_batches(split, 512))
    return (np.concatenate([b["mel"] for b in batches]).astype(np.float32),
            np.concatenate([b["clip_id"] for b in batches]).astype(str))


def test_trial_checkpoint(synth_store, tmp_path, capsys):
    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=synth_store.frames, mels=synth_store.mels,
                      fstride=16, tstride=16, n_classes=synth_store.n_classes)
    torch.manual_seed(0)
    model = create_ast(cfg)
    optim_cfg = OptimConfig(lr=1e-3)
    opt = make_optimizer(model, optim_cfg)
    batch = next(synth_store.iter_batches("train", 32))
    x, y = torch.from_numpy(batch["mel"].astype(np.float32)), torch.from_numpy(batch["target"])
    for step in range(3):
        train_step(model, opt, x, y, step, optim_cfg, AugmentConfig(specaugment=False, mixup=False))
    ckpt = tmp_path / "checkpoint_000003"
    ckpt.mkdir()
    save_checkpoint(ckpt, model, opt, TrialState(Trial("moore", 0.5, 1e-3, 0), examples=96, step=3), cfg)

    out_dir = tmp_path / "preds"
    rc, out = _run(capsys, "--checkpoint", ckpt, "--store", synth_store.root, "--split", "eval_public",
                   "--split", SPLIT, "--out", out_dir, "--batch-size", 50, "--device", "cpu")
    assert rc == 0, out
    assert out["kind"] == "trial" and set(out["eval"]) == {"eval_public", SPLIT}
    assert json.loads((out_dir / "metrics.json").read_text()) == out
    model.eval()
    for split in ("eval_public", SPLIT):
        with np.load(out_dir / f"{split}.npz") as f:
            pred = {k: f[k] for k in f.files}
        mel, ids = _eval_batches(synth_store, split)
        assert (pred["clip_ids"] == ids).all() and (pred["clip_ids"] == synth_store.clip_ids(split)).all()
        with torch.no_grad():
            want = torch.sigmoid(model(normalise(torch.from_numpy(mel)))).numpy()
        np.testing.assert_allclose(pred["scores"], want, atol=1e-5)
        np.testing.assert_array_equal(pred["targets"], synth_store.labels(split).multi_hot(synth_store.n_classes))
        m = classification_metrics(pred["targets"], pred["scores"])
        assert out["eval"][split]["mAP"] == pytest.approx(m["mAP"]) and out["eval"][split]["AUC"] == pytest.approx(m["mAUC"])
        assert out["eval"][split]["dprime"] == pytest.approx(m["dprime"]) and out["eval"][split]["clips"] == len(ids)

    # --split a b is --split a --split b; without --json the metrics print one line per split
    assert main(["--checkpoint", str(ckpt), "--store", str(synth_store.root), "--split", "eval_public", SPLIT,
                 "--batch-size", "50", "--device", "cpu"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == f"{ckpt} (trial) on {synth_store.root}:" and len(text) == 3
    for line, split in zip(text[1:], ("eval_public", SPLIT)):
        m = out["eval"][split]
        assert line == f"  {split}: mAP {m['mAP']:.4f}  AUC {m['AUC']:.4f}  d' {m['dprime']:.3f}  ({m['clips']:,} clips)"

    # one split to one .npz file; a checkpoint that does not fit the store is an error
    rc, out = _run(capsys, "--checkpoint", ckpt, "--store", synth_store.root, "--split", SPLIT,
                   "--out", tmp_path / "one.npz")
    assert rc == 0 and out["predictions"] == {SPLIT: str(tmp_path / "one.npz")} and (tmp_path / "one.npz").is_file()
    other = tmp_path / "other"
    other.mkdir()
    five = ModelConfig(**{**cfg.__dict__, "n_classes": 5})
    save_checkpoint(other, create_ast(five), opt, TrialState(Trial("moore", 0.5, 1e-3, 0)), five)
    rc, err = _run(capsys, "--checkpoint", other, "--store", synth_store.root, "--split", SPLIT)
    assert rc == 2 and "n_classes" in err
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ckpt), "--store", str(synth_store.root)])  # no --split


def test_published_ast_checkpoint(synth_store, tmp_path, capsys):
    grid = ((synth_store.mels - 16) // 16 + 1, (synth_store.frames - 16) // 16 + 1)
    sd = published(d=64, depth=1, grid=grid, k=synth_store.n_classes, seed=4)
    path = tmp_path / "audioset_16_16_0.0000.pth"  # the stride comes from the name (mels != 128)
    torch.save(sd, path)
    rc, out = _run(capsys, "--checkpoint", path, "--store", synth_store.root, "--split", SPLIT,
                   "--split", "eval_public", "--out", tmp_path / "ast")
    assert rc == 0, out
    assert out["kind"] == "published" and out["eval"][SPLIT]["clips"] == synth_store.split_info(SPLIT)["clips"]
    with np.load(tmp_path / "ast" / f"{SPLIT}.npz") as f:
        scores, targets = f["scores"], f["targets"]
    mel, _ = _eval_batches(synth_store, SPLIT)
    with torch.no_grad():  # the published tensors run through plain torch ops
        want = torch.sigmoid(reference_forward(sd, normalise(torch.from_numpy(mel)), 16, 16, heads=1)).numpy()
    np.testing.assert_allclose(scores, want, atol=1e-5)
    assert out["eval"][SPLIT]["mAP"] == pytest.approx(classification_metrics(targets, scores)["mAP"])

    # the paper's "AST" row: the report reads the --out directory as an extra model
    run_dir = write_sweep_output(synth_store, tmp_path / "run", betas=(0.0, 1.0), lrs=(1e-3,))
    assert report_main(["--run-dir", str(run_dir), "--extra", f"AST={tmp_path / 'ast'}", "--resamples", "200"]) == 0
    capsys.readouterr()
    tables = json.loads((run_dir / "report" / "tables.json").read_text())
    ast = tables["table4"][-1]
    assert ast["name"] == "AST" and ast["beta"] is None
    for split in ("eval_public", SPLIT):
        assert ast[split]["abs"] == pytest.approx(out["eval"][split]["mAP"], abs=1e-12)
        assert ast[split]["ci95"][0] <= ast[split]["rel"] <= ast[split]["ci95"][1]
    assert sum(r["name"] == "AST" for r in tables["prior_shift"]) == 2
    assert "| AST |" in (run_dir / "report" / "report.md").read_text()

    wrong = tmp_path / "audioset_16_16_wrong.pth"
    torch.save(published(d=64, depth=1, grid=grid, k=5), wrong)
    rc, err = _run(capsys, "--checkpoint", wrong, "--store", synth_store.root, "--split", SPLIT)
    assert rc == 2 and "5 classes" in err


def test_files_cut_short_are_named(tmp_path, synth_store, capsys):
    """A truncated model.pt, predictions .npz or published .pth: one line naming the file."""
    from sweep.evaluate import load_model
    from sweep.predictions import load_predictions
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cfg = ModelConfig(frames=synth_store.frames, mels=synth_store.mels, fstride=16, tstride=16,
                      embed_dim=32, depth=1, num_heads=2, n_classes=synth_store.n_classes)
    model = create_ast(cfg)
    save_checkpoint(ckpt, model, torch.optim.Adam(model.parameters()), TrialState(Trial("moore", 0.5, 1e-3, 0), 64), cfg)
    data = (ckpt / "model.pt").read_bytes()
    (ckpt / "model.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match=r"ckpt/model\.pt: not a readable checkpoint file"):
        load_model(ckpt)
    rc, err = _run(capsys, "--checkpoint", ckpt, "--store", synth_store.root, "--split", SPLIT)
    assert rc == 2 and "model.pt: not a readable checkpoint file" in err and err.count("\n") == 1
    npz = tmp_path / "p.npz"
    np.savez_compressed(npz, scores=np.zeros((4, 2)), targets=np.zeros((4, 2)), clip_ids=np.array(list("abcd")))
    npz.write_bytes(npz.read_bytes()[:40])
    with pytest.raises(InputError, match=r"p\.npz: not a readable predictions file"):
        load_predictions(npz)
    rc, err = _run(capsys, "--predictions", npz, "--target-prior", "uniform")
    assert rc == 2 and "p.npz: not a readable predictions file" in err
    pth = tmp_path / "audioset_16_16_cut.pth"
    pth.write_bytes(data[:100])
    rc, err = _run(capsys, "--checkpoint", pth, "--store", synth_store.root, "--split", SPLIT)
    assert rc == 2 and "audioset_16_16_cut.pth: not a readable weights file" in err
