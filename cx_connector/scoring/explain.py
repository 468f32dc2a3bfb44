"""Explanations: every score with the inputs and weights that made it, as JSON and in words.

A scoring run stores, per customer, the *inputs* (:func:`build`) in
``scores.explanation``: the numbers each score was computed from and the method used
(a model, or which fallback and why). The model parameters and settings that
weighted them are the same for every customer of a run: they are stored once, as a
``score_contexts`` row (:func:`context`), which each explanation names by id
(``"context": 12``). Context rows are never changed or deleted, so :func:`expand`
(or :func:`stored`, which reads the row) gives back the whole explanation exactly as
it was made, whatever the configuration says today; :func:`render` turns an
expanded explanation into sentences for staff. Explanations of version 1 carry
their own copy of the context and are already expanded.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, select

from cx_connector.fields import FIELDS
from cx_connector.models import score_contexts
from cx_connector.scoring.cross_sell import CrossSellModel, Recommendations
from cx_connector.scoring.cx_score import CX, EVENTS
from cx_connector.scoring.features import Features
from cx_connector.scoring.retention import (
    METHODS,
    SPEND_SOURCES,
    VALUE_DAYS,
    PopulationFit,
    Retention,
    spend_summary,
)
from cx_connector.scoring.settings import LAYERS, ScoringSettings
from cx_connector.touchpoint import STAGES
from cx_connector.wording import counted, only_customers

VERSION = 2

#: words for each CX event (singular, plural)
EVENT_WORDS: dict[str, tuple[str, str]] = {
    "order_fulfilled": ("order fulfilled", "orders fulfilled"),
    "order_cancelled": ("order cancelled", "orders cancelled"),
    "refund_issued": ("refund", "refunds"),
    "ticket_solved": ("ticket solved", "tickets solved"),
    "ticket_overdue": ("ticket still open too long", "tickets still open too long"),
    "resolved_fast": ("ticket solved within target", "tickets solved within target"),
    "resolved_ok": ("ticket solved a bit late", "tickets solved a bit late"),
    "resolved_slow": ("ticket solved too slowly", "tickets solved too slowly"),
    "still_waiting": ("ticket the customer is still waiting on", "tickets the customer is still waiting on"),
    "ticket_reopened": ("reopen", "reopens"),
    "many_contacts": ("ticket that took too many contacts", "tickets that took too many contacts"),
    "ces_positive": ("easy CES answer", "easy CES answers"),
    "ces_neutral": ("neutral CES answer", "neutral CES answers"),
    "ces_negative": ("hard CES answer", "hard CES answers"),
    "csat_positive": ("satisfied CSAT rating", "satisfied CSAT ratings"),
    "csat_neutral": ("neutral CSAT rating", "neutral CSAT ratings"),
    "csat_negative": ("dissatisfied CSAT rating", "dissatisfied CSAT ratings"),
    "nps_promoter": ("NPS promoter answer", "NPS promoter answers"),
    "nps_passive": ("NPS passive answer", "NPS passive answers"),
    "nps_detractor": ("NPS detractor answer", "NPS detractor answers"),
    "review_positive": ("positive review", "positive reviews"),
    "review_neutral": ("neutral review", "neutral reviews"),
    "review_negative": ("negative review", "negative reviews"),
}
LAYER_WORDS = {"needs_met": "needs met", "ease": "ease", "enjoyment": "enjoyment"}


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def context(pop: PopulationFit, model: CrossSellModel | None, fitted_at: datetime | None,
            s: ScoringSettings) -> dict[str, Any]:
    """The run-wide part of every explanation: model parameters and the settings used."""
    m: dict[str, Any] = {"fitted_at": _iso(fitted_at) if fitted_at else None}
    if pop.bgnbd is not None:
        b = pop.bgnbd
        m["bgnbd"] = {"r": round(b.r, 6), "alpha": round(b.alpha, 6), "a": round(b.a, 6),
                      "b": round(b.b, 6), "customers": b.customers}
    else:
        m["bgnbd_fallback"] = pop.bgnbd_error
    if pop.gamma_gamma is not None:
        g = pop.gamma_gamma
        m["gamma_gamma"] = {"p": round(g.p, 6), "q": round(g.q, 6), "gamma": round(g.gamma, 6),
                            "customers": g.customers, "population_mean": round(g.population_mean, 2)}
    else:
        m["gamma_gamma_fallback"] = pop.gamma_gamma_error
    if model is not None:
        m["cross_sell"] = model.summary()
    settings = {
        "horizon_days": s.horizon_days, "min_purchasers": s.min_purchasers,
        "fallback_half_life_days": s.fallback_half_life_days,
        "engagement_half_life_days": s.engagement_half_life_days,
        "churn": {"high_below": s.churn.high_below, "medium_below": s.churn.medium_below},
        "health": {"green_at": s.health.green_at, "red_below": s.health.red_below},
        "cx": {"weights": {layer: s.cx.weights[layer] for layer in LAYERS},
               "half_life_days": s.cx.half_life_days, "negative_weight": s.cx.negative_weight,
               "rating_positive_at": s.cx.rating_positive_at,
               "rating_negative_below": s.cx.rating_negative_below,
               "resolution_target_hours": s.cx.resolution_target_hours,
               "resolution_slow_hours": s.cx.resolution_slow_hours,
               "contacts_per_issue_max": s.cx.contacts_per_issue_max},
    }
    return {"model": m, "settings": settings}


def expand(explanation: dict[str, Any], context: dict[str, Any] | None) -> dict[str, Any]:
    """An explanation with the context it names put back in (``model``, ``settings``)."""
    if context is None or "model" in explanation:
        return explanation
    head = {k: explanation[k] for k in ("version", "as_of", "context") if k in explanation}
    return {**head, **context, **{k: v for k, v in explanation.items() if k not in head}}


def stored(conn: Connection, explanation: dict[str, Any]) -> dict[str, Any]:
    """A stored explanation, expanded with the ``score_contexts`` row it names (the
    one way to read ``scores.explanation`` for people)."""
    ref = (explanation or {}).get("context")
    if ref is None or "model" in explanation:
        return explanation
    row = conn.execute(select(score_contexts.c.context).where(score_contexts.c.id == ref)).scalar()
    if row is None:  # context rows are never deleted: this is a bug, not a state
        raise LookupError(f"score context {ref} is missing: the explanation cannot be shown")
    return expand(explanation, dict(row))


def _floats(a: np.ndarray, digits: int) -> list[str]:
    """JSON tokens of floats, rounded (NaN: null). Built as text because a full pass
    explains 100,000 customers and ``json.dumps`` of nested dicts would dominate it;
    each distinct value is formatted once (rounded values repeat a lot)."""
    values, inverse = np.unique(np.round(a, digits) + 0.0, return_inverse=True)  # + 0.0: no -0.0
    words = np.array(["null" if v != v else repr(v) for v in values.tolist()], dtype=object)
    return words[inverse.reshape(-1)].tolist()


def _ints(a: np.ndarray) -> list[str]:
    values, inverse = np.unique(a.astype(np.int64), return_inverse=True)
    return np.array([str(v) for v in values.tolist()], dtype=object)[inverse.reshape(-1)].tolist()


def _text(values: list[str | None]) -> list[str]:
    memo: dict[str | None, str] = {None: "null"}
    return [memo[v] if v in memo else memo.setdefault(v, json.dumps(v)) for v in values]


def _dates(days: np.ndarray) -> list[str]:
    """JSON tokens of day numbers: ``"YYYY-MM-DD"``, or null for NaN or negative 'none'
    markers; each distinct day is formatted once."""
    bad = np.isnan(days) if days.dtype.kind == "f" else days < 0
    values, inverse = np.unique(np.where(bad, -1, days).astype(np.int64), return_inverse=True)
    stamps = np.datetime_as_string(np.maximum(values, 0).astype("datetime64[D]")).tolist()
    words = np.array([f'"{s}"' if v >= 0 else "null" for v, s in zip(values.tolist(), stamps, strict=True)],
                     dtype=object)
    return words[inverse.reshape(-1)].tolist()


def _cx_sections(cx: CX, sl: slice, n: int) -> list[str | None]:
    """Each customer's ``"cx"`` section: per layer with events, its score and how many
    events of each kind (EVENTS are grouped by layer, in pyramid order); None without
    events. Built per (customer, layer) group, not per event."""
    counts = cx.counts[sl]
    r_idx, k_idx = np.nonzero(counts)  # row-major: by customer, then event (so by layer)
    out: list[str | None] = [None] * n
    if not len(r_idx):
        return out
    layer_of = np.array([LAYERS.index(e[1]) for e in EVENTS])
    names = [json.dumps(e[0]) for e in EVENTS]
    memo: dict[tuple[int, float], str] = {}
    tokens = [memo[key] if key in memo else memo.setdefault(
        key, f"{names[key[0]]}:{int(key[1]) if key[1] == int(key[1]) else repr(key[1])}")
        for key in zip(k_idx.tolist(), counts[r_idx, k_idx].tolist(), strict=True)]
    group = r_idx * len(LAYERS) + layer_of[k_idx]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    ends = np.r_[starts[1:], len(group)].tolist()
    g_row, g_layer = r_idx[starts], layer_of[k_idx[starts]]
    scores = cx.layer_score[sl][g_row, g_layer]
    score_text = _floats(scores, 1)
    layer_names = [json.dumps(layer) for layer in LAYERS]
    parts = [f'{layer_names[la]}:{{"score":{sc},"events":{{{",".join(tokens[s:e])}}}}}'
             for la, sc, s, e in zip(g_layer.tolist(), score_text, starts.tolist(), ends, strict=True)]
    first = np.r_[True, g_row[1:] != g_row[:-1]]
    c_starts = np.flatnonzero(first)
    c_ends = np.r_[c_starts[1:], len(g_row)].tolist()
    for r, s, e in zip(g_row[c_starts].tolist(), c_starts.tolist(), c_ends, strict=True):
        out[r] = '"cx":{' + ",".join(parts[s:e]) + "}"
    return out


def build(f: Features, ret: Retention, rec: Recommendations, model: CrossSellModel | None, cx: CX,
          as_of: datetime, context_id: int | None, rows: range | None = None) -> list[str]:
    """The explanations of ``rows`` (positions in ``f.ids``; everyone by default) as JSON
    text: version, time, the id of the run's context (see :func:`context`; None when
    nothing is stored) and each customer's inputs."""
    rows = rows if rows is not None else range(f.n)
    sl = slice(rows.start, rows.stop)
    head = (f'{{"version":{VERSION},"as_of":"{_iso(as_of)}",'
            f'"context":{"null" if context_id is None else int(context_id)}')
    method = ret.method[sl].tolist()
    purchase_days = _ints(f.purchase_days[sl])
    first = _dates(f.first_day[sl])
    last = _dates(f.last_day[sl])
    weeks_span = _floats((f.last_day[sl] - f.first_day[sl]) / 7.0, 2)
    weeks_since = _floats((f.today - f.first_day[sl]) / 7.0, 2)
    days_since = _floats(ret.days_since[sl], 1)
    p_alive = _floats(ret.p_alive[sl], 4)
    p_buy = _floats(ret.p_buy[sl], 4)
    prob = _floats(ret.probability[sl], 4)
    expected = _floats(ret.expected[sl], 4)
    spend = _floats(ret.spend[sl], 2)
    source = [json.dumps(SPEND_SOURCES[v]) for v in range(len(SPEND_SOURCES))]
    spend_source = ret.spend_source[sl].tolist()
    with np.errstate(invalid="ignore", divide="ignore"):
        own_mean = _floats(np.where(f.spend_days[sl] > 0, f.spend[sl] / np.maximum(f.spend_days[sl], 1),
                                    np.nan), 2)
    spend_days = _ints(f.spend_days[sl])
    repeat_days = _ints(f.repeat_spend_days[sl])
    repeat_mean = _floats(spend_summary(f)[1][sl], 2)  # what Gamma-Gamma shrinks, not own_mean
    dropped = f.orders_dropped[sl].astype(np.int64).tolist()
    part = f.orders_part_refunded[sl].astype(np.int64).tolist()
    rec_item, rec_src = rec.item[sl].tolist(), rec.source[sl].tolist()
    rec_support, rec_strength = _ints(rec.support[sl]), _floats(rec.strength[sl], 4)
    rec_lift = _floats(rec.lift[sl], 3)
    bought = _ints(rec.bought[sl])
    labels = _text(list(model.labels)) if model is not None else []
    cx_text = _cx_sections(cx, sl, len(rows))
    nps_at = _dates(np.floor(cx.nps_at[sl]))
    nps_other = (cx.nps_scale[sl] != 10) & ~np.isnan(cx.nps_scale[sl])  # an answer rescaled to 0-10
    nps_given = _floats(cx.nps_score[sl], 2)
    nps_scale = _floats(cx.nps_scale[sl], 2)
    csat_total = cx.csat_total[sl].astype(np.int64).tolist()
    csat_ok = cx.csat_satisfied[sl].astype(np.int64).tolist()
    stage = f.stage[sl].tolist()
    held_back = f.held_back[sl].tolist()
    stages = [json.dumps(st) for st in STAGES]
    out: list[str] = []
    for i in range(len(rows)):
        m = METHODS[method[i]]
        if m in ("bgnbd", "recency"):
            r = (f'"retention":{{"method":"{m}","probability":{prob[i]},"purchase_days":{purchase_days[i]},'
                 f'"first_purchase":{first[i]},"last_purchase":{last[i]},'
                 f'"days_since_last_purchase":{days_since[i]},"weeks_first_to_last":{weeks_span[i]},'
                 f'"weeks_since_first":{weeks_since[i]}')
            if dropped[i] or part[i]:
                r += f',"orders_not_counted":{dropped[i]},"orders_partly_refunded":{part[i]}'
            if m == "bgnbd":
                r += f',"p_alive":{p_alive[i]},"p_buy_if_alive":{p_buy[i]}'
            sections = [r + "}", f'"expected_purchases":{{"value":{expected[i]},"days":{VALUE_DAYS}}}',
                        f'"value":{{"method":{source[spend_source[i]]},"per_purchase":{spend[i]},'
                        f'"own_mean":{own_mean[i]},"days_with_value":{spend_days[i]},'
                        f'"repeat_days_with_value":{repeat_days[i]},"repeat_mean":{repeat_mean[i]}}}']
        else:
            r = (f'"retention":{{"method":"engagement","probability":{prob[i]},'
                 f'"days_since_engagement":{days_since[i]}' if m == "engagement" else
                 '"retention":{"method":"none","probability":null')
            if dropped[i]:  # every order was undone: say so, or "no purchases" reads as a mistake
                r += f',"orders_not_counted":{dropped[i]}'
            sections = [r + "}"]
        if model is not None:
            if rec_item[i] < 0:
                sections.append(f'"cross_sell":{{"bought":{bought[i]},"method":"none"}}')
            elif rec_src[i] >= 0:
                sections.append(f'"cross_sell":{{"bought":{bought[i]},"item":{labels[rec_item[i]]},'
                                f'"method":"rule","because":{labels[rec_src[i]]},"support":{rec_support[i]},'
                                f'"confidence":{rec_strength[i]},"lift":{rec_lift[i]}}}')
            else:
                sections.append(f'"cross_sell":{{"bought":{bought[i]},"item":{labels[rec_item[i]]},'
                                f'"method":"popular","base_rate":{rec_strength[i]}}}')
        if cx_text[i] is not None:
            sections.append(cx_text[i])
        if nps_at[i] != "null":
            given = f',"score":{nps_given[i]},"scale":{nps_scale[i]}' if nps_other[i] else ""
            sections.append(f'"nps":{{"answered":{nps_at[i]}{given}}}')
        if csat_total[i]:
            sections.append(f'"csat":{{"ratings":{csat_total[i]},"satisfied":{csat_ok[i]}}}')
        if stage[i] >= 0:
            held = ',"held_back":true' if held_back[i] else ""
            sections.append(f'"journey":{{"stage":{stages[stage[i]]}{held}}}')
        out.append(head + "," + ",".join(sections) + "}")
    return out


