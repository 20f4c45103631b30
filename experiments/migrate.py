"""Run the Alembic migrations in ``migrations/`` against an app's database."""

from __future__ import annotations

from alembic import command
from alembic.config import Config as AlembicConfig

from experiments.config import PROJECT_ROOT


def alembic_config(url: str) -> AlembicConfig:
    """An Alembic config pointing at our scripts and the given database."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Create or migrate the schema to ``revision``."""
    command.upgrade(alembic_config(url), revision)
