"""Ray start-up and capacity checks: the one place that starts or joins Ray."""

from __future__ import annotations

import os

from nas.errors import NasError


def check_local_capacity(ray_address: str | None, **counts: int) -> None:
    """Before any work: on a local Ray instance, each count (e.g. workers=2) fits this machine's CPUs."""
    if ray_address is not None:
        return
    cpus = os.cpu_count() or 1
    for flag, count in counts.items():
        if count > cpus:
            raise NasError(f"--{flag} {count}: the local Ray instance has {cpus} CPU(s); use at most that, or join a cluster with --ray-address")


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join `address` (auto or a URL), or start a local Ray instance with no dashboard."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        # Our own local instance, whatever other instances, address files or RAY_ADDRESS exist ("local" never
        # joins one); it serves nobody else: whatever dashboard/agent Ray starts listens on loopback only.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), dashboard_host="127.0.0.1", **kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as error:
            raise NasError(f"--ray-address {address}: no Ray cluster there ({error})") from None


def require_cpus(flag: str, count: int) -> None:
    """After Ray is up: the cluster has at least `count` CPUs for `--flag count` actors or workers."""
    import ray

    available = int(ray.cluster_resources().get("CPU", 0))
    if count > available:
        raise NasError(f"--{flag} {count}: Ray has {available} CPU(s); use at most {available}")