# --- words --------------------------------------------------------------------------------------


def _pct(p: float | None) -> str:
    return "n/a" if p is None else f"{100 * p:.0f}%"


def _days(n: int) -> str:
    return "1 day" if n == 1 else f"{n} different days"


def _retention_words(e: dict[str, Any]) -> str:
    r = e.get("retention") or {}
    m = r.get("method")
    st = e.get("settings") or {}
    h = st.get("horizon_days")
    if m == "bgnbd":
        b = e["model"]["bgnbd"]
        text = (f"Bought on {_days(r['purchase_days'])} (first {r['first_purchase']}, last "
                f"{r['last_purchase']}, {counted(r['days_since_last_purchase'], 'day')} ago). The BG/NBD "
                f"model fitted on {b['customers']} purchasing customers (r={b['r']:.3g}, "
                f"alpha={b['alpha']:.3g}, a={b['a']:.3g}, b={b['b']:.3g}) gives: probability still an active "
                f"customer {_pct(r['p_alive'])} x probability of buying within {h} days if active "
                f"{_pct(r['p_buy_if_alive'])} = {_pct(r['probability'])}.")
        if r["purchase_days"] == 1:  # P(alive) is 1 for every one-time buyer: why, or it reads as a bug
            text += (" (Under BG/NBD a customer can only drop out right after a purchase, so a one-time "
                     "buyer counts as active however long ago they bought; the chance of buying within "
                     f"{h} days is what falls with the time since.)")
    elif m == "recency":
        reason = _fallback(e, "bgnbd_fallback")
        half = st["fallback_half_life_days"]
        text = (f"Bought on {_days(r['purchase_days'])}, the last "
                f"{counted(r['days_since_last_purchase'], 'day')} ago. Fallback ({reason}): the "
                f"probability halves every {half:g} days since the last purchase: "
                f"0.5^({r['days_since_last_purchase']:g}/{half:g}) = {_pct(r['probability'])}.")
    elif m == "engagement":
        text = (f"{_no_purchases(r)}, so this is the probability of still being engaged: the last "
                f"engagement was {counted(r['days_since_engagement'], 'day')} ago and the probability "
                f"halves every {st['engagement_half_life_days']:g} days: {_pct(r['probability'])}.")
        return text
    else:
        return f"{_no_purchases(r)} and no touchpoints showing engagement yet, so no retention probability."
    if r.get("orders_not_counted") or r.get("orders_partly_refunded"):
        counts = [counted(r[k], *words) for k, words in (("orders_not_counted", ORDERS_UNDONE),
                                                    ("orders_partly_refunded", ORDERS_PART)) if r.get(k)]
        text += " " + "; ".join(counts) + "."
    return text


