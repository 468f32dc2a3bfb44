"""Shopify connector: HMAC-verified webhooks (orders, refunds, checkouts, customers,
products and the mandatory compliance topics) normalised into touchpoints.

Verification is in :mod:`connectors.shopify.signatures`, the payload mapping in
:mod:`connectors.shopify.normalise`. Reference:
https://shopify.dev/docs/api/webhooks/2026-07 and ``../shared/PLATFORMS.md`` §3.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from importlib.resources import files
from typing import Any

from marshmallow import fields, post_load, validate

from connectors.shopify import backfill, graphql, setup, signatures, writer
from connectors.shopify import normalise as norm
from cx_connector.connector import (
    BackfillPage,
    Connector,
    Delivery,
    Duration,
    Normalised,
    PlannedRequest,
    RateBudget,
    RecordWrite,
    SampleDelivery,
    ServiceUrl,
    SettingsSchema,
    SetupReport,
    Throttle,
    WholeNumber,
    WriteResult,
)
from cx_connector.http import Session

_NAMESPACE = uuid.UUID("5b0b6c1e-3f4e-4a53-9d2e-6f0c1d9a7b21")  # demo/fuzz webhook ids



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
    #: oldest ``X-Shopify-Triggered-At`` accepted: Shopify retries for 4 hours with the
    #: original trigger time, so this must exceed that (see signatures.py)
    max_delivery_age: timedelta = timedelta(hours=5)


class ShopifySettingsSchema(SettingsSchema):
    shop = fields.String(required=True, validate=validate.Regexp(
        r"^[a-z0-9][a-z0-9-]*\.myshopify\.com$", error="use the shop's x.myshopify.com domain"))
    access_token = fields.String(required=True, validate=validate.Length(min=1))
    client_secret = fields.String(required=True, validate=validate.Length(min=1))
    api_version = fields.String(load_default="2026-07", validate=validate.Regexp(
        r"^(\d{4}-(01|04|07|10)|unstable)$", error="a Shopify API version such as 2026-07"))
    api_base_url = ServiceUrl(load_default=None, allow_none=True)
    batch_size = WholeNumber(load_default=25, validate=validate.Range(min=1, max=25))
    graphql_points_per_second = WholeNumber(load_default=100, validate=validate.Range(min=1))
    graphql_bucket_size = WholeNumber(load_default=1000, validate=validate.Range(min=10))
    max_delivery_age = Duration(load_default=ShopifySettings.max_delivery_age)

    @post_load
    def _make(self, data: dict, **_: Any) -> ShopifySettings:
        data["api_base_url"] = (data.get("api_base_url") or f"https://{data['shop']}").rstrip("/")
        return ShopifySettings(**data)


class ShopifyConnector(Connector):
    name = "shopify"
    title = "Shopify"
    settings_schema = ShopifySettingsSchema
    secret_settings = ("access_token", "client_secret")
    reads_request_url = False  # the signature does not cover the URL

    # -- write-back (connectors/shopify/writer.py and setup.py) --
    writes_back = True
    write_batch_max = writer.MAX_METAFIELDS
    write_splits_records = True
    #: the bucket, not the number of open requests, is the limit: a few in flight keep it
    #: busy while each call takes its round trip
    write_concurrency = 4

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

    # -- backfill (connectors/shopify/backfill.py; spends the GraphQL bucket of rate_budget) --
    backfill_resources = backfill.RESOURCES

    def backfill_page(self, resource: str, cursor: str | None, *, since: datetime | None,
                      throttles: Mapping[str, Throttle], now: datetime) -> BackfillPage:
        return backfill.page(self._api, self.settings.api_version, self._context(), resource, cursor,
                             since=since, throttles=throttles)

    @classmethod
    def demo_settings(cls) -> dict[str, Any]:
        return {"shop": "demo-shop.myshopify.com", "access_token": "shpat_demo_not_for_production",
                "client_secret": "demo-shopify-secret-not-for-production"}

    # -- inbound ----------------------------------------------------------------------

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        signatures.verify(body, headers, secret=self.settings.client_secret, shop=self.settings.shop,
                          now=now, tolerance=self.signature_tolerance,
                          max_age=self.settings.max_delivery_age)

    def sign(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
             now: datetime) -> dict[str, str]:
        """The HMAC, plus the other headers Shopify sends when ``headers`` lacks them.

        The webhook id is derived from topic and body, so signing the same request
        twice gives a redelivery (deduplicated), as Shopify's retries are.
        """
        given = {k.lower() for k in headers}
        topic = next((v for k, v in headers.items() if k.lower() == signatures.TOPIC.lower()), "")
        out = {signatures.HMAC: signatures.compute(self.settings.client_secret, body)}
        defaults = {
            signatures.SHOP_DOMAIN: self.settings.shop,
            signatures.API_VERSION: self.settings.api_version,
            signatures.TRIGGERED_AT: now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            signatures.WEBHOOK_ID: str(uuid.uuid5(
                _NAMESPACE, topic + ":" + hashlib.sha256(body).hexdigest())),
        }
        out.update({k: v for k, v in defaults.items() if k.lower() not in given})
        return out

    def delivery_key(self, delivery: Delivery) -> str:
        """``X-Shopify-Webhook-Id``: the same for every retry of one delivery."""
        webhook_id = signatures.header(delivery.headers, signatures.WEBHOOK_ID)
        return "webhook:" + webhook_id if webhook_id else super().delivery_key(delivery)

    def topic(self, delivery: Delivery) -> str:
        return (signatures.header(delivery.headers, signatures.TOPIC) or "").lower()

    def normalise(self, delivery: Delivery, *, now: datetime) -> Normalised:
        topic = self.topic(delivery)
        if not norm.supported(topic):  # an unused topic is ignored, whatever its body
            return norm.normalise(topic, None, self._context())
        return norm.normalise(topic, delivery.payload, self._context())

    def _context(self) -> norm.Context:
        return norm.Context(source=self.name, shop=self.settings.shop)

    def sample_deliveries(self) -> list[SampleDelivery]:
        """Business events for ``cx-connector demo`` (``samples/index.json``). The
        compliance topics are left out: they erase or export data, not show it."""
        folder = files("connectors.shopify") / "samples"
        out = []
        for entry in json.loads((folder / "index.json").read_bytes()):
            out.append(SampleDelivery(name=f"shopify/{entry['file']}:{entry['topic']}",
                                      body=(folder / entry["file"]).read_bytes(),
                                      headers={signatures.TOPIC: entry["topic"]}))
        return out

    # -- records ----------------------------------------------------------------------

    def writable_record(self, source_id: str) -> bool:
        """Only customers (plain numeric ids) take metafields; ``order:<id>`` and
        ``checkout:<token>`` records exist to link refunds and guest checkouts."""
        return source_id.isdigit()

    def record_url(self, source_id: str) -> str | None:
        store = self.settings.shop.removesuffix(".myshopify.com")
        if source_id.isdigit():
            return f"https://admin.shopify.com/store/{store}/customers/{source_id}"
        kind, _, rid = source_id.partition(":")
        if kind == "order" and rid.isdigit():
            return f"https://admin.shopify.com/store/{store}/orders/{rid}"
        return None
