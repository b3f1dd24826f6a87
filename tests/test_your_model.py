"""A sweep of any model (`model.arch`): a timm CNN and a user's `module:function` factory, each
trained end to end on a local Ray with the smoke config (one trial: beta 1), continued to a higher
cap with --resume and evaluated with sweep.evaluate, both from their checkpoints alone; what
--print-config and the header say of the model; a bad model or bad weights found before
anything starts (one line, exit 2)."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from mlflow.tracking import MlflowClient
from sweep_checks import check_selection_is_exact, children, smoke_args

from sweep.checkpoint import MODEL, load_state
from sweep.evaluate import main as evaluate_main
from sweep.run import main
from sweep.select import StoppingRule
from tests.own_models import Unsafe

RULE = StoppingRule(3, 3, 2.0)  # configs/smoke.yaml
FACTORY = "tests.own_models:frame_tagger"


@pytest.mark.end_to_end
@pytest.mark.parametrize("arch, options, stem, shape", [
    ("mobilenetv3_small_050", {}, "net.conv_stem.weight", [16, 1, 3, 3]),  # timm's, one input channel
    (FACTORY, {"width": 12}, "conv.weight", [12, 32, 3]),                  # the factory's, its width an option
])
def test_a_sweep_trains_resumes_and_evaluates_any_model(ray_local, smoke_store, tmp_path, monkeypatch, capsys,
                                                        arch, options, stem, shape):
    """The trial's checkpoints record the arch; traces, selection, confidence, the winner's
    evaluation, the report and MLflow as for the AST; --resume to a higher cap trains on from
    the last checkpoint (the first evaluations kept, not redone); sweep.evaluate rebuilds the
    selected checkpoint and scores it as the sweep did."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    args = smoke_args(tmp_path, smoke_store, "sweep.betas=[1.0]", f"model.arch={arch}",
                      f"model.options={json.dumps(options)}", f"run.ray_address={ray_local.get_runtime_context().gcs_address}")
    assert main([*args, "--set", "train.max_examples=256"]) == 0
    out = capsys.readouterr().out
    assert f"model      {arch} (" in out and " parameters, 32 frames x 32 mels, 8 classes" in out
    first = json.loads((run / "results.json").read_text())
    assert [r["label"] for r in first["rows"]] == ["beta=1"] and not first["failed"] and not first["diverged"]
    check_selection_is_exact(first, RULE, cap_evals=4)
    assert set(first["p_best"]) == {"beta=1"} and first["confidence"]["selected"] == "beta=1"
    assert (run / "report" / "report.md").is_file() and (run / "results.txt").is_file()
    for split in first["eval_splits"]:
        assert (run / "predictions" / "moore-beta=1" / "seed=0" / f"{split}.npz").is_file()

    assert main([*args, "--set", "train.max_examples=384", "--resume"]) == 0
    capsys.readouterr()
    results = json.loads((run / "results.json").read_text())
    (before,), (after,) = first["traces"], results["traces"]
    assert after["examples"][:4] == before["examples"] == [64, 128, 192, 256] and after["examples"][-1] == 384
    assert after["dprime"][:4] == before["dprime"]  # continued from the checkpoint at 256, not trained again
    check_selection_is_exact(results, RULE, cap_evals=6)
    (pick,) = results["rows"][0]["seeds"]
    state = load_state(pick["checkpoint"])
    assert state["model"]["arch"] == arch and state["model"]["options"] == options and state["model"]["weights"] is None
    assert list(torch.load(Path(pick["checkpoint"]) / MODEL, weights_only=True)[stem].shape) == shape

    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    parent_id, trials = children(client, run)
    assert len(trials) == 1 and trials[0].data.params["cfg.model.arch"] == arch  # the resumed trial's own run
    assert len(client.get_metric_history(trials[0].info.run_id, "val_dprime")) == 6
    assert client.get_run(parent_id).data.params["model.arch"] == arch

    split = results["eval_splits"][0]
    assert evaluate_main(["--checkpoint", pick["checkpoint"], "--store", str(smoke_store), "--split", split,
                          "--batch-size", "256", "--device", "cpu", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)["eval"][split]
    for metric in ("mAP", "AUC", "dprime"):
        assert scored[metric] == pytest.approx(pick["eval"][split][metric], abs=1e-9)


def test_print_config_states_the_model_and_its_parameter_count(smoke_store, tmp_path, capsys):
    assert main([*smoke_args(tmp_path, smoke_store, "model.arch=resnet10t", "model.options={drop_rate: 0.1}"),
                 "--print-config"]) == 0
    out = capsys.readouterr().out
    count = sum(p.numel() for p in timm.create_model("resnet10t", in_chans=1, num_classes=8).parameters())
    assert (f"# model: resnet10t (timm, 1 input channel) drop_rate=0.1, {count:,} parameters, 32 frames x 32 mels, "
            "8 classes\n") in out
    assert "  arch: resnet10t\n" in out
    assert main([*smoke_args(tmp_path, smoke_store), "--print-config"]) == 0
    assert "# model: AST tiny (32 wide, 1 deep), " in capsys.readouterr().out


@pytest.mark.parametrize("override, named", [
    ("model.arch=resnet18.a1_in1k", "model.arch: must be ast, a timm architecture without a weights tag"),
    ("model.arch=hf-hub:timm/resnet18", "model.arch: must be ast"),
    ("model.options=[1, 2]", "model.options: must be a mapping"),
])
def test_a_bad_arch_is_one_line_before_anything_starts(tmp_path, smoke_store, capsys, override, named):
    assert main(smoke_args(tmp_path, smoke_store, override)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {named}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arch, weights, named", [
    ("resnet9000", None, "model.arch 'resnet9000': not 'ast', package.module:function or a timm architecture"),
    ("tests.own_models:per_frame_logits", None, "returns [2, 32, 8] for log-mel [batch, frames, mels] = [2, 32, 32]"),
    ("resnet10t", "missing.pth", "weights file not found: {tmp}/missing.pth"),
    ("resnet10t", "pickle.pth", "{tmp}/pickle.pth: not a readable weights file"),
    ("resnet10t", "mobilenet.pth", "{tmp}/mobilenet.pth: not resnet10t weights in timm's layout"),
    (FACTORY, "mobilenet.pth", "{tmp}/mobilenet.pth: does not fit tests.own_models:frame_tagger"),
])
def test_a_bad_model_or_weights_stop_the_sweep_before_ray(tmp_path, smoke_store, monkeypatch, capsys, arch, weights,
                                                          named):
    """Issue 38 item 8: built once before Ray starts, not in every trial; one line naming the arch
    or the file, exit 2, no MLflow store and no Ray run, and an earlier sweep left where it was."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.save({"w": torch.zeros(1), "obj": Unsafe()}, tmp_path / "pickle.pth")
    torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), tmp_path / "mobilenet.pth")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")  # an earlier sweep's answer
    overrides = [f"model.arch={arch}"] + ([f"model.weights={tmp_path / weights}"] if weights else [])
    assert main(smoke_args(tmp_path, smoke_store, *overrides)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and named.format(tmp=tmp_path) in err[-1] and "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "results.json"]  # the lock it took


def test_audioset_trained_weights_of_any_arch_are_refused_for_an_audioset_sweep(tmp_path):
    """The leakage guard for a timm or factory file: a 527-output classifier is a model trained
    on AudioSet; refused for a sweep on AudioSet's classes unless confirmed, taken for others."""
    from sweep.config import ConfigError
    from sweep.prepare import refuse_audioset_checkpoint
    audioset, imagenet = tmp_path / "audioset_resnet.pth", tmp_path / "imagenet.pth"
    torch.save(timm.create_model("resnet10t", in_chans=1, num_classes=527).state_dict(), audioset)
    torch.save(timm.create_model("resnet10t").state_dict(), imagenet)
    as_store = SimpleNamespace(mids=["/m/09x0r", "/m/04rlf", "/t/dd00001"], n_classes=3)
    for arch in ("resnet10t", FACTORY):
        with pytest.raises(ConfigError, match=r"audioset_resnet\.pth is a model trained on AudioSet .*"
                                              r"model\.allow_audioset_weights=true"):
            refuse_audioset_checkpoint(str(audioset), as_store, arch)
        refuse_audioset_checkpoint(str(imagenet), as_store, arch)
        refuse_audioset_checkpoint(str(audioset), SimpleNamespace(mids=["/x/dog", "/x/car"], n_classes=2), arch)