PURCHASE_DAYS = ("purchase day", "purchase days")
#: whom an item's popularity is a share of (the co-occurrence model's population)
BUYERS = "the customers who bought items"
ORDERS_UNDONE = ("cancelled or fully refunded order is not counted as a purchase",
                 "cancelled or fully refunded orders are not counted as purchases")
ORDERS_PART = ("partly refunded order counts at its net value",
               "partly refunded orders count at their net value")


def _fallback(e: dict[str, Any], key: str) -> str:
    """Why a model was not used, dated: the models are fitted by the full pass and reused
    until the next, so "only 34 customers have purchases" is that pass's count, not today's."""
    model = e.get("model") or {}
    reason = model.get(key) or "no model"
    fitted = str(model.get("fitted_at") or "")[:10]
    return f"at the full pass of {fitted}: {reason}" if fitted else reason


def _no_purchases(r: dict[str, Any]) -> str:
    """Why a customer who placed orders has no purchases: each one was undone."""
    undone = r.get("orders_not_counted")
    if not undone:
        return "No purchases yet"
    if undone == 1:
        return "No purchases: the one order was cancelled or refunded in full"
    return f"No purchases: all {undone} orders were cancelled or refunded in full"


def _expected_words(e: dict[str, Any]) -> str:
    r = e.get("retention") or {}
    x = e.get("expected_purchases")
    if not x:
        return "Only customers with purchases get an expected number of purchases."
    h = x.get("days", e["settings"]["horizon_days"])  # stored before it was fixed at 90: the horizon
    if r["method"] == "bgnbd":
        return (f"BG/NBD conditional expectation of purchases in the next {h} days, from the same "
                f"{counted(r['purchase_days'], *PURCHASE_DAYS)}: {x['value']:.2f}.")
    return (f"Fallback ({_fallback(e, 'bgnbd_fallback')}): the customer's own rate "
            f"({counted(r['purchase_days'], *PURCHASE_DAYS)} over "
            f"max({r['weeks_since_first'] * 7:.0f} days as a buyer, {h} days)) x {h} days x retention "
            f"{_pct(r['probability'])} = {x['value']:.2f}.")


