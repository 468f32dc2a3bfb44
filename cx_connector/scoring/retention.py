"""Retention probability, expected purchases and 90-day value, per customer.

For customers with purchases (see :mod:`cx_connector.scoring.features` for what
counts) the population models are fitted over all purchasing customers:

* BG/NBD (:mod:`.bgnbd`) on ``x`` = purchase days after the first, ``t_x`` = weeks
  from the first to the last purchase day, ``T`` = weeks from the first purchase
  day to the scoring day. ``cx_retention_probability`` is the probability of at
  least one purchase within the horizon,
  P(alive) x (1 - ((alpha + T) / (alpha + T + h)) ^ (r + x)); raw P(alive) (1 for
  every one-time buyer, however long ago) is only shown in the explanation.
  ``cx_expected_purchases_90d`` is the BG/NBD conditional expectation over the
  next 90 days (:data:`VALUE_DAYS`), whatever the retention horizon: the field's name
  and its label on every platform say 90 days.
* Gamma-Gamma (:mod:`.gamma_gamma`) on repeat buyers' mean purchase-day value
  gives the expected value of one future purchase; ``cx_clv_90d`` = expected
  purchases x that value. It is revenue in the shop's currency: no margin is
  applied and nothing is discounted (90 days is too short for discounting to
  matter; multiply by your margin for profit).

Fallbacks, each named in the explanation:

* fewer purchasing customers than ``scoring.min_purchasers`` or a failed fit:
  retention = 0.5 ^ (days since the last purchase / ``fallback_half_life_days``);
  expected purchases = the customer's own purchase-day rate over
  max(their age as a buyer, 90 days) x 90 days x that retention;
* no Gamma-Gamma fit: the customer's own mean purchase-day value;
* customers without purchases (B2B leads, support-only): retention is the
  probability of still being engaged, 0.5 ^ (days since the last engagement /
  ``engagement_half_life_days``); no expected purchases and no value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cx_connector.errors import FitError
from cx_connector.scoring import bgnbd, gamma_gamma
from cx_connector.scoring.bgnbd import BGNBDParams
from cx_connector.scoring.features import Features
from cx_connector.scoring.gamma_gamma import GammaGammaParams
from cx_connector.scoring.settings import ScoringSettings
from cx_connector.wording import only_customers

#: retention methods (``method`` codes in :class:`Retention`)
METHODS = ("none", "bgnbd", "recency", "engagement")
#: where the value of a purchase came from
SPEND_SOURCES = ("gamma_gamma", "own_mean", "unknown")
#: the period of cx_expected_purchases_90d and cx_clv_90d, fixed by their names (the
#: retention horizon, ``scoring.horizon_days``, is cx_retention_probability's alone)
VALUE_DAYS = 90


@dataclass(frozen=True)
class PopulationFit:
    """The population models of one full pass (reused by incremental runs)."""

    bgnbd: BGNBDParams | None = None
    #: why BG/NBD is not used (too few purchasers, or the fit failed)
    bgnbd_error: str | None = None
    gamma_gamma: GammaGammaParams | None = None
    gamma_gamma_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"bgnbd": self.bgnbd.to_json() if self.bgnbd else None, "bgnbd_error": self.bgnbd_error,
                "gamma_gamma": self.gamma_gamma.to_json() if self.gamma_gamma else None,
                "gamma_gamma_error": self.gamma_gamma_error}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PopulationFit:
        return cls(bgnbd=BGNBDParams.from_json(data["bgnbd"]) if data.get("bgnbd") else None,
                   bgnbd_error=data.get("bgnbd_error"),
                   gamma_gamma=(GammaGammaParams.from_json(data["gamma_gamma"])
                                if data.get("gamma_gamma") else None),
                   gamma_gamma_error=data.get("gamma_gamma_error"))


def summary(f: Features) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Purchasers' mask and their (x, t_x, T) in weeks, as BG/NBD wants them."""
    buyers = f.purchasers
    x = f.purchase_days[buyers] - 1
    t_x = (f.last_day[buyers] - f.first_day[buyers]) / 7.0
    T = (f.today - f.first_day[buyers]) / 7.0
    return buyers, x, t_x, T


def spend_summary(f: Features) -> tuple[np.ndarray, np.ndarray]:
    """Repeat purchase days with a known value, and their mean value (Gamma-Gamma input)."""
    x = f.repeat_spend_days
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(x > 0, f.repeat_spend / np.maximum(x, 1), 0.0)
    return x, m


