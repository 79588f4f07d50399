"""Who may ask what: the access token, the CSRF token of a session, same-origin and Host checks.

Pure functions; the app's middleware applies them to every request.

- Bound to a loopback address without a token, the server answers only requests whose Host is
  a loopback name, so a page elsewhere cannot reach it through DNS rebinding.
- With a token, every request carries it: `?token=` once (then a cookie), or an
  `Authorization: Bearer` or `X-Steplog-Token` header.
- A state-changing request (POST) carries the session's CSRF token in its form and comes from
  the page's own origin (Origin, else Referer), token or not.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

TOKEN_COOKIE = "steplog_token"
SESSION_COOKIE = "steplog_session"
CSRF_FIELD = "csrf"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name of a Host header without its port ("[::1]:8484" -> "::1")."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def csrf_token(secret: str, session: str) -> str:
    """The CSRF token of a session: only this server (which holds `secret`) can make it."""
    return hmac.new(secret.encode(), session.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: str, session: str | None, given: str | None) -> bool:
    return bool(session) and token_matches(given, csrf_token(secret, session or ""))


def same_origin(origin: str | None, referer: str | None, scheme: str, host: str) -> bool:
    """Whether a request comes from a page of this server: its Origin (or, without one, its
    Referer) has this scheme and Host. Neither header: refused."""
    source = origin if origin and origin != "null" else referer
    if not source:
        return False
    parts = urlsplit(source)
    return parts.scheme == scheme and parts.netloc.lower() == host.lower()
