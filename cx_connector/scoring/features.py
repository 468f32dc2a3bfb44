"""Reading touchpoints into per-customer arrays: the only place scoring touches ``touchpoints``.

A full pass reads the table twice, each time in one sequential scan returning only
what the models need: (1) one GROUP BY for journey stage and last engagement,
(2) the touchpoints of purchases (with their line items), order outcomes, tickets
and ratings. Nothing is queried per customer. An incremental run asks the same
queries for a list of customers, through the ``(customer_id, occurred_at)`` index.

On SQLite a full pass names the table ``NOT INDEXED``: the planner would otherwise
walk the ``kind`` or ``customer_id`` index and fetch table rows in index order,
which on a table stored in arrival (time) order is several times slower than one
sequential scan (see BENCHMARKS.md). Rows are fetched through the DBAPI cursor of
the current transaction, without SQLAlchemy row objects, because the full pass
fetches a million of them.

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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, select

from cx_connector.models import products
from cx_connector.touchpoint import STAGES

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
#: rows fetched (and converted) at a time
FETCH = 50_000
_CODE = {k: i for i, k in enumerate(EVENT_KINDS)}


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)  # constants of this module, never user input


def _codes(kinds: Sequence[str]) -> list[int]:
    return [_CODE[k] for k in kinds]


class Dialect:
    """The few expressions that differ between SQLite and PostgreSQL."""

    def __init__(self, conn: Connection) -> None:
        self.sqlite = conn.dialect.name == "sqlite"

    def time(self, col: str = "occurred_at") -> str:
        """A timestamp as :meth:`days` can read it fast (SQLite: the stored text)."""
        return col if self.sqlite else f"(extract(epoch from {col}))::float8"

    def days(self, values: list) -> np.ndarray:
        """Days since 1970-01-01 (float) of values selected with :meth:`time`."""
        if not values:
            return np.zeros(0)
        if self.sqlite:
            stamps = np.array(values, dtype="datetime64[us]")
            missing = np.isnat(stamps)
            out = np.where(missing, 0, stamps.astype(np.int64)) / 86_400e6
            out[missing] = np.nan
            return out
        return np.array(values, dtype=float) / 86400.0

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

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def purchasers(self) -> np.ndarray:
        return self.purchase_days > 0


def epoch_days(when: datetime) -> float:
    return when.timestamp() / 86400.0


def _fetch(conn: Connection, d: Dialect, sql: str, as_of: datetime, ids: np.ndarray | None,
           types: str, column: str = "customer_id") -> list[Any]:
    """Run one extraction query on the transaction's DBAPI cursor and return its columns.

    Over everyone, or chunk by chunk over ``ids`` (``{ids}`` in ``sql`` marks where
    the filter goes; ``:as_of`` is the time bound). ``types`` has one letter per
    column: ``i`` integers, ``f`` floats (NULL: NaN), ``t`` times (as days, see
    :meth:`Dialect.days`), ``o`` Python objects. Rows are fetched in batches and
    numeric columns converted batch by batch, so a million rows never sit in memory
    as Python tuples.
    """
    placeholder, value = d.param(as_of)
    sql = sql.replace(":as_of", placeholder)
    parts: list[list[Any]] = [[] for _ in types]
    statements = [sql.replace("{ids}", "")] if ids is None else [
        sql.replace("{ids}", f"AND {column} IN ({', '.join(str(int(c)) for c in ids[i:i + CHUNK])})")
        for i in range(0, len(ids), CHUNK)]  # integers, from our own table
    cur = conn.connection.dbapi_connection.cursor()
    try:
        for statement in statements:
            cur.execute(statement, {"as_of": value})
            while batch := cur.fetchmany(FETCH):
                for k, (kind, col) in enumerate(zip(types, zip(*batch, strict=True), strict=True)):
                    if kind == "i":
                        parts[k].append(np.array(col, dtype=np.int64))
                    elif kind == "f":
                        parts[k].append(np.array(col, dtype=float))
                    elif kind == "t":
                        parts[k].append(d.days(list(col)))
                    else:
                        parts[k].append(list(col))
    finally:
        cur.close()
    out: list[Any] = []
    for kind, chunks in zip(types, parts, strict=True):
        if kind == "o":
            out.append([v for c in chunks for v in c])
        elif chunks:
            out.append(np.concatenate(chunks))
        else:
            out.append(np.zeros(0, dtype=np.int64 if kind == "i" else float))
    return out


def _locate(ids: np.ndarray, customer_ids: list) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``customer_ids`` in ``ids``, and which of them are there at all
    (a full pass also reads rows of customers it does not score, e.g. merged-away ones)."""
    c = np.asarray(customer_ids, dtype=np.int64)
    if not len(ids) or not len(c):
        return np.zeros(len(c), dtype=np.int64), np.zeros(len(c), dtype=bool)
    pos = np.minimum(np.searchsorted(ids, c), len(ids) - 1)
    return pos.astype(np.int64), ids[pos] == c


