"""Shared fixtures: the real AudioSet label files in ../shared, and a small synthetic store."""
from pathlib import Path

import pytest

AUDIOSET = Path(__file__).resolve().parents[2] / "shared" / "audioset"


@pytest.fixture(scope="session")
def audioset() -> Path:
    assert AUDIOSET.is_dir(), f"the AudioSet label files are expected at {AUDIOSET}"
    return AUDIOSET


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory):
    """A small synthetic store (train 1000 clips, 24 classes, 32 x 16 spectrograms)."""
    from data.synth import SynthConfig, make_synthetic_store
    out = tmp_path_factory.mktemp("synth") / "store"
    return make_synthetic_store(out, SynthConfig(clips=1000, classes=24, frames=32, mels=16, seed=3))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session: 2 CPUs like CI, the dashboard on (Train V2 needs it)."""
    import os
    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()
