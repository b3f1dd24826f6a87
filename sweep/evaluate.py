"""Evaluation of trial checkpoints on store splits, and the trial checkpoint format.

A trial checkpoint is a directory:
  model.pt      the AST state dict (unwrapped from DDP)
  optimizer.pt  the Adam state
  state.json    {examples, step, history, beta, lr, model: ASTConfig as a dict}
so a checkpoint rebuilds its model without the sweep's configuration.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from data.store import Store
from model.ast import ASTConfig, create_ast
from model.step import predict
from sweep.metrics import classification_metrics

__all__ = ["save_checkpoint", "load_state", "load_model", "evaluate_split", "save_predictions"]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel
    return model.module if isinstance(model, DistributedDataParallel) else model


def save_checkpoint(directory: str | Path, model, optimizer, state: dict, model_cfg: ASTConfig) -> None:
    d = Path(directory)
    torch.save(_unwrap(model).state_dict(), d / "model.pt")
    torch.save(optimizer.state_dict(), d / "optimizer.pt")
    (d / "state.json").write_text(json.dumps({**state, "model": asdict(model_cfg)}))


def load_state(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "state.json").read_text())


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the AST a trial checkpoint holds (no weights file other than model.pt is read)."""
    cfg = ASTConfig(**{**load_state(directory)["model"], "weights": None})
    model = create_ast(cfg)
    model.load_state_dict(torch.load(Path(directory) / "model.pt", map_location="cpu"))
    return model.to(device).eval()


def evaluate_split(model, store: Store, split: str, batch_size: int,
                   device: str | torch.device = "cpu") -> dict:
    """Scores of `model` on a whole split: {scores [N, K], targets [N, K], clip_ids [N],
    metrics (classification_metrics)}."""
    clip_ids: list[np.ndarray] = []

    def batches():
        for b in store.iter_batches(split, batch_size):
            clip_ids.append(b["clip_id"])
            yield torch.from_numpy(np.array(b["mel"])), torch.from_numpy(b["target"])  # writable copy

    scores, targets = predict(model, batches(), device)
    return {"scores": scores, "targets": targets, "clip_ids": np.concatenate(clip_ids).astype(str),
            "metrics": classification_metrics(targets, scores)}


def save_predictions(path: str | Path, result: dict) -> None:
    """`path`.npz with scores, targets, clip_ids."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, scores=result["scores"], targets=result["targets"],
                        clip_ids=result["clip_ids"])


def target_prior(spec: str, targets: np.ndarray, store: Store | None, train_split: str = "train") -> np.ndarray:
    """A class prior [K] named on the command line: `train`, `uniform` (every class at the
    set's mean prior), a store split's name, or a CSV file with a `prior` column in class order."""
    if spec == "uniform":
        return np.full(targets.shape[1], targets.mean())
    if spec.endswith(".csv"):
        import csv
        with open(spec, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "prior" not in rows[0]:
            raise ValueError(f"{spec}: expected a CSV with a 'prior' column, one row per class")
        prior = np.array([float(r["prior"]) for r in rows])
    else:
        if store is None:
            raise ValueError(f"--target-prior {spec} needs --store")
        split = train_split if spec == "train" else spec
        prior = store.class_counts(split) / store.split_info(split)["clips"]
    if prior.shape != (targets.shape[1],):
        raise ValueError(f"target prior has {prior.size} classes, the predictions {targets.shape[1]}")
    return prior


def main(argv=None) -> int:
    import argparse
    import sys
    from data.store import open_store
    p = argparse.ArgumentParser(prog="python -m sweep.evaluate", description=(
        "Evaluate a checkpoint on a store split, or re-score saved predictions under another class "
        "prior (AP changes with the prior, d' does not)."))
    p.add_argument("--predictions", metavar="NPZ", help="predictions saved by a sweep (scores, targets, clip_ids)")
    p.add_argument("--target-prior", metavar="PRIOR", help="train | uniform | <split> | file.csv")
    p.add_argument("--checkpoint", metavar="PATH", help="a trial checkpoint dir or a published AST .pth")
    p.add_argument("--store", metavar="DIR", help="the spectrogram store")
    p.add_argument("--split", metavar="NAME", help="split to evaluate --checkpoint on")
    p.add_argument("--out", metavar="NPZ", help="where to save the checkpoint's predictions")
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args(argv)
    store = open_store(a.store) if a.store else None
    if a.checkpoint:
        if store is None or not a.split:
            p.error("--checkpoint needs --store and --split")
        if Path(a.checkpoint).is_dir():
            model = load_model(a.checkpoint)
        else:
            from model.ast import load_ast_checkpoint
            model = load_ast_checkpoint(a.checkpoint, n_classes=store.n_classes, frames=store.frames).eval()
        result = evaluate_split(model, store, a.split, a.batch_size)
        if a.out:
            save_predictions(a.out, result)
        m = result["metrics"]
        print(json.dumps({"split": a.split, "clips": len(result["clip_ids"]), "mAP": m["mAP"],
                          "AUC": m["mAUC"], "dprime": m["dprime"], "excluded": m["excluded"]}, indent=1))
        return 0
    if not a.predictions or not a.target_prior:
        p.error("give --checkpoint (with --store, --split) or --predictions with --target-prior")
    from sweep.stats import prior_shift_metrics
    with np.load(a.predictions) as f:
        scores, targets = f["scores"], f["targets"]
    prior = target_prior(a.target_prior, targets, store)
    own = classification_metrics(targets, scores)
    shifted = prior_shift_metrics(targets, scores, prior)
    print(json.dumps({"predictions": a.predictions, "target_prior": a.target_prior,
                      "mAP_own_prior": own["mAP"], "mAP_target_prior": float(shifted["mAP"]),
                      "dprime": own["dprime"], "ess_min": float(np.nanmin(shifted["ess"])),
                      "ess": np.round(shifted["ess"], 1).tolist()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
