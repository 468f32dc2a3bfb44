"""How the score fields live in HubSpot: contact properties in one property group.

Property types per the CRM v3 properties API
(https://developers.hubspot.com/docs/api/crm/properties): ``number``/``number``,
``enumeration``/``select`` with options, ``string``/``text``, ``date`` and
``datetime``/``date``. Values are always sent as strings; ``""`` clears a value;
dates are epoch milliseconds, at midnight UTC for ``date``
(https://developers.hubspot.com/docs/faq/how-should-timestamps-be-formatted-for-hubspots-apis).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from cx_connector.connector import FIELDS, SCORE_FIELDS, ScoreField

GROUP = {"name": "cx_connector", "label": "CX Connector", "displayOrder": -1}

#: score-field type -> (HubSpot type, fieldType)
TYPES = {
    "number": ("number", "number"),
    "enumeration": ("enumeration", "select"),
    "string": ("string", "text"),
    "date": ("date", "date"),
    "datetime": ("datetime", "date"),
}


def property_definition(field: ScoreField) -> dict[str, Any]:
    """The body of ``POST /crm/v3/properties/contacts`` for one score field."""
    type_, field_type = TYPES[field.type]
    body: dict[str, Any] = {
        "name": field.name, "label": field.label, "type": type_, "fieldType": field_type,
        "groupName": GROUP["name"], "description": field.description, "formField": False,
    }
    if field.type == "enumeration":
        body["options"] = [{"label": o.capitalize(), "value": o, "displayOrder": i, "hidden": False}
                           for i, o in enumerate(field.options)]
    return body


def definitions() -> list[dict[str, Any]]:
    return [property_definition(f) for f in SCORE_FIELDS]


def _epoch_ms(value: datetime) -> str:
    return str(int(value.timestamp() * 1000))


def value(name: str, canonical: Any) -> str:
    """A canonical score value as the property string HubSpot expects."""
    if canonical is None:
        return ""
    kind = FIELDS[name].type
    if kind == "datetime":
        return _epoch_ms(datetime.fromisoformat(str(canonical).replace("Z", "+00:00")))
    if kind == "date":
        d = canonical if isinstance(canonical, date) else date.fromisoformat(str(canonical)[:10])
        return _epoch_ms(datetime(d.year, d.month, d.day, tzinfo=UTC))
    if kind == "number":
        number = Decimal(str(canonical))
        return str(int(number)) if number == number.to_integral_value() else format(number.normalize(), "f")
    return str(canonical)


def properties(fields: dict[str, Any]) -> dict[str, str]:
    return {name: value(name, v) for name, v in fields.items()}
