"""``exchange serve | migrate | demo | check-config | reconcile-caps | restore-redis``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from exchange.catalog import Catalog, ConfigError, load_config
from exchange.settings import AppSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exchange", description="A ping-post lead exchange.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the exchange")
    serve.add_argument("--config", type=Path, default=None, help="config dir (default ./config)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--data-dir", type=Path, default=None, help="embedded stores' folder")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply migrations")

    migrate = sub.add_parser("migrate", help="apply migrations/ to the database")
    migrate.add_argument("--data-dir", type=Path, default=None)

    check = sub.add_parser("check-config", help="validate a config dir")
    check.add_argument("dir", nargs="?", type=Path, default=None)

    reconcile = sub.add_parser("reconcile-caps", help="rebuild cap counters from Postgres")
    reconcile.add_argument("--config", type=Path, default=None)
    reconcile.add_argument("--data-dir", type=Path, default=None)

    restore = sub.add_parser(
        "restore-redis", help="put cap counters and dedupe keys back from Postgres"
    )
    restore.add_argument("--config", type=Path, default=None)
    restore.add_argument("--data-dir", type=Path, default=None)

    demo = sub.add_parser("demo", help="the whole exchange on one machine, with simulated traffic")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    demo.add_argument("--rate", type=float, default=20.0, help="leads per second")
    demo.add_argument("--buyers", type=int, default=None, help="extra simulated buyers")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--config", type=Path, default=None)
    demo.add_argument("--data-dir", type=Path, default=None)
    demo.add_argument("--no-live", action="store_true", help="print a summary only")
    demo.add_argument("--summary-json", type=Path, default=None, help="also write the summary here")

    args = parser.parse_args(argv)
    handler = {
        "serve": _serve,
        "migrate": _migrate,
        "check-config": _check_config,
        "reconcile-caps": _reconcile,
        "restore-redis": _restore_redis,
        "demo": _demo,
    }[args.command]
    return handler(args)


def _settings(args: argparse.Namespace) -> AppSettings:
    settings = AppSettings()
    config = getattr(args, "config", None)
    if config is not None:
        settings.config_dir = config
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        settings.data_dir = data_dir
    return settings


def resolve_stores(settings: AppSettings) -> None:
    """Fill in missing store URLs by starting the embedded servers (stopped at exit)."""
    if settings.database_url and settings.redis_url:
        return
    from exchange.embedded import EmbeddedStores, ensure_database

    urls = EmbeddedStores(settings.data_dir).start()
    # The exchange's tables live in a database of their own, not in the server's default one.
    database_url = ensure_database(urls.database_url, "exchange")
    settings.database_url = settings.database_url or database_url
    settings.redis_url = settings.redis_url or urls.redis_url


def _check_config(args: argparse.Namespace) -> int:
    directory = args.dir or AppSettings().config_dir
    try:
        config = load_config(directory)
    except ConfigError as exc:
        for issue in exc.issues:
            print(
                f"{Path(directory) / issue.file if issue.file != str(directory) else issue.file}: "
                f"{issue.key or '(top)'}: {issue.message}",
                file=sys.stderr,
            )
        print(f"{len(exc.issues)} error(s)", file=sys.stderr)
        return 1
    campaigns = sum(len(b.campaigns) for b in config.buyers)
    print(
        f"{directory}: ok — {len(config.verticals)} verticals, "
        f"{len(config.publishers)} publishers, "
        f"{len(config.buyers)} buyers, {campaigns} campaigns"
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from exchange.store.db import migrate

    settings = _settings(args)
    resolve_stores(settings)
    assert settings.database_url
    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from exchange.observability.logs import configure_logging
    from exchange.store.db import migrate

    settings = _settings(args)
    configure_logging(settings.log_level, json=settings.log_json)
    try:
        Catalog.load(settings.config_dir)
    except ConfigError as exc:
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        return 1
    resolve_stores(settings)
    assert settings.database_url and settings.redis_url
    if not args.no_migrate:
        asyncio.run(migrate(settings.database_url))
    # Workers are separate processes: hand them everything through the environment.
    os.environ.update(
        EXCHANGE_DATABASE_URL=settings.database_url,
        EXCHANGE_REDIS_URL=settings.redis_url,
        EXCHANGE_CONFIG_DIR=str(settings.config_dir),
        EXCHANGE_MIGRATE_ON_START="false",
    )
    from exchange.observability.multiproc import MULTIPROC_ENV, prepare_multiprocess_dir

    if args.workers > 1 or os.environ.get(MULTIPROC_ENV):
        metrics_dir = Path(
            os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="exchange-metrics-")
        )
        prepare_multiprocess_dir(metrics_dir)
        os.environ[MULTIPROC_ENV] = str(metrics_dir)
    uvicorn.run(
        "exchange.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="exchange.api.accept:new_event_loop",  # uvloop, draining the accept queue
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
        backlog=4096,
        timeout_keep_alive=settings.keep_alive_s,
    )
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from exchange.store.reconcile import reconcile_caps

    settings = _settings(args)
    resolve_stores(settings)
    written = asyncio.run(reconcile_caps(settings, Catalog.load(settings.config_dir)))
    print(f"cap counters rebuilt from Postgres: {written} key(s) written")
    return 0


def _restore_redis(args: argparse.Namespace) -> int:
    from exchange.intake.restore import RestoreInterrupted
    from exchange.store.reconcile import restore_redis

    settings = _settings(args)
    resolve_stores(settings)
    try:
        written = asyncio.run(restore_redis(settings, Catalog.load(settings.config_dir)))
    except RestoreInterrupted as exc:
        print(f"restore cut short ({exc}): run it again", file=sys.stderr)
        return 1
    if written is None:
        print("another process is restoring Redis now; nothing done", file=sys.stderr)
        return 1
    print(f"cap counters raised and dedupe keys restored from Postgres: {written} key(s) written")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from exchange.demo.run import run_demo

    result: int = run_demo(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
