"""Scoring runs: which customers, which models, what is stored, what is queued.

A run is *incremental* (only customers whose touchpoints changed since they were
last scored: ``changed_at > scored_at``) or *full* (every customer that is not
merged into another). A full pass refits the population models (BG/NBD,
Gamma-Gamma, co-occurrence) and stores them in ``population_models``; incremental
runs reuse the latest ones. The scheduled job decides by itself (:func:`mode_for`):
a full pass when there are no models yet, when the scoring settings they were
fitted with changed, when ``--full`` is asked for, and once a day: the first run at
or after ``schedule.full_score_at`` (UTC) whose last full pass is older than that
time, which is also "whenever the last full pass is more than 24 hours old". The
daily pass exists because scores decay with time even when nothing happens.

What a run stores, once: the ``score_contexts`` row its explanations name (model
parameters and settings, see :mod:`cx_connector.scoring.explain`); per customer, in
transactions of :data:`WRITE_CHUNK` customers (so webhooks are never blocked for long):
the latest values and their explanation (``scores``), a ``score_snapshots`` row when a
value other than ``cx_scored_at`` changed, the changed values in the outbox
(:func:`cx_connector.outbox.enqueue_many`, for customers whose values changed or who
were marked changed), and ``customers.scored_at``; a full pass stores its models last, once
every customer's scores are stored, so a pass that stopped half-way (a deploy, a database
error) leaves the previous models, and the next run is a full pass again rather than an
incremental one that would leave the rest scored under the old models or settings.
``scored_at`` is set to the ``changed_at`` the run read
before it read the touchpoints: a touchpoint committed while the run worked moves
``changed_at`` past it, so that customer stays due for the next run.

``as_of`` (``cx-connector score --as-of DATE``) scores as of the end of that day
(touchpoints after it are ignored, models are fitted on the data up to it; today:
as of now) and stores nothing: historical scores must never reach a CRM or
overwrite today's. Only customers with a touchpoint by then are scored; a day in
the future is refused (:class:`ValueError`), as there is nothing to score it on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import compress
from typing import Any

import numpy as np
from sqlalchemy import Connection, select

from cx_connector import db, outbox
from cx_connector.fields import FIELDS, SCORE_FIELDS
from cx_connector.models import job_runs, population_models
from cx_connector.runtime import Runtime
from cx_connector.scoring import cross_sell, cx_score, explain, features, retention, store
from cx_connector.scoring.cross_sell import CrossSellModel
from cx_connector.scoring.retention import PopulationFit
from cx_connector.scoring.settings import ScoringSettings
from cx_connector.touchpoint import STAGES

log = logging.getLogger(__name__)

#: the lease every scoring run holds (scheduler and CLI alike)
LEASE = "job:score"
#: customers per write transaction
WRITE_CHUNK = 5000
MODEL_KINDS = ("bgnbd", "gamma_gamma", "cooccurrence")
#: population models kept per kind (older ones are deleted after a full pass)
KEEP_MODELS = 30


@dataclass(frozen=True)
class Models:
    population: PopulationFit
    cross_sell: CrossSellModel
    fitted_at: datetime
    #: the settings they were fitted with (a change forces a full pass)
    settings: dict[str, Any]


def model_settings(s: ScoringSettings) -> dict[str, Any]:
    """The settings the stored scores depend on, as stored with the models (JSON).

    Every ``scoring`` setting but the KPI window: not only the models' own (a threshold,
    weight, half-life or the horizon changes scores too), so that a change is a full pass
    and no database mixes customers scored under the old rules with customers scored
    under the new ones until the next daily pass."""
    settings = asdict(s)
    del settings["kpi_window_days"]  # the KPIs' own: no score depends on it
    return json.loads(json.dumps(settings))


def settings_changed(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The top-level ``scoring`` keys whose values differ (an older version stored fewer
    keys: one it did not store counts as changed)."""
    return sorted(k for k in stored.keys() | now.keys() if stored.get(k) != now.get(k))


