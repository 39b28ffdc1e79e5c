"""The HTTP application wired from Settings: services, the FastAPI app, the access log.

``build_app`` is used by ``python -m adapter serve`` in a single process; with
``ADAPTER_HTTP_WORKERS`` > 1 uvicorn starts worker processes that each import
``adapter.api.asgi:create_app_from_env`` (a factory) and build their own services, store
connections included, from the environment.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from adapter.config import Settings
from adapter.errors import AdapterError

if TYPE_CHECKING:  # the supervisor process imports this module without loading FastAPI
    from fastapi import FastAPI

    from adapter.services.registry import Services

#: uvicorn's exit code for a worker that failed before serving: the supervisor then stops
#: instead of restarting it (uvicorn.config.STARTUP_FAILURE).
STARTUP_FAILURE = 3


def build_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The app over ``services`` (built from ``settings`` when not given) with our access log
    (uvicorn's prints query strings, which can hold patient identifiers; ours prints paths only).
    Raises AdapterError when the settings, policy, tables or store are not usable."""
    from adapter.api.app import create_app
    from adapter.api.logging import AccessLogMiddleware
    from adapter.services.registry import build_services

    if services is None:
        app = create_app(build_services(settings))
    else:  # shared with the SCP and the forwarder: whoever built them closes them
        app = create_app(services, owns_services=False)
    app.add_middleware(AccessLogMiddleware)
    return app


def settings_environment(settings: Settings) -> dict[str, str]:
    """``ADAPTER_*`` variables from which another process rebuilds exactly ``settings``. A key
    read from ADAPTER_PSEUDONYM_KEY_FILE is read from it again, not put in the environment (and
    both would be refused)."""
    values = settings.model_dump()
    if settings.pseudonym_key_file is not None:
        del values["pseudonym_key"]
    return {f"ADAPTER_{name.upper()}": str(value) for name, value in values.items() if value is not None}


#: The pid of the process that starts the HTTP worker processes (uvicorn's supervisor), set in
#: the environment the workers inherit.
SUPERVISOR_PID_ENV = "ADAPTER_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _end_with_the_supervisor() -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies, SIGKILL included
    (Linux's PR_SET_PDEATHSIG): left behind, workers kept serving HTTP (health 200) with no
    SCP or forwarder, and held the port against a restart. A supervisor already gone before the
    request took effect is seen by the worker's parent no longer being it: it ends at once."""
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if not sys.platform.startswith("linux") or not expected:
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # the C library's, already loaded
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if str(os.getppid()) != expected:
        os.kill(os.getpid(), signal.SIGTERM)


def create_app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: Settings from the environment (the parent put its
    own there), logging as ``python -m adapter`` sets it up, then :func:`build_app`. A failure
    exits with STARTUP_FAILURE, which stops uvicorn's supervisor rather than restarting the worker."""
    from adapter.__main__ import _configure_logging

    _end_with_the_supervisor()
    settings = Settings()
    _configure_logging(settings.log_level, settings.log_format)
    try:
        return build_app(settings)
    except AdapterError as exc:
        logging.getLogger("adapter").error("cannot start: %s", exc.diagnostics)
        sys.exit(STARTUP_FAILURE)
