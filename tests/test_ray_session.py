"""The local Ray instance our commands start listens on loopback only (no cluster open to the
network): every listening socket of every process of the instance, found with psutil."""

from __future__ import annotations

import ipaddress

import psutil


def _instance_processes(gcs_port: int) -> list[psutil.Process]:
    """The GCS process (found by its port) and every process below the raylet of this instance."""
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if f":{gcs_port}" in cmdline or any(
                c.laddr.port == gcs_port
                for c in process.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ):
                found[process.pid] = process
                for child in process.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def test_the_local_instance_listens_on_loopback_only(ray_address):
    import ray

    @ray.remote
    def ping() -> int:  # start a worker process, so its ports are listening too
        return 1

    assert ray.get(ping.remote()) == 1
    host, port = ray_address.rsplit(":", 1)
    assert _is_loopback(host), ray_address
    processes = _instance_processes(int(port))
    names = {p.name() for p in processes}
    assert {"gcs_server", "raylet"} <= names, names
    listening = [
        (p.name(), c.laddr.ip, c.laddr.port)
        for p in processes
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= 3, listening  # GCS, raylet, a worker at least
    exposed = [entry for entry in listening if not _is_loopback(entry[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"
