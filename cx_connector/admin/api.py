"""The JSON API (``/api/v1``), read-only, behind ``Authorization: Bearer <admin_token>``.

* ``GET /api/v1/customers/<id, email, phone or source:id>``: profile, identities (with
  links to each platform record), scores, their explanation in words and the stored
  inputs, write-back status per platform record;
* ``GET /api/v1/customers?health=red&limit=50&cursor=...&q=...``: a page of customers,
  newest first, and the ``next_cursor`` of the following page (``null`` on the last);
* ``GET /api/v1/kpis?days=30``: the latest KPI snapshot and the daily history.

Query parameters are declared with marshmallow and validated once: an unknown one or a
bad value is a 400 naming it. Every error is JSON, from the app's one error handler.
Times are ISO-8601 UTC, money and ratings as the database holds them.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from cx_connector import customers as people
from cx_connector import db, identity
from cx_connector.admin import auth
from cx_connector.errors import InvalidParameter, NotFound
from cx_connector.runtime import Runtime

api = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_LIMIT = 500


def rt() -> Runtime:
    return current_app.extensions["cx"]


def _json(value: Any, status: int = 200) -> Any:
    return current_app.response_class(db.json_dumps(value), status=status, mimetype="application/json")


class CustomerListArgs(Schema):
    class Meta:
        unknown = RAISE

    health = fields.String(validate=validate.OneOf(people.HEALTH_FILTERS), load_default=None)
    limit = fields.Integer(validate=validate.Range(min=1, max=MAX_LIMIT), load_default=50)
    cursor = fields.Integer(validate=validate.Range(min=1), load_default=None)
    q = fields.String(validate=validate.Length(min=1, max=254), load_default=None)


class KpiArgs(Schema):
    class Meta:
        unknown = RAISE

    days = fields.Integer(validate=validate.Range(min=1, max=3650), load_default=30)


def parse_args(schema: type[Schema]) -> dict[str, Any]:
    """The query string validated by ``schema``; :class:`InvalidParameter` (400) names every problem."""
    raw = request.args.to_dict(flat=False)
    repeated = sorted(k for k, v in raw.items() if len(v) > 1)
    if repeated:
        raise InvalidParameter(f"{repeated[0]}: give it once")
    try:
        return schema().load({k: v[0] for k, v in raw.items()})
    except ValidationError as exc:
        known = ", ".join(schema().fields)
        problems = []
        for name, messages in sorted(exc.normalized_messages().items()):
            for message in messages if isinstance(messages, list) else [messages]:
                if message == "Unknown field.":
                    message = f"unknown parameter (known: {known})"
                problems.append(f"{name}: {message}")
        raise InvalidParameter("; ".join(problems)) from None


@api.before_request
def _auth() -> None:
    auth.require_api()


@api.after_request
def _no_store(resp: Any) -> Any:
    resp.headers["Cache-Control"] = "no-store"
    return resp


@api.get("/customers/<path:ref>")
def customer(ref: str) -> Any:
    """One customer by id, email, phone or ``source:id`` (merged customers: the survivor)."""
    r = rt()
    with db.read(r.engine) as conn:
        cid = identity.find_customer(conn, ref)
        if cid is None:
            raise NotFound(f"no customer matches {ref!r} (give an id, email, phone or source:id)")
        out = people.summaries(conn, [cid], r.connectors)[0]
        explained = people.explained(conn, cid)
        out["writeback"] = people.writeback(conn, r.connectors, cid)
    out["scored_at"] = explained["scored_at"] if explained else None
    out["explanation"] = ({name: item["explanation"] for name, item in explained["scores"].items()}
                          if explained else {})
    out["inputs"] = explained["inputs"] if explained else None
    return _json(out)


@api.get("/customers")
def customers() -> Any:
    args = parse_args(CustomerListArgs)
    r = rt()
    with db.read(r.engine) as conn:
        ids = people.listing(conn, health=args["health"], query=args["q"], limit=args["limit"] + 1,
                             before=args["cursor"])
        rows = people.summaries(conn, ids[:args["limit"]], r.connectors)
    next_cursor = ids[args["limit"] - 1] if len(ids) > args["limit"] else None
    return _json({"customers": rows, "next_cursor": next_cursor, "limit": args["limit"],
                  "health": args["health"], "q": args["q"]})


@api.get("/kpis")
def kpis() -> Any:
    """The latest snapshot and up to ``days`` daily snapshots, newest first (computed by the
    ``kpis`` job; ``cx-connector kpis`` computes today's now)."""
    from cx_connector.scoring import kpis as company

    args = parse_args(KpiArgs)
    with db.read(rt().engine) as conn:
        history = company.history(conn, args["days"])
    return _json({"latest": history[0] if history else None, "history": history})
