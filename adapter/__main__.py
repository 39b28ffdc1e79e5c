"""``python -m adapter serve``: build settings, services, then run the HTTP API and the DICOM SCP.
``check`` validates the settings, policy and tables; ``audit`` exports the audit trail; ``verify``
checks that every image the records refer to is stored, whole (and with ``--remove-unreferenced``
removes the images no record refers to, past a grace period); ``copy-store`` copies the record store
into an empty database (SQLite to PostgreSQL), which then serves with the same data folder."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from adapter.config import Settings, describe_invalid_settings
from adapter.errors import AdapterError
from adapter.services.unreferenced import DEFAULT_GRACE_SECONDS, MIN_GRACE_SECONDS

if TYPE_CHECKING:
    from adapter.dicom import StoreSCP
    from adapter.mapping.audit_application import Application
    from adapter.services.registry import Services
    from adapter.store.port import BlobStore, RecordStore


def _configure_logging(level: str, log_format: str = "text") -> None:
    """One handler, on the root logger, for every record of the process (uvicorn's loggers are
    left unconfigured, so theirs come here too): exceptions are rendered without their messages
    (adapter.logs), whichever library logs them; ``log_format`` json writes each record as one
    JSON object (adapter.logs.JsonFormatter)."""
    from adapter.logs import (
        JsonFormatter,
        OneLineWarnings,
        RoutineStopAsWarning,
        TextFormatter,
        make_exceptions_safe,
    )

    logging.basicConfig(level=level.upper(), stream=sys.stderr)
    # text: the time in UTC with its offset, as json has it (adapter.logs.TextFormatter)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    make_exceptions_safe()
    # a stop cancelling an upload past ADAPTER_HTTP_BODY_TIMEOUT is no ERROR (adapter.logs)
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, RoutineStopAsWarning) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(RoutineStopAsWarning())
    # Python warnings (pydicom's: "Unknown encoding ...") as records of the py.warnings logger,
    # in this format (one line; one JSON object), not raw lines on stderr (PACS review F6)
    logging.captureWarnings(True)
    warned = logging.getLogger("py.warnings")
    if not any(isinstance(f, OneLineWarnings) for f in warned.filters):
        warned.addFilter(OneLineWarnings())
    # pikepdf says at INFO, on every start, that its C++ logger bridge is initialised
    logging.getLogger("pikepdf").setLevel(max(logging.WARNING, logging.getLogger().level))
    # httpx logs every request's full URL at INFO: a batch's entries go through it in-process
    # (adapter.api.batch), and their query strings hold patient identifiers
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def check_startup(settings: Settings) -> None:
    """What ``serve`` validates before it listens, without listening, opening the store or
    writing anything: the settings, policy and mapping tables (build_services checks them the
    same way first) and, when the SCP is enabled, its AE options (titles from the settings and
    the policy). ``python -m adapter check``. Raises AdapterError naming what is wrong."""
    from adapter.services.registry import check_configuration

    configuration = check_configuration(settings)
    if settings.dicom_enabled:
        from adapter.dicom import AeOptions

        AeOptions.from_settings(settings, configuration.tables.policy)


def _descriptor_problem(settings: Settings) -> str | None:
    """Why the open-file limit cannot hold the connections the settings allow (adapter.descriptors)."""
    from adapter.descriptors import limit_problem

    dicom = 0
    if settings.dicom_enabled:
        from adapter.dicom import AeOptions
        from adapter.dicom.connections import CONNECTIONS_PER_ASSOCIATION

        dicom = CONNECTIONS_PER_ASSOCIATION * AeOptions().maximum_associations
    return limit_problem(settings.http_max_connections, dicom, one_process=settings.http_workers == 1)


def _start_dicom(settings: Settings, services: Services) -> StoreSCP | None:
    """The DICOM SCP and the outbox forwarder (C-STORE SCU, when ADAPTER_FORWARD_TO is set) in
    background threads of this process (never in HTTP worker processes: one listener per port,
    one forwarder), on ``services``; the SCP, or None when it is not enabled.
    Raises AdapterError when they cannot start (an SCP already listening is stopped again)."""
    destinations = settings.destinations
    if not settings.dicom_enabled and not destinations:
        return None
    from adapter.dicom import AeOptions, StoreSCP
    from adapter.dicom.scu import StoreSCU

    scp: StoreSCP | None = None
    try:
        if settings.dicom_enabled:
            scp = StoreSCP(AeOptions.from_settings(settings, services.tables.policy), services.dicom_ingest)
            scp.start()
        if destinations:  # services.stop_forwarding() stops it
            services.start_forwarding(StoreSCU.from_settings(settings))
            logging.getLogger("adapter").info("forwarding new photos to %s", ", ".join(destinations))
    except BaseException:
        if scp is not None:
            scp.stop()
        raise
    return scp  # StoreSCP.start logged its address


def operating_system_account() -> str:
    """The operating-system account this process runs as, by its real uid (who ran the command):
    the user an audit event names for ``audit`` and ``serve``. Not the environment's USER, which
    any caller sets to any name; a uid with no name in the password database is ``uid <n>``."""
    import pwd

    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def this_application(settings: Settings, *, serves_dicom: bool) -> Application:
    """This process as an audit participant (adapter.mapping.audit_application): its process
    id, its host's name, and its AE title when it serves DICOM."""
    import socket

    from adapter.mapping.audit_application import Application

    return Application(process_id=os.getpid(), host=socket.gethostname() or None,
                       ae_title=settings.ae_title if serves_dicom else None)