def _value_words(e: dict[str, Any], values: dict[str, Any]) -> str:
    """The first sentence ends with the stored value: the factors shown are rounded (4 and
    2 places), and their product could miss the score the rep sees by a cent. The second
    says where the value per purchase comes from."""
    v = e.get("value")
    if not v:
        return "Only customers with purchases get a customer value."
    x = (e.get("expected_purchases") or {}).get("value")
    per = v.get("per_purchase")
    if per is None:
        return "No purchase had a value, so the customer value is unknown."
    if v["method"] == "gamma_gamma":
        g = e["model"]["gamma_gamma"]
        model = (f"the Gamma-Gamma spend model (p={g['p']:.3g}, q={g['q']:.3g}, gamma={g['gamma']:.3g}, "
                 f"fitted on {g['customers']} repeat buyers)")
        repeats = v["repeat_days_with_value"]
        if repeats and v.get("repeat_mean") is not None:
            # E[M] = w m + (1 - w) population mean, w = p x / (p x + q - 1) (Fader & Hardie 2013)
            w = g["p"] * repeats / (g["p"] * repeats + g["q"] - 1)
            basis = (f"The value per purchase is {100 * w:.0f}% their own average repeat purchase "
                     f"{v['repeat_mean']:.2f} ({counted(repeats, *PURCHASE_DAYS)} after the first, "
                     f"which the model leaves out) and {100 - 100 * w:.0f}% the population average "
                     f"{g['population_mean']:.2f}, from {model}, which trusts a customer's own average "
                     f"more the more purchases it rests on.")
        elif repeats:  # stored before repeat_mean was kept
            basis = (f"The value per purchase is their own repeat purchases' average shrunk towards the "
                     f"population average {g['population_mean']:.2f} by {model}.")
        else:
            basis = (f"The value per purchase is the population average {g['population_mean']:.2f}, from "
                     f"{model}: one purchase says little about the next one.")
    else:
        basis = (f"The value per purchase is their own average purchase "
                 f"({counted(v['days_with_value'], *PURCHASE_DAYS)} with a value); the spend model is not "
                 f"used ({_fallback(e, 'gamma_gamma_fallback')}).")
    clv = values.get("cx_clv_90d")
    return (f"Expected purchases {x:.4g} x expected value per purchase {per:.2f} = "
            f"{float(clv if clv is not None else x * per):.2f}. {basis} Revenue, not profit: no margin "
            "applied, not discounted.")


