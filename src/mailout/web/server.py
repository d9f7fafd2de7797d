"""The WSGI server ``mailout serve`` runs: waitress, set up to face the internet.

Waitress is pure Python (nothing to compile), kept up by the Pylons project, and
made to be exposed: it reads each request whole, headers and body, in its own
event loop before a worker thread sees it, so a slow or stalled client holds a
connection, never a thread. The limits below are the app's own: no request of
mailout's is bigger than a one-click POST.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol

from waitress.server import create_server  # type: ignore[import-untyped]

#: The largest request body accepted: the app refuses more anyway (``MAX_CONTENT_LENGTH``).
MAX_BODY_BYTES = 64 * 1024
#: The largest request line and headers accepted: the longest address mailout writes is far shorter.
MAX_HEADER_BYTES = 16 * 1024


class Server(Protocol):
    """What ``mailout serve`` uses of a waitress server."""

    effective_port: int
    task_dispatcher: Any

    def run(self) -> None: ...

    def close(self) -> None: ...


def make_server(app: Any, host: str, port: int, threads: int, *, proxy_hops: int = 0) -> Server:
    """Return a waitress server for ``app`` bound to ``host`` and ``port`` (0: any free port).

    ``proxy_hops`` (``web.proxy_hops``): when proxies in front add ``X-Forwarded-For``,
    waitress passes it on, and the app reads the client's address from it.

    Raises ``OSError`` when the address cannot be bound.
    """
    # Bound here, before waitress starts its threads: a port in use then leaves nothing behind.
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    server: Server = create_server(
        app,
        sockets=[listener],
        threads=threads,
        max_request_body_size=MAX_BODY_BYTES,
        max_request_header_size=MAX_HEADER_BYTES,
        # poll(), not select(): no limit at 1024 open descriptors.
        asyncore_use_poll=True,
        # No "Server: waitress" header: the version of the software is nobody's business.
        ident=None,
        # Behind a proxy the app needs none of the X-Forwarded headers to write addresses:
        # every one comes from newsletter.public_base_url. Waitress drops them (the default),
        # unless web.proxy_hops says to read the client's address from X-Forwarded-For
        # (the app's ProxyFix reads that header only, that many hops back).
        clear_untrusted_proxy_headers=not proxy_hops,
    )
    return server
