"""A local Mosquitto broker as a child process, with a generated configuration: the broker
of the tests and of ``edgefleet broker`` (docs/architecture.md §5).

The configuration is chosen so that nothing is lost without a trace:

- ``max_queued_messages`` 100,000 by default: Mosquitto's default of 1000 drops QoS 1
  messages for a subscriber that is slow or away (a monitor catching up, a device offline
  for a day) far too early, and no bound at all lets one absent client fill the broker's
  memory. A drop loses nothing for good: a report stays in its device's outbox until a
  monitor acknowledges it (docs/architecture.md §8), acks are re-sent with it, and statuses
  and rollout states are retained;
- ``max_packet_size`` (64 MiB by default) announced to MQTT 5 clients: one client cannot make
  the broker buffer a message of any size (a model file is one message: keep it above);
- ``persistence true`` in the data folder: retained messages (rollout state, models) and
  the sessions with their queued QoS 1 messages survive a restart. Mosquitto writes its
  database on a clean stop and every ``autosave_interval`` seconds, so a crash (``kill``)
  loses at most that many seconds;
- secured (``tls=BrokerTLS``, what ``edgefleet broker`` runs unless ``--insecure-dev``): one
  TLS listener that requires a client certificate signed by the fleet CA and not in its CRL
  (``require_certificate``, ``crlfile``); the certificate's common name becomes the user name
  (``use_identity_as_username``), and the access list generated from the identity book
  (edgefleet/central/identity/acl.py, which says why per-identity blocks) confines each
  identity to its topics. :meth:`MosquittoBroker.reload` (SIGHUP) makes a running broker
  re-read the access list and the CRL: Mosquitto 2.0 rebuilds its TLS context on a reload
  when ``crlfile`` is set, so new connections of a revoked device fail, and rebuilds every
  client's access list, so a revoked device still connected may do nothing any more;
- insecure (``tls=None``): one listener on the loopback address with anonymous access, for
  development only: nobody else on the network can reach it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from edgefleet.central.identity.authority import BrokerTLS
from edgefleet.edge.mqtt import BrokerAddress
from edgefleet.errors import BrokerError, InputError

CONFIG_NAME = "mosquitto.conf"
LOG_NAME = "mosquitto.log"
OUTPUT_NAME = "mosquitto.out"
PID_NAME = "mosquitto.pid"
DATABASE_NAME = "mosquitto.db"
INSTALL_HINT = "install the Debian package mosquitto (scripts/setup does)"


def find_mosquitto() -> Path:
    """The mosquitto binary on PATH or in /usr/sbin (Debian installs it there, outside a
    normal user's PATH); :class:`BrokerError` if there is none."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(f"the mosquitto broker is not installed: {INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


# A TLS 1.2 ClientHello: a TLS listener answers it (a ServerHello or an alert), a plain
# MQTT listener closes the connection on it (a malformed packet).
_PROBE = bytes.fromhex(
    "160301002d"  # handshake record, 45 bytes
    "01000029"  # ClientHello, 41 bytes
    "0303" + "00" * 32 + "00"  # version, random, no session id
    "0002c02b"  # one suite: ECDHE-ECDSA-AES128-GCM-SHA256
    "0100"  # no compression
)


def _tls_paths(tls: BrokerTLS | None) -> list[Path]:
    if tls is None:
        return []
    return [tls.ca_file, tls.cert_file, tls.key_file, tls.crl_file, tls.acl_file]


def _check_config_path(path: Path) -> None:
    # Mosquitto takes a path to the end of its line; a line break would end it early.
    if any(ch in str(path) for ch in "\r\n"):
        raise InputError(f"the path {str(path)!r} contains a line break")


def reload_running(data_dir: Path) -> bool:
    """SIGHUP the broker ``edgefleet broker`` runs on ``data_dir``, if it runs; whether
    one did. Its pid file is trusted only while that process is a mosquitto."""
    try:
        pid = int((Path(data_dir) / PID_NAME).read_text().strip())
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return False
    if command != "mosquitto":
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MosquittoBroker:
    """Mosquitto on ``host:port`` keeping its state in ``data_dir``.

    ``port=0`` picks a free port once; :meth:`restart` keeps it, so clients reconnect to
    the same address. Use as a context manager, or :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        max_queued_messages: int = 100_000,
        max_inflight_messages: int = 100,
        autosave_interval: int = 5,
        max_packet_size: int = 64 * 1024 * 1024,
        extra_config: Sequence[str] = (),
        echo_log: bool = False,
        binary: str | Path | None = None,
        startup_timeout: float = 10.0,
        tls: BrokerTLS | None = None,
    ):
        if tls is None and not _is_loopback(host):
            raise InputError(
                f"the generated broker allows anonymous clients, so it listens only on a "
                f"loopback address, not {host!r}. For a networked broker, configure Mosquitto "
                "with TLS and passwords and pass its URL with --broker"
            )
        if not 0 <= port <= 65535:
            raise InputError(f"port {port} is not between 0 and 65535")
        self.data_dir = Path(data_dir).resolve()
        # Mosquitto takes a path to the end of its line; a line break would end it early
        # (and inject configuration).
        if any(ch in str(self.data_dir) for ch in "\r\n"):
            raise InputError(f"the broker data folder {self.data_dir!r} contains a line break")
        self.host = host
        self.port = port or free_port(host)
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.autosave_interval = autosave_interval
        self.max_packet_size = max_packet_size
        self.extra_config = tuple(extra_config)
        self.echo_log = echo_log
        self.binary = Path(binary) if binary else None
        self.startup_timeout = startup_timeout
        self.tls = tls
        for path in _tls_paths(tls):
            _check_config_path(path)
        self._process: subprocess.Popen[bytes] | None = None

    # -- paths and configuration --------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def database_path(self) -> Path:
        return self.data_dir / DATABASE_NAME

    @property
    def pid_path(self) -> Path:
        return self.data_dir / PID_NAME

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @property
    def address(self) -> BrokerAddress:
        """The broker as a client reaches it; secured, with the CA but no client
        certificate (add one: ``Identity.address(broker.url)``)."""
        if self.tls is None:
            return BrokerAddress(host=self.host, port=self.port)
        return BrokerAddress.parse(self.url, ca_file=self.tls.ca_file)

    def config_text(self) -> str:
        lines = [
            "# Generated by edgefleet (edgefleet/central/broker.py); rewritten on every start.",
            f"listener {self.port} {self.host}",
            *self._access_lines(),
            f"pid_file {self.pid_path}",
            "",
            "# Retained messages and sessions (with their queued QoS 1 messages) survive a",
            "# restart; written on a clean stop and every autosave_interval seconds.",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            f"persistence_file {DATABASE_NAME}",
            f"autosave_interval {self.autosave_interval}",
            "",
            "# Per client. The default 1000 drops far too early; reports survive a drop",
            "# (devices re-send until a monitor acknowledges them). 0 = no bound.",
            f"max_queued_messages {self.max_queued_messages}",
            "# In flight per client; also the Receive Maximum announced to MQTT 5 clients.",
            f"max_inflight_messages {self.max_inflight_messages}",
            "set_tcp_nodelay true",
            "",
            f"log_dest file {self.log_path}",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if self.max_packet_size:
            # Announced to MQTT 5 clients, who must not send more. (message_size_limit
            # would be the other way, but Mosquitto 2.0 disconnects an MQTT 5 client that
            # exceeds it, and paho re-sends the message after every reconnect.)
            lines.append(f"max_packet_size {self.max_packet_size}")
        if self.echo_log:
            lines.append("log_dest stderr")
        if os.geteuid() == 0:
            # As root, Mosquitto switches to the user 'mosquitto', which cannot write a data
            # folder made by root; staying the current user keeps persistence working.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        lines.extend(self.extra_config)
        return "\n".join(lines) + "\n"

    def _access_lines(self) -> list[str]:
        if self.tls is None:
            return ["allow_anonymous true"]
        return [
            "# TLS only, with a client certificate of the fleet CA that is not revoked; its",
            "# common name is the user name the access list names.",
            f"cafile {self.tls.ca_file}",
            f"certfile {self.tls.cert_file}",
            f"keyfile {self.tls.key_file}",
            f"crlfile {self.tls.crl_file}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            f"acl_file {self.tls.acl_file}",
        ]

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> MosquittoBroker:
        if self.running:
            return self
        binary = self.binary or find_mosquitto()
        self._check_port_free()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        output = None if self.echo_log else (self.data_dir / OUTPUT_NAME).open("ab")
        try:
            self._process = subprocess.Popen(
                [str(binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                # Its own process group: a Ctrl-C meant for `edgefleet broker` reaches the
                # broker only through our stop(), which lets it save its database.
                start_new_session=True,
            )
        except OSError as error:
            raise BrokerError(f"cannot run {binary}: {error.strerror}. {INSTALL_HINT}") from None
        finally:
            if output is not None:
                output.close()
        self._wait_until_listening(log_offset)
        return self

    def _check_port_free(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As Mosquitto binds: a port in TIME_WAIT after a restart counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as error:
                raise BrokerError(
                    f"cannot start mosquitto on {self.host}:{self.port}: {error.strerror} "
                    "(another broker, or 'edgefleet broker' running already?). Pass another "
                    "--port, or use the running broker with --broker"
                ) from None

    def _started_in_log(self, offset: int) -> bool:
        return self._logged_since(offset, b" running")

    def _logged_since(self, offset: int, text: bytes) -> bool:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return text in log.read()
        except OSError:
            return False

    def _wait_until_listening(self, log_offset: int) -> None:
        # Both the log line and a connection: the port alone could be another process's
        # (taken between our check and Mosquitto's bind), the log alone precedes accept().
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise BrokerError(
                    f"mosquitto exited with status {code} while starting on "
                    f"{self.host}:{self.port} (is the port in use?).\n{self.log_tail()}"
                )
            if self._started_in_log(log_offset):
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        return
                except OSError:
                    pass
            time.sleep(0.02)
        self.kill()
        raise BrokerError(
            f"mosquitto did not accept connections on {self.host}:{self.port} within "
            f"{self.startup_timeout:g} s.\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Mosquitto saves its database and exits. SIGKILL if it takes longer
        than ``timeout``."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would: whatever was not autosaved is lost."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop cleanly and start again on the same port with the same database."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the broker keeps its connections but answers nothing, like a broker
        that is overloaded or behind a stalled network (for backpressure tests)."""
        if self._process is not None and self.running:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self._process is not None and self.running:
            self._process.send_signal(signal.SIGCONT)

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP: Mosquitto re-reads its access list, CRL and certificates. Returns once
        the reload is done (the log says it began; a TLS handshake answered afterwards
        proves the single-threaded broker finished it)."""
        if self._process is None or not self.running:
            raise BrokerError("the broker is not running: nothing to reload")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while not self._logged_since(offset, b"Reloading config"):
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not reload within {timeout:g} s")
            time.sleep(0.02)
        self._answered_after(deadline)

    def _answered_after(self, deadline: float) -> None:
        # An answer (a TLS ServerHello or alert; a plain listener closes the connection on
        # the packet) comes from the event loop after the reload it logged.
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=2.0) as probe:
                    probe.sendall(_PROBE)
                    probe.recv(1)
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise BrokerError("mosquitto did not answer after reloading")

    def save(self) -> None:
        """Ask Mosquitto to write its database now (SIGUSR1), as autosave would."""
        if self._process is not None and self.running:
            self._process.send_signal(signal.SIGUSR1)

    def wait(self) -> int:
        """Block until the broker exits; its exit status."""
        if self._process is None:
            return 0
        return self._process.wait()

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for path in (self.log_path, self.data_dir / OUTPUT_NAME):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        tail = text.strip().splitlines()[-lines:]
        return "mosquitto log:\n  " + "\n  ".join(tail) if tail else "(mosquitto wrote no log)"

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
