import pytest

from sweep.config import Config, ConfigError, flatten, load_config, to_dict


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sweep:\n  betas: [0, 0.5]\ntrain:\n  examples: 100\n  optim: {betas: [0.95, 0.999]}\n")
    cfg = load_config(path, ["train.examples=200", "sweep.lrs=[1e-4, 1e-3]", "data.synth=null"])
    assert cfg.sweep.betas == [0, 0.5] and cfg.train.examples == 200
    assert cfg.sweep.lrs == [1e-4, 1e-3] and cfg.data.synth is None
    assert cfg.train.optim.betas == (0.95, 0.999)
    assert cfg.train.eval_every_examples == Config().train.eval_every_examples


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.exampels"):
        load_config(None, ["train.exampels=5"])
    (tmp_path / "c.yaml").write_text("sweeep: {}\n")
    with pytest.raises(ConfigError, match="sweeep"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.examples"])


@pytest.mark.parametrize("name", ["demo", "smoke", "audioset"])
def test_shipped_configs_load(name):
    from pathlib import Path
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert len(cfg.sweep.betas) >= 2
    flat = flatten(to_dict(cfg))
    assert flat["sweep.smoothing_window"] == 7 and "train.optim.lr" in flat
