"""Optuna storage URLs: where they come from, how they are shown, and whether they answer.

A storage URL may carry a password (`postgresql://user:pw@host/db`, or a query parameter such
as `?password=pw`). It can be given in the environment variable NAS_STORAGE_URL instead of
--storage, so that it never appears in the process list, in shell history or as the Ray job's
entrypoint; every message, manifest and log shows it through `redact`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from nas.config import CONNECT_TIMEOUT_S  # noqa: F401  seconds to reach a storage or a Ray cluster before any work
from nas.errors import NasError

ENV = "NAS_STORAGE_URL"
SCHEMA_RACE_TRIES = 5  # connections tried when another process creates Optuna's tables at the same moment
SECRET_KEYS = ("password", "passwd", "pwd", "pass", "secret", "token", "sslpassword", "api_key", "apikey")
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+)")


def redact(url: str) -> str:
    """The URL with the password of `user:password@` and of secret query parameters replaced by ***."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    path, sep, query = rest.partition("?")
    if "@" in path:
        credentials, host = path.rsplit("@", 1)
        if ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        path = f"{credentials}@{host}"
    if sep:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in SECRET_KEYS else v) for k, v in pairs], safe="*/:")
    return f"{scheme}://{path}{sep}{query}"


def redact_text(text: str) -> str:
    """Every URL inside `text` (an error message, a command line) redacted."""
    return _URL.sub(lambda m: redact(m.group(1)), text)


def scrub(text: str, url: str) -> str:
    """`text` (a driver's error message) without any piece of `url`'s credentials: a password with an
    unencoded '@' or ':' makes URL parsers quote fragments of it that no URL pattern recognises."""
    if "://" not in url:
        return text
    netloc = url.split("://", 1)[1].split("?", 1)[0]
    if "@" not in netloc:
        return text
    credentials = netloc.rsplit("@", 1)[0]
    pieces = {credentials} | set(re.split(r"[@:/]", credentials)) | set(credentials.split(":", 1)[1:])
    for piece in sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True):
        text = text.replace(piece, "***")
    return text


def resolve(flag: str | None) -> tuple[str | None, str]:
    """The storage URL from --storage, else from NAS_STORAGE_URL, else None; and where it came from."""
    if flag:
        return flag, "--storage"
    env = os.environ.get(ENV, "").strip()
    if env:
        return env, ENV
    return None, "default"


def normalize(url: str) -> str:
    """`postgresql://` means SQLAlchemy's psycopg2 driver; use psycopg 3 when only it is installed."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def check(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> list[str]:
    """Connect to the storage before any work; the names of the studies it holds. A server that does
    not answer within `timeout_s`, or refuses, is one NasError line (the password redacted)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    outcome: dict = {}

    def connect() -> None:
        try:
            create_sqlite_whole(url)
        except BaseException as error:  # noqa: BLE001 — reported like any other failure to open
            outcome["error"] = error
            return
        for attempt in range(SCHEMA_RACE_TRIES):
            if attempt:
                time.sleep(0.1 * attempt)
            try:
                outcome["names"] = [s.study_name for s in optuna.get_all_study_summaries(normalize(url))]
                outcome.pop("error", None)
                return
            except BaseException as error:  # noqa: BLE001 — storage backends raise many types
                outcome["error"] = error
                if not lost_schema_race(error):
                    return

    worker = threading.Thread(target=connect, name="storage-check", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise NasError(
            f"--storage {redact(url)}: no answer within {timeout_s:.0f} s; is the database server running and reachable?"
        )
    if "error" in outcome:
        error = outcome["error"]
        detail = scrub(redact_text(str(error).strip().splitlines()[0] if str(error).strip() else ""), url)[:200]
        raise NasError(f"--storage {redact(url)}: cannot open it ({type(error).__name__}: {detail})")
    return outcome["names"]


def create_sqlite_whole(url: str) -> None:
    """A new SQLite study file appears with Optuna's whole schema: the tables are created in a
    temporary file beside it, which is then linked into place. A process that sees the file
    (optuna-dashboard, a script loading the study, a test polling it) never opens it half made
    and never races to create the tables itself. No-op for other storages and existing files."""
    if not url.startswith("sqlite:///"):
        return
    location, sep, query = url[len("sqlite:///") :].partition("?")
    path = Path(location)
    if not location or location == ":memory:" or path.exists():
        return
    import optuna

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}{sep}{query}")
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()  # no connection holds the file when it is linked
        del storage
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process linked its own, equally complete, file first
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def lost_schema_race(error: BaseException) -> bool:
    """Another process (a second `nas search`, optuna-dashboard, a script loading the study) created Optuna's
    tables in a new database at the same moment: its CREATE TABLE or schema-version row won. Optuna does not
    guard against this; the tables are then complete, so connecting again succeeds."""
    text = str(error)
    return "already exists" in text or "alembic_version" in text


def check_study_name(name: str) -> str:
    """A --study-name: 1 to 128 characters, none of them a space or control character (it is
    printed in commands to copy, and one storage may hold a team's studies)."""
    if not name or len(name) > 128 or any(c.isspace() or not c.isprintable() for c in name):
        raise NasError(
            f"--study-name {name!r}: use 1 to 128 printable characters without spaces, e.g. --study-name cifar-gpu-2ms"
        )
    return name


def study_not_found(storage: str, name: str, names: list[str]) -> NasError:
    """The one-line error for a study that `storage` does not hold, naming those it does."""
    held = ", ".join(sorted(names)[:20]) + (" ..." if len(names) > 20 else "")
    return NasError(
        f"{redact(storage)} holds no study named {name!r}"
        + (f" (it holds: {held}); pass --study-name NAME" if names else " (it holds none)")
    )


def sqlite_study_names(url: str) -> list[str]:
    """The study names in an SQLite storage, read without writing to it (no schema is created)."""
    import sqlite3

    path = url[len("sqlite:///") :]
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "studies" not in tables:
                return []
            return [row[0] for row in connection.execute("SELECT study_name FROM studies")]
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise NasError(
            f"{url}: cannot read the study ({type(error).__name__}: {error}); the file may be corrupt"
        ) from None


def sqlite_trial_count(url: str, study_name: str) -> int | None:
    """How many trials (any state) study `study_name` of an SQLite storage holds, read without writing;
    None without Optuna's tables or without a study of that name."""
    import sqlite3

    path = url[len("sqlite:///") :]
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"trials", "studies"} <= tables:
                return None
            if connection.execute("SELECT 1 FROM studies WHERE study_name = ?", (study_name,)).fetchone() is None:
                return None
            query = "SELECT COUNT(*) FROM trials JOIN studies ON trials.study_id = studies.study_id WHERE studies.study_name = ?"
            return int(connection.execute(query, (study_name,)).fetchone()[0])
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise NasError(
            f"{url}: cannot read the study ({type(error).__name__}: {error}); the file may be corrupt"
        ) from None
