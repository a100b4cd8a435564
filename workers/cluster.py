"""Ray start-up and capacity checks: the one place that starts or joins Ray.

Without --ray-address, the product starts its own local Ray instance (address="local"),
whatever other instances, stale address files or RAY_ADDRESS exist, with no dashboard.
With --ray-address (auto, host:port or ray://host:port) it joins that cluster without
passing local resources, after `check_ray_address` has probed it, within a timeout, in a
child process: a dead address, a cluster that wants an auth token, or one that does not
answer is one clear line after at most the timeout, and Ctrl-C stops the wait.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from nas.errors import NasError
from nas.storage import CONNECT_TIMEOUT_S

AUTH_HINT = (
    "the cluster uses token authentication (on by default for `ray start --head` in current Ray): copy the head's "
    "token (~/.ray/auth_token on the head) to ~/.ray/auth_token here, or pass RAY_AUTH_TOKEN=<token> or "
    "RAY_AUTH_TOKEN_PATH=<file>"
)


def use_token_if_available() -> str | None:
    """Before joining a cluster: Ray's clients send a token only with RAY_AUTH_MODE=token. Like `ray start`,
    turn that on when RAY_AUTH_MODE is unset and a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token); a cluster without authentication accepts such a client too. Returns where the token is."""
    if "RAY_AUTH_MODE" in os.environ:
        return None
    default = Path.home() / ".ray" / "auth_token"
    source = (
        "RAY_AUTH_TOKEN"
        if os.environ.get("RAY_AUTH_TOKEN")
        else "RAY_AUTH_TOKEN_PATH"
        if os.environ.get("RAY_AUTH_TOKEN_PATH")
        else str(default)
        if default.is_file()
        else None
    )
    if source is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
    return source


def ray_available() -> bool:
    """Whether Ray is installed here: a bare GPU machine may have torch without it, and then the
    pipeline runs in one process (in-process evaluator, no distributed training). Found without
    importing it: Ray reads RAY_AUTH_MODE when it is imported, and `use_token_if_available` must
    set it first."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def require_ray(what: str, package: str, instead: str = "") -> None:
    """Before any work: refuse (one line) `what` where Ray is not installed."""
    if not ray_available():
        raise NasError(f"{what} needs Ray, which is not installed here (pip install '{package}'){instead}")


def check_local_capacity(ray_address: str | None, **counts: int) -> None:
    """Before any work: on a local Ray instance, each count (e.g. workers=2) fits this machine's CPUs."""
    if ray_address is not None:
        return
    cpus = os.cpu_count() or 1
    for flag, count in counts.items():
        if count > cpus:
            raise NasError(
                f"--{flag} {count}: the local Ray instance has {cpus} CPU(s); use at most that, or join a cluster with --ray-address"
            )


_PROBE = """
import sys, ray
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, logging_level="ERROR")
print("CPUS", int(ray.cluster_resources().get("CPU", 0)), flush=True)
"""


def check_ray_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """Before any work: the Ray cluster at `address` answers within `timeout_s`; returns its CPU count."""
    target = address[len("ray://") :] if address.startswith("ray://") else address
    if target != "auto":
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise NasError(f"--ray-address {address!r}: expected auto, host:port or ray://host:port")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout_s, 10.0)).close()
        except OSError as error:
            raise NasError(
                f"--ray-address {address}: no Ray cluster answers there ({error.strerror or error}); "
                "start one with `ray start --head` or check the address"
            ) from None
    use_token_if_available()
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, address],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
        output, stdout = probe.stdout + probe.stderr, probe.stdout
    except subprocess.TimeoutExpired as expired:
        output, stdout = _text(expired.stdout) + _text(expired.stderr), None
    if stdout is not None:
        for line in stdout.splitlines():
            if line.startswith("CPUS "):
                return int(line.split()[1])
    if "Unauthenticated" in output or "InvalidAuthToken" in output:
        raise NasError(f"--ray-address {address}: {AUTH_HINT}")
    if stdout is None:
        raise NasError(
            f"--ray-address {address}: the cluster did not accept a connection within {timeout_s:.0f} s; check the "
            "address, that this machine reaches the head's ports, and (for a head started with `ray start --head`) "
            "RAY_AUTH_TOKEN"
        )
    last = next(
        (line.strip() for line in reversed(output.splitlines()) if line.strip()), f"exit status {probe.returncode}"
    )
    raise NasError(f"--ray-address {address}: cannot join the Ray cluster ({last[:200]})")


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def init_ray(address: str | None, num_cpus: int | None = None, progress=None) -> None:
    """Join `address` (auto or a URL), or start our own local Ray instance with no dashboard."""
    import ray

    if ray.is_initialized():
        return
    import signal
    import threading

    on_sigterm = signal.getsignal(signal.SIGTERM)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts its worker processes at niceness +15 so that they yield the CPU to its own services and to every other
    # process: beside two busy processes an evaluator actor then took 151 s to start and 128 s to score 20 archs,
    # against 5.4 s and 3.5 s (results/bench/ray_niceness.*). Our workers are the work: at the driver's priority.
    # An explicit RAY_worker_niceness stands; a cluster's nodes keep what their `ray start` was given.
    os.environ.setdefault("RAY_worker_niceness", "0")
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        # Our own local instance, whatever other instances, address files or RAY_ADDRESS exist ("local" never
        # joins one). No dashboard; Ray's own gRPC services bind every interface (Ray has no option to restrict them).
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), dashboard_host="127.0.0.1", **kwargs)
    else:
        use_token_if_available()
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as error:
            raise NasError(
                f"--ray-address {address}: cannot join the Ray cluster ({str(error)[:200]}); if it was started with "
                f"`ray start --head`, {AUTH_HINT}"
            ) from None
    # Ray's core worker installs a crash handler for SIGTERM (a C++ stack dump, then abort): ours comes back,
    # so SIGTERM stops like Ctrl-C (nas.cli) and Ray shuts down through its normal exit path.
    if on_sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    if progress is not None:
        context = ray.get_runtime_context()
        where = "a local Ray instance of its own" if address is None else f"the Ray cluster at {address}"
        progress(
            f"Ray: {where} (gcs {getattr(context, 'gcs_address', '?')}, {int(ray.cluster_resources().get('CPU', 0))} CPU(s))"
        )


def require_cpus(flag: str, count: int) -> None:
    """After Ray is up: the cluster has at least `count` CPUs for `--flag count` actors or workers."""
    import ray

    available = int(ray.cluster_resources().get("CPU", 0))
    if count > available:
        raise NasError(f"--{flag} {count}: Ray has {available} CPU(s); use at most {available}")
