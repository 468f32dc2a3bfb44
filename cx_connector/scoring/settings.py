"""The ``scoring:`` section of the configuration file.

Every key has a default, so the section can be left out. Unknown keys are errors
(a typo is reported with its key path, never ignored). The meaning of every key is
documented in ``config/cx-connector.example.yaml`` and in the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from cx_connector.connector import WholeNumber

LAYERS: tuple[str, ...] = ("needs_met", "ease", "enjoyment")
"""The CX pyramid, bottom to top (Forrester): needs met, easy, enjoyable."""


@dataclass(frozen=True)
class ChurnSettings:
    #: retention probability (0-100) below which churn risk is high
    high_below: float = 30.0
    #: below which it is medium (at or above: low)
    medium_below: float = 60.0


@dataclass(frozen=True)
class CrossSellSettings:
    #: "category" (line items' category, else the product catalogue's) or "product"
    by: str = "category"
    #: customers who must have bought both items before a pair counts as an association
    min_support: int = 5
    #: associations kept per item (strongest lift first)
    top_k: int = 10


@dataclass(frozen=True)
class CXSettings:
    #: weight per pyramid layer; a layer without data is left out and the rest renormalised
    weights: dict[str, float] = field(default_factory=lambda: {
        "needs_met": 0.4, "ease": 0.3, "enjoyment": 0.3})
    #: an experience's weight halves every this many days
    half_life_days: float = 180.0
    #: how many times a negative experience outweighs a positive one
    negative_weight: float = 2.0
    #: a rating at or above this share of its scale is positive (4 of 5, 7 of 10)
    rating_positive_at: float = 0.7
    #: below this share it is negative (1-2 of 5, 0-4 of 10); in between: neutral
    rating_negative_below: float = 0.5
    #: a ticket solved within this many hours is an easy experience
    resolution_target_hours: float = 24.0
    #: solved later than this (or still open this long) is a hard one; in between: neutral
    resolution_slow_hours: float = 72.0
    #: more customer contacts than this on one ticket is a hard experience
    contacts_per_issue_max: int = 2


@dataclass(frozen=True)
class HealthSettings:
    #: cx_score at or above this (and churn risk low) is green
    green_at: float = 70.0
    #: cx_score below this (or churn risk high) is red; everything else is yellow
    red_below: float = 40.0


@dataclass(frozen=True)
class ScoringSettings:
    #: retention horizon: cx_retention_probability is "buys again within this many days"
    horizon_days: int = 90
    #: purchasing customers needed before BG/NBD and Gamma-Gamma are fitted
    min_purchasers: int = 50
    #: purchasers' retention when no model can be fitted: halves every this many days
    #: since the last purchase
    fallback_half_life_days: float = 90.0
    #: customers without purchases: probability of staying engaged, halving every this
    #: many days since their last engagement
    engagement_half_life_days: float = 60.0
    #: rolling window of the company KPIs (NPS, CSAT, revenue, tickets, conversion)
    kpi_window_days: int = 90
    churn: ChurnSettings = field(default_factory=ChurnSettings)
    cross_sell: CrossSellSettings = field(default_factory=CrossSellSettings)
    cx: CXSettings = field(default_factory=CXSettings)
    health: HealthSettings = field(default_factory=HealthSettings)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


def _positive(**kw: Any) -> fields.Float:
    return fields.Float(validate=validate.Range(min=0, min_inclusive=False), **kw)


def _percent(**kw: Any) -> fields.Float:
    return fields.Float(validate=validate.Range(min=0, max=100), **kw)


class ChurnSchema(_Strict):
    high_below = _percent(load_default=ChurnSettings.high_below)
    medium_below = _percent(load_default=ChurnSettings.medium_below)

    @validates_schema
    def _order(self, data: dict, **_: Any) -> None:
        if data["high_below"] > data["medium_below"]:
            raise ValidationError("must not be above medium_below", "high_below")

    @post_load
    def _make(self, data: dict, **_: Any) -> ChurnSettings:
        return ChurnSettings(**data)


class CrossSellSchema(_Strict):
    by = fields.String(load_default="category", validate=validate.OneOf(["category", "product"]))
    min_support = WholeNumber(load_default=5, validate=validate.Range(min=1))
    top_k = WholeNumber(load_default=10, validate=validate.Range(min=1, max=100))

    @post_load
    def _make(self, data: dict, **_: Any) -> CrossSellSettings:
        return CrossSellSettings(**data)


class WeightsSchema(_Strict):
    needs_met = fields.Float(load_default=0.4, validate=validate.Range(min=0))
    ease = fields.Float(load_default=0.3, validate=validate.Range(min=0))
    enjoyment = fields.Float(load_default=0.3, validate=validate.Range(min=0))

    @validates_schema
    def _some(self, data: dict, **_: Any) -> None:
        if sum(data.values()) <= 0:
            raise ValidationError("at least one layer needs a weight above 0")


class CXSchema(_Strict):
    weights = fields.Nested(WeightsSchema, load_default=lambda: WeightsSchema().load({}))
    half_life_days = _positive(load_default=CXSettings.half_life_days)
    negative_weight = _positive(load_default=CXSettings.negative_weight)
    rating_positive_at = fields.Float(load_default=CXSettings.rating_positive_at,
                                      validate=validate.Range(min=0, max=1))
    rating_negative_below = fields.Float(load_default=CXSettings.rating_negative_below,
                                         validate=validate.Range(min=0, max=1))
    resolution_target_hours = _positive(load_default=CXSettings.resolution_target_hours)
    resolution_slow_hours = _positive(load_default=CXSettings.resolution_slow_hours)
    contacts_per_issue_max = WholeNumber(load_default=CXSettings.contacts_per_issue_max,
                                         validate=validate.Range(min=1))

    @validates_schema
    def _order(self, data: dict, **_: Any) -> None:
        if data["rating_negative_below"] > data["rating_positive_at"]:
            raise ValidationError("must not be above rating_positive_at", "rating_negative_below")
        if data["resolution_target_hours"] > data["resolution_slow_hours"]:
            raise ValidationError("must not be above resolution_slow_hours", "resolution_target_hours")

    @post_load
    def _make(self, data: dict, **_: Any) -> CXSettings:
        return CXSettings(**data)


class HealthSchema(_Strict):
    green_at = _percent(load_default=HealthSettings.green_at)
    red_below = _percent(load_default=HealthSettings.red_below)

    @validates_schema
    def _order(self, data: dict, **_: Any) -> None:
        if data["red_below"] > data["green_at"]:
            raise ValidationError("must not be above green_at", "red_below")

    @post_load
    def _make(self, data: dict, **_: Any) -> HealthSettings:
        return HealthSettings(**data)


class ScoringSettingsSchema(_Strict):
    horizon_days = WholeNumber(load_default=90, validate=validate.Range(min=1, max=3650))
    min_purchasers = WholeNumber(load_default=50, validate=validate.Range(min=2))
    fallback_half_life_days = _positive(load_default=ScoringSettings.fallback_half_life_days)
    engagement_half_life_days = _positive(load_default=ScoringSettings.engagement_half_life_days)
    kpi_window_days = WholeNumber(load_default=90, validate=validate.Range(min=1, max=3650))
    churn = fields.Nested(ChurnSchema, load_default=ChurnSettings)
    cross_sell = fields.Nested(CrossSellSchema, load_default=CrossSellSettings)
    cx = fields.Nested(CXSchema, load_default=CXSettings)
    health = fields.Nested(HealthSchema, load_default=HealthSettings)

    @post_load
    def _make(self, data: dict, **_: Any) -> ScoringSettings:
        return ScoringSettings(**data)