def load_models(conn: Connection) -> Models | None:
    """The latest full pass's models, or None before the first full pass."""
    latest: dict[str, Any] = {}
    for kind in MODEL_KINDS:
        row = conn.execute(select(population_models.c.fitted_at, population_models.c.params)
                           .where(population_models.c.kind == kind)
                           .order_by(population_models.c.fitted_at.desc(), population_models.c.id.desc())
                           .limit(1)).first()
        if row is None:
            return None
        latest[kind] = row
    fitted = {row.fitted_at for row in latest.values()}
    if len(fitted) != 1:  # never stored together: treat as missing
        return None
    b, g, c = (latest[k].params for k in MODEL_KINDS)
    pop = PopulationFit(
        bgnbd=retention.BGNBDParams.from_json(b["params"]) if b.get("params") else None,
        bgnbd_error=b.get("error"),
        gamma_gamma=retention.GammaGammaParams.from_json(g["params"]) if g.get("params") else None,
        gamma_gamma_error=g.get("error"))
    return Models(population=pop, cross_sell=CrossSellModel.from_json(c["model"]),
                  fitted_at=fitted.pop(), settings=c.get("settings") or {})


def store_models(conn: Connection, models: Models, as_of: datetime) -> None:
    pop = models.population
    rows = [
        ("bgnbd", {"params": pop.bgnbd.to_json() if pop.bgnbd else None, "error": pop.bgnbd_error}),
        ("gamma_gamma", {"params": pop.gamma_gamma.to_json() if pop.gamma_gamma else None,
                         "error": pop.gamma_gamma_error}),
        ("cooccurrence", {"model": models.cross_sell.to_json(), "settings": models.settings}),
    ]
    for kind, params in rows:
        conn.execute(population_models.insert().values(
            kind=kind, fitted_at=models.fitted_at, params={**params, "as_of": as_of.isoformat()}))
        old = conn.execute(select(population_models.c.id).where(population_models.c.kind == kind)
                           .order_by(population_models.c.fitted_at.desc(), population_models.c.id.desc())
                           .offset(KEEP_MODELS)).scalars().all()
        if old:
            conn.execute(population_models.delete().where(population_models.c.id.in_(old)))


def last_backfill(conn: Connection) -> datetime | None:
    """When the newest backfill that asked for a full pass finished (see cx_connector.backfill)."""
    rows = conn.execute(select(job_runs.c.finished_at, job_runs.c.details)
                        .where(job_runs.c.job == "backfill", job_runs.c.status == "ok")
                        .order_by(job_runs.c.id.desc()).limit(20)).all()
    return next((r.finished_at for r in rows if (r.details or {}).get("full_score_pass")), None)


def last_full_pass(models: Models | None) -> datetime | None:
    return models.fitted_at if models else None


def full_pass_due(last_full: datetime | None, now: datetime, at: str) -> bool:
    """True when no full pass happened since the latest ``HH:MM`` (UTC) at or before ``now``."""
    if last_full is None:
        return True
    hour, minute = (int(p) for p in at.split(":"))
    slot = now.astimezone(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)
    if slot > now:
        slot -= timedelta(days=1)
    return last_full < slot


def mode_for(models: Models | None, s: ScoringSettings, now: datetime, full_score_at: str,
             force_full: bool, backfilled_at: datetime | None = None) -> tuple[str, str]:
    """``("full" | "incremental", why)``.

    ``backfilled_at``: when the latest backfill that imported history finished; the
    models fitted before it have not seen that history, so the next run is a full pass.
    """
    if force_full:
        return "full", "asked for"
    if models is None:
        return "full", "no population model yet"
    if backfilled_at is not None and backfilled_at >= models.fitted_at:
        return "full", "a backfill imported history since the models were fitted"
    changed = settings_changed(models.settings, model_settings(s))
    if changed:
        return "full", ("scoring settings changed since the models were fitted: "
                        + ", ".join(f"scoring.{k}" for k in changed))
    if full_pass_due(models.fitted_at, now, full_score_at):
        return "full", f"daily full pass (due at {full_score_at} UTC)"
    return "incremental", "models fitted at " + models.fitted_at.isoformat()