class _Terminated(BaseException):
    """SIGTERM or SIGINT, raised in the main thread so that the SCP and the store are closed
    before the process exits."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(signum)


#: The signals that stop ``serve``: what docker stop and systemd send, and Ctrl-C.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


#: The lock on this instance's metrics folder (:func:`_multiprocess_metrics`), held while the
#: process lives: its file descriptor, kept open.
_metrics_lock: int | None = None


def _lock_metrics_folder(folder: Path) -> bool:
    """Take the lock on ``folder`` (an flock on ``<folder>.lock`` beside it, this user's own plain
    file), held for the life of this process; False when another process holds it (an instance
    running with the same settings), or the lock file is not this user's own."""
    import fcntl
    import stat

    global _metrics_lock
    try:
        fd = os.open(folder.with_name(f"{folder.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise PermissionError(str(folder))
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _metrics_lock = fd
    return True


def _multiprocess_metrics(settings: Settings) -> None:
    """Several HTTP worker processes (and this one, with the SCP): their metrics are summed by
    prometheus_client's multiprocess mode (adapter.metrics), in a folder of this instance's own,
    emptied at start, which the workers inherit. Set before anything imports prometheus_client.

    The folder is on this host, in the temp dir (TMPDIR), named by a digest of the data folder
    and the HTTP address: not in the data folder, which instances behind a load balancer share,
    on one host or several, with the same settings (in one folder each reported the other's
    counts too, and the one starting second emptied it under the first: found by the
    two-instance review). It is emptied only under its lock (an flock this process holds while it
    lives): the same settings started again beside a running instance (by hand, to see the error;
    a duplicated unit) emptied the running one's folder before it failed to listen, and its counts
    were gone (ops review 3); such a start now finds the lock held, and takes a new folder of its
    own. A restart finds, and empties, the folder it left. A folder there that is not this user's
    own plain directory (another user's, a symlink) is not used: a new one is made instead."""
    import hashlib
    import os
    import stat
    import tempfile

    from adapter.metrics import MULTIPROCESS_ENV

    key = f"{settings.data_dir.resolve()}|{settings.http_host}|{settings.http_port}"
    folder = Path(tempfile.gettempdir()) / f"adapter-metrics-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not _lock_metrics_folder(folder):  # another instance's (running), or not ours to lock
        folder = Path(tempfile.mkdtemp(prefix="adapter-metrics-"))
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError:  # not ours to empty (a symlink, another user's)
        folder = Path(tempfile.mkdtemp(prefix="adapter-metrics-"))
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise PermissionError(str(folder))
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="adapter-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(folder)


def serve(settings: Settings) -> int:
    """The HTTP API in this thread and, when enabled, the DICOM SCP beside it; a stop signal
    stops the SCP at once (no new association, associations finish their ingest first) while
    HTTP lets its requests under way finish (:class:`_StopAtOnce`); the HTTP server ending by
    itself stops it too.

    The start and the stop are audited (IHE ATNA ITI-20 Actor-start-stop, DICOM PS3.15 A.5.3.1
    Application Activity), once for the service, by this process whatever the number of HTTP
    workers (they are its children and audit no start of their own): the start once the store
    is open, before anything listens; the stop once nothing takes work any more (the HTTP server,
    the SCP and the forwarder stopped), before the store closes. A start that fails before the
    store is open (settings, policy, tables, the store itself) records nothing: there is no trail
    to write to. Once the start is recorded, the stop always is, so every start in the trail has
    its stop; a listener that could not start (a port taken) makes it outcome 8, saying why. A
    start that cannot be recorded is not made (exit 2): the service does not run unaudited.

    uvicorn handles SIGTERM and SIGINT itself, then restores the previous handlers and raises the
    signal again: the handler installed here turns that into an exception, so the SCP and its
    store are closed, and the signal is raised once more at the end, under its default action:
    the process ends by it (exit status 143 for SIGTERM, 130 for Ctrl-C), without the
    KeyboardInterrupt traceback Python's own SIGINT handler would print.
    """
    from adapter.services.readiness import staging_write_problem
    from adapter.services.registry import build_services
    from adapter.services.staging_sweep import StagingSweep
    from adapter.store.reach import unreachable

    log = logging.getLogger("adapter")
    log.info("policy %s, mapping tables in %s", settings.resolved_policy, settings.resolved_mappings_dir)
    if settings.policy_is_the_installed_example:
        log.warning("no mappings/policy.yaml in the working directory and no ADAPTER_POLICY: the example policy "
                    "that comes with the package is in force (set ADAPTER_POLICY to the organisation's own)")
    elif settings.policy_is_the_example:  # `make run` in a checkout: its mappings/policy.yaml
        log.warning("%s is the example policy the adapter's source comes with: fine for trying the adapter, not "
                    "the organisation's policy (set ADAPTER_POLICY to the organisation's own)", settings.policy)
    if settings.short_pseudonym_key is not None:  # production refuses it (Settings.check_safe)
        log.warning("%s in production: records pseudonymised under it cannot go to production without giving every "
                    "patient new pseudonyms, mapped DICOM UIDs and released ids (ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY); "
                    "give a key of at least 32 characters now, or leave it unset (one is generated)",
                    settings.short_pseudonym_key)
    descriptors = _descriptor_problem(settings)
    if descriptors is not None:
        log.error("cannot start: %s", descriptors)
        return 2
    if settings.http_workers > 1:
        _multiprocess_metrics(settings)
    # from here a stop signal ends the start too: the wait for the database (adapter.store.reach)
    # can be long, and as a container's PID 1 a signal without a handler is ignored (docker stop
    # would wait for its SIGKILL); Ctrl-C would print a traceback
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.signal(signum, _raise_terminated) for signum in _STOP_SIGNALS} if main_thread else {}
    try:
        try:
            # the SCP's, the forwarder's and the audit's; with one HTTP process, its too
            services = build_services(settings, wait_for_database=True)
        except AdapterError as exc:
            # the policy, tables and store are checked here: each message names its own cause
            if unreachable(exc):
                log.error("cannot start: the database did not answer within ADAPTER_DATABASE_START_WAIT (%g s); "
                          "the lines before say why", settings.database_start_wait)
            else:
                log.error("cannot start: %s", exc.diagnostics)
            _restore_handlers(previous)
            return 2
        application = this_application(settings, serves_dicom=settings.dicom_enabled)
        try:
            services.auditor.record_application_activity(application, start=True,
                                                         launcher=operating_system_account())
        except BaseException as exc:
            services.close()
            if isinstance(exc, AdapterError):
                log.error("cannot start: its start cannot be audited: %s", exc.diagnostics)
                _restore_handlers(previous)
                return 2
            raise
    except _Terminated as stop:  # before the start was recorded: nothing ran, nothing to record
        log.info("stopped by %s while starting: nothing was started", signal.Signals(stop.signum).name)
        _end_by_signal(stop.signum, previous)
        return 0
    ended_by: int | None = None
    scp: StoreSCP | None = None
    dicom_stop: _StopAtOnce | None = None
    failure: str | None = None  # why the service did not run: the stop's outcomeDesc (outcome 8)
    staging_problem = staging_write_problem(services.blobs.staging_dir)
    if staging_problem is not None:  # it starts all the same: reads go on, and the folder may be mended while it runs
        log.warning("the staging folder %s cannot be written (%s): every upload (a photo, a STOW-RS or C-STORE "
                    "object, a large FHIR body) is refused (HTTP 503, DIMSE 0xA700) and /health/ready fails "
                    "(storage) until it can be", services.blobs.staging_dir, staging_problem)
    # what a crash left in staging/ (the photos as received) goes once stale, uploads or none
    sweep = StagingSweep(services.blobs)
    try:
        sweep.start()
        try:
            scp = _start_dicom(settings, services)
        except AdapterError as exc:
            log.error("cannot start: %s", exc.diagnostics)
            failure = f"could not start: {exc.diagnostics}"
            return 2
        if scp is not None:
            dicom_stop = _StopAtOnce(scp.stop)
        # one HTTP process: it shares the SCP's and forwarder's services, so an ingest wakes the
        # forwarder at once (workers in other processes rely on its poll)
        status = _serve_http(settings, services if settings.http_workers == 1 else None,
                             on_stop=dicom_stop.start if dicom_stop is not None else None)
        if status != 0:
            failure = "the HTTP server could not start"
        return status
    except _Terminated as stop:
        ended_by = stop.signum
        return 0
    except SystemExit as exc:  # uvicorn's, when it cannot start (a port taken)
        failure = f"the HTTP server ended with exit status {exc.code}"
        if exc.code == 3:  # uvicorn's STARTUP_FAILURE: most often the address, which only its log names
            failure += (f" (it could not start: is {settings.http_host}:{settings.http_port} taken, or not "
                        "this host's? the log says why)")
            # exit 2, as for a taken DICOM port and with several workers: every refused start is 2
            # (README, Stopping), which a service manager can tell from a crash
            log.error("cannot start: the HTTP server cannot listen on %s:%s (the log above says why)",
                      settings.http_host, settings.http_port)
            return 2
        raise
    except BaseException as exc:
        failure = f"ended by {type(exc).__name__}"
        raise
    finally:
        _restore_handlers(previous)
        if dicom_stop is not None:
            dicom_stop.join()  # the SCP's stop the signal began, before the store it ingests into closes
        if scp is not None:
            scp.stop()  # the HTTP server ended by itself, or the stop did not begin: at once (idempotent)
        services.stop_forwarding()
        sweep.stop()
        _record_stop(services, application, ended_by, failure)
        services.close()
        if ended_by is not None:
            _end_by_signal(ended_by, previous)


class _StopAtOnce:
    """The SCP's stop, begun in a thread of its own when the stop signal arrives (README,
    Stopping): no new association is accepted and C-STOREs are refused from then on, while HTTP
    requests under way get their ADAPTER_HTTP_BODY_TIMEOUT to finish. Begun only after HTTP had
    finished (as before), the SCP went on accepting associations and storing objects for up to
    that long, and load balancers and modalities kept sending to an instance that was stopping.
    A thread: the signal arrives in the thread that runs HTTP's event loop, which the SCP's stop
    (up to 30 s for associations in flight) must not hold."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=stop, name="DICOM SCP stop", daemon=True)
        # re-entrant: a second signal's handler runs in the main thread in the middle of the
        # first's (make stopped by SIGTERM sends its child another), and found a plain Lock held
        # by that same thread: it waited for ever and the process never stopped
        self._lock = threading.RLock()
        self._started = False

    def start(self) -> None:
        with self._lock:  # a second signal (Ctrl-C twice) begins nothing more
            if not self._started:
                self._started = True
                self._thread.start()

    def join(self) -> None:
        with self._lock:
            started = self._started
        if started:
            self._thread.join()


def _restore_handlers(previous: dict[signal.Signals, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _end_by_signal(signum: int, previous: dict[signal.Signals, Any]) -> None:
    """End the process by ``signum`` under the handlers it had before ``serve`` (exit status 143
    for SIGTERM from a shell, 130 for Ctrl-C without a traceback; as PID 1, 0)."""
    _restore_handlers(previous)
    if previous.get(signal.Signals(signum)) is signal.default_int_handler:
        signal.signal(signum, signal.SIG_DFL)  # ended by Ctrl-C, not by a traceback
    signal.raise_signal(signum)


#: How long the stop waits for its own AuditEvent to be written (README, Stopping).
STOP_AUDIT_SECONDS = 10.0


def _record_stop(services: Services, application: Application, ended_by: int | None, failure: str | None,
                 wait: float = STOP_AUDIT_SECONDS) -> None:
    """The Application Stop of :func:`serve`: outcome 0 saying what stopped it (a signal, or the
    HTTP server ending), or 8 with ``failure``. A stop that cannot be recorded is logged: the
    service stops all the same. Written in a thread of its own, waited for ``wait`` seconds at
    most: the database's timeouts bound a statement the server runs, not one it never answers (a
    database frozen behind a network that still acknowledges), nor the wait for a pooled
    connection that requests cancelled at the stop may still hold; the stop's bound must not
    depend on them."""
    reason = failure or (f"stopped by {signal.Signals(ended_by).name}" if ended_by is not None else "stopped")
    log = logging.getLogger("adapter")

    def record() -> None:
        try:
            services.auditor.record_application_activity(application, start=False, outcome="8" if failure else "0",
                                                         reason=reason)
        except Exception as exc:  # noqa: BLE001 - stopping goes on whatever the audit store does
            log.error("could not audit the stop (%s)", type(exc).__name__)

    writer = threading.Thread(target=record, name="audit of the stop", daemon=True)
    writer.start()
    writer.join(wait)
    if writer.is_alive():
        log.error("could not audit the stop: the database did not answer within %g s", wait)


def _serve_http(settings: Settings, services: Services | None = None, *,
                on_stop: Callable[[], None] | None = None) -> int:
    """uvicorn, in this process or as the supervisor of its worker processes, until a stop
    signal; ``on_stop`` is called as soon as one arrives, before HTTP's graceful shutdown (which
    lets requests under way finish), so that what else listens stops taking work at once."""
    import uvicorn

    from adapter.api.allowed_hosts import AllowedHosts
    from adapter.api.asgi import STARTUP_FAILURE, SUPERVISOR_PID_ENV, build_app, settings_environment
    from adapter.api.request_limits import bounded_http_protocol

    log = logging.getLogger("adapter")
    log.info("HTTP on http://%s:%d (%d worker process%s), store %s, data dir %s", settings.http_host,
             settings.http_port, settings.http_workers, "es" if settings.http_workers > 1 else "",
             "SQLite" if settings.resolved_database_url.startswith("sqlite") else "PostgreSQL",
             settings.data_dir)
    # what a request's Host may name (others: 421), so that an operator sees what to list
    log.info("HTTP answers for the hosts %s; ADAPTER_ALLOWED_HOSTS adds others",
             AllowedHosts.of(settings).describe())
    # uvicorn's access log prints query strings (patient identifiers): ours prints paths only.
    options: dict[str, Any] = {"host": settings.http_host, "port": settings.http_port, "access_log": False,
                               "log_level": settings.log_level.lower(), "timeout_keep_alive": 30,
                               "http": bounded_http_protocol(
                                   settings.http_header_timeout, settings.http_body_timeout,
                                   settings.http_max_connections, settings.http_max_connections_per_address,
                                   # a proxy carries every client's connections from its one address
                                   tuple(settings.trusted_proxy_networks)),
                               # no WebSocket route: without this uvicorn's websockets protocol answers
                               # upgrades itself, in plain text, and logs their query strings
                               "ws": "none",
                               # adapter.api.headers sets Date from the clock: uvicorn's, refreshed
                               # once a second, lagged it, and came before Last-Modified
                               "date_header": False,
                               # uvicorn's loggers propagate to the root logger's handler (our
                               # format, exceptions without their messages) instead of its own
                               "log_config": None,
                               # uvicorn believed X-Forwarded-For from 127.0.0.1 by default and put it
                               # in place of the TCP peer the audit names: adapter.api.forwarded reads
                               # it from ADAPTER_TRUSTED_PROXIES only, and keeps the peer (review F1)
                               "proxy_headers": False,
                               # at SIGTERM, requests under way get as long as a stalled upload
                               # would, then are cancelled (nothing stored that was not committed):
                               # an upload trickling a byte now and then held the stop for ever
                               "timeout_graceful_shutdown": settings.http_body_timeout}
    if settings.http_workers == 1:
        try:
            app = build_app(settings, services)
        except AdapterError as exc:
            log.error("cannot start: %s", exc.diagnostics)
            return 2
        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                if on_stop is not None and sig in _STOP_SIGNALS:
                    on_stop()
                super().handle_exit(sig, frame)

        Server(uvicorn.Config(app, **options)).run()
        return 0
    # Worker processes are spawned (not forked) and each builds its own services from the
    # environment, where these settings are put first; this process (uvicorn's supervisor)
    # builds none for HTTP. Anything that must run once (the DICOM SCP, a forwarder) belongs here,
    # not in the workers.
    import os

    from uvicorn.supervisors import Multiprocess

    os.environ.update(settings_environment(settings))
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())  # the workers end with this process (asgi)
    # glibc gives each thread of the request thread pool its own malloc arena, each keeping freed
    # multi-MB photo buffers: two arenas per worker cut its peak RSS by ~7 MB at no measurable cost.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    config = uvicorn.Config("adapter.api.asgi:create_app_from_env", factory=True,
                            workers=settings.http_workers, **options)
    class Supervisor(Multiprocess):
        def handle_int(self) -> None:
            if on_stop is not None:
                on_stop()
            super().handle_int()

        def handle_term(self) -> None:
            if on_stop is not None:
                on_stop()
            super().handle_term()

    supervisor = Supervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    return 2 if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP API (and, when configured, the DICOM SCP)")
    check = sub.add_parser("check", help="load settings, policy and mapping tables, connect to the database and "
                                         "read its schema version, then exit")
    check.add_argument("--offline", action="store_true",
                       help="do not connect to the database (where it cannot be reached from)")
    audit = sub.add_parser("audit", help="write the stored AuditEvents as NDJSON (FHIR R4) to standard output, "
                                         "oldest first; the export is itself audited")
    audit.add_argument("--after", type=int, default=0, metavar="SEQ",
                       help="only events stored after this sequence number (the id of the last one a previous "
                            "export wrote)")
    audit.add_argument("--since", type=_instant, metavar="INSTANT", help="recorded at or after, e.g. 2026-11-26T00:00:00Z")
    audit.add_argument("--until", type=_instant, metavar="INSTANT", help="recorded before")
    audit.add_argument("--limit", type=_count, metavar="N", help="at most N events (at least 1)")
    audit.add_argument("--purpose", default="RECORDMGT",
                       help="the purpose of use of the export: an operations purpose (HOPERAT or a descendant) "
                            "with care's full view (default RECORDMGT, records management)")
    verify = sub.add_parser("verify", help="check that every image the records refer to is stored, whole; exit 1 "
                                           "if not (after restoring a backup, say)")
    verify.add_argument("--digests", action="store_true",
                        help="also re-hash every image and compare it with the SHA-256 it is stored under (reads "
                             "every image once)")
    verify.add_argument("--remove-unreferenced", action="store_true",
                        help="then, if no problem was found, delete the images no record refers to that are older "
                             "than --older-than (what failed ingests leave); safe while the adapter runs")
    verify.add_argument("--older-than", type=_hours, default=DEFAULT_GRACE_HOURS, metavar="HOURS",
                        help=f"the grace period of --remove-unreferenced (default {DEFAULT_GRACE_HOURS:g}, at least "
                             f"{MIN_GRACE_HOURS:g})")
    verify.add_argument("--limit", type=_count, metavar="N",
                        help="delete at most N images in this run (the rest in a later one)")
    copy = sub.add_parser("copy-store", help="copy the record store (every table: records, history, indexes, the "
                                             "audit trail with its hash chain, receipts, outbox, fingerprints) into "
                                             "an empty database, in one transaction, counts checked; the data "
                                             "folder then belongs to the copy too (stop every instance first)")
    copy.add_argument("--to", required=True, metavar="DATABASE_URL",
                      help="the empty database, as ADAPTER_DATABASE_URL names one (postgresql+psycopg://…; "
                           "password in PGPASSFILE)")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:  # say which setting, by its variable
        print(f"invalid settings: {describe_invalid_settings(exc)}", file=sys.stderr)
        return 2
    except AdapterError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level, settings.log_format)
    previous_umask = _keep_files_private(settings)
    try:
        return _run(args, settings)
    finally:
        os.umask(previous_umask)  # as it was, for a caller in this process (the tests)


def _check_database(settings: Settings) -> int:
    """``check`` without ``--offline``: whether the database answers (within
    ADAPTER_DATABASE_CONNECT_TIMEOUT), what ``serve`` would do with its schema, and whether it
    would refuse the keys and data folder given for it (adapter.services.registry.start_refusals:
    the pseudonym key, the data folder's identity, audit.key), writing nothing; 0 when it would
    start on them, 2 when it cannot be reached, holds a schema newer than this adapter's, or serve
    would refuse to start."""
    from adapter.services.registry import check_start_refusals
    from adapter.store.schema import SCHEMA_VERSION
    from adapter.store.sql import read_schema_version

    try:
        version = read_schema_version(settings.resolved_database_url, settings.database_timeouts)
    except AdapterError as exc:
        print(f"invalid: {exc.diagnostics} (ADAPTER_DATABASE_URL; --offline skips the database)", file=sys.stderr)
        return 2
    if version is None:
        print(f"database reachable: it holds no record store of the adapter yet; serve creates it (schema version "
              f"{SCHEMA_VERSION})")
    elif version < SCHEMA_VERSION:
        print(f"database reachable: schema version {version}; serve upgrades it to {SCHEMA_VERSION} at start: back up "
              "the database and the data folder's keys (pseudonym.key, audit.key, store.id) first, and stop every "
              "instance of the older version; the older version cannot open the upgraded store, and there is no "
              "downgrade (the way back is that backup: docs/operations.md, Upgrading)")
    elif version == SCHEMA_VERSION:
        print(f"database reachable: schema version {version}, this adapter's")
    else:
        print(f"invalid: the database has schema version {version}, newer than this adapter's {SCHEMA_VERSION}: serve "
              "refuses it (a newer version of the adapter upgraded it)", file=sys.stderr)
        return 2
    try:
        refusals = check_start_refusals(settings)
    except AdapterError as exc:
        print(f"invalid: {exc.diagnostics}", file=sys.stderr)
        return 2
    for refusal in refusals:
        print(f"invalid: serve would refuse to start: {refusal}", file=sys.stderr)
    if refusals:
        return 2
    print("the pseudonym key, the data folder and its audit.key are the ones the database records (or it records "
          "none yet)")
    return 0


def _long_running(settings: Settings) -> Settings:
    """The settings of a maintenance command (``verify``, ``audit``): its statements may take as long
    as the store's size makes them, and wait for a lock another process holds (the removal's), so
    the database's statement and lock timeouts, which bound what ``serve`` answers, are not set;
    connecting stays bounded."""
    return settings.model_copy(update={"database_statement_timeout": 0, "database_lock_timeout": 0})


#: How each command says it cannot use the data folder (:func:`_data_folder_unusable`).
_REFUSED_AS = {"check": "invalid: ", "audit": "cannot open the store: ", "verify": "cannot open the store: ",
               "copy-store": "not copied: "}


def _data_folder_unusable(command: str, settings: Settings) -> bool:
    """Whether this user cannot read the data folder or what it holds, said as ``command`` says
    what stops it (serve in its log: "cannot start"); the store is not opened then. Was a
    PermissionError traceback from check and copy-store (exit 1), and "audit.key cannot be read
    (PermissionError)" from the others (newcomer review 1)."""
    from adapter.files import folder_access_problem
    from adapter.services.data_folder import DATA_FOLDER_ENTRIES

    problem = folder_access_problem(settings.data_dir, DATA_FOLDER_ENTRIES)
    if problem is None:
        return False
    if command == "serve":
        logging.getLogger("adapter").error("cannot start: %s", problem)
    else:
        print(f"{_REFUSED_AS[command]}{problem}", file=sys.stderr)
    return True


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "check":
        try:
            check_startup(settings)
        except AdapterError as exc:
            print(f"invalid: {exc.diagnostics}", file=sys.stderr)
            return 2
        print("settings, policy and mapping tables are valid")
        if settings.short_pseudonym_key is not None:  # what serve warns of at start
            print(f"warning: {settings.short_pseudonym_key} in production", file=sys.stderr)
        if args.offline:
            return 0
        return 2 if _data_folder_unusable(args.command, settings) else _check_database(settings)
    if _data_folder_unusable(args.command, settings):
        return 2
    if args.command == "audit":
        return _export_audit(_long_running(settings), args)
    if args.command == "verify":
        removal = _Removal(args.older_than, args.limit) if args.remove_unreferenced else None
        return _verify(_long_running(settings), digests=args.digests, removal=removal)
    if args.command == "copy-store":
        return _copy_store(_long_running(settings), args.to)
    return serve(settings)


