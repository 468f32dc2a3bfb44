"""Shopify connector. Settings are complete; verification and normalisation land
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
class ShopifySettings:
    shop: str
    access_token: str
    client_secret: str
    api_base_url: str
    api_version: str = "2026-07"
    batch_size: int = 25


class ShopifySettingsSchema(SettingsSchema):
    shop = fields.String(required=True, validate=validate.Regexp(
        r"^[a-z0-9][a-z0-9-]*\.myshopify\.com$", error="use the shop's x.myshopify.com domain"))
    access_token = fields.String(required=True, validate=validate.Length(min=1))
    client_secret = fields.String(required=True, validate=validate.Length(min=1))
    api_version = fields.String(load_default="2026-07", validate=validate.Regexp(
        r"^(\d{4}-(01|04|07|10)|unstable)$", error="a Shopify API version such as 2026-07"))
    api_base_url = fields.Url(load_default=None, allow_none=True, schemes={"https", "http"},
                              require_tld=False)
    batch_size = fields.Integer(load_default=25, validate=validate.Range(min=1, max=25))

    @post_load
    def _make(self, data: dict, **_: Any) -> ShopifySettings:
        data["api_base_url"] = (data.get("api_base_url") or f"https://{data['shop']}").rstrip("/")
        return ShopifySettings(**data)


class ShopifyConnector(Connector):
    name = "shopify"
    title = "Shopify"
    settings_schema = ShopifySettingsSchema
    secret_settings = ("access_token", "client_secret")

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        raise SignatureError("Shopify signature verification is not implemented yet")
