"""Shopify connector. Settings are complete; verification and normalisation land
with the connectors issue (until then every delivery is refused with 401, nothing stored)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from marshmallow import fields, post_load, validate

from connectors.shopify import graphql, setup, writer
from cx_connector.connector import (
    Connector,
    PlannedRequest,
    RateBudget,
    RecordWrite,
    SettingsSchema,
    SetupReport,
    Throttle,
    WriteResult,
)
from cx_connector.errors import SignatureError
from cx_connector.http import Session


@dataclass(frozen=True)
class ShopifySettings:
    shop: str
    access_token: str
    client_secret: str
    api_base_url: str
    api_version: str = "2026-07"
    batch_size: int = 25
    #: the plan's GraphQL budget: cost points restored per second (Standard 100, Advanced 200,
    #: Plus 1000, Enterprise 2000) and the bucket size; both are corrected from every answer's
    #: extensions.cost.throttleStatus (https://shopify.dev/docs/api/usage/rate-limits)
    graphql_points_per_second: int = 100
    graphql_bucket_size: int = 1000


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
    graphql_points_per_second = fields.Integer(load_default=100, validate=validate.Range(min=1))
    graphql_bucket_size = fields.Integer(load_default=1000, validate=validate.Range(min=10))

    @post_load
    def _make(self, data: dict, **_: Any) -> ShopifySettings:
        data["api_base_url"] = (data.get("api_base_url") or f"https://{data['shop']}").rstrip("/")
        return ShopifySettings(**data)


class ShopifyConnector(Connector):
    name = "shopify"
    title = "Shopify"
    settings_schema = ShopifySettingsSchema
    secret_settings = ("access_token", "client_secret")

    # -- write-back (connectors/shopify/writer.py and setup.py) --
    writes_back = True
    write_batch_max = writer.MAX_METAFIELDS
    write_splits_records = True

    @cached_property
    def _api(self) -> Session:
        return graphql.session(self.settings.api_base_url, self.settings.access_token)

    def write_units(self, fields: Mapping[str, Any]) -> int:
        return len(fields)  # one metafield per score field

    def rate_budget(self) -> RateBudget:
        s = self.settings
        return RateBudget("bucket", s.graphql_bucket_size, refill_per_second=s.graphql_points_per_second,
                          cost=graphql.MUTATION_COST,
                          describe=f"{s.graphql_points_per_second} GraphQL points / s")

    def write_batch(self, writes: list[RecordWrite], throttle: Throttle) -> dict[str, WriteResult]:
        return writer.write(self._api, throttle, self.settings.api_version, writes)

    def describe_write(self, writes: list[RecordWrite]) -> list[PlannedRequest]:
        return writer.describe(writes, self.settings.api_version)

    def setup(self, *, dry_run: bool, throttle: Throttle) -> SetupReport:
        return setup.run(self._api, throttle, self.settings.api_version, dry_run=dry_run)

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        raise SignatureError("Shopify signature verification is not implemented yet")
