"""Customers as the CLI, the admin pages and the API list them: filters, order, the index."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from cx_connector import customers as people
from cx_connector import db
from cx_connector.cli import main
from cx_connector.models import scores
from tests.conftest import PG_URL
from tests.scoring.shop import add, ago, order, tp


@pytest.fixture
def scored(rt):
    """Five customers: two red, two green (one of them without a CX score: recently engaged),
    one not scored at all."""
    from cx_connector.scoring import run

    add(rt, order("r1", ago(10), 20, "1"), tp("order_cancelled", "r1", ago(9), order_id="1"),
        order("g1", ago(10), 20, "2"), tp("order_fulfilled", "g1", ago(9), order_id="2"),
        order("r2", ago(10), 20, "3"), tp("refund_issued", "r2", ago(9), value=-20, order_id="3"),
        tp("email_engaged", "e1", ago(2)))
    run.run(rt)
    add(rt, tp("contact_created", "new", ago(1)))
    with db.read(rt.engine) as conn:
        return {who: cid for who, cid in conn.execute(text(
            "SELECT substr(email, 1, instr(email, '@') - 1), id FROM customers" if rt.engine.dialect.name
            == "sqlite" else "SELECT split_part(email, '@', 1), id FROM customers"))}


def health(rt) -> dict[int, str | None]:
    with db.read(rt.engine) as conn:
        return {cid: v.get("cx_health") for cid, v in conn.execute(select(scores.c.customer_id,
                                                                          scores.c.score_values))}


def test_listing_by_health_newest_first_with_a_cursor(rt, scored):
    h = health(rt)
    with db.read(rt.engine) as conn:
        red = people.listing(conn, health="red")
        assert red == sorted((c for c, v in h.items() if v == "red"), reverse=True) and len(red) == 2
        assert people.listing(conn, health="red", limit=1) == red[:1]
        assert people.listing(conn, health="red", before=red[0]) == red[1:]
        assert people.listing(conn, health="green") == sorted([scored["g1"], scored["e1"]], reverse=True)
        assert people.listing(conn, health="yellow") == []
        assert people.listing(conn, health="none") == [scored["new"]]
        everyone = people.listing(conn)
        assert everyone == sorted(scored.values(), reverse=True)
        assert people.listing(conn, offset=1, limit=2) == everyone[1:3]
        assert people.listing(conn, query="R1@EX") == [scored["r1"]]
        assert people.listing(conn, query="%") == []  # a wildcard is a character
        with pytest.raises(ValueError, match="health must be one of"):
            people.listing(conn, health="blue")


def test_the_health_filter_reads_the_expression_index(rt, scored):
    with db.read(rt.engine) as conn:
        if conn.dialect.name == "sqlite":
            plan = " ".join(str(r[-1]) for r in conn.execute(text(
                "EXPLAIN QUERY PLAN SELECT customer_id FROM scores "
                "WHERE json_extract(scores.score_values, '$.cx_health') = 'red' ORDER BY customer_id DESC")))
            assert "ix_scores_health" in plan and "TEMP B-TREE" not in plan
        else:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = " ".join(r[0] for r in conn.execute(text(
                "EXPLAIN SELECT customer_id FROM scores "
                "WHERE (scores.score_values ->> 'cx_health') = 'red'")))
            assert "ix_scores_health" in plan


def test_the_cli_lists_by_health(tmp_path, database_url, rt, scored):
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\n")
    run = CliRunner().invoke(main, ["--config", str(cfg), "customers", "list", "--health", "red", "--json"],
                             catch_exceptions=False)
    assert run.exit_code == 0
    assert [c["id"] for c in json.loads(run.output)] == sorted([scored["r1"], scored["r2"]], reverse=True)
    bad = CliRunner().invoke(main, ["--config", str(cfg), "customers", "list", "--health", "blue"])
    assert bad.exit_code == 2 and "'blue' is not one of" in bad.output


def test_count_agrees_with_the_listing_for_every_filter(rt, scored):
    with db.read(rt.engine) as conn:
        for health in (None, *people.HEALTH_FILTERS):
            assert people.count(conn, health=health) == len(people.listing(conn, health=health)), health
        assert people.count(conn) == 5
        with pytest.raises(ValueError, match="health must be one of"):
            people.count(conn, health="blue")


def test_the_cli_says_when_a_list_is_cut_short(tmp_path, database_url, rt, scored):
    """`customers list` stops at --limit: a last line says how many match in all; a page
    that holds everyone says nothing; --json stays a bare list (no count to add to it)."""
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\n")

    def listed(*args):
        r = CliRunner().invoke(main, ["--config", str(cfg), "customers", "list", *args],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output.splitlines()

    out = listed("--limit", "2")
    assert len(out) == 4 and out[-1] == "2 of 5 customers shown; --limit N or --offset 2 for more"
    assert listed("--limit", "2", "--offset", "2")[-1] == "3-4 of 5 customers shown; --offset 4 for more"
    assert listed("--limit", "1", "--health", "red")[-1] == (
        "1 of 2 customers with cx_health red shown; --limit N or --offset 1 for more")
    for args in ((), ("--limit", "5"), ("--limit", "2", "--offset", "3"), ("--health", "red")):
        assert " shown; " not in "\n".join(listed(*args)), args
    assert len(listed("--limit", "5")) == 6  # the header and five customers, nothing else
    assert listed("--health", "yellow") == ["no customers match"]
    data = json.loads("\n".join(listed("--limit", "2", "--json")))
    assert isinstance(data, list) and len(data) == 2


def test_the_health_index_comes_and_goes_with_its_migration(database_url):
    engine = db.make_engine(database_url)
    try:
        def indexed() -> bool:
            with engine.connect() as conn:
                if PG_URL:
                    return conn.execute(text("SELECT count(*) FROM pg_indexes WHERE indexname = "
                                             "'ix_scores_health'")).scalar_one() == 1
                return conn.execute(text("SELECT count(*) FROM sqlite_master WHERE name = "
                                         "'ix_scores_health'")).scalar_one() == 1

        assert indexed()
        from alembic import command

        command.downgrade(db.alembic_config(engine), "0003_alerts")
        assert not indexed()
        db.upgrade(engine)
        assert indexed() and db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()
