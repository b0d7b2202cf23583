"""A multi-node Ray cluster on this machine, for the fault tests and the recovery benchmark.

A head and worker nodes, each a raylet of its own with its own CPUs, all on 127.0.0.1 (Ray's
`ray.cluster_utils.Cluster`). Commands join it with `--ray-address address`; a node can be lost
as a machine is (its raylet and every process on it SIGKILLed) and another added.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

#: Each node: one CPU (a Ray Train worker or a task at a time), a small object store, loopback.
NODE_ARGS = {"num_cpus": 1, "object_store_memory": 150 * 2**20, "node_ip_address": "127.0.0.1"}


def start_cluster(workers: int = 2) -> RayCluster:
    """A head and `workers` worker nodes, all up."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only (cluster.ray_session)
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={**NODE_ARGS, "include_dashboard": False},
    )
    nodes = RayCluster(cluster, [])
    for _ in range(workers):
        nodes.add_worker()
    return nodes


@dataclass
class RayCluster:
    """A multi-node Ray cluster on this machine: a head and worker nodes, each a raylet of its
    own with its own CPUs, all on 127.0.0.1. Commands join it with `--ray-address address`."""

    cluster: Any  # ray.cluster_utils.Cluster
    workers: list  # the worker nodes (ray._private.node.Node), in the order they were added

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self):
        node = self.cluster.add_node(**NODE_ARGS)
        self.cluster.wait_for_nodes()
        self.workers.append(node)
        return node

    def kill_worker(self, node) -> None:
        """Lose `node` as a machine is lost: its raylet and every process on it, SIGKILLed."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def worker_processes(self, name: str) -> list:
        """The live Ray worker processes on this cluster's nodes whose title holds `name` (e.g.
        `RayTrainWorker`): descendants of its raylets, never another test's Ray, and never a
        process such a worker started (a DataLoader worker inherits its parent's title)."""
        import psutil

        found = []
        for node in [self.cluster.head_node, *self.workers]:
            for info in node.all_processes.get("raylet", []):
                try:
                    children = psutil.Process(info.process.pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    continue
                for child in children:
                    try:
                        if child.status() != psutil.STATUS_ZOMBIE and (
                            name in " ".join(child.cmdline()) or name in child.name()
                        ):
                            found.append(child)
                    except psutil.Error:
                        continue
        pids = {p.pid for p in found}
        return [p for p in found if _parent_pid(p) not in pids]

    def node_of(self, process) -> str:
        """The Ray node id of the raylet a process runs under."""
        import psutil

        parents = {p.pid for p in psutil.Process(process.pid).parents()}
        for node in [self.cluster.head_node, *self.workers]:
            if any(info.process.pid in parents for info in node.all_processes.get("raylet", [])):
                return node.node_id
        raise LookupError(f"process {process.pid} is on none of this cluster's nodes")

    def shutdown(self) -> None:
        self.cluster.shutdown()


def _parent_pid(process) -> int | None:
    import psutil

    try:
        return process.ppid()
    except psutil.Error:
        return None