def _churn_words(e: dict[str, Any], values: dict[str, Any]) -> str:
    c = (e.get("settings") or {}).get("churn")
    if not c or values.get("cx_churn_risk") is None:
        return "No retention probability, so no churn risk."
    return (f"Retention probability {values.get('cx_retention_probability')}%: high risk below "
            f"{c['high_below']:g}, medium below {c['medium_below']:g}, low otherwise.")


def _cross_sell_words(e: dict[str, Any]) -> str:
    c = e.get("cross_sell")
    if not c:
        return "No cross-sell model yet (no purchases with line items)."
    by = ((e.get("model") or {}).get("cross_sell") or {}).get("by", "category")
    what = ("category", "categories") if by == "category" else ("product", "products")
    if c.get("method") == "rule":
        text = (f"Customers who bought {c['because']} bought {c['item']} {c['lift']:.2f} times as often as "
                f"the average buyer ({c['support']} customers bought both; {_pct(c['confidence'])} of "
                f"{c['because']} buyers bought {c['item']}).")
    elif c.get("method") == "popular" and not c.get("bought"):
        # a won deal or an order without line items is a purchase with no item to go by
        purchased = (e.get("retention") or {}).get("purchase_days")
        why = (f"No {what[0]} known from their purchases (no line items)" if purchased else
               "Nothing bought yet")
        text = f"{why}, so the most popular item: {c['item']}, bought by {_pct(c['base_rate'])} of {BUYERS}."
    elif c.get("method") == "popular":
        text = (f"No strong association from what they bought ({counted(c['bought'], *what)}), so the most "
                f"popular item they do not have yet: {c['item']}, bought by {_pct(c['base_rate'])} of "
                f"{BUYERS}.")
    else:
        return f"Nothing to recommend: they already bought every {by}."
    retention = (e.get("retention") or {}).get("probability")
    if retention is None:
        return text + " No retention probability, so no cross-sell score."
    buyers = ((e.get("model") or {}).get("cross_sell") or {}).get("customers", 0)
    least = (e.get("settings") or {}).get("min_purchasers", 0)
    if buyers < least:
        who = only_customers(buyers, "bought items")
        return text + (f" {who[0].upper()}{who[1:]} (fewer than {least}, "
                       "scoring.min_purchasers): too few to estimate a propensity, so no score.")
    strength = c.get("confidence", c.get("base_rate"))
    return (text + f" Score = retention probability {_pct(retention)} x {_pct(strength)} = "
            f"{100 * retention * strength:.0f}.")