# --- values ---------------------------------------------------------------------------------


def _number(name: str, values: np.ndarray) -> list:
    """Canonical numbers of a field (see :func:`cx_connector.fields.canonical`), vectorised:
    rounded to the field's decimals and clipped to its range; NaN becomes None."""
    field = FIELDS[name]
    v = np.round(values, field.decimals)
    if field.minimum is not None:
        v = np.maximum(v, field.minimum)
    if field.maximum is not None:
        v = np.minimum(v, field.maximum)
    nan = np.isnan(v)
    v = np.where(nan, 0.0, v) + 0.0  # + 0.0: no negative zero
    out = v.astype(np.int64).tolist() if field.decimals == 0 else v.tolist()
    for i in np.flatnonzero(nan).tolist():
        out[i] = None
    return out


@dataclass
class Result:
    """One run's scores: columns of canonical values, and what explains them."""

    f: features.Features
    models: Models
    columns: dict[str, list]
    retention: retention.Retention
    recommendations: cross_sell.Recommendations
    cx: cx_score.CX
    #: the run's context (model parameters, settings: see explain.context) and when it was scored
    context: dict[str, Any]
    scored_at: datetime

    @property
    def ids(self) -> np.ndarray:
        return self.f.ids

    def values(self, rows: range) -> list[dict[str, Any]]:
        names = [fld.name for fld in SCORE_FIELDS]
        cols = [self.columns[k][rows.start:rows.stop] for k in names]
        return [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)]

    def values_json(self, rows: range) -> list[str]:
        """:meth:`values` as JSON text, built column by column (``json.dumps`` of 100,000
        small dicts costs more than scoring them)."""
        return self.texts(rows)[0]

    def texts(self, rows: range) -> tuple[list[str], list[str]]:
        """:meth:`values` as JSON text (:func:`db.json_dumps`), with and without the
        ``None`` values (the first write of a platform record holds the latter),
        built column by column: each distinct value of a field is serialised once."""
        n = rows.stop - rows.start
        last = len(SCORE_FIELDS) - 1
        # Each field's tokens carry their separator: "k":v, for every field but the last,
        # which closes the object ("k":v}); a None value's token in the text without
        # them is empty. Joining a row's tokens is then one str.join per row, run by map
        # in C, with the opening brace as the first token.
        full_cols: list[list[str]] = [["{"] * n]
        set_cols: list[list[str]] = [["{"] * n]
        for f, fld in enumerate(SCORE_FIELDS):
            column = self.columns[fld.name][rows.start:rows.stop]
            key = db.json_dumps(fld.name)
            end = "}" if f == last else ","
            if len(set(map(type, column)) - {type(None)}) > 1:  # 1 == 1.0 == True: not one
                # key of a dict (scoring's columns have one type each; this is a guard)
                typed: dict[tuple[type, Any], str] = {}
                for v in column:
                    if (type(v), v) not in typed:
                        typed[(type(v), v)] = f"{key}:{db.json_dumps(v)}{end}"
                full_cols.append([typed[(type(v), v)] for v in column])
                set_cols.append([(end if f == last else "") if v is None else typed[(type(v), v)]
                                 for v in column])
                continue
            memo = {v: f"{key}:{db.json_dumps(v)}{end}" for v in set(column)}
            full_cols.append(list(map(memo.__getitem__, column)))
            if None in memo:
                memo[None] = end if f == last else ""
            set_cols.append(list(map(memo.__getitem__, column)))
        full = list(map("".join, zip(*full_cols, strict=True)))
        set_only = list(map("".join, zip(*set_cols, strict=True)))
        if None in self.columns[SCORE_FIELDS[last].name][rows.start:rows.stop]:
            # without the last field, the object closes after the separator of the one before
            set_only = [t[:-2] + "}" if t.endswith(",}") else t for t in set_only]
        return full, set_only

    def explanations(self, rows: range, context_id: int | None = None) -> list[str]:
        """The explanations of ``rows`` as JSON text (what is stored: they name the
        ``score_contexts`` row ``context_id``)."""
        return explain.build(self.f, self.retention, self.recommendations, self.models.cross_sell,
                             self.cx, self.scored_at, context_id, rows)

    def explanation(self, i: int) -> dict[str, Any]:
        """Customer ``i``'s whole explanation (context included)."""
        return explain.expand(json.loads(self.explanations(range(i, i + 1))[0]), self.context)

    def distribution(self) -> dict[str, dict[str, int]]:
        """How many customers got each health / churn risk / NPS category / journey stage."""
        out = {}
        for name in ("cx_health", "cx_churn_risk", "cx_nps_category", "cx_journey_stage"):
            counts: dict[str, int] = {}
            for v in self.columns[name]:
                key = "none" if v is None else v
                counts[key] = counts.get(key, 0) + 1
            out[name] = counts
        return out