def load(conn: Connection, ids: Sequence[int] | np.ndarray, as_of: datetime, *, full: bool,
         by: str = "category") -> Features:
    """Every score's inputs for the customers ``ids``.

    ``full`` reads the whole table in sequential scans (use it when ``ids`` is most
    customers); otherwise only the touchpoints of ``ids`` are read, by index.
    Touchpoints after ``as_of`` are ignored. ``by``: cross-sell items are
    categories or products.
    """
    d = Dialect(conn)
    ids = np.unique(np.asarray(list(ids), dtype=np.int64))
    now_days = epoch_days(as_of)
    f = Features(ids=ids, as_of=as_of, now_days=now_days, today=math.floor(now_days))
    n = len(ids)
    subset = None if full else ids

    # -- journey stage and engagement -------------------------------------------------
    stage_case = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGES))
    stage_sql = f"""
        SELECT customer_id, count(*),
               max(CASE WHEN kind NOT IN ({_sql_list(NOT_ENGAGEMENT)}) THEN {d.time()} END),
               max(CASE stage {stage_case} ELSE -1 END)
        FROM {d.scan(full)}
        WHERE customer_id IS NOT NULL AND occurred_at <= :as_of {{ids}}
        GROUP BY customer_id"""
    cust, cnt, eng, stg = _fetch(conn, d, stage_sql, as_of, subset, "iiti")
    pos, ok = _locate(ids, cust)
    f.touchpoints = np.zeros(n)
    f.last_engaged = np.full(n, np.nan)
    f.stage = np.full(n, -1, dtype=np.int64)
    f.touchpoints[pos[ok]] = cnt[ok]
    f.last_engaged[pos[ok]] = eng[ok]
    f.stage[pos[ok]] = stg[ok]
    _events(conn, d, f, as_of, subset, by)
    return f


def _events(conn: Connection, d: Dialect, f: Features, as_of: datetime, subset: np.ndarray | None,
            by: str) -> None:
    """Purchases, order outcomes, tickets and ratings: one scan."""
    ids = f.ids
    kind_case = " ".join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(EVENT_KINDS))
    order_ref = f"source || ':' || {d.attr('order_id')}"
    # (a fulfilment needs no order reference: it counts as a good experience either way)
    ref = (f"CASE WHEN kind IN ('order_placed', 'order_cancelled', 'refund_issued') THEN {order_ref} "
           f"WHEN kind = 'deal_won' THEN source || ':' || {d.attr('deal_id')} "
           f"WHEN kind IN ({_sql_list(TICKET_KINDS)}) "
           f"THEN coalesce(source || ':' || {d.attr('ticket_id')}, 'touchpoint:' || id) END")
    # few columns, each doing double duty, because converting them is most of the cost:
    # kind code x 2 + "a customer wrote this comment"; the rating score or else the value
    by_customer = f"CASE WHEN kind = 'ticket_commented' AND {d.attr('author')} = 'customer' THEN 1 ELSE 0 END"
    rows = _fetch(conn, d, f"""
        SELECT customer_id, (CASE kind {kind_case} END) * 2 + {by_customer}, {d.time()},
               {d.number(f"CASE WHEN kind IN ({_sql_list(RATING_KINDS)}) THEN rating_score ELSE value END")},
               {d.number('rating_scale_max')}, {ref},
               CASE WHEN kind IN ({_sql_list(PURCHASE_KINDS)}) THEN {d.items(by)} END,
               CASE WHEN kind IN ({_sql_list(PURCHASE_KINDS)}) THEN source END
        FROM {d.scan(subset is None)}
        WHERE kind IN ({_sql_list(EVENT_KINDS)}) AND customer_id IS NOT NULL
          AND occurred_at <= :as_of {{ids}}""", as_of, subset, "iitffooo")
    cust, code2, days, values, scale, refs, items, sources = rows
    del rows
    code, author = code2 // 2, code2 % 2
    score = values
    pos, ok = _locate(ids, cust)
    cancelled, refunds = _outcomes(f, code, pos, ok, days, values, refs)
    undone = _purchases(f, code, pos, ok, days, values, refs, cancelled, refunds)
    _tickets(f, code, pos, ok, days, refs, author.astype(bool))
    _ratings(f, code, pos, ok, days, score, scale)
    _items(conn, f, code, pos, ok, refs, items, sources, undone, by)


