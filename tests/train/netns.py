"""Two "nodes" on one machine: network namespaces joined by a veth pair (needs root + iproute2)."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass
class Node:
    ns: str
    ip: str
    ifname: str

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def create_pair(tag: str, subnet: str = "10.231.7") -> tuple[Node, Node]:
    """Create ns `<tag>0`/`<tag>1` with veth ends `<tag>v0`/`<tag>v1` at SUBNET.1 and SUBNET.2 (/24)."""
    nodes = (Node(f"{tag}0", f"{subnet}.1", f"{tag}v0"), Node(f"{tag}1", f"{subnet}.2", f"{tag}v1"))
    for n in nodes:
        _ip("netns", "add", n.ns)
    _ip("link", "add", nodes[0].ifname, "type", "veth", "peer", "name", nodes[1].ifname)
    for n in nodes:
        _ip("link", "set", n.ifname, "netns", n.ns)
        _ip("-n", n.ns, "addr", "add", f"{n.ip}/24", "dev", n.ifname)
        _ip("-n", n.ns, "link", "set", "lo", "up")
        _ip("-n", n.ns, "link", "set", n.ifname, "up")
    return nodes


def delete_pair(nodes) -> None:
    for n in nodes:
        subprocess.run(["ip", "netns", "del", n.ns], capture_output=True)


def why_not_available() -> str | None:
    """None when namespaces can be made here, else the reason (used as the skip message)."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"glprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None
