"""The one place that starts or joins Ray: every command, benchmark and test connects through here.

A local instance is bound to 127.0.0.1 (Ray's default listens on every interface), has no
dashboard and a bounded object store; `address` joins an existing cluster instead.
"""

from __future__ import annotations

LOCAL_OBJECT_STORE_BYTES = 2 * 1024**3


def connect_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int = LOCAL_OBJECT_STORE_BYTES,
) -> str:
    """Join `address`, or start a local Ray instance; returns the GCS address. Idempotent."""
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                object_store_memory=object_store_memory,
                log_to_driver=False,
                configure_logging=False,
                _node_ip_address="127.0.0.1",
            )
    return ray.get_runtime_context().gcs_address