def _keep_files_private(settings: Settings) -> int:
    """Everything the adapter creates (the data folder, its images, staging files, the SQLite
    database and its journal, the pseudonym key) is its own user's only: patient photos and
    records are not for every local account to read, whatever the umask it was started under
    (022 left them world-readable). A data folder made earlier that others can read is said in
    the log, not changed: the operator may have meant it (a backup user's group). Returns the
    umask it replaced."""
    import stat

    previous = os.umask(0o077)
    try:
        mode = settings.data_dir.stat().st_mode
    except OSError:
        return previous  # not made yet: it will be, the umask applying
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logging.getLogger("adapter").warning(
            "the data folder %s can be read or entered by other users (mode %s): chmod 700 it, and its "
            "files 600, unless that is meant", settings.data_dir, oct(stat.S_IMODE(mode)))
    return previous


#: The default and the shortest grace period of ``verify --remove-unreferenced``, in hours.
DEFAULT_GRACE_HOURS = DEFAULT_GRACE_SECONDS / 3600
MIN_GRACE_HOURS = MIN_GRACE_SECONDS / 3600


@dataclass(frozen=True)
class _Removal:
    """``verify --remove-unreferenced``: its grace period (hours) and limit."""

    older_than_hours: float
    limit: int | None


def _hours(value: str) -> float:
    """A grace period in hours, at least one; argparse's type."""
    try:
        hours = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number of hours: {value}") from exc
    if not hours >= MIN_GRACE_HOURS or hours == float("inf"):
        raise argparse.ArgumentTypeError(f"the grace period is at least {MIN_GRACE_HOURS:g} hour (an ingest in "
                                         "flight must never lose its image)")
    return hours


