"""Checks before any work: the output paths are writable, and the Ray cluster and the Optuna storage answer."""

from __future__ import annotations

from pathlib import Path

from nas.errors import NasError


def check_out_dir(path: Path, flag: str = "--out") -> None:
    """Before any work: `path` is (or can become) a directory this process can write into."""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NasError(f"{flag} {path} is a file, not a directory; choose another {flag}")
    probe = _nearest_existing(path)
    if not probe.is_dir():
        raise NasError(f"{flag} {path}: {probe} is a file, so the directory cannot be created; choose another {flag}")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as error:
        raise NasError(
            f"{flag} {path}: cannot write into {probe} ({error.strerror or error}); choose a writable {flag}"
        ) from None


def check_out_file(path: Path, flag: str = "--out") -> None:
    """Before any work: `path` is not a directory and its directory is writable."""
    path = Path(path)
    if path.is_dir():
        raise NasError(f"{flag} {path} is a directory; name a file, e.g. {path / 'latency_table.json'}")
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise NasError(
            f"{flag} {path}: {ancestor} is a file, so the directory cannot be created; choose another {flag}"
        )
    check_out_dir(path.parent, flag)


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_connections(ray_address: str | None, storage: str | None, timeout_s: float, progress=print) -> None:
    """Before any work: the Ray cluster and the Optuna storage the run will use answer within `timeout_s`."""
    from nas.storage import check, redact

    if ray_address is not None:
        from workers.cluster import check_ray_address, require_ray

        require_ray(f"--ray-address {ray_address}: joining a cluster", "ray[default]")

        progress(f"checking --ray-address {ray_address} (timeout {timeout_s:.0f} s)...")
        cpus = check_ray_address(ray_address, timeout_s)
        progress(f"Ray cluster at {ray_address}: {cpus} CPU(s)")
    if storage is not None and not storage.startswith("sqlite:"):  # a local file is opened with the study
        check(storage, timeout_s)
        progress(f"storage {redact(storage)}: reachable")
