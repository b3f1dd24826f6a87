"""The Train workers' torch.distributed process group, kept on the loopback when the sweep runs on one machine.

Ray Train's own set-up (`TorchConfig`, init_method "env" or "tcp") has rank 0 open a TCPStore,
which listens on every interface (torch has no bind address), and gloo binds the address the
host name resolves to. When every node of the Ray cluster has a loopback address (a sweep that
started its own Ray: sweep/environment.py), `torch_config` gives `LoopbackTorchConfig`: the
workers meet in a file (torch's FileStore, `init_method="file://..."`, in the node's temporary
directory, removed when the group shuts down) and gloo opens its sockets on the loopback
interface (GLOO_SOCKET_IFNAME): nothing a trial opens listens beyond this machine. A cluster's
workers must reach each other over the network: there Ray Train's TCP set-up is kept
(docs/failures.md). Checked with Ray 2.60, whose `_TorchBackend` this extends.
"""
from __future__ import annotations

import os
import socket
import tempfile
import uuid

import ray
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

__all__ = ["LoopbackTorchConfig", "on_loopback", "torch_config"]

GLOO_INTERFACE = "GLOO_SOCKET_IFNAME"


def on_loopback() -> bool:
    """Whether every live node of the connected Ray cluster has a loopback address (no node of
    another machine can be in it, nor join it)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return bool(nodes) and all(n["NodeManagerAddress"] in ("127.0.0.1", "::1", "localhost") for n in nodes)


def torch_config() -> TorchConfig:
    """The process-group set-up of a trial: on the loopback when the cluster is (`on_loopback`),
    else Ray Train's default."""
    return LoopbackTorchConfig() if on_loopback() else TorchConfig()


def _loopback_interface() -> str:
    """The name of this machine's loopback interface ("lo" on Linux, "lo0" on macOS)."""
    return next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")


def _gloo_on_loopback() -> None:
    os.environ.setdefault(GLOO_INTERFACE, _loopback_interface())


class _FileStoreBackend(_TorchBackend):
    """Ray Train's torch backend, the group set up through a file instead of a TCPStore."""

    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        self.path = os.path.join(tempfile.gettempdir(), f"balance-sweep-pg-{uuid.uuid4().hex}")
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        worker_group.execute(_gloo_on_loopback)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend="nccl" if gpus else "gloo",
                                                   world_rank=i, world_size=len(worker_group),
                                                   init_method=f"file://{self.path}", timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: TorchConfig) -> None:
        try:
            super().on_shutdown(worker_group, backend_config)
        finally:
            if getattr(self, "path", None):
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass


class LoopbackTorchConfig(TorchConfig):
    """`TorchConfig` of a cluster on the loopback (see the module docstring)."""

    @property
    def backend_cls(self):
        return _FileStoreBackend
