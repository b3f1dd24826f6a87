import pytest

from sweep.trial import Arm, Trial
from sweep.config import Config, ConfigError, flatten, load_config, to_dict


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sweep:\n  betas: [0, 0.5]\ntrain:\n  max_examples: 100\n  optim: {adam_betas: [0.95, 0.999]}\n")
    cfg = load_config(path, ["train.max_examples=200", "sweep.lrs=[1e-4, 1e-3]", "data.synth=null"])
    assert cfg.sweep.betas == [0, 0.5] and cfg.train.max_examples == 200
    assert cfg.sweep.lrs == [1e-4, 1e-3] and cfg.data.synth is None
    assert cfg.train.optim.adam_betas == (0.95, 0.999)
    assert cfg.train.eval_every_examples == Config().train.eval_every_examples


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.exampels"):
        load_config(None, ["train.exampels=5"])
    (tmp_path / "c.yaml").write_text("sweeep: {}\n")
    with pytest.raises(ConfigError, match="sweeep"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.max_examples"])


@pytest.mark.parametrize("name", ["demo", "smoke", "audioset"])
def test_shipped_configs_load(name):
    from pathlib import Path
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert len(cfg.sweep.betas) >= 2
    flat = flatten(to_dict(cfg))
    assert flat["sweep.smoothing_window"] % 2 == 1 and "train.optim.lr" in flat


@pytest.mark.parametrize("override, message", [
    ("sweep.betas=[-1]", r"sweep\.betas: must be a non-empty list of distinct numbers >= 0"),
    ("sweep.betas=[1, 1.0, 0]", r"sweep\.betas: must be a non-empty list of distinct numbers >= 0, got \[1\.0, 1\.0, 0\.0\]"),
    ("sweep.settle_ratio=0.5", r"sweep\.settle_ratio: must be a number >= 1"),
    ("sweep.betas=[]", r"sweep\.betas: must be a non-empty"),
    ("sweep.betas=0.5", r"sweep\.betas: expected a list"),
    ("sweep.betas=[.inf]", r"sweep\.betas\[0\]: inf is not a finite number"),
    ("sweep.lrs=[0.001, -1]", r"sweep\.lrs: must be a non-empty list of distinct numbers > 0"),
    ("train.max_examples=-5", r"train\.max_examples: must be an integer >= 1, got -5"),
    ("train.batch_size=1.5", r"train\.batch_size: 1\.5 is not a valid int"),
    ("train.eval_every_examples=0", r"train\.eval_every_examples: must be an integer >= 1"),
    ("train.keep_checkpoints=0", r"train\.keep_checkpoints: must be null or an integer >= 1"),
    ("resources.use_gpu=maybe", r"resources\.use_gpu: expected true or false, got 'maybe'"),
    ("train.augment.mixup=1", r"train\.augment\.mixup: expected true or false"),
    ("sweep.smoothing_window=4", r"sweep\.smoothing_window: must be a positive odd integer, got 4"),
    ("sweep.patience=0", r"sweep\.patience: must be an integer >= 1"),
    ("run.name=/some/dir", r"run\.name: must be a plain name"),
    ("run.name=..", r"run\.name: must be a plain name"),
    ("data.store=[1]", r"data\.store: expected a string"),
    ("sweep.schemes=[moore, focal]", r"sweep\.schemes \(sweep\.recipes\): unknown balancing recipe 'focal'; known: "
                                     r"moore, psla, passt-repeats, ast, audiomae, passt, panns \(NAME@E"),
    ("sweep.recipes=[psla, psla]", r"sweep\.schemes \(sweep\.recipes\): must be a non-empty list of distinct"),
    ("sweep.schemes=[]", r"sweep\.schemes \(sweep\.recipes\): must be a non-empty list"),
    ("sweep.recipes=[moore@100]", r"recipe 'moore@100': moore draws each clip M_j times a pass"),
    ("sweep.recipes=[passt@0]", r"recipe 'passt@0': the epoch length after '@' must be an integer >= 1, got '0'"),
    ("sweep.recipes=[passt@1e3]", r"recipe 'passt@1e3': the epoch length after '@' must be an integer >= 1"),
])
def test_values_are_checked_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_the_grid_is_every_scheme_at_every_beta_with_beta_0_once():
    """beta = 0 is no balancing whatever the scheme: one arm, named by its beta alone."""
    cfg = load_config(None, ["sweep.schemes=[moore, psla, passt]", "sweep.betas=[0, 0.5, 1]"])
    assert [(a.scheme, a.beta) for a in cfg.sweep.arms] == [
        ("moore", 0.0), ("moore", 0.5), ("moore", 1.0), ("psla", 0.5), ("psla", 1.0), ("passt", 0.5), ("passt", 1.0)]
    assert [a.label(cfg.sweep.several_schemes) for a in cfg.sweep.arms][:2] == ["beta=0", "moore beta=0.5"]
    one = load_config(None, ["sweep.betas=[0, 1]"])
    assert one.sweep.arms == [Arm("moore", 0.0), Arm("moore", 1.0)] and one.sweep.arms[1].label(False) == "beta=1"
    assert load_config(None, ["sweep.schemes=[psla]", "sweep.betas=[0.5]"]).sweep.arms == [Arm("psla", 0.5)]


def test_recipes_is_another_name_for_schemes(tmp_path):
    """sweep.recipes (in a file or an override) is sweep.schemes; a file giving both is one error
    naming both; the later source wins, whichever name it uses."""
    cfg = load_config(None, ["sweep.recipes=[moore, ast, passt@500]", "sweep.betas=[0, 1]"])
    assert cfg.sweep.schemes == ["moore", "ast", "passt@500"] and "recipes" not in to_dict(cfg)["sweep"]
    assert [a.label(cfg.sweep.several_schemes) for a in cfg.sweep.arms] == [
        "beta=0", "moore beta=1", "ast beta=1", "passt@500 beta=1"]
    (tmp_path / "a.yaml").write_text("sweep: {recipes: [ast, panns]}\n")
    assert load_config(tmp_path / "a.yaml").sweep.schemes == ["ast", "panns"]
    assert load_config(tmp_path / "a.yaml", ["sweep.schemes=[moore]"]).sweep.schemes == ["moore"]
    (tmp_path / "b.yaml").write_text("sweep: {recipes: [ast], schemes: [moore]}\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: sweep\.recipes and sweep\.schemes are one key .*: give one"):
        load_config(tmp_path / "b.yaml")


def test_a_trial_has_one_name_of_each_kind():
    """sweep/trial.py: the arm's label, the MLflow name, the stable key, and Tune's encoding."""
    t = Trial("psla", 0.5, 3e-4, 1)
    assert t.arm.label(True) == "psla beta=0.5" and t.arm.label(False) == "beta=0.5" and Arm("psla", 0).label(True) == "beta=0"
    assert t.name(True, True) == "psla beta=0.5 lr=0.0003 seed=1" and t.name(False, False) == "beta=0.5 lr=0.0003"
    assert t.key == "psla-beta=0.5-lr=0.0003-seed=1" and Trial.from_tune(t.tune_config) == t
    assert Trial("moore", 1, 1e-3, 0) == Trial("moore", 1.0, 0.001, 0) and len({t, Trial("psla", 0.5, 3e-4, 1)}) == 1


def test_underscores_and_exponents_are_numbers():
    cfg = load_config(None, ["train.max_examples=40_000_000", "sweep.lrs=[1e-4, 5e-5]"])
    assert cfg.train.max_examples == 40_000_000 and cfg.sweep.lrs == [1e-4, 5e-5]


def test_paths_in_a_config_file_are_relative_to_the_file(tmp_path, monkeypatch):
    """A config in mydata/ naming stores/mine means mydata/stores/mine, from wherever it is
    run; --set paths and URIs are taken as they are."""
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "mine.yaml").write_text(
        "data: {store: stores/mine, synth: null}\nrun: {run_dir: /abs/run, storage_path: s3://bucket/x}\n"
        "model: {weights: ../w.pth}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("mydata/mine.yaml")
    assert cfg.data.store == str(tmp_path / "mydata" / "stores" / "mine")
    assert cfg.model.weights == str(tmp_path / "mydata" / ".." / "w.pth")
    assert cfg.run.run_dir == "/abs/run" and cfg.run.storage_path == "s3://bucket/x"
    assert load_config("mydata/mine.yaml", ["data.store=here"]).data.store == "here"
