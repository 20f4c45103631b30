"""Application factory (the flaskr pattern): ``create_app(config) -> Flask``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from flask import Flask

from experiments.auth import ApiKeyCache
from experiments.config import Config
from experiments.converters import BoundedIntConverter
from experiments.db import init_db
from experiments.services.config_cache import configure_cache
from experiments.services.warehouses import engines as warehouses


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from ``PARCOURS_*`` env vars overridden by ``config``."""
    settings = Config.load(config)
    app = Flask(__name__, instance_path=settings.INSTANCE_PATH)
    app.url_map.converters["int"] = BoundedIntConverter
    app.config.update(
        PARCOURS=settings,
        SECRET_KEY=settings.SECRET_KEY,
        TESTING=settings.TESTING,
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.config.update(settings.extra)

    database = init_db(app, settings.DATABASE_URL,
                       statement_timeout_ms=settings.STATEMENT_TIMEOUT_MS)
    configure_cache(database.engine, settings.CONFIG_REFRESH_S)
    warehouses.init_app(app)
    app.extensions["parcours.api_keys"] = ApiKeyCache()

    from experiments import cli, cors, errors, jobs, limits, observability, scheduler, security
    from experiments.api import assign, register_blueprints

    observability.configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    errors.register_error_handlers(app)
    observability.init_app(app)
    security.init_app(app)
    cors.init_app(app)  # before the rate limits, so preflights are answered first
    limits.init_app(app, ingest=settings.RATE_LIMIT_INGEST, assign=settings.RATE_LIMIT_ASSIGN,
                    storage_uri=settings.RATE_LIMIT_STORAGE)
    register_blueprints(app)
    assign.install_fast_path(app)  # outermost: the hot path skips the rest
    cli.register_commands(app)
    jobs.init_app(app)
    for name in settings.EXTENSIONS:
        # Composition by name keeps the import arrows one way (see tests/test_layering.py).
        importlib.import_module(name).init_app(app)
    # Last, once every extension has registered its jobs; only in a serving process.
    scheduler.init_app(app)
    return app
