"""The one place that starts or joins Ray: every command, benchmark and test connects through here.

A local instance listens on 127.0.0.1 only, has no dashboard and a bounded object store;
`address` joins an existing cluster instead.

Binding: Ray replaces a node address of 127.0.0.1 by the machine's reachable address and its
servers (GCS, raylet, workers, agents) then listen on every interface, so `_node_ip_address` is
not enough. Ray's own switch for single-machine instances, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
(what it does on macOS and Windows), makes the node address loopback, and every server binds
there. It is set only when we start a local instance (a driver joining a cluster must advertise
its real address), and inherited by the processes Ray starts.
"""

from __future__ import annotations

import os

from cluster.guards import HasPaths, refuse_node_local_paths

LOCAL_OBJECT_STORE_BYTES = 2 * 1024**3
_LOCAL_ONLY_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"


def connect_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int = LOCAL_OBJECT_STORE_BYTES,
    *,
    paths: HasPaths | None = None,
    shared_fs: bool = False,
) -> str:
    """Join `address`, or start a local Ray instance bound to 127.0.0.1; returns the GCS
    address. Idempotent. `paths`: the command's paths, refused where they are local folders on a
    cluster of several nodes (unless `shared_fs`: `cluster.guards.refuse_node_local_paths`)."""
    if not address:
        os.environ[_LOCAL_ONLY_SWITCH] = "0"  # before ray reads it at import
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            _local_only_even_if_imported_before()
            # "local": a new instance, even where a cluster started with `ray start` (or a
            # test's) runs on this machine, which a bare ray.init() would join instead.
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                object_store_memory=object_store_memory,
                log_to_driver=False,
                configure_logging=False,
                _node_ip_address=LOOPBACK,
            )
            gcs = ray.get_runtime_context().gcs_address
            if not gcs.startswith(f"{LOOPBACK}:"):
                ray.shutdown()
                raise RuntimeError(f"the local Ray instance is not bound to {LOOPBACK} ({gcs})")
    if paths is not None:
        refuse_node_local_paths(paths, alive_nodes(), shared_fs)
    return ray.get_runtime_context().gcs_address


def alive_nodes() -> int:
    """The nodes of the cluster this process is connected to that are alive."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _local_only_even_if_imported_before() -> None:
    """Ray reads the switch once, when imported: if something imported it before us, set the
    value it read (the module constant its address lookup consults on every call)."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
