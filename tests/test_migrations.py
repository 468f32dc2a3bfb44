"""The shipped migrations build exactly the schema the models declare.

Several changes each added a migration; this catches a model column, index or type
that no migration creates (or one a migration creates that the models forgot), on
SQLite and on PostgreSQL, so ``cx-connector db upgrade`` always gives the code the
tables it expects.
"""

from __future__ import annotations

import warnings

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
