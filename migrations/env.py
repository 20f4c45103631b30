"""Alembic environment: the metadata of every Parcours model."""

from alembic import context
from sqlalchemy import engine_from_config, pool

import experiments.models  # noqa: F401  (register tables)
import webhooks.models  # noqa: F401
from experiments.db import Base, postgres_connect_args

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # The same connection settings as the app's engines, merged into the URL's own
    # (a schema given as ``?options=-csearch_path%3D…`` is where the tables go).
    url = config.get_main_option("sqlalchemy.url") or ""
    connect_args = {} if url.startswith("sqlite") else postgres_connect_args(url)
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}),
                                     prefix="sqlalchemy.", poolclass=pool.NullPool,
                                     connect_args=connect_args)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
