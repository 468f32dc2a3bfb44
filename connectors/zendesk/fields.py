"""How the score fields live in Zendesk: one user field each (user fields API,
https://developer.zendesk.com/api-reference/ticketing/users/user_fields/).

Numbers are ``decimal`` fields, enumerations ``dropdown`` fields, dates and
datetimes ``date`` fields (Zendesk has no date-time type: ``cx_scored_at`` keeps
the day), strings ``text`` fields. A dropdown option's value is a tag shared with
every other tag of the account, so each is prefixed with its field
(``cx_health_green``), never a bare ``green`` that could collide with a tag in use.
"""

from __future__ import annotations

from typing import Any

from cx_connector.connector import FIELDS, SCORE_FIELDS, ScoreField

TYPES = {"number": "decimal", "enumeration": "dropdown", "string": "text", "date": "date",
         "datetime": "date"}


def option_value(name: str, option: str) -> str:
    return f"{name}_{option}"


def user_field(field: ScoreField) -> dict[str, Any]:
    """The body of ``POST /api/v2/user_fields.json`` for one score field."""
    body: dict[str, Any] = {"type": TYPES[field.type], "key": field.name, "title": field.label,
                            "description": field.description}
    if field.type == "enumeration":
        body["custom_field_options"] = [{"name": o.capitalize(), "value": option_value(field.name, o)}
                                        for o in field.options]
    return {"user_field": body}


def definitions() -> list[dict[str, Any]]:
    return [user_field(f) for f in SCORE_FIELDS]


def value(name: str, canonical: Any) -> Any:
    """A canonical score value as the user-field value Zendesk expects (None clears)."""
    if canonical is None:
        return None
    kind = FIELDS[name].type
    if kind == "enumeration":
        return option_value(name, str(canonical))
    if kind in ("date", "datetime"):
        return str(canonical)[:10]
    return canonical


def user_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value(name, v) for name, v in fields.items()}
