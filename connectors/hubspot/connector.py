"""HubSpot connector. Settings are complete; verification and normalisation land
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
class HubSpotSettings:
    client_secret: str
    access_token: str
    webhook_url: str
    api_base_url: str = "https://api.hubapi.com"
    batch_size: int = 100


class HubSpotSettingsSchema(SettingsSchema):
    client_secret = fields.String(required=True, validate=validate.Length(min=1))
    access_token = fields.String(required=True, validate=validate.Length(min=1))
    webhook_url = fields.Url(required=True, schemes={"https", "http"}, require_tld=False)
    api_base_url = fields.Url(load_default="https://api.hubapi.com", schemes={"https", "http"},
                              require_tld=False)
    batch_size = fields.Integer(load_default=100, validate=validate.Range(min=1, max=100))

    @post_load
    def _make(self, data: dict, **_: Any) -> HubSpotSettings:
        data["api_base_url"] = data["api_base_url"].rstrip("/")
        return HubSpotSettings(**data)


class HubSpotConnector(Connector):
    name = "hubspot"
    title = "HubSpot"
    settings_schema = HubSpotSettingsSchema
    secret_settings = ("client_secret", "access_token")

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        raise SignatureError("HubSpot signature verification is not implemented yet")