def _cx_words(e: dict[str, Any], values: dict[str, Any]) -> str:
    layers = e.get("cx")
    if not layers:
        return "No experiences recorded yet (orders, tickets, ratings), so no CX score."
    c = e["settings"]["cx"]
    total = sum(c["weights"][layer] for layer in layers)
    parts, terms = [], []
    for layer in LAYERS:
        if layer not in layers:
            parts.append(f"{LAYER_WORDS[layer]}: no data, left out")
            continue
        info = layers[layer]
        events = ", ".join(counted(v, *EVENT_WORDS[k]) for k, v in info["events"].items())
        if not c["weights"][layer]:  # a layer turned off in scoring.cx.weights
            parts.append(f"{LAYER_WORDS[layer]} {info['score']:.0f} (weight 0, not counted; {events})")
            continue
        share = c["weights"][layer] / total
        parts.append(f"{LAYER_WORDS[layer]} {info['score']:.0f} (weight {c['weights'][layer]:g}, "
                     f"{share:.0%} after renormalising; {events})")
        terms.append(f"{share:.2f} x {info['score']:.0f}")
    result = (f"CX = {' + '.join(terms)} = {values.get('cx_score')}." if terms else
              "Every layer with data has weight 0 (scoring.cx.weights), so no CX score.")
    return (f"CX pyramid: {'; '.join(parts)}. {result} Each experience's weight halves every "
            f"{c['half_life_days']:g} days and a negative one counts {c['negative_weight']:g} times.")


