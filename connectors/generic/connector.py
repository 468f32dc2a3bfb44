"""Generic JSON webhook: the body is one touchpoint, or an array of them, in the
schema of :mod:`cx_connector.touchpoint` (``source`` may be omitted; it is ``generic``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any

from marshmallow import ValidationError, fields, post_load, validate

from connectors.generic import signatures
from cx_connector.connector import (
    Connector,
    Delivery,
    Normalised,
    SampleDelivery,
    SettingsSchema,
    dedupe_keys,
)
from cx_connector.errors import PayloadError
from cx_connector.touchpoint import TouchpointSchema

DELIVERY_HEADER = "X-CX-Delivery-Id"
_SCHEMA = TouchpointSchema(many=True)  # reusable: building a schema costs more than loading


@dataclass(frozen=True)
class GenericSettings:
    secret: str


class GenericSettingsSchema(SettingsSchema):
    secret = fields.String(required=True, validate=validate.Length(min=16, error=(
        "too short: use at least 16 random characters")))

    @post_load
    def _make(self, data: dict, **_: Any) -> GenericSettings:
        return GenericSettings(**data)


def flatten_errors(messages: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(messages, dict):
        for key, sub in messages.items():
            path = prefix if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            out += flatten_errors(sub, path)
    elif isinstance(messages, list):
        for m in messages:
            out += flatten_errors(m, prefix)
    else:
        out.append(f"{prefix}: {messages}" if prefix else str(messages))
    return out


class GenericConnector(Connector):
    name = "generic"
    title = "Generic JSON"
    settings_schema = GenericSettingsSchema
    secret_settings = ("secret",)
    reads_request_url = False  # the signature does not cover the URL

    @classmethod
    def demo_settings(cls) -> dict[str, Any]:
        return {"secret": "demo-secret-not-for-production"}

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        signatures.verify(self.settings.secret, body, headers)

    def sign(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
             now: datetime) -> dict[str, str]:
        return {signatures.HEADER: signatures.compute(self.settings.secret, body)}

    def delivery_key(self, delivery: Delivery) -> str:
        """``X-CX-Delivery-Id``, else the touchpoint ids, else the body's hash.

        The ids are used only when every item has one (a string): items without would all
        share the key of their missing ids, and different bodies would pass for
        redeliveries of one another, never stored.
        """
        given = (delivery.headers.get(DELIVERY_HEADER) or "").strip()
        if given:
            return "id:" + given
        payload = delivery.payload
        items = payload if isinstance(payload, list) else [payload]
        ids = [i.get("touchpoint_id") if isinstance(i, dict) else None for i in items]
        if ids and all(isinstance(i, str) and i.strip() for i in ids):
            return dedupe_keys(ids)
        return super().delivery_key(delivery)

    def topic(self, delivery: Delivery) -> str:
        payload = delivery.payload
        items = payload if isinstance(payload, list) else [payload]
        kinds = sorted({i.get("kind") for i in items if isinstance(i, dict) and i.get("kind")})
        return ",".join(kinds)[:128]

    def normalise(self, delivery: Delivery, *, now: datetime) -> Normalised:
        payload = delivery.payload
        many = isinstance(payload, list)
        items = payload if many else [payload]
        if not items:
            return Normalised.ignore("empty array")
        if not all(isinstance(i, dict) for i in items):
            raise PayloadError("expected a touchpoint object or an array of touchpoint objects")
        items = [{"source": self.name, **i} for i in items]
        bad = [i for i, item in enumerate(items) if item.get("source") != self.name]
        if bad:
            raise PayloadError(f"{f'{bad[0]}.' if many else ''}source: must be {self.name!r} "
                               f"on /webhooks/{self.name}")
        try:
            tps = _SCHEMA.load(items)
        except ValidationError as exc:
            msgs = flatten_errors(exc.messages if many else exc.messages.get(0, exc.messages))
            raise PayloadError("; ".join(msgs[:20])) from None
        return Normalised(touchpoints=tuple(tps))

    def sample_deliveries(self) -> list[SampleDelivery]:
        raw = (files("connectors.generic") / "samples" / "demo.json").read_bytes()
        out = []
        for i, item in enumerate(json.loads(raw)):
            out.append(SampleDelivery(name=f"generic/{i}:{item['kind']}",
                                      body=json.dumps(item).encode()))
        return out