def _outcomes(f: Features, code: np.ndarray, pos: np.ndarray, ok: np.ndarray, days: np.ndarray,
              values: np.ndarray, refs: list) -> tuple[set, dict]:
    """Order outcomes per customer; the cancelled orders and refund totals by order."""
    sel = ok & np.isin(code, _codes(ORDER_OUTCOME_KINDS))
    f.outcome_idx = pos[sel]
    f.outcome_kind = code[sel] - _CODE[ORDER_OUTCOME_KINDS[0]]
    f.outcome_t = days[sel]
    cancelled: set[str] = set()
    refunds: dict[str, float] = {}
    cancel, refund = _CODE["order_cancelled"], _CODE["refund_issued"]
    for i in np.flatnonzero(np.isin(code, [cancel, refund])).tolist():
        o = refs[i]
        if o is None:
            continue
        if code[i] == cancel:
            cancelled.add(o)
        elif not math.isnan(values[i]):
            refunds[o] = refunds.get(o, 0.0) - abs(values[i])
    return cancelled, refunds


def _purchases(f: Features, code: np.ndarray, pos: np.ndarray, ok: np.ndarray, days: np.ndarray,
               values: np.ndarray, refs: list, cancelled: set, refunds: dict) -> set[str]:
    """Purchase days per customer; returns the orders that were undone (cancelled or
    refunded in full), whose line items do not count either."""
    n = f.n
    undone = set(cancelled)
    rows = np.flatnonzero(np.isin(code, _codes(PURCHASE_KINDS)))
    keep = ok[rows].copy()
    values = values.copy()
    dropped = np.zeros(n)
    refunded = np.zeros(n)
    seen: set[str] = set()
    for j, i in enumerate(rows.tolist()):
        ref = refs[i]
        if ref is None:
            continue
        if ref in seen:  # the same order twice (say, imported and received): one purchase
            keep[j] = False
            continue
        seen.add(ref)
        if not keep[j]:
            continue
        if ref in cancelled:
            keep[j] = False
            dropped[pos[i]] += 1
            continue
        r = refunds.get(ref)
        if r is not None and not math.isnan(values[i]):
            net = values[i] + r
            if values[i] > 0 and net <= 0.005:  # refunded in full: the purchase was undone
                keep[j] = False
                dropped[pos[i]] += 1
                undone.add(ref)
            else:
                refunded[pos[i]] += 1
                values[i] = net
    sel = rows[keep]
    f.orders_dropped, f.orders_part_refunded = dropped, refunded
    f.purchase_days = np.zeros(n)
    f.first_day = np.full(n, -1, dtype=np.int64)
    f.last_day = np.full(n, -1, dtype=np.int64)
    f.spend, f.spend_days = np.zeros(n), np.zeros(n)
    f.repeat_spend, f.repeat_spend_days = np.zeros(n), np.zeros(n)
    if not len(sel):
        return undone
    p_idx, p_day, p_val = pos[sel], np.floor(days[sel]).astype(np.int64), values[sel]
    order = np.lexsort((p_day, p_idx))
    p_idx, p_day, p_val = p_idx[order], p_day[order], p_val[order]
    new_day = np.ones(len(p_idx), dtype=bool)
    new_day[1:] = (p_idx[1:] != p_idx[:-1]) | (p_day[1:] != p_day[:-1])
    starts = np.flatnonzero(new_day)
    d_idx, d_day = p_idx[starts], p_day[starts]
    known = ~np.isnan(p_val)
    d_val = np.add.reduceat(np.where(known, p_val, 0.0), starts)
    d_known = np.add.reduceat(known.astype(np.int64), starts) > 0
    first = np.ones(len(d_idx), dtype=bool)
    first[1:] = d_idx[1:] != d_idx[:-1]
    last = np.ones(len(d_idx), dtype=bool)
    last[:-1] = d_idx[1:] != d_idx[:-1]
    f.purchase_days = np.bincount(d_idx, minlength=n).astype(float)
    f.first_day[d_idx[first]] = d_day[first]
    f.last_day[d_idx[last]] = d_day[last]
    f.spend = np.bincount(d_idx, weights=np.where(d_known, d_val, 0.0), minlength=n)
    f.spend_days = np.bincount(d_idx, weights=d_known.astype(float), minlength=n)
    rep = ~first & d_known
    f.repeat_spend = np.bincount(d_idx[rep], weights=d_val[rep], minlength=n)
    f.repeat_spend_days = np.bincount(d_idx[rep], minlength=n).astype(float)
    return undone