def _health_words(e: dict[str, Any], values: dict[str, Any]) -> str:
    h = (e.get("settings") or {}).get("health") or {}
    cx, churn = values.get("cx_score"), values.get("cx_churn_risk")
    health = values.get("cx_health")
    if health is None:
        return "No CX score and no churn risk, so no health."
    # one of the two unknown: health rests on the other (no data is not a bad experience),
    # and the sentence says so rather than quote a rule it did not apply
    if cx is None:
        return (f"No CX score yet (no experiences recorded), so health rests on the churn risk alone: "
                f"{churn} risk, {health} (red when high, yellow when medium, green when low).")
    if churn is None:
        return (f"No churn risk (no retention probability), so health rests on the CX score alone: "
                f"{cx}, {health} (red below {h['red_below']:g}, green at {h['green_at']:g} or more, "
                "yellow between).")
    return (f"CX score {cx} and churn risk {churn}: red when churn risk is high or CX is below "
            f"{h['red_below']:g}; green when CX is at least {h['green_at']:g} and churn risk is low; "
            "yellow otherwise.")


def _journey_words(e: dict[str, Any], journey: dict[str, Any] | None) -> str:
    if not journey:
        return "No touchpoints yet."
    text = f"The furthest journey stage any touchpoint reached: {journey['stage']}."
    if journey.get("held_back"):
        positive = ((e.get("settings") or {}).get("cx") or {}).get("rating_positive_at", 0.7)
        text += (f" Not advocacy: an NPS answer or a review reaches advocacy only when it is positive "
                 f"(a promoter answer, 9-10, or a review rated at least {positive:.0%} of its scale), and "
                 "theirs was not.")
    return text


