"""Shared fixtures: the real AudioSet label files, a small synthetic store, the smoke config's
store (built once a session), local Rays and a real `mlflow server`.

The AudioSet label files are looked for in $AUDIOSET_LABELS, else in ../shared/audioset beside
the checkout. Without them the tests that need them skip, saying where they looked; CI sets
AUDIOSET_LABELS_REQUIRED=1, which makes their absence a failure instead.

Every Ray the tests start is single-machine and loopback-only: with "cluster mode" off Ray
takes 127.0.0.1 as the node address, and its servers (GCS, raylet, workers, agents, metrics)
then listen on 127.0.0.1 instead of all interfaces. Set before anything imports Ray, and
inherited by the processes Ray and the tests start. (One listener is not Ray's: the TCPStore
that torch.distributed opens in each Train worker group listens on all interfaces, and
neither torch nor Ray Train offers a bind address for it.)
"""
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from sweep_checks import SMOKE, free_port  # noqa: E402 - after the settings above

AUDIOSET = Path(os.environ.get("AUDIOSET_LABELS") or Path(__file__).resolve().parents[2] / "shared" / "audioset")


def pytest_collection_modifyitems(items):
    """The end-to-end sweeps first (`@pytest.mark.end_to_end`), in collection order otherwise:
    the suite runs on two pytest-xdist workers, a test file at a time each, and the two longest
    files then start at once, one on each worker, with the short files filling in beside them."""
    items.sort(key=lambda item: item.get_closest_marker("end_to_end") is None)


@pytest.fixture(scope="session")
def audioset() -> Path:
    """The directory of the real AudioSet label files (class_labels_indices.csv, the segment CSVs)."""
    if not (AUDIOSET / "class_labels_indices.csv").is_file():
        message = (f"the AudioSet label files are not in {AUDIOSET}: set AUDIOSET_LABELS to their directory "
                   "(class_labels_indices.csv, balanced/unbalanced/eval segment CSVs)")
        if os.environ.get("AUDIOSET_LABELS_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return AUDIOSET


@pytest.fixture(scope="session")
def published_train(audioset):
    """The 2,063,949 published training clips (balanced + unbalanced segments), read once a
    session (about 8 CPU-seconds): the tests only read them."""
    from data.labels import read_class_index, read_segments
    seg = read_segments([audioset / "balanced_train_segments.csv", audioset / "unbalanced_train_segments.csv.gz"],
                        read_class_index(audioset / "class_labels_indices.csv"))
    assert len(seg) == 2_063_949
    return seg


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory) -> Path:
    """The smoke config's synthetic store, built once for the session's sweeps."""
    from data.synth import make_synthetic_store
    from sweep.config import load_config
    root = tmp_path_factory.mktemp("smoke") / "store"
    make_synthetic_store(root, load_config(SMOKE).data.synth)
    return root


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory):
    """A small synthetic store (train 1000 clips, 24 classes, 32 x 16 spectrograms)."""
    from data.synth import SynthConfig, make_synthetic_store
    out = tmp_path_factory.mktemp("synth") / "store"
    return make_synthetic_store(out, SynthConfig(clips=1000, classes=24, frames=32, mels=16, seed=3))


def start_local_ray():
    """The session's local Ray: 4 logical CPUs on this 2-core machine, as a laptop with more cores
    would report (two smoke trials fit at once), the dashboard on (Train V2 needs it), every
    server on 127.0.0.1."""
    import ray
    ray.init(address="local", num_cpus=4, include_dashboard=True, log_to_driver=False, configure_logging=False)
    nodes = [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]
    gcs = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
    assert nodes == ["127.0.0.1"] and gcs == "127.0.0.1", \
        f"Ray took {nodes} as the node address (GCS on {gcs}), not the loopback"


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts the session's Ray down at the end (if one is still up)."""
    import ray
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """One local Ray shared by the session's tests (the end-to-end sweeps and the streams alike),
    started by the first test that asks for it, and again after a test that needed none or its
    own cluster (tests/test_driver.py, tests/test_multinode.py) shut it down."""
    import ray
    if not ray.is_initialized():
        start_local_ray()
    return ray


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (a free port, sqlite store); yields its URI once
    healthy; SIGTERM (then SIGKILL) to its process group afterwards."""
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    with log.open("wb") as err:  # the server writes to its own copy of the descriptor
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
            # tracking only: without MLflow's job runner and its Huey consumer processes
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240   # a loaded 2-core machine has taken over 90 s to start it
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, (
                    f"mlflow server did not start (exit {server.poll()}); its log ends: "
                    + log.read_text(errors="replace")[-2000:])
                time.sleep(1)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
