"""``python -m adapter serve``: build settings, services, then run the HTTP API."""

from __future__ import annotations

import argparse
import logging
import sys

from adapter.config import Settings
from adapter.errors import AdapterError


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(settings: Settings) -> int:
    import uvicorn

    from adapter.api.app import create_app
    from adapter.api.logging import AccessLogMiddleware
    from adapter.services.registry import build_services

    log = logging.getLogger("adapter")
    try:
        services = build_services(settings)
    except AdapterError as exc:
        log.error("cannot start: %s", exc.diagnostics)
        return 2
    app = create_app(services)
    app.add_middleware(AccessLogMiddleware)
    log.info("HTTP on http://%s:%d, store %s, data dir %s", settings.http_host, settings.http_port,
             "SQLite" if settings.resolved_database_url.startswith("sqlite") else "PostgreSQL",
             settings.data_dir)
    # uvicorn's access log prints query strings (patient identifiers): ours prints paths only.
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, access_log=False,
                            log_level=settings.log_level.lower(), timeout_keep_alive=30)
    uvicorn.Server(config).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP API (and, when configured, the DICOM SCP)")
    sub.add_parser("check", help="load settings, policy and mapping tables, then exit")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: say which setting
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    if args.command == "check":
        from adapter.mapping.tables import load_tables
        try:
            settings.check_safe()
            load_tables(settings.resolved_mappings_dir, settings.policy)
        except AdapterError as exc:
            print(f"invalid: {exc.diagnostics}", file=sys.stderr)
            return 2
        print("settings, policy and mapping tables are valid")
        return 0
    return serve(settings)


if __name__ == "__main__":
    raise SystemExit(main())
