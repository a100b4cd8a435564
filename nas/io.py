"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.
And JSON-lines logs of long benchmarks: one record per line, appended and flushed, so a kill
leaves whole lines and at most a cut last one (`append_line`, `read_lines`)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(
            tmp, 0o666 & ~_umask()
        )  # mkstemp makes 0600 (and some writers recreate the file): the usual permissions
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def append_line(path: str | os.PathLike, record: dict) -> None:
    """One JSON line, written with one call and flushed to disk: a kill leaves whole lines and at most a cut last one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    with open(path, "ab") as handle:
        if handle.tell() > 0:  # a cut line from a kill: end it so that the new record starts a line
            with open(path, "rb") as reader:
                reader.seek(-1, os.SEEK_END)
                if reader.read(1) != b"\n":
                    data = b"\n" + data
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read_lines(path: str | os.PathLike) -> tuple[list[object], int, int | None]:
    """(records, cut, bad): the JSON lines of `path` ([] if it does not exist), how many cut lines
    (an interrupted append: the last line, not JSON) were dropped, and the number of the first
    other line that is not JSON (None if none: the caller names the damaged file)."""
    path = Path(path)
    if not path.is_file():
        return [], 0, None
    records, cut = [], 0
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                cut += 1
                continue
            return records, cut, number
    return records, cut, None


def drop_cut_tail(path: str | os.PathLike) -> None:
    """Cut off what follows the last newline of `path` (a line an interrupted append left unfinished)."""
    with open(path, "rb+") as handle:
        text = handle.read()
        handle.truncate(text.rfind(b"\n") + 1)
