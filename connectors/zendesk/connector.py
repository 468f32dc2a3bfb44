"""Zendesk connector. Settings are complete; verification and normalisation land
with the connectors issue (until then every delivery is refused with 401, nothing stored)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from marshmallow import fields, post_load, validate

from cx_connector.connector import Connector, SettingsSchema
from cx_connector.errors import SignatureError


@dataclass(frozen=True)
class ZendeskSettings:
    subdomain: str
    email: str
    api_token: str
    webhook_secret: str
    api_base_url: str
    batch_size: int = 100


class ZendeskSettingsSchema(SettingsSchema):
    subdomain = fields.String(required=True, validate=validate.Regexp(
        r"^[a-z0-9][a-z0-9-]*$", error="just the subdomain: acme for acme.zendesk.com"))
    email = fields.Email(required=True)
    api_token = fields.String(required=True, validate=validate.Length(min=1))
    webhook_secret = fields.String(required=True, validate=validate.Length(min=1))
    api_base_url = fields.Url(load_default=None, allow_none=True, schemes={"https", "http"},
                              require_tld=False)
    batch_size = fields.Integer(load_default=100, validate=validate.Range(min=1, max=100))

    @post_load
    def _make(self, data: dict, **_: Any) -> ZendeskSettings:
        base = data.get("api_base_url") or f"https://{data['subdomain']}.zendesk.com"
        data["api_base_url"] = base.rstrip("/")
        return ZendeskSettings(**data)


class ZendeskConnector(Connector):
    name = "zendesk"
    title = "Zendesk"
    settings_schema = ZendeskSettingsSchema
    secret_settings = ("api_token", "webhook_secret")

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        raise SignatureError("Zendesk signature verification is not implemented yet")
