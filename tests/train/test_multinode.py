"""Training across two "nodes": two network namespaces joined by a veth pair, one torchrun agent in
each, c10d rendezvous over that link. The losses must equal a one-node run with the same DP size."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from netns import create_pair, delete_pair, why_not_available
from trainrun import TINY, env, losses, run_train

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REASON = why_not_available()


def node_cmd(node, host, is_host: bool, port: int, sets: list[str]) -> list[str]:
    cmd = node.exec_prefix() + [
        "env", f"GLOO_SOCKET_IFNAME={node.ifname}",
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{host.ip}:{port}", "--rdzv-id", "glotta-multinode",
        # Both namespaces share this machine's host name, so name the host agent and each node's address.
        "--rdzv-conf", f"is_host={int(is_host)}", "--local-addr", node.ip,
        "--module", "glotta.launch.cli", "train", "--json",
    ]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    return cmd


@pytest.mark.skipif(REASON is not None, reason=f"cannot create network namespaces: {REASON}")
def test_two_nodes_over_veth_train_like_one_node(train_data, tmp_path):
    sets = TINY + train_data.overrides() + ["train_iters=6", "checkpoint.interval=1000", "tracking.enabled=false"]
    run_train(2, sets + [f"run_dir={tmp_path / 'one'}"])

    tag = f"gm{os.getpid() % 10000}"
    nodes = create_pair(tag, subnet=f"10.231.{os.getpid() % 250}")
    try:
        procs = [
            subprocess.Popen(
                node_cmd(n, nodes[0], i == 0, 29561, sets + [f"run_dir={tmp_path / 'two'}"]),
                env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for i, n in enumerate(nodes)
        ]  # fmt: skip
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        delete_pair(nodes)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-4000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step][-1] == pytest.approx(one[step][-1], rel=1e-5), step