def compute(f: features.Features, models: Models, s: ScoringSettings, scored_at: datetime) -> Result:
    """Every score of every customer in ``f`` (pure: no I/O)."""
    ret = retention.score(f, models.population, s)
    churn = retention.churn_risk(ret.probability, s)
    rec = cross_sell.recommend(models.cross_sell, f)
    cx = cx_score.score(f, s)
    health = cx_score.health(cx.score, churn, s)
    labels = np.asarray((*models.cross_sell.labels, None), dtype=object)
    has_retention = ~np.isnan(ret.probability)
    next_best = np.where(has_retention, labels[rec.item], None)
    cross = np.where(has_retention & (rec.item >= 0), 100.0 * ret.probability * np.nan_to_num(rec.strength),
                     np.nan)
    if models.cross_sell.customers < s.min_purchasers:  # associations of a handful of buyers are noise
        cross[:] = np.nan
    nps_cat = cx_score.nps_category(cx.nps_last)
    with np.errstate(invalid="ignore", divide="ignore"):
        csat = np.where(cx.csat_total > 0, 100.0 * cx.csat_satisfied / np.maximum(cx.csat_total, 1), np.nan)
    stages = np.asarray((*STAGES, None), dtype=object)[np.where(f.stage >= 0, f.stage, len(STAGES))]
    stamp = scored_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    columns = {
        "cx_score": _number("cx_score", cx.score),
        "cx_health": health.tolist(),
        "cx_retention_probability": _number("cx_retention_probability", 100.0 * ret.probability),
        "cx_churn_risk": churn.tolist(),
        "cx_expected_purchases_90d": _number("cx_expected_purchases_90d", ret.expected),
        "cx_clv_90d": _number("cx_clv_90d", ret.clv),
        "cx_cross_sell_score": _number("cx_cross_sell_score", cross),
        "cx_next_best_product": [None if v is None else str(v)[:255] for v in next_best.tolist()],
        "cx_nps_last": _number("cx_nps_last", cx.nps_last),
        "cx_nps_category": nps_cat.tolist(),
        "cx_csat": _number("cx_csat", csat),
        "cx_journey_stage": stages.tolist(),
        "cx_scored_at": [stamp] * f.n,
    }
    context = explain.context(models.population, models.cross_sell, models.fitted_at, s)
    return Result(f=f, models=models, columns=columns, retention=ret, recommendations=rec, cx=cx,
                  context=context, scored_at=scored_at)


