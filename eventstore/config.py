"""What both stores read before they open: where the log lives (a SQLite file path or a
PostgreSQL URL, and how to name it in a message), their SQL files, the write-lock timeout.

Nothing here imports a database driver: `import steplog` and the SQLite path stay free of psycopg.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from steplog.eventstore.record import StoreError

DEFAULT_BUSY_TIMEOUT_MS = 10_000


def sql_file(name: str) -> Path:
    """One of the repository's top-level SQL files (the one definition of a schema). A wheel
    carries them inside this package (setup.py's build step copies them); a source checkout
    or an editable install reads them where they are, one folder up."""
    here = Path(__file__).parent
    shipped = here / name
    return shipped if shipped.exists() else here.parent / name


def busy_timeout_from_env() -> int:
    """STEPLOG_BUSY_TIMEOUT_MS, or the default: how long a writer waits for the write lock."""
    raw = os.environ.get("STEPLOG_BUSY_TIMEOUT_MS")
    if raw is None or not raw.strip():
        return DEFAULT_BUSY_TIMEOUT_MS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise StoreError(
            f"STEPLOG_BUSY_TIMEOUT_MS must be a whole number of milliseconds, not {raw!r}"
        )
    return value


_POSTGRES_URL = re.compile(r"^postgres(?:ql)?://", re.IGNORECASE)
# user:password@ in the authority part, and password=... in the query
_URL_PASSWORD = re.compile(r"(?<=://)([^/?#@:]*):[^/?#@]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def is_postgres_url(location: str | os.PathLike[str]) -> bool:
    """postgresql://… or postgres://… (libpq takes both); anything else is a SQLite path."""
    return isinstance(location, str) and bool(_POSTGRES_URL.match(location))


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***: the only form of it a message may show."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", url))


def url_password(url: str) -> str | None:
    """The password written in the URL, if any (to scrub it from a driver's message)."""
    found = re.search(r"(?<=://)[^/?#@:]*:([^/?#@]*)@", url)
    query = re.search(r"[?&]password=([^&#]*)", url, re.IGNORECASE)
    for match in (found, query):
        if match and match.group(1):
            return match.group(1)
    return None