def render(explanation: dict[str, Any], values: dict[str, Any]) -> dict[str, str]:
    """Sentences per score field, from an expanded explanation (:func:`expand`,
    :func:`stored`) and the stored values."""
    e = explanation or {}
    if e.get("context") is not None and "settings" not in e:
        raise ValueError("render needs the expanded explanation: explain.stored(conn, explanation)")
    nps = e.get("nps")
    csat = e.get("csat")
    journey = e.get("journey")
    nps_words = (f"The latest NPS answer ({nps['answered']}) was {values.get('cx_nps_last')}."
                 if nps else "No NPS answer yet.")
    if nps and nps.get("scale") is not None:
        nps_words += (f" It was answered {nps['score']:g} of {nps['scale']:g}, rescaled to 0-10 and "
                      "rounded.")
    cat = values.get("cx_nps_category")
    words = {
        "cx_score": _cx_words(e, values),
        "cx_health": _health_words(e, values),
        "cx_retention_probability": _retention_words(e),
        "cx_churn_risk": _churn_words(e, values),
        "cx_expected_purchases_90d": _expected_words(e),
        "cx_clv_90d": _value_words(e, values),
        "cx_cross_sell_score": _cross_sell_words(e),
        "cx_next_best_product": _cross_sell_words(e),
        "cx_nps_last": nps_words,
        "cx_nps_category": (f"{values.get('cx_nps_last')} is a {cat} answer (promoter 9-10, passive 7-8, "
                            f"detractor 0-6)." if cat else "No NPS answer yet."),
        "cx_csat": (f"{csat['satisfied']} of "
                    f"{counted(csat['ratings'], 'CSAT rating was', 'CSAT ratings were')} satisfied (at "
                    f"least {e['settings']['cx']['rating_positive_at']:.0%} of the scale)."
                    if csat else "No CSAT rating yet."),
        "cx_journey_stage": _journey_words(e, journey),
        "cx_scored_at": f"Computed as of {e.get('as_of')}.",
    }
    return {name: words[name] for name in FIELDS}
