"""How the score fields live in Shopify: customer metafields in namespace ``cx``.

Each has a metafield definition, so staff see it on the customer page
(https://shopify.dev/docs/apps/build/custom-data). ``cx_score`` is ``cx.score``.
Types (https://shopify.dev/docs/apps/build/custom-data/metafields/list-of-data-types):
whole numbers ``number_integer``, others ``number_decimal``, enumerations
``single_line_text_field`` limited by a ``choices`` validation, dates ``date``,
datetimes ``date_time``, strings ``single_line_text_field``. Values are strings.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from cx_connector.connector import FIELDS, SCORE_FIELDS, ScoreField

NAMESPACE = "cx"
OWNER_TYPE = "CUSTOMER"


def key(name: str) -> str:
    return name.removeprefix("cx_")


def metafield_type(field: ScoreField) -> str:
    if field.type == "number":
        return "number_integer" if field.decimals == 0 else "number_decimal"
    return {"date": "date", "datetime": "date_time"}.get(field.type, "single_line_text_field")


def definition(field: ScoreField) -> dict[str, Any]:
    """``MetafieldDefinitionInput`` for one score field (pinned: shown on the customer page)."""
    out: dict[str, Any] = {"name": field.label, "namespace": NAMESPACE, "key": key(field.name),
                           "description": field.description, "type": metafield_type(field),
                           "ownerType": OWNER_TYPE, "pin": True}
    if field.type == "enumeration":
        out["validations"] = [{"name": "choices", "value": json.dumps(list(field.options))}]
    return out


def definitions() -> list[dict[str, Any]]:
    return [definition(f) for f in SCORE_FIELDS]


def value(name: str, canonical: Any) -> str:
    field = FIELDS[name]
    if field.type == "number":
        number = Decimal(str(canonical))
        if field.decimals == 0:
            return str(int(number))
        return format(number.quantize(Decimal(1).scaleb(-field.decimals)), "f")
    if field.type == "date":
        return str(canonical)[:10]
    return str(canonical)


def owner_id(external_id: str) -> str:
    return external_id if external_id.startswith("gid://") else f"gid://shopify/Customer/{external_id}"