def _count(value: str) -> int:
    """A count of at least 1; argparse's type."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {value}")
    return int(value)


def _instant(value: str) -> datetime:
    """An ISO 8601 instant with its offset (``Z`` or ``+01:00``); argparse's type."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {value}") from exc
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the instant's offset (Z or +hh:mm): {value}")
    return parsed


def _existing_store(settings: Settings, what: str) -> tuple[RecordStore, BlobStore] | None:
    """The configured record store and its blobs, opened only if it exists (nothing created: a
    command run on the wrong folder or database must not make a new, empty store there); None,
    said on standard error, when it does not or cannot be opened (the command exits 2).
    ``what``: the command's verb ("nothing to <what>")."""
    from adapter.store import NoStore, open_store

    try:
        return open_store(settings.store, existing_only=True)
    except NoStore as exc:
        print(f"{exc.diagnostics}; nothing to {what}", file=sys.stderr)
    except AdapterError as exc:
        print(f"cannot open the store: {exc.diagnostics}", file=sys.stderr)
    return None


def _export_audit(settings: Settings, args: argparse.Namespace) -> int:
    """``python -m adapter audit``: NDJSON on standard output, a summary on standard error (none,
    and exit 1, when the reader closes the pipe first). The
    export is audited (adapter.services.audit.export_audit) naming the operating-system account
    that ran it (:func:`operating_system_account`) and this process on this host: no network
    address, it came over none."""
    import json

    from adapter.services.audit import export_audit
    from adapter.services.registry import build_services
    from adapter.store.engine import audit_log_uri

    # an export from the wrong folder or database must not make a new, empty store there and
    # report 0 events: the store is looked for first, as verify does, creating nothing
    opened = _existing_store(settings, "export")
    if opened is None:
        return 2
    opened[0].close()
    try:
        services = build_services(settings)
    except AdapterError as exc:
        print(f"cannot open the store: {exc.diagnostics}", file=sys.stderr)
        return 2
    count, last = 0, args.after
    try:
        for seq, event in export_audit(services.store, services.auditor, services.tables,
                                       operator=operating_system_account(), purpose=args.purpose,
                                       application=this_application(settings, serves_dicom=False),
                                       audit_log=audit_log_uri(settings.resolved_database_url), after=args.after,
                                       since=args.since, until=args.until, limit=args.limit):
            sys.stdout.write(json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n")
            count, last = count + 1, seq
        sys.stdout.flush()
        # the end of the hash chain, for the copy kept off the host: a later verify compares it
        mac = services.store.audit_chain_mac(last) if count else None
    except BrokenPipeError:
        # the reader stopped reading (``| head``): ended quietly, as Unix tools end, not with a
        # traceback; exit 1, its reader did not get the export whole. What is still buffered for
        # the closed pipe goes nowhere, not into a second error as Python exits.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except AdapterError as exc:
        print(f"audit export failed: {exc.diagnostics}", file=sys.stderr)
        return 2
    finally:
        services.close()
    print(f"{count} AuditEvent(s); last sequence number {last} (continue with --after {last})"
          + (f"; its chain MAC {mac}" if mac else "") + (" (no chain MAC: check with python -m adapter verify)"
                                                          if count and not mac else ""), file=sys.stderr)
    return 0


def _audit_chain_problems(store: RecordStore) -> list[str]:
    """``verify``'s check of the audit trail's hash chain (adapter.store.audit_chain): one pass; the
    problems (the key, the first broken event), and what the chain covers said on standard output."""
    key_problem = store.audit_key_problem()
    if key_problem is not None:
        return [key_problem]
    chain = store.check_audit_chain()
    # the start decides which events the chain exempts: trusted only as sealed under the key
    problems = [chain.start_problem] if chain.start_problem is not None else []
    if chain.start is not None and chain.start_problem is None:
        covered = (f"events {chain.start}..{chain.last} chained" if chain.last >= chain.start
                   else "no event chained yet")
        before = (f"; events 1..{chain.start - 1}, stored before the chain (schema 17 or older), are not covered "
                  "(the start is sealed with the last of them)" if chain.start > 1 else "")
        print(f"audit trail: {chain.events} event(s), {covered}{before}; last sequence number {chain.last}, its MAC "
              f"{chain.last_mac or '-'} (compare with the last export kept off the host: a cut-off end is not seen "
              "here)")
    if chain.first_broken is not None:
        problems.append(f"the hash chain breaks at event {chain.first_broken} ({chain.first_problem}); {chain.broken} "
                        "event(s) break it in all: the trail was edited, or events removed, added or reordered, in the "
                        "database")
    return problems


def _verify(settings: Settings, *, digests: bool, removal: _Removal | None = None) -> int:
    """``python -m adapter verify``: the findings (logical ids only) and a summary on standard
    output; exit 0 when every referenced image is there (and intact), 1 when not, 2 when the
    store cannot be opened. With ``removal``, a sound store then has its unreferenced images
    older than the grace period removed (adapter.services.unreferenced); a store with problems
    keeps them (exit 1: what is wrong is looked at first), and a removal that fails exits 2."""
    from adapter.services.data_folder import data_folder_problem, removal_problems
    from adapter.services.registry import pseudonym_key_problem
    from adapter.services.unreferenced import remove_unreferenced
    from adapter.services.verify import unreadable_consents, verify_store

    # never created: a restore to the wrong place (a new SQLite file, an empty PostgreSQL
    # database) must not pass as a clean, empty store
    opened = _existing_store(settings, "verify")
    if opened is None:
        return 2
    store, blobs = opened
    try:
        report = verify_store(store, blobs, digests=digests)
        for finding in report.findings:
            print(f"{finding.owner}: image {finding.sha256[:16]}… {finding.problem}")
        # a restore that left the key behind: serve would refuse to start (fail closed)
        key_problem = pseudonym_key_problem(settings, store)
        if key_problem is not None:
            print(f"pseudonym key: {key_problem}")
        folder_problem = data_folder_problem(settings.data_dir, store)
        if folder_problem is not None:
            print(f"data folder: {folder_problem}")
        audit_problems = _audit_chain_problems(store)
        for problem in audit_problems:
            print(f"audit trail: {problem}")
        # a Consent the decision cannot read denies every purpose of its patient, care included
        unreadable = list(unreadable_consents(store))
        for consent_id, why in unreadable:
            print(f"Consent/{consent_id}: the consent decision cannot read it ({why}): read as a denial of every "
                  "purpose of its patient, care included, and every ingest for the patient is refused")
        # one patient per study (PS3.3 A.1.2): studies stored before such an instance was refused
        mixed = store.studies_of_several_patients()
        for study, records in mixed:
            print(f"study {study}: its instances are filed under more than one patient ({', '.join(records)}): "
                  "withdraw the misfiled ones (README: Correcting a misfiled record)")
        problems = (len(report.findings) + (key_problem is not None) + (folder_problem is not None) + len(unreadable)
                    + len(audit_problems) + len(mixed))
        ok = problems == 0
        checked = f", {report.digests_checked} re-hashed" if digests else " (sizes only; --digests re-hashes them)"
        if report.staged:
            print(f"staging: {report.staged} staged upload(s) ({report.staged_bytes} bytes) in the staging folder: "
                  "uploads under way, or left by a crash less than an hour ago (the photos as received, their "
                  "metadata not yet removed); removed once an hour old, by a running adapter or the next verify")
        print(f"{report.references} reference(s) to {report.blobs} stored image(s){checked}; "
              f"{problems} problem(s); {report.unreferenced} image(s) no record refers to", flush=True)
        if removal is None:
            return 0 if ok else 1
        if not ok:
            print("unreferenced images not removed: the store has problems (above); look at them first")
            return 1
        # images another store in the folder refers to read as unreferenced here (ops review 1)
        not_ours = removal_problems(settings.data_dir, settings.resolved_database_url)
        for problem in not_ours:
            print(f"unreferenced images not removed: {problem}")
        if not_ours:
            return 1
        hours = f"{removal.older_than_hours:g} hour(s)"
        try:
            removed = remove_unreferenced(store, blobs, older_than_seconds=removal.older_than_hours * 3600,
                                          limit=removal.limit)
        except AdapterError as exc:
            print(f"removal of unreferenced images failed: {exc.diagnostics}", file=sys.stderr)
            return 2
    except AdapterError as exc:
        print(f"verify failed: {exc.diagnostics}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if removed.busy:
        print("unreferenced images not removed: another removal is running on this data folder")
        return 0
    if removed.restored_leftovers:
        print(f"{removed.restored_leftovers} image(s) an interrupted removal had moved aside put back")
    print(f"removed {removed.removed} image(s) no record refers to, older than {hours} ({removed.removed_bytes} "
          f"bytes); {max(0, report.unreferenced - removed.removed)} left"
          + (f"; stopped at --limit {removal.limit}" if removed.limited else ""))
    return 0


def _copy_store(settings: Settings, target_url: str) -> int:
    """``python -m adapter copy-store --to URL`` (adapter.store.copy): the configured store, its
    data folder claimed as serve's start does (refused when the folder is another database's: the
    copy would have records without their images), copied whole into the empty database at
    ``target_url``; exit 0 when copied, 2 when not (nothing kept)."""
    from adapter.services.data_folder import claim_data_folder
    from adapter.store.copy import check_source, copy_record_store
    from adapter.store.engine import audit_log_uri

    try:
        target = audit_log_uri(target_url).removesuffix("#audit")  # names no user or password
    except AdapterError as exc:
        print(f"invalid --to: {exc.diagnostics}", file=sys.stderr)
        return 2
    try:
        check_source(settings.resolved_database_url, settings.database_timeouts)  # before open_store upgrades it
    except AdapterError as exc:
        print(f"not copied: {exc.diagnostics}", file=sys.stderr)
        return 2
    opened = _existing_store(settings, "copy")
    if opened is None:
        return 2
    store = opened[0]
    try:
        claim_data_folder(settings.data_dir, store)
    except AdapterError as exc:
        print(f"not copied: {exc.diagnostics}", file=sys.stderr)
        return 2
    finally:
        store.close()
    try:
        report = copy_record_store(settings.resolved_database_url, target_url, settings.database_timeouts)
    except AdapterError as exc:
        print(f"not copied: {exc.diagnostics}", file=sys.stderr)
        return 2
    for table, rows in report.rows.items():
        print(f"{table}: {rows} row(s)")
    events = report.rows.get("audit", 0)
    end = (f" (last sequence number {report.last_audit[0]}, its chain MAC {report.last_audit[1] or '-'})"
           if report.last_audit else "")
    print(f"copied the record store to {target}: {sum(report.rows.values())} row(s) in {len(report.rows)} table(s), "
          f"counts checked, {events} audit event(s){end}; the data folder {settings.data_dir} is the copy's too. "
          "Next: serve with ADAPTER_DATABASE_URL set to it and this ADAPTER_DATA_DIR, verify --digests, then move "
          "adapter.db out of the data folder (docs/operations.md: Moving the records to another database)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
