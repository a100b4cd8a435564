"""`python -m nas.bundle`: the wheels a bare GPU machine needs besides torch to run `nas run` there without Ray.

The GPU machines this project is lent have torch, Triton, timm, numpy, scikit-learn, matplotlib, onnx and
onnxruntime, but not Ray, Optuna or fvcore (their image's package list). `nas run` goes without Ray (in-process
evaluators); Optuna and fvcore, with the dependencies that image also lacks, travel as wheels. This writes the
versions installed here, built for the target's Python and platform, into one folder, checks that it stays well
under what a device call carries with the working tree (64 MiB), and prints how to install it there:

    python -m nas.bundle --out .whl             # here (pip reaches the registry)
    # there, with .whl carried:
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
        && export PYTHONPATH=/tmp/site:$PWD && python3 -m nas run --space digits-tiny ...

A package the registry has only as a source archive (fvcore, iopath: pure Python) is built into a wheel here;
one whose build is not pure Python is refused, since it would not run on another Python.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

# What `nas run` imports beyond the GPU image, with the dependencies of those that the image lacks.
PACKAGES = ("optuna", "sqlalchemy", "alembic", "mako", "colorlog", "fvcore", "iopath", "yacs", "termcolor")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT_MIB = 32  # half of a device call's 64 MiB: the working tree travels with it


def pins(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """`name==version` of each package as installed here (the versions the tests passed with)."""
    missing = []
    result = []
    for name in packages:
        try:
            result.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise SystemExit(f"nas.bundle: {', '.join(missing)} not installed here; pip install -e . first")
    return result


def download(pin: str, out: Path, python: str) -> Path:
    """The wheel of `pin` for CPython `python` on x86-64 Linux: downloaded, or built here when the registry has only
    a source archive and the build is pure Python."""
    before = set(out.glob("*.whl"))
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    fetched = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            python,
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(out),
            pin,
        ],
        capture_output=True,
        text=True,
    )
    if fetched.returncode != 0:
        with tempfile.TemporaryDirectory() as build:
            built = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", build, pin],
                capture_output=True,
                text=True,
            )
            wheels = list(Path(build).glob("*.whl"))
            if built.returncode != 0 or len(wheels) != 1:
                raise SystemExit(
                    f"nas.bundle: {pin}: no wheel for Python {python} and no build here "
                    f"({(fetched.stderr or built.stderr).strip().splitlines()[-1:]})"
                )
            if not wheels[0].name.endswith("-py3-none-any.whl"):
                raise SystemExit(
                    f"nas.bundle: {pin}: built {wheels[0].name}, not pure Python; it would not run on Python {python}"
                )
            shutil.copy2(wheels[0], out / wheels[0].name)
    new = set(out.glob("*.whl")) - before
    if len(new) != 1:
        found = [
            w for w in out.glob("*.whl") if w.name.lower().startswith(pin.split("==")[0].replace("-", "_").lower())
        ]
        if found:  # already in the folder from an earlier call
            return found[0]
        raise SystemExit(f"nas.bundle: {pin}: expected one wheel, found {sorted(w.name for w in new)}")
    return new.pop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nas.bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path(".whl"), help="the wheel folder (default: .whl, ignored by git)"
    )
    parser.add_argument(
        "--python", default="3.12", help="the target machine's Python version (default: %(default)s, the GPU image's)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    wheels = []
    for pin in pins():
        wheel = download(pin, args.out, args.python)
        wheels.append(wheel)
        print(f"{pin}: {wheel.name} ({wheel.stat().st_size / 2**20:.2f} MiB)", flush=True)
    total = sum(w.stat().st_size for w in wheels) / 2**20
    if total > LIMIT_MIB:
        raise SystemExit(
            f"nas.bundle: {total:.1f} MiB of wheels is over {LIMIT_MIB} MiB; a device call carries 64 MiB with the tree"
        )
    print(
        f"{len(wheels)} wheels, {total:.1f} MiB in {args.out}. There: python3 -m pip install -q --no-index --no-deps "
        f"--no-compile --target /tmp/site {args.out}/*.whl && export PYTHONPATH=/tmp/site:$PWD && python3 -m nas run ..."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
