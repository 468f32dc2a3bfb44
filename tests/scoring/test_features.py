"""What counts as a purchase, a ticket, a rating and an item, read from stored touchpoints."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from cx_connector import db, inbox
from cx_connector.connector import CatalogueProduct
from cx_connector.scoring import features
from tests.conftest import NOW, PG_URL
from tests.scoring.shop import add, ago, cid, order, tp


def db_is_sqlite() -> bool:
    return not PG_URL


def load(rt, *who, full=True, by="category"):
    ids = [cid(rt, w) for w in who]
    with db.read(rt.engine) as conn:
        f = features.load(conn, ids, NOW, full=full, by=by)
    return f, {w: int(np.searchsorted(f.ids, i)) for w, i in zip(who, ids, strict=True)}


def test_purchases_are_collapsed_to_one_per_day_and_undone_orders_do_not_count(rt):
    add(rt,
        order("ann", ago(30, 5), 10, "1", "coffee"), order("ann", ago(30, 1), 15, "2", "tea"),  # one day
        order("ann", ago(20), 40, "3", "cups"),
        tp("order_cancelled", "ann", ago(19), order_id="3"),                 # cancelled: not a purchase
        order("ann", ago(10), 50, "4", "grinders"),
        tp("refund_issued", "ann", ago(9), value=-50, order_id="4"),         # refunded in full
        order("ann", ago(5), 80, "5", "cups"),
        tp("refund_issued", "ann", ago(4), value=-30, order_id="5"),         # partly refunded: 50
        order("ann", ago(5), 80, "5", "cups", source="crm"),                 # the same order again
        order("ann", NOW + (ago(0) - ago(1)), 99, "6", "future"))            # after as_of: ignored
    f, at = load(rt, "ann")
    i = at["ann"]
    assert f.purchase_days[i] == 2                       # day -30 (two orders) and day -5
    assert f.first_day[i] == math.floor(features.epoch_days(ago(30, 5)))
    assert f.last_day[i] == math.floor(features.epoch_days(ago(5)))
    assert f.spend[i] == pytest.approx(25 + 50) and f.spend_days[i] == 2
    assert f.repeat_spend[i] == pytest.approx(50) and f.repeat_spend_days[i] == 1
    assert f.orders_dropped[i] == 2 and f.orders_part_refunded[i] == 1
    # the items of undone orders are not "bought" either
    assert sorted(f.item_keys[c] for c in f.item_code[f.item_idx == i]) == ["coffee", "cups", "tea"]


def test_deals_won_are_purchases_and_orders_without_a_value_still_count(rt):
    add(rt, tp("deal_won", "bo", ago(40), value=12000, deal_id="d1"),
        tp("deal_won", "bo", ago(40), value=12000, deal_id="d1", touchpoint_id="dup"),  # same deal
        tp("order_placed", "bo", ago(3)))                                               # no value, no id
    f, at = load(rt, "bo")
    i = at["bo"]
    assert f.purchase_days[i] == 2
    assert f.spend[i] == 12000 and f.spend_days[i] == 1


def test_purchases_without_any_order_or_deal_id_are_still_read(rt):
    """Generic touchpoints may carry no order id at all: no reference exists to size the
    order outcomes by (a full pass over such a shop once failed with an IndexError)."""
    add(rt, tp("order_placed", "cy", ago(12), value=9.99), tp("order_placed", "cy", ago(2), value=5))
    f, at = load(rt, "cy")
    i = at["cy"]
    assert f.purchase_days[i] == 2 and f.spend[i] == pytest.approx(14.99)
    assert f.orders_dropped[i] == 0


def test_tickets_are_grouped_per_ticket_with_resolution_reopens_and_contacts(rt):
    add(rt,
        tp("ticket_opened", "cy", ago(10), ticket_id="t1"),
        tp("ticket_commented", "cy", ago(10) + (ago(0) - ago(0, 2)), ticket_id="t1", author="customer"),
        tp("ticket_commented", "cy", ago(10) + (ago(0) - ago(0, 3)), ticket_id="t1", author="staff"),
        tp("ticket_solved", "cy", ago(9), ticket_id="t1"),
        tp("ticket_reopened", "cy", ago(8), ticket_id="t1"),
        tp("ticket_solved", "cy", ago(7), ticket_id="t1"),
        tp("ticket_opened", "cy", ago(2), ticket_id="t2"),
        tp("ticket_opened", "cy", ago(1)))                    # no ticket id: a ticket of its own
    f, _ = load(rt, "cy")
    assert len(f.ticket_idx) == 3
    t1 = int(np.nanargmin(f.ticket_opened))
    assert f.ticket_reopens[t1] == 1 and f.ticket_contacts[t1] == 1
    assert (f.ticket_solved[t1] - f.ticket_opened[t1]) == pytest.approx(3)
    assert np.isnan(f.ticket_solved).sum() == 2               # t2 and the id-less one are open


def test_ratings_keep_their_scale(rt):
    add(rt, tp("csat_rating", "di", ago(3), rating=(4, 5)), tp("nps_response", "di", ago(2), rating=(9, 10)))
    f, _ = load(rt, "di")
    assert sorted(f.rating_share.tolist()) == [0.8, 0.9]
    assert sorted(f.rating_max.tolist()) == [5, 10]


def test_categories_come_from_the_catalogue_when_line_items_have_none(rt):
    with db.write(rt.engine) as conn:
        inbox.catalogue(conn, CatalogueProduct("crm", "p-9", category="grinders"), now=NOW)
    add(rt, tp("order_placed", "ed", ago(5), value=10, order_id="1",
               products=[{"id": "p-9"}, {"id": "p-unknown"}, {"sku": "S1", "category": "tea"}]))
    f, _ = load(rt, "ed")
    assert sorted(f.item_keys[c] for c in f.item_code) == ["grinders", "tea"]
    f, _ = load(rt, "ed", by="product")
    assert sorted(f.item_keys) == ["crm:S1", "crm:p-9", "crm:p-unknown"]


def test_engagement_and_journey_stage(rt):
    add(rt, tp("contact_created", "fay", ago(50)), tp("email_engaged", "fay", ago(20)),
        tp("profile_updated", "fay", ago(1)))                # a system update is not engagement
    f, at = load(rt, "fay")
    i = at["fay"]
    assert f.last_engaged[i] == pytest.approx(features.epoch_days(ago(20)))
    assert features.STAGES[f.stage[i]] == "consideration"
    assert f.touchpoints[i] == 3


def test_reading_a_few_customers_gives_what_the_full_pass_gives(rt):
    add(rt, order("g1", ago(30), 10, "1", "coffee"), order("g1", ago(3), 20, "2", "tea"),
        tp("ticket_opened", "g1", ago(3), ticket_id="x"), tp("csat_rating", "g1", ago(2), rating=(2, 5)),
        order("g2", ago(8), 5, "3", "cups"), tp("order_cancelled", "g2", ago(7), order_id="3"),
        tp("nps_response", "g3", ago(1), rating=(7, 10)))
    full, _ = load(rt, "g1", "g2", "g3")
    part, _ = load(rt, "g1", "g3", full=False)
    keep = np.isin(full.ids, part.ids)
    for name in ("purchase_days", "first_day", "last_day", "spend", "repeat_spend", "orders_dropped",
                 "last_engaged", "stage", "touchpoints"):
        assert np.array_equal(getattr(full, name)[keep], getattr(part, name), equal_nan=True), name
    assert len(part.ticket_idx) == 1 and len(part.rating_idx) == 2


def test_a_deal_and_an_order_with_the_same_id_are_two_purchases(rt):
    """Order and deal references live in different namespaces of one source."""
    add(rt, tp("deal_won", "hal", ago(40), value=100, deal_id="7"),
        order("hal", ago(20), 10, "7", "coffee"),
        tp("order_cancelled", "hal", ago(19), order_id="8"))          # another order: not the deal
    f, at = load(rt, "hal")
    assert f.purchase_days[at["hal"]] == 2
    assert f.orders_dropped[at["hal"]] == 0


def test_one_scan_gives_stage_engagement_and_events_of_every_kind(rt):
    """Kinds that are not scoring events still count as touchpoints, engagement and stage;
    system updates do not count as engagement; an unknown stage is ignored."""
    add(rt, tp("deal_created", "ivy", ago(9)), tp("lifecycle_changed", "ivy", ago(2)),
        tp("ticket_solved", "ivy", ago(1), ticket_id="z"), tp("order_fulfilled", "ivy", ago(0, 1)))
    f, at = load(rt, "ivy")
    i = at["ivy"]
    assert f.touchpoints[i] == 4
    assert f.last_engaged[i] == pytest.approx(features.epoch_days(ago(9)))
    assert features.STAGES[f.stage[i]] == "retention"
    assert len(f.ticket_idx) == 1 and len(f.outcome_idx) == 1


def _story(rt):
    add(rt, order("g1", ago(30), 10, "1", "coffee"), order("g1", ago(3), 20, "2", "tea"),
        order("g1", ago(3), 20, "2", "tea", source="other"),
        tp("ticket_opened", "g1", ago(3), ticket_id="x"), tp("csat_rating", "g1", ago(2), rating=(2, 5)),
        tp("ticket_commented", "g1", ago(2), ticket_id="x", author="customer"),
        order("g2", ago(8), 5, "3", "cups"), tp("order_cancelled", "g2", ago(7), order_id="3"),
        tp("refund_issued", "g1", ago(1), value=-20, order_id="2"),
        tp("nps_response", "g3", ago(1), rating=(7, 10)), tp("email_engaged", "g4", ago(4)))
    return ["g1", "g2", "g3", "g4"]


def _same(a, b):
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y, equal_nan=True), name
        elif name != "read_helper":
            assert x == y, name


@pytest.mark.skipif(not db_is_sqlite(), reason="the helper process reads SQLite files")
def test_a_helper_process_reads_half_of_a_large_table_with_the_same_result(rt, monkeypatch):
    who = _story(rt)
    one, _ = load(rt, *who)
    assert one.read_helper == {}                       # a small table: one process
    monkeypatch.setattr(features, "PARALLEL_SCAN_ROWS", 2)
    two, _ = load(rt, *who)
    assert set(two.read_helper) == {"seconds", "peak_mib"}
    _same(one, two)


@pytest.mark.skipif(not db_is_sqlite(), reason="the helper process reads SQLite files")
def test_a_failing_helper_is_replaced_by_reading_its_half_here(rt, monkeypatch, caplog):
    from cx_connector.scoring import scan
    who = _story(rt)
    one, _ = load(rt, *who)
    monkeypatch.setattr(features, "PARALLEL_SCAN_ROWS", 2)
    for command in ((sys.executable, "-c", "import sys; sys.exit(3)"),
                    (sys.executable, "-c", "import sys; sys.stdout.write('garbage')"),
                    ("/nonexistent/python",)):
        monkeypatch.setattr(scan.Helper, "command", command)
        with caplog.at_level("WARNING", logger="cx_connector.scoring.features"):
            two, _ = load(rt, *who)
        assert "failed" in two.read_helper
        assert "scoring scan helper failed" in caplog.text
        _same(one, two)


def test_helper_answers_round_trip():
    from cx_connector.scoring import scan
    columns = {"cust": np.array([1, 2], dtype=np.int64), "code": np.array([3, 4], dtype=np.int64),
               "days": np.array([1.5, np.nan]), "value": np.array([np.nan, 2.0]),
               "scale": np.array([5.0, 0.0]), "ref": np.array(["crm:1", None], dtype=object),
               "items": np.array(["a\x1fb", None], dtype=object),
               "source": np.array(["crm", None], dtype=object)}
    back, extra = scan.decode(scan.encode(columns, peak_mib=12.5))
    assert extra == {"peak_mib": 12.5}
    for k, v in columns.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v, equal_nan=v.dtype != object), k
    with pytest.raises(ValueError):
        scan.decode(scan.encode(columns) + b"x")


@pytest.mark.skipif(not db_is_sqlite(), reason="the helper process reads SQLite files")
def test_the_helper_runs_this_copy_of_the_code_whatever_the_working_directory(rt, monkeypatch, tmp_path):
    """A checkout of another version in the working directory must not be imported."""
    who = _story(rt)
    one, _ = load(rt, *who)
    (tmp_path / "cx_connector").mkdir()
    (tmp_path / "cx_connector" / "__init__.py").write_text("raise ImportError('the wrong copy')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(features, "PARALLEL_SCAN_ROWS", 2)
    two, _ = load(rt, *who)
    assert "failed" not in two.read_helper and "seconds" in two.read_helper
    _same(one, two)


@pytest.mark.skipif(not db_is_sqlite(), reason="the helper process reads SQLite files")
def test_the_helper_is_stopped_when_our_half_fails(rt, monkeypatch):
    from cx_connector.scoring import scan
    who = _story(rt)
    monkeypatch.setattr(features, "PARALLEL_SCAN_ROWS", 2)
    started = []
    real_init = scan.Helper.__init__

    def keep(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        started.append(self)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(scan.Helper, "__init__", keep)
    monkeypatch.setattr(scan, "fetch_columns", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load(rt, *who)
    assert started and started[0].proc.poll() is not None      # not left running
