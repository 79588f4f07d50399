"""The CLI verb that serves the web app: ui (needs the `ui` extra: starlette, uvicorn)."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import click

from steplog.commands.cli.group import app_for, cli, say
from steplog.errors import Rejected

EXTRA = "steplog ui needs the ui extra (starlette, uvicorn): pip install 'steplog[ui]'"


@cli.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8484,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free one).",
)
@click.option(
    "--token",
    envvar="STEPLOG_UI_TOKEN",
    help="Every request must carry it (?token= once, or an Authorization: Bearer header); "
    "needed, or generated, for an address other than loopback (env STEPLOG_UI_TOKEN).",
)
@click.pass_context
def ui_cmd(ctx: click.Context, host: str, port: int, token: str | None) -> None:
    """Serve a web app over the database: jobs live, prompts, answers, replay, resume and fork.

    Read-only on the database but for its actions (resume, fork, stop), which run the CLI in
    a process of their own. On a loopback address it answers only requests naming a loopback
    host; on any other it needs --token, or makes one up and prints it in the URL.

    Example: steplog ui --port 8484
    """
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise Rejected(EXTRA) from None
    from steplog.web import Config, create_app
    from steplog.web.security import is_loopback

    if token is not None and (len(token) < 8 or not token.isprintable() or " " in token):
        raise click.BadParameter(
            "give at least 8 printable characters, no space", param_hint="--token"
        )
    sl = app_for(ctx)
    sl.open_store()  # a missing or unusable database is refused here, in one line
    generated = token is None and not is_loopback(host)
    if generated:
        token = secrets.token_urlsafe(24)
    sock = _listen(host, port)
    location = str(sl.location if sl.url is not None else Path(str(sl.location)).resolve())
    app = create_app(Config(location, token=token), steplog=sl)
    bound = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound}/"
    if generated:
        say(f"steplog ui: {url}?token={token} (database {sl.where}; Ctrl-C stops it)")
    else:
        with_token = " with its token" if token else ""
        say(f"steplog ui: {url} (database {sl.where}{with_token}; Ctrl-C stops it)")
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on", access_log=False
    )
    uvicorn.Server(config).run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise Rejected(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
