"""Reading touchpoints into per-customer arrays: the only place scoring touches ``touchpoints``.

A full pass reads the table once, in one sequential scan that returns, per
touchpoint, only what the scores need: the customer, one small integer packing the
kind, the journey stage and whether a ticket comment is the customer's, the time,
the value and rating, and (only where they matter) the order or ticket reference and
the line items. Touchpoint counts, last engagement and furthest stage are
aggregated in numpy from the same rows, as are purchases, order outcomes, tickets
and ratings; references are turned into integer codes once, so cancellations,
refunds, duplicates and tickets are matched with array operations, not per row.
Nothing is queried per customer. An incremental run asks the same query for a list
of customers, through the ``(customer_id, occurred_at)`` index. On a large SQLite
table, a helper process reads the newer half of it at the same time (see
:mod:`cx_connector.scoring.scan`).

On SQLite a full pass names the table ``NOT INDEXED``: the planner would otherwise
walk an index and fetch table rows in index order, which on a table stored in
arrival (time) order is several times slower than one sequential scan (see
BENCHMARKS.md). Rows are fetched through the DBAPI cursor of the current
transaction, without SQLAlchemy row objects, because the full pass fetches a
million of them.

Everything is returned as numpy arrays aligned with ``Features.ids`` (customer ids,
ascending); ``*_idx`` columns are positions in that array. Times are days since the
Unix epoch (floats); purchase days are whole UTC days.

What counts (also in the README, "How scores are made"):

* a *purchase* is an ``order_placed`` or a ``deal_won``. An order with an
  ``order_cancelled`` of the same ``order_id`` is not a purchase, nor is one whose
  refunds (``refund_issued`` with its ``order_id``) add up to its whole value; a
  partial refund lowers the order's value. The same order seen twice is one
  purchase. Purchases are collapsed to one per customer per UTC day (the BG/NBD
  convention), the day's value being the sum of its orders.
* *engagement* is any touchpoint except those a system makes on its own
  (:data:`NOT_ENGAGEMENT`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, select

from cx_connector.models import products
from cx_connector.scoring import scan
from cx_connector.touchpoint import STAGES

log = logging.getLogger(__name__)

PURCHASE_KINDS = ("order_placed", "deal_won")
ORDER_OUTCOME_KINDS = ("order_fulfilled", "order_cancelled", "refund_issued")
TICKET_KINDS = ("ticket_opened", "ticket_solved", "ticket_reopened", "ticket_commented")
RATING_KINDS = ("csat_rating", "nps_response", "ces_response", "review_posted")
EVENT_KINDS = PURCHASE_KINDS + ORDER_OUTCOME_KINDS + TICKET_KINDS + RATING_KINDS
#: touchpoints that do not show the customer engaging (a system updated a record)
NOT_ENGAGEMENT = ("profile_updated", "lifecycle_changed", "deal_stage_changed", "ticket_solved",
                  "order_fulfilled")
#: customers per ``IN (...)`` list in incremental queries
CHUNK = 500
_CODE = {k: i for i, k in enumerate(EVENT_KINDS)}
_ADVOCACY = STAGES.index("advocacy")


def nps_points(score: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """NPS answers on the 0-10 scale (an answer on another scale is rescaled, then rounded)."""
    return np.round(np.where(scale == 10, score, score * 10.0 / scale))


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)  # constants of this module, never user input


def _codes(kinds: Sequence[str]) -> list[int]:
    return [_CODE[k] for k in kinds]


class Dialect:
    """The few expressions that differ between SQLite and PostgreSQL."""

    def __init__(self, conn: Connection) -> None:
        self.sqlite = conn.dialect.name == "sqlite"

    def time(self, col: str = "occurred_at") -> str:
        """A timestamp as :func:`scan.days_of` reads it fast (SQLite: the stored text)."""
        return col if self.sqlite else f"(extract(epoch from {col}))::float8"

    def attr(self, key: str, col: str = "attributes") -> str:
        """A key of a JSON column as text (ids may be JSON numbers or strings)."""
        if self.sqlite:
            return f"CAST(json_extract({col}, '$.{key}') AS TEXT)"
        return f"({col} ->> '{key}')"

    def number(self, col: str) -> str:
        return col if self.sqlite else f"({col})::float8"

    def scan(self, full: bool, alias: str = "") -> str:
        name = f"touchpoints {alias}".strip()
        return f"{name} NOT INDEXED" if full and self.sqlite else name

    def items(self, by: str) -> str:
        """A purchase's line items as one text: items separated by US (0x1f).

        By category an item is its category, or RS (0x1e) + product id (else SKU)
        when it has none (the catalogue may know it); by product it is the product
        id (else SKU), RS, and the title.
        """
        if self.sqlite:
            def get(k: str) -> str:
                return f"json_extract(p.value, '$.{k}')"
            each, agg, us, rs = "json_each(products) AS p", "group_concat", "char(31)", "char(30)"
        else:
            def get(k: str) -> str:
                return f"(p.value ->> '{k}')"
            each, agg = "jsonb_array_elements(products) AS p(value)", "string_agg"
            us, rs = "chr(31)", "chr(30)"
        ident = f"coalesce({get('id')}, {get('sku')})"
        item = (f"coalesce({get('category')}, {rs} || {ident})" if by == "category"
                else f"{ident} || {rs} || coalesce({get('title')}, '')")
        return f"(SELECT {agg}({item}, {us}) FROM {each})"

    def param(self, when: datetime) -> tuple[str, Any]:
        """The placeholder and value of the ``as_of`` bound (SQLite stores naive UTC text)."""
        if self.sqlite:
            return ":as_of", when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return "%(as_of)s", when


@dataclass
class Features:
    """Per-customer inputs of every score, as arrays aligned with ``ids``."""

    ids: np.ndarray
    as_of: datetime
    #: days since epoch of ``as_of`` (float) and its UTC day (int)
    now_days: float
    today: int
    #: touchpoints per customer, last engagement (days; NaN: none), furthest stage (-1: none)
    touchpoints: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_engaged: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stage: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: whose furthest stage would be advocacy but for an NPS answer or review that is not positive
    held_back: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # purchases, one per customer-day
    purchase_days: np.ndarray = field(default_factory=lambda: np.zeros(0))
    first_day: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    last_day: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: sum and number of purchase days with a known value (all days; repeat days only)
    spend: np.ndarray = field(default_factory=lambda: np.zeros(0))
    spend_days: np.ndarray = field(default_factory=lambda: np.zeros(0))
    repeat_spend: np.ndarray = field(default_factory=lambda: np.zeros(0))
    repeat_spend_days: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: orders left out (cancelled or refunded in full) and partially refunded, per customer
    orders_dropped: np.ndarray = field(default_factory=lambda: np.zeros(0))
    orders_part_refunded: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: order outcomes: idx, kind (index into ORDER_OUTCOME_KINDS), time
    outcome_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    outcome_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    outcome_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: tickets: idx, first opened, last solved, last (re)opened, reopens, last reopen,
    #: customer contacts (times in days; NaN: never)
    ticket_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ticket_opened: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ticket_solved: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ticket_last_open: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ticket_reopens: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ticket_last_reopen: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ticket_contacts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: ratings: idx, kind (index into RATING_KINDS), time, score / scale_max, score, scale_max
    rating_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rating_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rating_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rating_share: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rating_score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rating_max: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: distinct (customer, item) pairs bought; items index ``item_keys``/``item_labels``
    item_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    item_code: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    item_keys: list[str] = field(default_factory=list)
    item_labels: list[str] = field(default_factory=list)
    #: the scan's helper process, when one read half of the table: seconds, peak_mib
    #: (or failed: why)
    read_helper: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def purchasers(self) -> np.ndarray:
        return self.purchase_days > 0


def epoch_days(when: datetime) -> float:
    return when.timestamp() / 86400.0


def _scan(conn: Connection, d: Dialect, as_of: datetime, ids: np.ndarray | None, by: str,
          stats: dict[str, Any]) -> dict[str, Any]:
    """Every touchpoint of ``ids`` (everyone: None) up to ``as_of``, in one pass over the table.

    Each row's kind, journey stage and comment author are packed by the database into
    one integer with the customer id (``code = (kind * 8 + stage) * 2 + author``, in the
    low :data:`scan.CODE_BITS` bits), a rating's score takes the value's column, and
    order and ticket references and line items are only extracted from the JSON where
    they matter: every column fetched is a Python object made per row, which is most
    of the cost of a million rows (see :func:`scan.fetch_columns`). A full pass over a
    large SQLite table reads half of it in a helper process (:func:`_helper_range`);
    ``stats`` gets the helper's figures. Returns the columns; object columns
    (reference, items, source) only for event rows.
    """
    kinds = (*EVENT_KINDS, *_QUIET_KINDS)
    kind_case = " ".join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(kinds))
    stage_case = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGES))
    order_ref = f"source || ':' || {d.attr('order_id')}"
    ref = (f"CASE WHEN kind IN ('order_placed', 'order_cancelled', 'refund_issued') THEN {order_ref} "
           f"WHEN kind = 'deal_won' THEN source || ':deal:' || {d.attr('deal_id')} "
           f"WHEN kind IN ({_sql_list(TICKET_KINDS)}) "
           f"THEN coalesce(source || ':' || {d.attr('ticket_id')}, 'touchpoint:' || id) END")
    # (a fulfilment needs no order reference: it counts as a good experience either way)
    author = f"CASE WHEN kind = 'ticket_commented' AND {d.attr('author')} = 'customer' THEN 1 ELSE 0 END"
    sql = f"""
        SELECT customer_id * {1 << scan.CODE_BITS}
                 + ((CASE kind {kind_case} ELSE {_OTHER} END) * 8 + (CASE stage {stage_case} ELSE 7 END)) * 2
                 + {author},
               {d.time()},
               {d.number(f"CASE WHEN kind IN ({_sql_list(RATING_KINDS)}) THEN rating_score ELSE value END")},
               {d.number('rating_scale_max')},
               {ref},
               CASE WHEN kind IN ({_sql_list(PURCHASE_KINDS)}) THEN {d.items(by)} END,
               CASE WHEN kind IN ({_sql_list(PURCHASE_KINDS)}) THEN source END
        FROM {d.scan(ids is None)}
        WHERE customer_id IS NOT NULL AND occurred_at <= :as_of {{ids}}"""
    placeholder, value = d.param(as_of)
    sql = sql.replace(":as_of", placeholder)
    params = {"as_of": value}
    options = {"sqlite": d.sqlite, "event_kinds": len(EVENT_KINDS)}
    helper_range = _helper_range(conn, d) if ids is None else None
    if helper_range is not None:  # the newer half in a helper process, the older one here
        path, mid = helper_range
        helper = scan.Helper(path, sql.replace("{ids}", f"AND id > {mid}"), params, len(EVENT_KINDS))
        cur = conn.connection.dbapi_connection.cursor()
        try:
            try:
                mine = scan.fetch_columns(cur, [sql.replace("{ids}", f"AND id <= {mid}")], params, **options)
            except BaseException:  # our half failed (or Ctrl-C): the helper's half is not wanted
                helper.stop()
                raise
            try:
                theirs = helper.result()
                stats.update(helper.stats)
            except scan.HelperFailed as exc:
                log.warning("scoring scan helper failed (%s); reading its half here", exc,
                            extra={"error": str(exc)})
                stats["failed"] = str(exc)
                theirs = scan.fetch_columns(cur, [sql.replace("{ids}", f"AND id > {mid}")], params, **options)
        finally:
            cur.close()
        return scan.concat([mine, theirs])
    statements = [sql.replace("{ids}", "")] if ids is None else [
        sql.replace("{ids}", f"AND customer_id IN ({', '.join(str(int(c)) for c in ids[i:i + CHUNK])})")
        for i in range(0, len(ids), CHUNK)]  # integers, from our own table
    cur = conn.connection.dbapi_connection.cursor()
    try:
        return scan.fetch_columns(cur, statements, params, **options)
    finally:
        cur.close()


#: a full pass reads half of a SQLite table of at least this many touchpoints (by id
#: range) in a helper process (see :mod:`cx_connector.scoring.scan`); 0: never
PARALLEL_SCAN_ROWS = 200_000


def _helper_range(conn: Connection, d: Dialect) -> tuple[str, int] | None:
    """``(database file, first id of the helper's half)`` when the helper is worth it."""
    path = conn.engine.url.database
    if not d.sqlite or not PARALLEL_SCAN_ROWS or not path or path == ":memory:" or path.startswith("file:"):
        return None
    lo, hi = conn.exec_driver_sql("SELECT min(id), max(id) FROM touchpoints").one()
    if lo is None or hi - lo + 1 < PARALLEL_SCAN_ROWS:
        return None
    return os.path.abspath(path), (lo + hi) // 2


#: kinds that are not events of any score but matter for engagement (scan codes after
#: EVENT_KINDS); any other kind gets code _OTHER (engagement)
_QUIET_KINDS = tuple(k for k in NOT_ENGAGEMENT if k not in EVENT_KINDS)
_OTHER = len(EVENT_KINDS) + len(_QUIET_KINDS)
#: scan codes of kinds that do not show the customer engaging
_NOT_ENGAGEMENT_CODES = [i for i, k in enumerate((*EVENT_KINDS, *_QUIET_KINDS)) if k in NOT_ENGAGEMENT]


def _locate(ids: np.ndarray, customer_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``customer_ids`` in ``ids``, and which of them are there at all
    (a full pass also reads rows of customers it does not score, e.g. merged-away ones)."""
    c = np.asarray(customer_ids, dtype=np.int64)
    if not len(ids) or not len(c):
        return np.zeros(len(c), dtype=np.int64), np.zeros(len(c), dtype=bool)
    pos = np.minimum(np.searchsorted(ids, c), len(ids) - 1)
    return pos.astype(np.int64), ids[pos] == c


def load(conn: Connection, ids: Sequence[int] | np.ndarray, as_of: datetime, *, full: bool,
         by: str = "category", positive_at: float = 0.7) -> Features:
    """Every score's inputs for the customers ``ids``.

    ``full`` reads the whole table in one sequential scan (use it when ``ids`` is most
    customers); otherwise only the touchpoints of ``ids`` are read, by index.
    Touchpoints after ``as_of`` are ignored. ``by``: cross-sell items are
    categories or products. ``positive_at``: the share of its scale at which a review
    is positive (``scoring.cx.rating_positive_at``), for the journey stage.
    """
    d = Dialect(conn)
    ids = np.unique(np.asarray(list(ids), dtype=np.int64))
    now_days = epoch_days(as_of)
    f = Features(ids=ids, as_of=as_of, now_days=now_days, today=math.floor(now_days))
    n = len(ids)
    rows = _scan(conn, d, as_of, None if full else ids, by, f.read_helper)
    pos, ok = _locate(ids, rows["cust"])
    code, days = rows["code"], rows["days"]
    kind, stage, author = code >> 4, (code >> 1) & 7, (code & 1).astype(bool)

    # -- journey stage and engagement -------------------------------------------------
    f.touchpoints = np.bincount(pos[ok], minlength=n).astype(float)
    f.last_engaged = np.full(n, np.nan)
    engaged = ok & ~np.isin(kind, _NOT_ENGAGEMENT_CODES)
    np.fmax.at(f.last_engaged, pos[engaged], days[engaged])
    # an NPS answer or a review is advocacy only when it is positive (a promoter answer, a
    # review rated at ``positive_at`` of its scale or more, or one without a rating): a
    # detractor has answered a survey, not recommended anyone; it stays at retention
    said = (stage == _ADVOCACY) & np.isin(kind, _codes(("nps_response", "review_posted")))
    if said.any():
        score, scale = rows["value"][said], rows["scale"][said]
        with np.errstate(invalid="ignore", divide="ignore"):
            positive = np.where(kind[said] == _CODE["nps_response"], nps_points(score, scale) >= 9,
                                score / scale >= positive_at - 1e-9)
        positive |= np.isnan(score) | ~(np.nan_to_num(scale) > 0)  # unrated: as the source staged it
        stage = stage.copy()
        stage[np.flatnonzero(said)[~positive]] = _ADVOCACY - 1
    f.stage = np.full(n, -1, dtype=np.int64)
    staged = ok & (stage < len(STAGES))
    np.maximum.at(f.stage, pos[staged], stage[staged])
    f.held_back = np.zeros(n, dtype=bool)  # reached advocacy only through a non-positive answer
    if said.any():
        f.held_back[pos[ok & said]] = True
        f.held_back &= f.stage < _ADVOCACY

    # -- purchases, order outcomes, tickets, ratings: the event rows -------------------
    event = kind < len(EVENT_KINDS)
    e_pos, e_ok, e_code, e_days = pos[event], ok[event], kind[event], days[event]
    values = rows["value"][event]
    scale = rows["scale"][event]
    author = author[event]
    refs, items, sources = rows["ref"], rows["items"], rows["source"]
    del rows
    ref_code, n_refs = _factorize(refs)
    cancelled, refund, refunded_any = _outcomes(f, e_code, e_pos, e_ok, e_days, values, ref_code, n_refs)
    undone = _purchases(f, e_code, e_pos, e_ok, e_days, values, ref_code, cancelled, refund, refunded_any)
    _tickets(f, e_code, e_pos, e_ok, e_days, ref_code, author)
    _ratings(f, e_code, e_pos, e_ok, e_days, values, scale)
    _items(conn, f, e_code, e_pos, e_ok, ref_code, undone, items, sources, by)
    return f


def _factorize(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes of the (text) values in order of first appearance; None: -1."""
    listed = values.tolist()
    # dict.fromkeys keeps the first appearance order, and both passes run in C
    index = {v: i for i, v in enumerate(k for k in dict.fromkeys(listed) if k is not None)}
    n = len(index)
    index[None] = -1
    return np.fromiter(map(index.__getitem__, listed), dtype=np.int64, count=len(listed)), n


def _first_seen(keys: np.ndarray) -> np.ndarray:
    """Codes of ``keys`` (integers) numbered in order of first appearance."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _outcomes(f: Features, code: np.ndarray, pos: np.ndarray, ok: np.ndarray, days: np.ndarray,
              values: np.ndarray, ref: np.ndarray, n_refs: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order outcomes per customer; which orders (reference codes) were cancelled, the sum
    of their refunds, and whether any refund with a value names them."""
    sel = ok & np.isin(code, _codes(ORDER_OUTCOME_KINDS))
    f.outcome_idx = pos[sel]
    f.outcome_kind = code[sel] - _CODE[ORDER_OUTCOME_KINDS[0]]
    f.outcome_t = days[sel]
    # at least one slot: purchases without a reference index slot 0 (then masked), and a
    # shop whose purchases carry no order or deal id at all has no reference to size by
    n_refs = max(n_refs, 1)
    cancelled = np.zeros(n_refs, dtype=bool)
    cancelled[ref[(code == _CODE["order_cancelled"]) & (ref >= 0)]] = True
    refunds = (code == _CODE["refund_issued"]) & (ref >= 0) & ~np.isnan(values)
    refund = np.zeros(n_refs)
    np.add.at(refund, ref[refunds], -np.abs(values[refunds]))
    refunded_any = np.zeros(n_refs, dtype=bool)
    refunded_any[ref[refunds]] = True
    return cancelled, refund, refunded_any


def _purchases(f: Features, code: np.ndarray, pos: np.ndarray, ok: np.ndarray, days: np.ndarray,
               values: np.ndarray, ref: np.ndarray, cancelled: np.ndarray, refund: np.ndarray,
               refunded_any: np.ndarray) -> np.ndarray:
    """Purchase days per customer; returns which orders (reference codes) were undone
    (cancelled or refunded in full): their line items do not count either."""
    n = f.n
    rows = np.flatnonzero(np.isin(code, _codes(PURCHASE_KINDS)))
    r = ref[rows]
    keep = ok[rows].copy()
    known = r >= 0
    # the same order twice (say, imported and received): one purchase, the first one read
    first = np.zeros(len(rows), dtype=bool)
    if known.any():
        _, at = np.unique(r[known], return_index=True)
        first[np.flatnonzero(known)[at]] = True
    keep &= ~known | first
    undone = cancelled.copy()
    own = keep & known
    gone = own & cancelled[np.maximum(r, 0)]
    value = values[rows].copy()
    net = value + refund[np.maximum(r, 0)]
    part = own & ~gone & refunded_any[np.maximum(r, 0)] & ~np.isnan(value)
    in_full = part & (value > 0) & (net <= 0.005)  # refunded in full: the purchase was undone
    undone[r[in_full]] = True
    partly = part & ~in_full
    value[partly] = net[partly]
    keep &= ~gone & ~in_full
    f.orders_dropped = np.bincount(pos[rows[gone | in_full]], minlength=n).astype(float)
    f.orders_part_refunded = np.bincount(pos[rows[partly]], minlength=n).astype(float)
    sel = rows[keep]
    f.purchase_days = np.zeros(n)
    f.first_day = np.full(n, -1, dtype=np.int64)
    f.last_day = np.full(n, -1, dtype=np.int64)
    f.spend, f.spend_days = np.zeros(n), np.zeros(n)
    f.repeat_spend, f.repeat_spend_days = np.zeros(n), np.zeros(n)
    if not len(sel):
        return undone
    p_idx, p_day, p_val = pos[sel], np.floor(days[sel]).astype(np.int64), value[keep]
    order = np.lexsort((p_day, p_idx))
    p_idx, p_day, p_val = p_idx[order], p_day[order], p_val[order]
    new_day = np.ones(len(p_idx), dtype=bool)
    new_day[1:] = (p_idx[1:] != p_idx[:-1]) | (p_day[1:] != p_day[:-1])
    starts = np.flatnonzero(new_day)
    d_idx, d_day = p_idx[starts], p_day[starts]
    has_value = ~np.isnan(p_val)
    d_val = np.add.reduceat(np.where(has_value, p_val, 0.0), starts)
    d_known = np.add.reduceat(has_value.astype(np.int64), starts) > 0
    first_day = np.ones(len(d_idx), dtype=bool)
    first_day[1:] = d_idx[1:] != d_idx[:-1]
    last = np.ones(len(d_idx), dtype=bool)
    last[:-1] = d_idx[1:] != d_idx[:-1]
    f.purchase_days = np.bincount(d_idx, minlength=n).astype(float)
    f.first_day[d_idx[first_day]] = d_day[first_day]
    f.last_day[d_idx[last]] = d_day[last]
    f.spend = np.bincount(d_idx, weights=np.where(d_known, d_val, 0.0), minlength=n)
    f.spend_days = np.bincount(d_idx, weights=d_known.astype(float), minlength=n)
    rep = ~first_day & d_known
    f.repeat_spend = np.bincount(d_idx[rep], weights=d_val[rep], minlength=n)
    f.repeat_spend_days = np.bincount(d_idx[rep], minlength=n).astype(float)
    return undone


def _tickets(f: Features, code: np.ndarray, pos: np.ndarray, ok: np.ndarray, days: np.ndarray,
             ref: np.ndarray, by_customer: np.ndarray) -> None:
    """Group ticket touchpoints per customer and ticket (``source`` + ``ticket_id``; a
    touchpoint without a ticket id is a ticket of its own)."""
    rows = np.flatnonzero(ok & np.isin(code, _codes(TICKET_KINDS)))
    tk = _first_seen(pos[rows] * (int(ref.max(initial=0)) + 2) + ref[rows] + 1) if len(rows) else rows
    m = int(tk.max()) + 1 if len(tk) else 0
    c, t = code[rows], days[rows]

    def latest(kind_codes: list[int], fn: Any, fill: float) -> np.ndarray:
        out = np.full(m, fill)
        sel = np.isin(c, kind_codes)
        fn.at(out, tk[sel], t[sel])
        return out

    opened = latest([_CODE["ticket_opened"]], np.fmin, np.nan)
    solved = latest([_CODE["ticket_solved"]], np.fmax, np.nan)
    last_open = latest([_CODE["ticket_opened"], _CODE["ticket_reopened"]], np.fmax, np.nan)
    last_reopen = latest([_CODE["ticket_reopened"]], np.fmax, np.nan)
    reopens = np.bincount(tk[c == _CODE["ticket_reopened"]], minlength=m).astype(float)
    contacts = np.bincount(tk[(c == _CODE["ticket_commented"]) & by_customer[rows]],
                           minlength=m).astype(float)
    owner = np.zeros(m, dtype=np.int64)
    owner[tk] = pos[rows]
    real = ~(np.isnan(opened) & np.isnan(solved))  # comments alone are not a ticket
    f.ticket_idx = owner[real]
    f.ticket_opened, f.ticket_solved = opened[real], solved[real]
    f.ticket_last_open, f.ticket_last_reopen = last_open[real], last_reopen[real]
    f.ticket_reopens, f.ticket_contacts = reopens[real], contacts[real]


def _ratings(f: Features, code: np.ndarray, pos: np.ndarray, ok: np.ndarray, days: np.ndarray,
             score: np.ndarray, scale: np.ndarray) -> None:
    sel = ok & np.isin(code, _codes(RATING_KINDS)) & ~np.isnan(score) & (np.nan_to_num(scale) > 0)
    f.rating_idx = pos[sel]
    f.rating_kind = code[sel] - _CODE[RATING_KINDS[0]]
    f.rating_t = days[sel]
    f.rating_score, f.rating_max = score[sel], scale[sel]
    f.rating_share = np.clip(f.rating_score / f.rating_max, 0.0, 1.0)


def _items(conn: Connection, f: Features, code: np.ndarray, pos: np.ndarray, ok: np.ndarray,
           ref: np.ndarray, undone: np.ndarray, items: np.ndarray, sources: np.ndarray, by: str) -> None:
    """Distinct (customer, item) pairs of purchases that were not undone (cancelled or
    refunded in full).

    By category, a line item without one takes its product's category from the
    catalogue (``products`` table); line items without any category are left out.
    By product, the item is the product id (else the SKU) within its source.
    """
    rows = np.flatnonzero(ok & np.isin(code, _codes(PURCHASE_KINDS)))
    r = ref[rows]
    rows = rows[(r < 0) | ~undone[np.maximum(r, 0)]]
    texts = items[rows].tolist()
    has = [bool(t) for t in texts]
    rows = rows[np.asarray(has, dtype=bool)] if len(rows) else rows
    texts = [t for t, h in zip(texts, has, strict=True) if h]
    counts = np.fromiter((t.count("\x1f") + 1 for t in texts), dtype=np.int64, count=len(texts))
    joined = "\x1f".join(texts)
    flat = joined.split("\x1f") if texts else []
    owners = np.repeat(pos[rows], counts)
    row_of = np.repeat(rows, counts)
    catalogue: dict[tuple[str, str], tuple[str | None, str | None]] | None = None
    codes: dict[str, int] = {}
    labels: list[str] = []
    memo: dict[tuple[Any, str], int] = {}

    def item_code(source: Any, item: str) -> int:
        nonlocal catalogue
        if by == "category":
            if item.startswith("\x1e"):  # no category on the line item: ask the catalogue
                if catalogue is None:
                    catalogue = _catalogue(conn)
                item = catalogue.get((source, item[1:]), (None, None))[0] or ""
            if not item:
                return -1
            key = label = item
        else:
            ident, _, title = item.partition("\x1e")
            if not ident:
                return -1
            key = f"{source}:{ident}"
            if not title:
                if catalogue is None:
                    catalogue = _catalogue(conn)
                title = catalogue.get((source, ident), (None, None))[1] or ident
            label = title
        c = codes.get(key)
        if c is None:
            c = codes[key] = len(labels)
            labels.append(label)
        return c

    # the source matters by product, and for line items that ask the catalogue
    if by == "product" or "\x1e" in joined:
        keys: list[Any] = list(zip(sources[row_of].tolist(), flat, strict=True))
    else:
        keys = [(None, item) for item in flat]
    out = np.asarray([memo[k] if k in memo else memo.setdefault(k, item_code(*k)) for k in keys],
                     dtype=np.int64)
    valid = out >= 0
    if valid.any():
        width = len(labels) + 1
        pair = np.unique(owners[valid] * width + out[valid])
        f.item_idx, f.item_code = pair // width, pair % width
    f.item_keys = list(codes)
    f.item_labels = labels


def _catalogue(conn: Connection) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    return {(s, p): (c, t) for s, p, c, t in conn.execute(
        select(products.c.source, products.c.product_id, products.c.category, products.c.title))}