def fit_population(f: Features, s: ScoringSettings, previous: PopulationFit | None = None) -> PopulationFit:
    """Fit BG/NBD and Gamma-Gamma over every purchasing customer in ``f``."""
    buyers, x, t_x, T = summary(f)
    n = int(buyers.sum())
    fit, error = None, None
    if n < s.min_purchasers:
        error = (f"{only_customers(n, 'purchases')}; the model is fitted from "
                 f"{s.min_purchasers:,} (scoring.min_purchasers)")
    else:
        try:
            fit = bgnbd.fit(x, t_x, T, start=previous.bgnbd if previous else None)
        except FitError as exc:
            error = f"the BG/NBD fit failed: {exc.message}"
    gx, gm = spend_summary(f)
    repeat = (gx > 0) & (gm > 0)
    gg, gg_error = None, None
    if repeat.sum() < s.min_purchasers:
        gg_error = (f"{only_customers(int(repeat.sum()), 'repeat purchases with a value')}; the spend "
                    f"model is fitted from {s.min_purchasers:,} (scoring.min_purchasers)")
    else:
        try:
            gg = gamma_gamma.fit(gx[repeat], gm[repeat], start=previous.gamma_gamma if previous else None)
        except FitError as exc:
            gg_error = f"the Gamma-Gamma fit failed: {exc.message}"
    return PopulationFit(bgnbd=fit, bgnbd_error=error, gamma_gamma=gg, gamma_gamma_error=gg_error)


@dataclass
class Retention:
    """Per-customer results (arrays aligned with ``Features.ids``; NaN: no value)."""

    method: np.ndarray
    probability: np.ndarray
    p_alive: np.ndarray
    p_buy: np.ndarray
    expected: np.ndarray
    spend: np.ndarray
    spend_source: np.ndarray
    clv: np.ndarray
    days_since: np.ndarray


def score(f: Features, pop: PopulationFit, s: ScoringSettings) -> Retention:
    n = f.n
    h = s.horizon_days / 7.0
    method = np.zeros(n, dtype=np.int64)
    prob = np.full(n, np.nan)
    p_alive = np.full(n, np.nan)
    p_buy = np.full(n, np.nan)
    expected = np.full(n, np.nan)
    days_since = np.full(n, np.nan)

    buyers, x, t_x, T = summary(f)
    days_since[buyers] = f.today - f.last_day[buyers]
    if pop.bgnbd is not None:
        method[buyers] = METHODS.index("bgnbd")
        alive = bgnbd.p_alive(pop.bgnbd, x, t_x, T)
        p_alive[buyers] = alive
        p_buy[buyers] = 1.0 - np.exp((pop.bgnbd.r + x) * (np.log(pop.bgnbd.alpha + T)
                                                          - np.log(pop.bgnbd.alpha + T + h)))
        prob[buyers] = alive * p_buy[buyers]
        expected[buyers] = bgnbd.expected_purchases(pop.bgnbd, VALUE_DAYS / 7.0, x, t_x, T)
    else:
        method[buyers] = METHODS.index("recency")
        rec = 0.5 ** (days_since[buyers] / s.fallback_half_life_days)
        prob[buyers] = rec
        age = np.maximum(f.today - f.first_day[buyers] + 1, VALUE_DAYS)
        expected[buyers] = f.purchase_days[buyers] / age * VALUE_DAYS * rec

    engaged = ~buyers & ~np.isnan(f.last_engaged)
    method[engaged] = METHODS.index("engagement")
    days_since[engaged] = np.maximum(f.now_days - f.last_engaged[engaged], 0.0)
    prob[engaged] = 0.5 ** (days_since[engaged] / s.engagement_half_life_days)

    spend = np.full(n, np.nan)
    source = np.full(n, SPEND_SOURCES.index("unknown"), dtype=np.int64)
    gx, gm = spend_summary(f)
    if pop.gamma_gamma is not None:
        spend[buyers] = gamma_gamma.expected_spend(pop.gamma_gamma, gx[buyers], gm[buyers])
        source[buyers] = SPEND_SOURCES.index("gamma_gamma")
    else:
        own = buyers & (f.spend_days > 0)
        spend[own] = f.spend[own] / f.spend_days[own]
        source[own] = SPEND_SOURCES.index("own_mean")
    clv = expected * spend
    return Retention(method=method, probability=prob, p_alive=p_alive, p_buy=p_buy,
                     expected=expected, spend=spend, spend_source=source, clv=clv,
                     days_since=days_since)


def churn_risk(probability: np.ndarray, s: ScoringSettings) -> np.ndarray:
    """``low``/``medium``/``high`` (``None``: no retention probability) from 0-1 probabilities.

    Thresholds apply to the published (rounded) percentage, so what staff see and
    the risk always agree.
    """
    pct = np.round(probability * 100)
    out = np.full(len(probability), None, dtype=object)
    out[pct >= s.churn.medium_below] = "low"
    out[pct < s.churn.medium_below] = "medium"
    out[pct < s.churn.high_below] = "high"
    return out
