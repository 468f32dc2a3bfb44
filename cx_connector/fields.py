"""The score fields staff see in their CRM: one catalogue, used by scoring (which
fills them), the outbox (which diffs them) and every connector's setup/writer
(which maps each type onto the platform's own field types).

Values are kept *canonical* (see :func:`canonical`) so "did it change?" is a plain
equality: numbers rounded to the field's decimals, enumerations as their option
value, datetimes as ``YYYY-MM-DDTHH:MM:SSZ`` strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any


@dataclass(frozen=True)
class ScoreField:
    name: str
    label: str
    #: number | enumeration | string | date | datetime
    type: str
    description: str
    #: for numbers: digits after the decimal point
    decimals: int = 0
    #: for enumerations: allowed values, in display order
    options: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    #: written along with other changed fields, but a change of this field alone
    #: does not cause a write (cx_scored_at would otherwise rewrite every record on
    #: every run)
    piggyback: bool = False


SCORE_FIELDS: tuple[ScoreField, ...] = (
    ScoreField("cx_score", "CX score", "number",
               "Customer-experience score 0-100 (CX pyramid: needs met, ease, enjoyment)",
               minimum=0, maximum=100),
    ScoreField("cx_health", "CX health", "enumeration",
               "green / yellow / red, from the CX score and the churn risk",
               options=("green", "yellow", "red")),
    ScoreField("cx_retention_probability", "Retention probability (%)", "number",
               "Probability (0-100) of buying again within the retention horizon",
               minimum=0, maximum=100),
    ScoreField("cx_churn_risk", "Churn risk", "enumeration",
               "low / medium / high, from the retention probability",
               options=("low", "medium", "high")),
    ScoreField("cx_expected_purchases_90d", "Expected purchases (90 days)", "number",
               "Expected number of purchases in the next 90 days (BG/NBD)", decimals=2, minimum=0),
    ScoreField("cx_clv_90d", "Customer value, 90 days", "number",
               "Expected spend in the next 90 days (BG/NBD x Gamma-Gamma)", decimals=2, minimum=0),
    ScoreField("cx_cross_sell_score", "Cross-sell score", "number",
               "Propensity (0-100) to buy another category", minimum=0, maximum=100),
    ScoreField("cx_next_best_product", "Next best product", "string",
               "The strongest recommendation the customer has not bought yet"),
    ScoreField("cx_nps_last", "Last NPS answer", "number", "Most recent NPS answer (0-10)",
               minimum=0, maximum=10),
    ScoreField("cx_nps_category", "NPS category", "enumeration",
               "promoter (9-10), passive (7-8), detractor (0-6)",
               options=("promoter", "passive", "detractor")),
    ScoreField("cx_csat", "CSAT (%)", "number", "Share of satisfied CSAT ratings (0-100)",
               minimum=0, maximum=100),
    ScoreField("cx_journey_stage", "Journey stage", "enumeration", "Furthest journey stage reached",
               options=("awareness", "consideration", "purchase", "retention", "advocacy")),
    ScoreField("cx_scored_at", "CX scored at", "datetime", "When these scores were computed",
               piggyback=True),
)

FIELDS: dict[str, ScoreField] = {f.name: f for f in SCORE_FIELDS}


def canonical(name: str, value: Any) -> Any:
    """The canonical JSON value of a score field (``None`` stays ``None``: no value)."""
    field = FIELDS[name]
    if value is None:
        return None
    if field.type == "number":
        d = Decimal(str(value)).quantize(Decimal(1).scaleb(-field.decimals), rounding=ROUND_HALF_EVEN)
        if field.minimum is not None:
            d = max(d, Decimal(str(field.minimum)))
        if field.maximum is not None:
            d = min(d, Decimal(str(field.maximum)))
        return int(d) if field.decimals == 0 else float(d)
    if field.type == "enumeration":
        value = str(value)
        if value not in field.options:
            raise ValueError(f"{name}: {value!r} is not one of {field.options}")
        return value
    if field.type == "datetime":
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if field.type == "date":
        if isinstance(value, datetime):
            value = value.astimezone(UTC).date()
        if isinstance(value, str):
            value = date.fromisoformat(value[:10])
        return value.isoformat()
    return str(value)[:255]


def canonical_values(values: dict[str, Any]) -> dict[str, Any]:
    """Canonical values of the known score fields in ``values`` (other keys dropped)."""
    return {k: canonical(k, v) for k, v in values.items() if k in FIELDS}
