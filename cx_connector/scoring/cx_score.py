"""The CX score (0-100), following the CX pyramid: needs met, ease, enjoyment.

Every experience a customer had becomes an *event* of one pyramid layer with an
outcome: positive (1), neutral (0.5) or negative (0) (:data:`EVENTS`). A layer's
score is the weighted mean outcome of its events, times 100, where

* an event's weight halves every ``cx.half_life_days`` (default 180) of its age,
  so recent experiences count most;
* a negative event weighs ``cx.negative_weight`` (default 2) times as much: failing
  an expectation hurts about twice as much as exceeding one helps.

``cx_score`` is the mean of the layers' scores weighted by ``cx.weights``, over the
layers that have events: a layer without data is left out and the weights of the
others renormalised (no data is not a bad experience). No layer with data: no CX
score.

Needs met: orders fulfilled (+) versus cancelled or refunded (-); tickets solved
(+) versus still open after ``resolution_slow_hours`` (-).
Ease: resolution time (first opened to last solved) within
``resolution_target_hours`` (+), up to ``resolution_slow_hours`` (neutral), longer
or still waiting (-); each reopen (-); more than ``contacts_per_issue_max``
customer contacts on one ticket (-); CES answers.
Enjoyment: CSAT, NPS (promoter +, passive neutral, detractor -) and reviews with a
rating. Ratings are positive at ``rating_positive_at`` of their scale or above,
negative below ``rating_negative_below``, neutral in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cx_connector.scoring.features import RATING_KINDS, Features, nps_points
from cx_connector.scoring.settings import LAYERS, ScoringSettings

#: (event, layer, outcome)
EVENTS: tuple[tuple[str, str, float], ...] = (
    ("order_fulfilled", "needs_met", 1.0),
    ("order_cancelled", "needs_met", 0.0),
    ("refund_issued", "needs_met", 0.0),
    ("ticket_solved", "needs_met", 1.0),
    ("ticket_overdue", "needs_met", 0.0),
    ("resolved_fast", "ease", 1.0),
    ("resolved_ok", "ease", 0.5),
    ("resolved_slow", "ease", 0.0),
    ("still_waiting", "ease", 0.0),
    ("ticket_reopened", "ease", 0.0),
    ("many_contacts", "ease", 0.0),
    ("ces_positive", "ease", 1.0),
    ("ces_neutral", "ease", 0.5),
    ("ces_negative", "ease", 0.0),
    ("csat_positive", "enjoyment", 1.0),
    ("csat_neutral", "enjoyment", 0.5),
    ("csat_negative", "enjoyment", 0.0),
    ("nps_promoter", "enjoyment", 1.0),
    ("nps_passive", "enjoyment", 0.5),
    ("nps_detractor", "enjoyment", 0.0),
    ("review_positive", "enjoyment", 1.0),
    ("review_neutral", "enjoyment", 0.5),
    ("review_negative", "enjoyment", 0.0),
)
EVENT = {name: i for i, (name, _, _) in enumerate(EVENTS)}
_LAYER_OF = np.array([LAYERS.index(layer) for _, layer, _ in EVENTS], dtype=np.int64)
_OUTCOME = np.array([o for _, _, o in EVENTS])
_RATING_PREFIX = {"csat_rating": "csat", "ces_response": "ces", "review_posted": "review"}


@dataclass
class CX:
    """Per customer (arrays aligned with ``Features.ids``)."""

    #: 0-100 (NaN: no data)
    score: np.ndarray
    #: (n, 3): each layer's 0-100 score (NaN: no events) and its total event weight
    layer_score: np.ndarray
    layer_weight: np.ndarray
    #: (n, len(EVENTS)): how many events of each kind
    counts: np.ndarray
    nps_last: np.ndarray
    nps_at: np.ndarray
    #: the latest NPS answer as given (score, and its scale's maximum; NaN: no answer), for
    #: the explanation of an answer on another scale than 0-10
    nps_score: np.ndarray
    nps_scale: np.ndarray
    csat_total: np.ndarray
    csat_satisfied: np.ndarray


def nps_category(points: np.ndarray) -> np.ndarray:
    out = np.full(len(points), None, dtype=object)
    out[points <= 6] = "detractor"
    out[(points >= 7) & (points <= 8)] = "passive"
    out[points >= 9] = "promoter"
    return out


def events(f: Features, s: ScoringSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All experiences: customer position, event kind, time (days) and multiplicity."""
    c = s.cx
    idx: list[np.ndarray] = []
    kind: list[np.ndarray] = []
    when: list[np.ndarray] = []
    mult: list[np.ndarray] = []

    def add(sel_idx: np.ndarray, event: str | np.ndarray, t: np.ndarray, m: np.ndarray | None = None) -> None:
        idx.append(sel_idx)
        kind.append(np.full(len(sel_idx), EVENT[event], dtype=np.int64) if isinstance(event, str)
                    else event)
        when.append(t)
        mult.append(np.ones(len(sel_idx)) if m is None else m)

    # needs met: order outcomes
    for k, name in enumerate(("order_fulfilled", "order_cancelled", "refund_issued")):
        sel = f.outcome_kind == k
        add(f.outcome_idx[sel], name, f.outcome_t[sel])

    # tickets
    opened, solved, last_open = f.ticket_opened, f.ticket_solved, f.ticket_last_open
    is_solved = ~np.isnan(solved) & (np.isnan(last_open) | (solved >= last_open))
    is_open = ~np.isnan(last_open) & ~is_solved
    waited_h = (f.now_days - last_open) * 24.0
    overdue = is_open & (waited_h > c.resolution_slow_hours)
    add(f.ticket_idx[is_solved], "ticket_solved", solved[is_solved])
    add(f.ticket_idx[overdue], "ticket_overdue", last_open[overdue])
    add(f.ticket_idx[overdue], "still_waiting", last_open[overdue])
    timed = is_solved & ~np.isnan(opened)
    hours = (solved - opened) * 24.0
    for name, sel in (("resolved_fast", timed & (hours <= c.resolution_target_hours)),
                      ("resolved_ok", timed & (hours > c.resolution_target_hours)
                       & (hours <= c.resolution_slow_hours)),
                      ("resolved_slow", timed & (hours > c.resolution_slow_hours))):
        add(f.ticket_idx[sel], name, solved[sel])
    reopened = f.ticket_reopens > 0
    add(f.ticket_idx[reopened], "ticket_reopened", f.ticket_last_reopen[reopened],
        f.ticket_reopens[reopened])
    many = (f.ticket_contacts + 1) > c.contacts_per_issue_max  # the opening message is a contact
    start = np.where(np.isnan(opened), np.where(np.isnan(last_open), solved, last_open), opened)
    add(f.ticket_idx[many], "many_contacts", start[many])

    # ratings
    share = f.rating_share
    grade = np.where(share >= c.rating_positive_at, 0, np.where(share < c.rating_negative_below, 2, 1))
    for kind_name, prefix in _RATING_PREFIX.items():
        sel = f.rating_kind == RATING_KINDS.index(kind_name)
        names = np.array([EVENT[f"{prefix}_{g}"] for g in ("positive", "neutral", "negative")])
        add(f.rating_idx[sel], names[grade[sel]], f.rating_t[sel])
    sel = f.rating_kind == RATING_KINDS.index("nps_response")
    points = nps_points(f.rating_score[sel], f.rating_max[sel])
    nps_kind = np.where(points >= 9, EVENT["nps_promoter"],
                        np.where(points >= 7, EVENT["nps_passive"], EVENT["nps_detractor"]))
    add(f.rating_idx[sel], nps_kind.astype(np.int64), f.rating_t[sel])
    return (np.concatenate(idx).astype(np.int64), np.concatenate(kind).astype(np.int64),
            np.concatenate(when), np.concatenate(mult))


