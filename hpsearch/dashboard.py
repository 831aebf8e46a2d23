"""`hpsearch dashboard`: optuna-dashboard on the study storage, read-only, with the trial models.

The dashboard is optuna-dashboard's WSGI app (`optuna_dashboard.wsgi`) with the study's
FileSystemArtifactStore, so each trial's model archive can be downloaded from its page. It is
served by a small threaded wsgiref server bound to 127.0.0.1 unless asked otherwise.

What optuna-dashboard writes to the storage: nothing while it is only looked at; every page and
`GET /api/...` request only reads. It writes when a user acts: POST/PUT/DELETE requests create,
rename or delete studies, save study and trial notes (study system attributes), set trial user
attributes or finish trials (`/api/trials/<id>/tell`, `/user-attrs`, `/skip`), upload or delete
artifacts, store preference data, and upgrade an RDB schema (`/incompatible-rdb-schema`). A
trial finished or a study deleted from the dashboard would pull the ground from under running
workers, so `serve` refuses every request but GET, HEAD and OPTIONS (HTTP 403) unless
`allow_writes` is set. (Opening a PostgreSQL storage runs Optuna's idempotent CREATE TABLE IF
NOT EXISTS, as every Optuna process does; it changes nothing in an existing study.)
"""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hpsearch.errors import UsageError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def read_only(app, *, hint: str = "restart 'hpsearch dashboard' with --allow-writes to edit the study from the dashboard"):
    """Wrap a WSGI app so that any request that could write (not GET/HEAD/OPTIONS) gets 403."""

    def guarded(environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method in SAFE_METHODS:
            return app(environ, start_response)
        body = json.dumps({"reason": f"this dashboard is read-only so it cannot disturb running workers; {hint}."}).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return guarded


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open request must not keep Ctrl-C waiting
    allow_reuse_address = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - wsgiref's signature
        pass  # the dashboard polls every few seconds; one line per request would bury everything else


def make_dashboard_server(storage, *, host: str, port: int, artifacts=None, allow_writes: bool = False):
    """A WSGI server (not yet serving) for optuna-dashboard on `storage`; UsageError if it cannot bind."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage, artifact_store=artifacts)
    if not allow_writes:
        app = read_only(app)
    server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
    try:
        return make_server(host.strip("[]"), port, app, server_class=server_class, handler_class=_QuietHandler)
    except socket.gaierror:
        raise UsageError(f"--host {host!r} is not an address or a name this machine can resolve; use e.g. 127.0.0.1.") from None
    except OSError as error:
        if error.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise UsageError(f"port {port} on {host} is already in use; choose another with --port (or stop the other server).") from None
        if error.errno in (13, 10013):  # EACCES: ports below 1024 need privileges
            raise UsageError(f"not allowed to listen on port {port} of {host}; choose a port above 1023 with --port.") from None
        raise UsageError(f"cannot listen on {host}:{port} ({error.strerror or error}); check --host and --port.") from None


def url_of(server, host: str, path: str = "/dashboard") -> str:
    """The URL a browser on this machine (or, for a wildcard address, elsewhere) opens."""
    port = server.server_address[1]
    shown = host
    if host in ("0.0.0.0", "::", ""):
        shown = "127.0.0.1" if host != "::" else "[::1]"
    elif ":" in host and not host.startswith("["):
        shown = f"[{host}]"
    return f"http://{shown}:{port}{path}"


def serve(server) -> int:
    """Serve until Ctrl-C or SIGTERM (as `docker stop` sends); close the socket; return 0."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        print("dashboard stopped.", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    return 0


def warn_if_exposed(host: str, port: int, allow_writes: bool) -> None:
    if is_loopback(host):
        return
    what = "read and change the study" if allow_writes else "read the study and download trial models"
    print(
        f"hpsearch: warning: the dashboard listens on {host}:{port}, reachable from other machines, and has no "
        f"login: anyone who reaches it can {what}. Bind to 127.0.0.1 (the default) and use an SSH tunnel, "
        "or keep the port behind a firewall.",
        file=sys.stderr, flush=True,
    )
