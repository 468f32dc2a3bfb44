"""The shipped migrations build exactly the schema the models declare.

Several changes each added a migration; this catches a model column, index or type
that no migration creates (or one a migration creates that the models forgot), on
SQLite and on PostgreSQL, so ``cx-connector db upgrade`` always gives the code the
tables it expects.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cx_connector import db
from cx_connector.models import SCORE_HEALTH_INDEX, Base

#: expression indexes are created by DDL events, outside the metadata autogenerate compares
_EXPRESSION_INDEXES = {"ix_scores_health"}


def _index_name(diff: object) -> str | None:
    if isinstance(diff, tuple) and diff and diff[0] in ("add_index", "remove_index"):
        return diff[1].name
    return None


def test_migrated_schema_matches_the_models(engine):
    with engine.connect() as conn, warnings.catch_warnings():
        # SQLAlchemy cannot reflect expression indexes and says so
        warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression-based index")
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
    diffs = [d for d in diffs if _index_name(d) not in _EXPRESSION_INDEXES]
    assert diffs == [], "models and migrations differ: add a migration\n" + "\n".join(map(str, diffs))


def test_every_migration_is_one_chain_to_head(engine):
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(db.alembic_config(engine))
    heads = script.get_heads()
    assert heads == [db.head_revision()], heads  # one head: no branch left unmerged
    assert db.current_revision(engine) == db.head_revision()
    assert set(SCORE_HEALTH_INDEX) == {"sqlite", "postgresql"}


def test_the_open_writes_index_and_statistics_come_and_go_with_migration_0006(engine):
    """The index of the outbox's open writes, and on PostgreSQL the statistics of status
    and attempts together that make its planner use it for the retried writes."""
    from alembic import command
    from sqlalchemy import text

    from cx_connector.models import OUTBOX_STATUS_ATTEMPTS_STATISTICS

    pg = not db.is_sqlite(engine)

    def present() -> tuple[bool, bool]:
        with engine.connect() as conn:
            if pg:
                index = conn.execute(text("SELECT count(*) FROM pg_indexes WHERE indexname = "
                                          "'ix_outbox_status_attempts_source_next_attempt_at'")).scalar_one()
                stats = conn.execute(text("SELECT count(*) FROM pg_statistic_ext WHERE stxname = "
                                          "'st_outbox_status_attempts'")).scalar_one()
                return bool(index), bool(stats)
            index = conn.execute(text("SELECT count(*) FROM sqlite_master WHERE name = "
                                      "'ix_outbox_status_attempts_source_next_attempt_at'")).scalar_one()
            return bool(index), False

    assert present() == (True, pg)
    command.downgrade(db.alembic_config(engine), "0005_scoring_contexts")
    assert present() == (False, False)
    db.upgrade(engine)
    assert present() == (True, pg) and db.current_revision(engine) == db.head_revision()
    migration = (Path(db.__file__).parent / "migrations" / "versions" / "0006_outbox_open_writes.py")
    assert f'"{OUTBOX_STATUS_ATTEMPTS_STATISTICS}"' in migration.read_text()  # as create_all makes it