def score(f: Features, s: ScoringSettings) -> CX:
    n = f.n
    c = s.cx
    idx, kind, t, mult = events(f, s)
    age = np.maximum(f.now_days - t, 0.0)
    outcome = _OUTCOME[kind]
    weight = mult * 0.5 ** (age / c.half_life_days) * np.where(outcome == 0.0, c.negative_weight, 1.0)
    layer = _LAYER_OF[kind]
    cell = idx * len(LAYERS) + layer
    total = np.bincount(cell, weights=weight, minlength=n * len(LAYERS)).reshape(n, len(LAYERS))
    good = np.bincount(cell, weights=weight * outcome, minlength=n * len(LAYERS)).reshape(n, len(LAYERS))
    with np.errstate(invalid="ignore", divide="ignore"):
        layer_score = np.where(total > 0, 100.0 * good / total, np.nan)
    w = np.array([c.weights[layer] for layer in LAYERS])
    present = ~np.isnan(layer_score) & (w > 0)
    wsum = (present * w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.where(wsum > 0, np.nansum(np.where(present, layer_score * w, 0.0), axis=1) / wsum, np.nan)
    counts = np.bincount(idx * len(EVENTS) + kind, weights=mult,
                         minlength=n * len(EVENTS)).reshape(n, len(EVENTS))

    # NPS: the latest answer; CSAT: share of satisfied ratings
    nps_last = np.full(n, np.nan)
    nps_at = np.full(n, np.nan)
    nps_score, nps_scale = np.full(n, np.nan), np.full(n, np.nan)
    sel = np.flatnonzero(f.rating_kind == RATING_KINDS.index("nps_response"))
    if len(sel):
        order = sel[np.lexsort((f.rating_t[sel], f.rating_idx[sel]))]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = f.rating_idx[order][1:] != f.rating_idx[order][:-1]
        pick = order[last]
        nps_last[f.rating_idx[pick]] = nps_points(f.rating_score[pick], f.rating_max[pick])
        nps_at[f.rating_idx[pick]] = f.rating_t[pick]
        nps_score[f.rating_idx[pick]] = f.rating_score[pick]
        nps_scale[f.rating_idx[pick]] = f.rating_max[pick]
    csat = f.rating_kind == RATING_KINDS.index("csat_rating")
    csat_total = np.bincount(f.rating_idx[csat], minlength=n).astype(float)
    csat_ok = np.bincount(f.rating_idx[csat & (f.rating_share >= c.rating_positive_at)],
                          minlength=n).astype(float)
    return CX(score=cx, layer_score=layer_score, layer_weight=total, counts=counts,
              nps_last=nps_last, nps_at=nps_at, nps_score=nps_score, nps_scale=nps_scale,
              csat_total=csat_total, csat_satisfied=csat_ok)


def health(cx: np.ndarray, churn: np.ndarray, s: ScoringSettings) -> np.ndarray:
    """green / yellow / red from the (published, rounded) CX score and the churn risk.

    red: churn risk high, or CX below ``health.red_below``; green: CX at or above
    ``health.green_at`` and churn risk low (either may be unknown, not both);
    otherwise yellow. No CX score and no churn risk: no health.
    """
    points = np.round(cx)
    known_cx = ~np.isnan(points)
    known_churn = churn != None  # noqa: E711 - element-wise on an object array
    out = np.full(len(cx), None, dtype=object)
    some = known_cx | known_churn
    out[some] = "yellow"
    good_cx = ~known_cx | (points >= s.health.green_at)
    good_churn = ~known_churn | (churn == "low")
    out[some & good_cx & good_churn] = "green"
    out[(known_cx & (points < s.health.red_below)) | (churn == "high")] = "red"
    return out
