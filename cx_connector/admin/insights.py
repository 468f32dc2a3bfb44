"""What the overview page shows: KPI tiles with their trend, the journey funnel, the CX
score distribution, customer health and the customers at risk.

The tiles, the funnel, the distribution and the health split come from the KPI
snapshots (:mod:`cx_connector.scoring.kpis`: the ``kpis`` job stores one a day and
after every full scoring pass), so the page reads a few rows whatever the number of
customers; before the first snapshot they are computed from the scores (one
aggregate query). The customers at risk are live: one query for a page of them,
through the ``ix_scores_health`` index. Sections are cached per worker for
:data:`CACHE_SECONDS`, and recomputed at once when a scoring run or a KPI snapshot
has finished since (:func:`data_version`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import current_app
from sqlalchemy import Connection, func, select

from cx_connector import customers as people
from cx_connector.models import customers, job_runs, kpi_snapshots, scores
from cx_connector.touchpoint import STAGES

#: how long a computed page section is reused (scores only change with scoring runs)
CACHE_SECONDS = 60.0
#: a customer is of high value when their expected 90-day value is this many times the average
HIGH_VALUE_FACTOR = 2.0


# --- caching ---------------------------------------------------------------------------------


class Cache:
    """Computed sections per worker: reused for ``ttl`` seconds while the data version holds."""

    def __init__(self, ttl: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._items: dict[str, tuple[Any, float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, name: str, version: Any, compute: Callable[[], Any]) -> Any:
        now = self.clock()
        with self._lock:
            hit = self._items.get(name)
        if hit is not None and hit[0] == version and now - hit[1] < self.ttl:
            return hit[2]
        value = compute()
        with self._lock:
            self._items[name] = (version, now, value)
        return value


def cache() -> Cache:
    return current_app.extensions["cx_admin_cache"]


def data_version(conn: Connection) -> tuple[Any, ...]:
    """Changes whenever a scoring run or a KPI snapshot starts or finishes: the latest run of
    each job (id and status) and the latest snapshot; a few index lookups."""
    runs = tuple(tuple(conn.execute(select(job_runs.c.id, job_runs.c.status).where(job_runs.c.job == job)
                                    .order_by(job_runs.c.started_at.desc(), job_runs.c.id.desc())
                                    .limit(1)).first() or ())
                 for job in ("score", "kpis"))
    latest = conn.execute(select(kpi_snapshots.c.day, kpi_snapshots.c.computed_at)
                          .order_by(kpi_snapshots.c.day.desc()).limit(1)).first()
    return (*runs, tuple(latest or ()))


# --- KPI tiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileSpec:
    key: str
    label: str
    unit: str = ""
    #: True: up is good; False: down is good
    higher_is_better: bool = True
    decimals: int = 1
    #: the KPI that tells how much data is behind the figure, and its words
    basis: tuple[str, str] | None = None


TILES: tuple[TileSpec, ...] = (
    TileSpec("nps", "NPS", "", basis=("nps_answers", "answers")),
    TileSpec("csat", "CSAT", "%", basis=("csat_ratings", "ratings")),
    TileSpec("retention_rate", "Retention rate", "%",
             basis=("retention_base", "customers who bought before")),
    TileSpec("churn_rate", "Churn rate", "%", higher_is_better=False),
    TileSpec("cross_sell_rate", "Cross-sell rate", "%"),
    TileSpec("avg_cx_score", "Average CX score", "", basis=("scored_customers", "scored customers")),
    TileSpec("revenue", "Revenue", "", decimals=0),
)


@dataclass
class Tile:
    spec: TileSpec
    value: float | None
    previous: float | None
    #: (day, value), oldest first
    history: list[tuple[str, float | None]] = field(default_factory=list)
    note: str = ""

    @property
    def change(self) -> float | None:
        if self.value is None or self.previous is None:
            return None
        return round(self.value - self.previous, self.spec.decimals)

    @property
    def shown(self) -> str:
        """The value as the tile shows it: thousands separated, decimals only when there are some."""
        if self.value is None:
            return "\u2014"
        value = float(self.value)
        decimals = 0 if value.is_integer() else self.spec.decimals
        return f"{value:,.{decimals}f}"

    @property
    def trend(self) -> str:
        """``good``, ``bad`` or ``flat`` (for the arrow's colour)."""
        change = self.change
        if not change:
            return "flat"
        return "good" if (change > 0) == self.spec.higher_is_better else "bad"


def tiles(conn: Connection, days: int = 30) -> tuple[list[Tile], dict[str, Any] | None]:
    """The KPI tiles from the latest ``days`` daily snapshots; and the latest snapshot."""
    from cx_connector.scoring import kpis  # numpy: loaded only where KPIs are shown

    history = list(reversed(kpis.history(conn, days)))
    latest = history[-1] if history else None
    out = []
    for spec in TILES:
        points = [(h["day"], h.get(spec.key)) for h in history]
        value = latest.get(spec.key) if latest else None
        previous = history[-2].get(spec.key) if len(history) > 1 else None
        note = ""
        if latest and spec.basis and latest.get(spec.basis[0]) is not None:
            note = f"{latest[spec.basis[0]]:,} {spec.basis[1]}"
        if latest and spec.key == "revenue":
            currencies = latest.get("currencies") or []
            note = f"last {latest.get('window_days')} days"
            if currencies:
                note += ", " + ", ".join(currencies)
        out.append(Tile(spec, value, previous, points, note))
    return out, latest


# --- the scores at a glance ----------------------------------------------------------------------


@dataclass
class ScoreSummary:
    scored: int = 0
    #: customers per journey stage (furthest reached), in journey order
    per_stage: dict[str, int] = field(default_factory=dict)
    per_health: dict[str, int] = field(default_factory=dict)
    #: customers per CX-score band: 0-9, 10-19, ..., 90-100
    histogram: list[int] = field(default_factory=lambda: [0] * 10)
    mean_cx: float | None = None
    mean_value: float | None = None
    customers: int = 0
    #: the snapshot day the figures are from (None: computed from the scores now)
    day: str | None = None

    @property
    def no_stage(self) -> int:
        return self.scored - sum(self.per_stage.values())

    @property
    def no_cx(self) -> int:
        return self.scored - sum(self.histogram)

    @property
    def funnel(self) -> list[tuple[str, int, int, float | None]]:
        """(stage, customers who reached it or further, customers there now, % of those who
        reached the stage before that got this far)."""
        out = []
        reached_before = None
        for i, stage in enumerate(STAGES):
            reached = sum(self.per_stage.get(s, 0) for s in STAGES[i:])
            rate = round(100.0 * reached / reached_before, 1) if reached_before else None
            out.append((stage, reached, self.per_stage.get(stage, 0), rate))
            reached_before = reached
        return out

    @property
    def high_value_at(self) -> float | None:
        return round(self.mean_value * HIGH_VALUE_FACTOR, 2) if self.mean_value else None


def summary_of(snapshot: dict[str, Any]) -> ScoreSummary | None:
    """The scores part of a KPI snapshot (None for snapshots from before these figures)."""
    if "cx_histogram" not in snapshot:
        return None
    return ScoreSummary(scored=snapshot.get("scored_customers") or 0,
                        per_stage=dict(snapshot.get("customers_per_stage") or {}),
                        per_health=dict(snapshot.get("customers_per_health") or {}),
                        histogram=list(snapshot["cx_histogram"]), mean_cx=snapshot.get("avg_cx_score"),
                        mean_value=snapshot.get("avg_clv_90d"), customers=snapshot.get("customers") or 0,
                        day=snapshot.get("day"))


def score_summary(conn: Connection) -> ScoreSummary:
    """The same figures from the scores, now (before the first snapshot)."""
    from cx_connector.scoring import kpis  # numpy: loaded only where KPIs are shown

    return summary_of({**kpis.from_scores(conn), "day": None})  # type: ignore[return-value]


def at_risk(conn: Connection, limit: int = 12) -> list[int]:
    """Ids of red customers (CX below ``health.red_below`` or churn risk high), the most
    recently active first (``customers.changed_at``: their newest touchpoint's arrival)."""
    h = people.health_of(conn)
    q = (select(customers.c.id).join(scores, scores.c.customer_id == customers.c.id)
         .where(h == "red", customers.c.merged_into_id.is_(None))
         .order_by(customers.c.changed_at.desc(), customers.c.id.desc()).limit(limit))
    return list(conn.execute(q).scalars())


def red_count(conn: Connection) -> int:
    """Customers red now (an index-only count on ``ix_scores_health``)."""
    return conn.execute(select(func.count()).select_from(scores)
                        .where(people.health_of(conn) == "red")).scalar_one()


@dataclass
class Overview:
    tiles: list[Tile]
    latest: dict[str, Any] | None
    summary: ScoreSummary
    at_risk: list[dict[str, Any]]
    red: int
    computed_at: datetime
    seconds: float


def overview(conn: Connection, now: datetime) -> Overview:
    t0 = time.perf_counter()
    kpi_tiles, latest = tiles(conn)
    summary = (summary_of(latest) if latest else None) or score_summary(conn)
    risky = people.summaries(conn, at_risk(conn))
    return Overview(kpi_tiles, latest, summary, risky, red_count(conn), now, time.perf_counter() - t0)


# --- pain points ----------------------------------------------------------------------------------


@dataclass
class PainPoints:
    """The latest snapshot's pain points (:mod:`cx_connector.scoring.painpoints`), by stage."""

    as_of: Any
    window_days: int
    customers: int
    mean_cx: float | None
    #: (stage, points lost in it, its experiences, costliest first), in journey order
    stages: list[tuple[str, float, list[dict[str, Any]]]]
    #: (stage, rows ranked by drag, most negative first), in journey order
    kinds: list[tuple[str, list[dict[str, Any]]]]
    channels: list[tuple[str, list[dict[str, Any]]]]
    min_customers: int

    @property
    def gap(self) -> float | None:
        return None if self.mean_cx is None else round(100.0 - self.mean_cx, 1)

    @property
    def costliest(self) -> list[dict[str, Any]]:
        rows = [r for _, _, items in self.stages for r in items]
        return sorted(rows, key=lambda r: -r["points"])


def _by_stage(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(stage, [r for r in rows if r["stage"] == stage]) for stage in STAGES
            if any(r["stage"] == stage for r in rows)]


def pain_points(conn: Connection) -> PainPoints | None:
    """From the latest KPI snapshot that has them (None before the first)."""
    row = conn.execute(select(kpi_snapshots.c.kpi_values).order_by(kpi_snapshots.c.day.desc())
                       .limit(1)).scalar()
    found = (row or {}).get("pain_points")
    if not found:
        return None
    lost = found["losses"]
    stages = []
    for stage, items in _by_stage([r for r in lost["experiences"] if r["customers"]]):
        items = sorted(items, key=lambda r: -r["points"])
        stages.append((stage, round(sum(r["points"] for r in items), 2), items))
    return PainPoints(as_of=row.get("as_of"), window_days=row.get("window_days") or 0,
                      customers=lost["customers"], mean_cx=lost["mean_cx"], stages=stages,
                      kinds=_by_stage(found["kinds"]), channels=_by_stage(found["channels"]),
                      min_customers=found.get("min_customers", 0))
