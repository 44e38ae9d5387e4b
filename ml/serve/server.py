"""``loopline serve``: migrate the store, then run the app on uvicorn (one or several worker processes).

With several workers uvicorn binds one socket in the parent and the workers accept on it; that socket is made
without ``IPPROTO_TCP`` as its protocol, so asyncio skips TCP_NODELAY on accepted connections and every
kept-alive answer waits for the peer's delayed ACK (~40 ms; uvicorn issue 3149). The protocol classes below
set TCP_NODELAY on every accepted connection, whatever the worker count, and send each answer's head and
body in one segment. One worker is the default: on a
small machine it gives the lowest latency (scoring takes well under a millisecond); add workers for
throughput on more cores. Each worker loads the champion, polls the alias and swaps on its own.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
from typing import Any

from ml.config import LooplineConfig, Paths
from ml.serve.settings import ServeSettings, serve_dir, settings_for, store_url_of

log = logging.getLogger(__name__)


def _nodelay(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        log.debug("could not set TCP_NODELAY", exc_info=True)


class _CoalescingTransport:
    """Holds a response's status line and headers until its body is written, so both leave in one send().

    uvicorn writes the head and the body of a response separately: with TCP_NODELAY that is two segments
    and two system calls per answer. 1xx heads (100 Continue) are never held; ``close`` flushes.
    """

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif data[:9] == b"HTTP/1.1 " and data[9:10] != b"1" and data.endswith(b"\r\n\r\n"):
            self._held = bytes(data)
        else:
            self._transport.write(data)

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class NoDelayHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with TCP_NODELAY on the accepted socket."""

        def connection_made(self, transport: Any) -> None:
            _nodelay(transport)
            super().connection_made(_CoalescingTransport(transport))

    PROTOCOL: Any = NoDelayHttpToolsProtocol
except ImportError:  # httptools is optional; h11 is always there
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class NoDelayH11Protocol(H11Protocol):
        """uvicorn's h11 protocol with TCP_NODELAY on the accepted socket."""

        def connection_made(self, transport: Any) -> None:
            _nodelay(transport)
            super().connection_made(_CoalescingTransport(transport))

    PROTOCOL = NoDelayH11Protocol


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def prepare(config: LooplineConfig, paths: Paths, settings: ServeSettings) -> str:
    """Check the token, migrate the store and replay spilled captures. Returns the store URL."""
    from ml.serve.auth import resolve_token
    from ml.serve.capture import replay_spill
    from ml.serve.store import migrate, redact

    resolve_token(settings, paths)
    url = store_url_of(settings, paths)
    if settings.capture:
        revision = migrate(url)
        replayed = replay_spill(url, serve_dir(paths) / "spill")
        log.info(
            "prediction store %s at revision %s (%d spilled rows replayed)", redact(url), revision, replayed
        )
    return url


def run(
    config: LooplineConfig,
    paths: Paths,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    **overrides: Any,
) -> None:
    """Serve ``models:/<model>@champion`` until SIGTERM/SIGINT (then finish requests and flush the capture).

    ``overrides`` are any ``ServeSettings`` field (e.g. ``store_url``, ``poll_interval_seconds``).
    """
    import uvicorn

    from ml.serve.app import ENV_CONFIG, ENV_CONFIG_PATH, ENV_SETTINGS, ENV_SHARE_METRICS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ml").setLevel(logging.INFO)
    settings = settings_for(config, host=host, port=port, workers=workers, **overrides)
    prepare(config, paths, settings)
    if not _is_loopback(settings.host):
        log.warning(
            "binding %s: the service speaks plain HTTP; put a TLS-terminating proxy in front of it",
            settings.host,
        )
    os.environ[ENV_CONFIG] = json.dumps(json.loads(config.model_dump_json()))
    os.environ[ENV_CONFIG_PATH] = str(config.config_path or "")
    os.environ[ENV_SETTINGS] = settings.model_dump_json()
    os.environ[ENV_SHARE_METRICS] = "1" if settings.workers > 1 else "0"
    os.environ["LOOPLINE_HOME"] = str(paths.home)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uvicorn.run(
        "ml.serve.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        http=PROTOCOL,
        loop="auto",
        lifespan="on",
        access_log=settings.access_log,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        log_level="info",
    )
