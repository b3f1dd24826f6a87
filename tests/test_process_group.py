"""The Train workers' process group on a one-machine Ray listens on the loopback only (sweep/process_group.py)."""
import ipaddress
import json
import os
import socket

import pytest

from sweep.process_group import LoopbackTorchConfig, on_loopback, torch_config

LISTEN = "0A"  # TCP state of a listening socket in /proc/net/tcp{,6}


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads listening sockets from Linux's /proc")
def test_a_one_machine_trial_listens_on_the_loopback_only(ray_local, tmp_path):
    """Two Train workers on the session's Ray (every node on 127.0.0.1): the group meets in a file,
    all-reduce works, and rank 0 listens on nothing but the loopback (with Ray Train's own TCP
    set-up its TCPStore listens on every interface, [::]:port)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def listening_addresses() -> list[str]:
        """The local addresses ("ip:port") of this process's listening TCP sockets (Linux)."""
        fd_dir = f"/proc/{os.getpid()}/fd"
        inodes = set()
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        found = []
        for proto, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
            for line in open(f"/proc/net/{proto}").read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == LISTEN and fields[9] in inodes:
                    address, port = fields[1].split(":")
                    raw = bytes.fromhex(address)  # each 32-bit word in host (little-endian) order
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    found.append(f"{socket.inet_ntop(family, raw)}:{int(port, 16)}")
        return found

    def loop(config):
        import ray.train
        import torch
        import torch.distributed as dist
        x = torch.ones(1)
        dist.all_reduce(x)  # the group works: every worker's 1 summed
        seen = {"world": dist.get_world_size(), "sum": float(x), "listening": listening_addresses(),
                "gloo": os.environ.get("GLOO_SOCKET_IFNAME", "")}
        with open(f"{config['out']}/rank{ray.train.get_context().get_world_rank()}.json", "w") as f:
            json.dump(seen, f)

    assert on_loopback() and isinstance(torch_config(), LoopbackTorchConfig)
    TorchTrainer(loop, train_loop_config={"out": str(tmp_path)}, torch_config=torch_config(),
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(name="pg", storage_path=str(tmp_path / "ray"))).fit()
    for rank in (0, 1):
        m = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert m["world"] == 2 and m["sum"] == 2.0 and m["gloo"].startswith("lo")
        hosts = [ipaddress.ip_address(a.rsplit(":", 1)[0]) for a in m["listening"]]
        hosts = [getattr(h, "ipv4_mapped", None) or h for h in hosts]  # ::ffff:127.0.0.1 is 127.0.0.1
        assert all(h.is_loopback for h in hosts), f"rank {rank} listens beyond the loopback: {m['listening']}"
