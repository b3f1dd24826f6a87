"""cluster.yaml: Ray's own launcher schema, checked offline, plus the project's invariants.

`prepare_config` + `validate_config` are what `ray up` runs before it touches the cloud
(ray/autoscaler/_private/commands.py); `bootstrap_config` is never called here because it
contacts AWS. Sockets are blocked while the config is prepared, so the test cannot reach it.
"""
from __future__ import annotations

import copy
import re
import shlex
import socket
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
PRIVATE_IP = r"\$\(hostname -I \| awk '\{print \$1\}'\)"
ALL_INTERFACES = ("0.0.0.0", "::", "[::]")


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def offline(monkeypatch):
    """Any network connection attempt fails the test."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"cluster config validation tried to connect: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def _prepared(cfg: dict) -> dict:
    return prepare_config(copy.deepcopy(cfg))


def _commands(cfg: dict, *keys: str) -> list[str]:
    return [c for k in keys for c in cfg.get(k) or []]


def _all_commands(cfg: dict) -> list[str]:
    return _commands(cfg, "initialization_commands", "setup_commands", "head_setup_commands",
                     "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def _gpu_types(cfg: dict) -> dict:
    return {n: t for n, t in cfg["available_node_types"].items() if t.get("resources", {}).get("GPU", 0) > 0}


def _option(command: str, flag: str) -> str:
    """The value of `flag` in a shell command (`--flag value` or `--flag=value`)."""
    tokens = shlex.split(command, posix=True)
    for i, tok in enumerate(tokens):
        if tok == flag:
            return tokens[i + 1]
        if tok.startswith(flag + "="):
            return tok.split("=", 1)[1]
    raise AssertionError(f"{flag} not found in: {command}")


def test_passes_rays_launcher_schema_offline(raw, offline):
    validate_config(_prepared(raw))


def test_typo_key_is_rejected(raw, offline):
    """Proves the schema check bites: `setup_command` is not a launcher key."""
    bad = copy.deepcopy(raw)
    bad["setup_command"] = bad.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_command"):
        validate_config(_prepared(bad))


def test_no_all_interfaces_binding_anywhere():
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()


def test_no_credentials_in_file():
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        assert key not in text


def test_gpu_worker_autoscales_from_zero(raw):
    gpu = _gpu_types(raw)
    assert gpu, "no node type declares a GPU resource"
    for name, t in gpu.items():
        assert t["min_workers"] == 0, name
        assert t["max_workers"] >= 1, name
        assert name != raw["head_node_type"]
    assert raw["max_workers"] >= sum(t["max_workers"] for t in gpu.values())


def test_head_is_cpu_and_offers_train_driver(raw):
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("TRAIN_DRIVER", 0) >= 1
    assert head["resources"].get("GPU", 0) == 0
    # The sweep's drivers ask for this resource by the name in configs/audioset.yaml.
    audioset = yaml.safe_load((ROOT / "configs" / "audioset.yaml").read_text())
    assert audioset["resources"]["driver_resource"] in head["resources"]
    for name, t in _gpu_types(raw).items():
        assert "TRAIN_DRIVER" not in t["resources"], f"{name}: drivers must stay off GPU nodes"


def test_setup_installs_the_ray_we_run(raw):
    setup = "\n".join(_commands(raw, "setup_commands"))
    pins = re.findall(r"ray\[([a-z,]+)\]==([0-9][0-9a-z.]*)", setup)
    assert pins, "setup_commands do not pin ray[...]==X"
    for extras, version in pins:
        assert version == ray.__version__
        assert {"default", "data", "train", "tune"} <= set(extras.split(","))


def test_setup_pins_match_pyproject(raw):
    setup = "\n".join(_commands(raw, "setup_commands"))
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    project_pins = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", d).groups()
                        for d in deps if "==" in d)
    setup_pins = dict(re.findall(r"\b([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([0-9][0-9A-Za-z.+]*)", setup))
    shared = set(project_pins) & set(setup_pins)
    assert {"ray", "torch"} <= shared
    assert {k: setup_pins[k] for k in shared} == {k: project_pins[k] for k in shared}
    assert re.search(r"-e ~/balance-sweep\b", setup), "the project itself is not installed"
    assert raw["file_mounts"].get("~/balance-sweep") == "."


def test_storage_is_s3_via_sweep_storage(raw):
    setup = "\n".join(_commands(raw, "setup_commands"))
    assert re.search(r"export SWEEP_STORAGE=\"?s3://", setup)


def test_ray_dashboard_on_loopback(raw):
    starts = [c for c in raw["head_start_ray_commands"] if "ray start --head" in c]
    assert len(starts) == 1
    assert _option(starts[0], "--dashboard-host") == "127.0.0.1"


def test_mlflow_server_on_head_private_ip(raw):
    servers = [c for c in raw["head_start_ray_commands"] if "mlflow server" in c]
    assert len(servers) == 1, "the head must start exactly one MLflow server"
    cmd = servers[0]
    host = _option(cmd, "--host")
    assert host not in ALL_INTERFACES
    var = re.fullmatch(r"\$\{?(\w+)\}?", host)
    if var:  # --host "$NAME": NAME must be assigned the head's private address
        assert re.search(rf"\b{var.group(1)}=\"?{PRIVATE_IP}", cmd), host
    else:
        assert re.fullmatch(PRIVATE_IP, host), host
    assert _option(cmd, "--backend-store-uri").startswith("sqlite:///")
    assert _option(cmd, "--artifacts-destination") in ("$SWEEP_STORAGE/mlartifacts", "${SWEEP_STORAGE}/mlartifacts")
    assert "*" not in _option(cmd, "--allowed-hosts").split(",")


def test_mlflow_uri_exported_to_head_and_workers(raw):
    head = "\n".join(_commands(raw, "head_setup_commands"))
    workers = "\n".join(_commands(raw, "worker_setup_commands"))
    assert re.search(rf"MLFLOW_TRACKING_URI=http://{PRIVATE_IP}:5000", head)
    assert re.search(r"MLFLOW_TRACKING_URI=http://\$\{?RAY_HEAD_IP\}?:5000", workers)


def test_every_command_is_valid_bash(raw):
    import subprocess
    for cmd in _all_commands(raw):
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
