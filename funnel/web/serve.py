"""Running the app with uvicorn on a socket we bind ourselves.

Binding first lets `--port 0` pick a free port and print the real address
(tests start many servers at once), and lets a busy port fail with one
sentence instead of a traceback. Uvicorn's access log is off: it would
write client addresses and unsubscribe tokens; the reverse proxy keeps the
operational log.
"""

from __future__ import annotations

import socket
import sys
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session

from funnel.config import Config
from funnel.errors import UsageError
from funnel.mail.unsubscribe import key_notice


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or UsageError naming the flag to change."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"--host {host!r} cannot be resolved ({exc.strerror}): write an address such as 127.0.0.1"
        ) from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(config: Config, engine: Engine, host: str, port: int, now: datetime | None, *, debug: bool = False) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn finishes requests under way, then returns).

    `debug` logs whole tracebacks of failures (values included); see `app.Protected`.
    """
    import uvicorn

    from funnel.web.app import create_app

    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"funnel serve: listening on http://{shown}:{bound_port}", file=sys.stderr, flush=True)
    with Session(engine) as session:
        notice = key_notice(session)
    if notice:
        print(f"funnel serve: {notice}", file=sys.stderr, flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, engine, now, debug=debug),
            log_level="warning",
            access_log=False,
            server_header=False,
            # the peer stays the TCP peer: funnel.web.client reads forwarded headers itself, only
            # from serve.trusted_proxies (uvicorn's own reading knew no setting and no IPv6 loopback)
            proxy_headers=False,
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        engine.dispose()
