"""The network loop of one paho client, driven through paho's external-loop API.

paho's own loop (``loop_start``) waits in ``select()``, which refuses file descriptors
>= 1024 (FD_SETSIZE) and which paho then reads as a lost connection (paho issues #183 and
#819): a process with many open files, such as a simulated fleet of 200 agents, loses its
high-numbered clients. Patching paho's ``select`` would fix it for every paho client of the
process, ours or not. Instead, each :class:`NetworkLoop` waits with :mod:`selectors`
(epoll on Linux, no descriptor limit) and calls paho's ``loop_read``, ``loop_write`` and
``loop_misc`` itself, and reconnects with doubling delays, as ``loop_forever`` would.

Another thread's publish wakes the loop through paho's ``on_socket_register_write`` hook
and a private socket pair, so a message goes out at once instead of at the next timeout.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

__all__ = ["NetworkLoop"]

logger = logging.getLogger("edgefleet.mqtt")

_TICK = 1.0
"""Longest wait in the selector: keep-alive pings are sent from loop_misc between waits."""
_FLUSH_ON_STOP = 2.0
"""Seconds a stopping loop goes on writing what is queued (a DISCONNECT)."""


class NetworkLoop:
    """Runs ``client``'s network traffic on a daemon thread until :meth:`stop`.

    ``on_thread(ident)`` is called once on the loop's thread as it starts (the client uses
    it to refuse blocking calls from its own callbacks)."""

    def __init__(
        self,
        client: paho.Client,
        *,
        name: str,
        reconnect_delay: tuple[float, float] = (1.0, 30.0),
        on_thread: Callable[[int], None] = lambda _: None,
    ):
        self._client = client
        self._delays = reconnect_delay
        self._on_thread = on_thread
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        client.on_socket_register_write = self._on_register_write
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop (after the DISCONNECT the caller queued, if any, is written)."""
        self._stop.set()
        self.wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        for end in (self._wake_r, self._wake_w):
            end.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake is pending anyway) or closed
            self._wake_w.send(b"\0")

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self.wake()

    # -- the loop thread -----------------------------------------------------------------

    def _run(self) -> None:
        self._on_thread(threading.get_ident())
        delay = self._delays[0]
        deadline: float | None = None
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                sock = self._client.socket()
                if sock is None:
                    if self._stop.is_set():
                        return
                    delay = self._reconnect(delay)
                    continue
                delay = self._delays[0]
                self._serve(selector, sock)
                if self._stop.is_set():
                    # Stopping: finish writing what is queued (the DISCONNECT), but not
                    # forever on a broker that stopped reading.
                    deadline = deadline or time.monotonic() + _FLUSH_ON_STOP
                    if not self._client.want_write() or time.monotonic() > deadline:
                        return

    def _serve(self, selector: selectors.BaseSelector, sock: Any) -> None:
        """One wait and the reads, writes and keep-alive work it calls for."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._client.want_write() else 0)
        try:
            selector.register(sock, events)
        except (ValueError, OSError):
            self._client.loop_misc()  # a socket closed under us: paho notices and resets
            return
        try:
            # Bytes TLS has already decrypted never wake a selector: do not wait then.
            pending = sock.pending() if hasattr(sock, "pending") else 0
            ready = selector.select(0 if pending else _TICK)
        finally:
            selector.unregister(sock)
        readable = pending > 0 or any(
            key.fileobj is sock and mask & selectors.EVENT_READ for key, mask in ready
        )
        if any(key.fileobj is self._wake_r for key, _ in ready):
            self._drain_wake()
        if readable:
            self._client.loop_read()
        if self._client.socket() is not None and self._client.want_write():
            self._client.loop_write()
        if self._client.socket() is not None:
            self._client.loop_misc()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _reconnect(self, delay: float) -> float:
        """Wait ``delay`` (or until stopped), try once; the next delay."""
        if self._stop.wait(delay):
            return delay
        try:
            self._client.reconnect()
        except (OSError, ValueError) as error:
            logger.debug("reconnect failed: %s", error)
        return min(delay * 2, self._delays[1])