def _tickets(f: Features, code: np.ndarray, pos: np.ndarray, ok: np.ndarray, days: np.ndarray,
             refs: list, by_customer: np.ndarray) -> None:
    """Group ticket touchpoints per customer and ticket (``source`` + ``ticket_id``; a
    touchpoint without a ticket id is a ticket of its own)."""
    rows = np.flatnonzero(ok & np.isin(code, _codes(TICKET_KINDS)))
    keys: dict[tuple, int] = {}
    owners = pos.tolist()
    tk = np.array([keys.setdefault((owners[i], refs[i]), len(keys)) for i in rows.tolist()],
                  dtype=np.int64)
    m = len(keys)
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
           refs: list, items: list, sources: list, undone: set, by: str) -> None:
    """Distinct (customer, item) pairs of purchases that were not undone (cancelled or
    refunded in full).

    By category, a line item without one takes its product's category from the
    catalogue (``products`` table); line items without any category are left out.
    By product, the item is the product id (else the SKU) within its source.
    """
    rows = np.flatnonzero(ok & np.isin(code, _codes(PURCHASE_KINDS))).tolist()
    positions = pos.tolist()
    catalogue: dict[tuple[str, str], tuple[str | None, str | None]] | None = None
    codes: dict[str, int] = {}
    labels: list[str] = []
    idx_out: list[int] = []
    code_out: list[int] = []
    for i in rows:
        text_ = items[i]
        if not text_ or (refs[i] is not None and refs[i] in undone):
            continue
        for item in text_.split("\x1f"):
            if by == "category":
                if item.startswith("\x1e"):  # no category on the line item: ask the catalogue
                    if catalogue is None:
                        catalogue = _catalogue(conn)
                    item = catalogue.get((sources[i], item[1:]), (None, None))[0] or ""
                if not item:
                    continue
                key = label = item
            else:
                ident, _, title = item.partition("\x1e")
                if not ident:
                    continue
                key = f"{sources[i]}:{ident}"
                if not title:
                    if catalogue is None:
                        catalogue = _catalogue(conn)
                    title = catalogue.get((sources[i], ident), (None, None))[1] or ident
                label = title
            c = codes.get(key)
            if c is None:
                c = codes[key] = len(labels)
                labels.append(label)
            idx_out.append(positions[i])
            code_out.append(c)
    if idx_out:
        width = len(labels) + 1
        pair = np.unique(np.asarray(idx_out, dtype=np.int64) * width + np.asarray(code_out, dtype=np.int64))
        f.item_idx, f.item_code = pair // width, pair % width
    f.item_keys = list(codes)
    f.item_labels = labels


def _catalogue(conn: Connection) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    return {(s, p): (c, t) for s, p, c, t in conn.execute(
        select(products.c.source, products.c.product_id, products.c.category, products.c.title))}
