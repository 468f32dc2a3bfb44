"""Alembic environment: migrations run on the engine cx-connector hands over.

Run them with ``cx-connector db upgrade`` (it builds the engine from the
configuration file); there is no alembic.ini to keep in sync.
"""

from alembic import context

from cx_connector.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()