# --- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The customers a run scores, by ascending id: each one's ``changed_at`` as read
    (the watermark, as the database stores it: it is written back unchanged) and
    whether it was marked changed since it was last scored."""

    ids: list[int]
    changed_at: list[Any]
    dirty: list[bool]


def _select_customers(conn: Connection, mode: str, as_of: datetime | None = None) -> Selection:
    """Read through the DBAPI cursor: a full pass selects every customer, and row
    objects with time-zone conversion would cost a second per 100,000. ``as_of``:
    only customers with a touchpoint by then (a report of the past)."""
    dirty = "changed_at IS NOT NULL AND (scored_at IS NULL OR changed_at > scored_at)"
    where = ["merged_into_id IS NULL"]
    if mode == "incremental":
        where.append(dirty)
    params: dict[str, Any] = {}
    if as_of is not None:
        placeholder, params["as_of"] = features.Dialect(conn).param(as_of)
        where.append("EXISTS (SELECT 1 FROM touchpoints t WHERE t.customer_id = customers.id "
                     f"AND t.occurred_at <= {placeholder})")
    sql = (f"SELECT id, changed_at, CASE WHEN {dirty} THEN 1 ELSE 0 END FROM customers "
           f"WHERE {' AND '.join(where)} ORDER BY id")
    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.execute(sql, params)
        rows = cur.fetchall()
    finally:
        cur.close()
    if not rows:
        return Selection([], [], [])
    ids, changed, flags = zip(*rows, strict=True)
    return Selection(list(ids), list(changed), [bool(f) for f in flags])


def end_of_day(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1, microseconds=-1)


def model_report(models: Models) -> dict[str, Any]:
    pop = models.population
    if pop.bgnbd is not None:
        b = pop.bgnbd
        bg: dict[str, Any] = {"used": "bgnbd", "r": b.r, "alpha": b.alpha, "a": b.a, "b": b.b,
                              "log_likelihood": b.log_likelihood, "customers": b.customers}
    else:
        bg = {"used": "recency fallback", "reason": pop.bgnbd_error}
    if pop.gamma_gamma is not None:
        g = pop.gamma_gamma
        gg: dict[str, Any] = {"used": "gamma_gamma", "p": g.p, "q": g.q, "gamma": g.gamma,
                              "log_likelihood": g.log_likelihood, "customers": g.customers,
                              "population_mean": g.population_mean}
    else:
        gg = {"used": "own mean fallback", "reason": pop.gamma_gamma_error}
    return {"fitted_at": models.fitted_at, "bgnbd": bg, "gamma_gamma": gg,
            "cross_sell": models.cross_sell.summary()}


def run(rt: Runtime, *, full: bool = False, as_of: date | None = None,
        show: Sequence[int] = ()) -> dict[str, Any]:
    """One scoring run (see the module docstring); returns its report.

    ``show``: customer ids whose values (and explanations) go into the report.
    """
    s = rt.config.scoring
    t0 = time.perf_counter()
    now = rt.now()
    if as_of is not None and as_of > now.astimezone(UTC).date():
        raise ValueError(f"--as-of {as_of.isoformat()} is in the future (today is "
                         f"{now.astimezone(UTC).date().isoformat()} UTC): scores can only be computed "
                         "from what has happened")
    when = min(end_of_day(as_of), now) if as_of else now
    timings: dict[str, float] = {}
    with db.read(rt.engine) as conn:
        models = None if as_of else load_models(conn)
        if as_of:
            mode, why = "full", f"as of {as_of.isoformat()} (report only: nothing stored)"
        else:
            mode, why = mode_for(models, s, now, rt.config.schedule.full_score_at, full,
                                 last_backfill(conn))
        selected = _select_customers(conn, mode, when if as_of else None)
        report: dict[str, Any] = {"mode": "as_of" if as_of else mode, "why": why, "as_of": when,
                                  "customers_scored": len(selected.ids)}
        if not selected.ids:
            report.update(duration_ms=int((time.perf_counter() - t0) * 1000), changed=0,
                          outbox_queued=0)
            if models is not None:
                report["models"] = model_report(models)
            return report
        f = features.load(conn, selected.ids, when, full=mode == "full", by=s.cross_sell.by,
                          positive_at=s.cx.rating_positive_at)
    timings["read_s"] = time.perf_counter() - t0
    if f.read_helper:  # half of the table was read by a helper process (see scoring.scan)
        report["read_helper"] = f.read_helper
    t1 = time.perf_counter()
    if mode == "full":
        # the last fit starts the new one, which then converges in a few steps
        pop = retention.fit_population(f, s, models.population if models else None)
        models = Models(population=pop, cross_sell=cross_sell.fit(f, s.cross_sell), fitted_at=now,
                        settings=model_settings(s))
    assert models is not None
    timings["fit_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    result = compute(f, models, s, when)
    timings["score_s"] = time.perf_counter() - t2
    report["models"] = model_report(models)
    report["distribution"] = result.distribution()
    if show:
        pos = {int(c): i for i, c in enumerate(result.ids.tolist())}
        report["customers"] = []
        for c in show:
            if c in pos:
                values = result.values(range(pos[c], pos[c] + 1))[0]
                report["customers"].append({"id": c, "scores": values, "explanation": explain.render(
                    result.explanation(pos[c]), values)})
    if as_of:
        report.update(changed=0, outbox_queued=0, stored=False)
    else:
        t3 = time.perf_counter()
        stored = write(rt, result, selected, now=now, full=mode == "full")
        report.update(stored)
        timings["write_s"] = time.perf_counter() - t3
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    report["duration_ms"] = int((time.perf_counter() - t0) * 1000)
    log.info("scoring run finished", extra={"mode": report["mode"], "customers": report["customers_scored"],
                                            "duration_ms": report["duration_ms"]})
    return report


def job(rt: Runtime) -> dict[str, Any]:
    """The scheduled ``score`` job: incremental, or the full pass when one is due."""
    return run(rt)


def _changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a value other than ``cx_scored_at`` differs from the stored one."""
    if old is None:
        return True
    return {**old, "cx_scored_at": new.get("cx_scored_at")} != new


def _pick(items: list, flags: list[bool]) -> list:
    """The items whose flag is set (the list itself when every flag is)."""
    return items if all(flags) else list(compress(items, flags))


def write(rt: Runtime, result: Result, selected: Selection, *, now: datetime,
          full: bool) -> dict[str, Any]:
    """Store one run's results (see the module docstring); returns counts for the report."""
    ids = result.ids.tolist()
    if ids != selected.ids:
        raise AssertionError("scored customers differ from the selected ones")
    changed_total = queued_total = skipped = 0
    with db.write(rt.engine) as conn:
        context_id = store.context_id(conn, result.context, now)
    for start in range(0, len(ids), WRITE_CHUNK):
        rows = range(start, min(start + WRITE_CHUNK, len(ids)))
        chunk_ids = ids[rows.start:rows.stop]
        values = result.values(rows)
        texts, set_texts = result.texts(rows)
        explanations = result.explanations(rows, context_id)
        with db.write(rt.engine) as conn:
            # a customer merged away while we were scoring gets nothing (its scores were deleted)
            alive = store.alive(conn, chunk_ids)
            before = store.previous_values(conn, chunk_ids)
            # flags per customer of the chunk, then the rows of each statement picked by them
            # (column-wise: a full pass writes 100,000 customers)
            live = [cid in alive for cid in chunk_ids]
            dirty = selected.dirty[rows.start:rows.stop]
            changed = [ok and (cid not in before or _changed(before[cid], v))
                       for ok, cid, v in zip(live, chunk_ids, values, strict=True)]
            queued = [c or (ok and d) for c, ok, d in zip(changed, live, dirty, strict=True)]
            marked = [ok and d for ok, d in zip(live, dirty, strict=True)]  # others' watermark is right
            skipped += live.count(False)
            store.upsert_scores(conn, now, _pick(chunk_ids, live), _pick(texts, live),
                                _pick(explanations, live))
            store.insert_snapshots(conn, now, _pick(chunk_ids, changed), _pick(texts, changed))
            if any(queued):
                queued_total += outbox.enqueue_many(
                    conn, rt.connectors, zip(_pick(chunk_ids, queued), _pick(values, queued), strict=True),
                    now=now, canonical_input=True, encoded=_pick(set_texts, queued))
            watermarks = selected.changed_at[rows.start:rows.stop]
            store.set_scored_at(conn, zip(_pick(chunk_ids, marked), _pick(watermarks, marked), strict=True))
            changed_total += changed.count(True)
    if full:  # last: a pass stopped before its end leaves the old models, so the next run is full again
        with db.write(rt.engine) as conn:
            store_models(conn, result.models, now)
    return {"changed": changed_total, "outbox_queued": queued_total, "merged_meanwhile": skipped,
            "stored": True}
