"""Zendesk connector: signed webhooks (event subscriptions and the trigger template)
in, requester contact details looked up through ``users/show_many``.

The work is split by job: :mod:`.signatures` (verify/sign), :mod:`.normalise`
(payload -> touchpoints, pure) and :mod:`.client` (the Support API). This class
only wires them to the connector contract.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from importlib.resources import files
from typing import Any

from marshmallow import fields, post_load, validate

from connectors.zendesk import backfill, normalise, notes, setup, signatures, writer
from connectors.zendesk.client import SHOW_MANY_LIMIT, ZendeskClient
from cx_connector.connector import (
    BackfillPage,
    Connector,
    Delivery,
    Lookup,
    Normalised,
    PlannedRequest,
    RateBudget,
    RecordAlert,
    RecordWrite,
    SampleDelivery,
    ServiceUrl,
    SettingsSchema,
    SetupReport,
    Throttle,
    WholeNumber,
    WriteResult,
)
from cx_connector.errors import PayloadError
from cx_connector.http import Session

INVOCATION_HEADER = "X-Zendesk-Webhook-Invocation-Id"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


@dataclass(frozen=True)
class ZendeskSettings:
    subdomain: str
    email: str
    api_token: str
    webhook_secret: str
    api_base_url: str
    batch_size: int = 100
    #: signing secret of a second webhook posting here (the trigger webhook), if any
    trigger_webhook_secret: str | None = None
    #: scale (2, 3 or 5) of numeric CSAT survey answers whose payload does not name one
    csat_scale: int = 5
    #: the plan's API budget per minute: Team 200, Growth/Professional 400, Enterprise 700,
    #: High Volume add-on 2500 (https://developer.zendesk.com/api-reference/introduction/rate-limits)
    requests_per_minute: int = 200
    #: the incremental export endpoints' own limit (backfill): 10 per minute, 30 with the
    #: High Volume add-on (https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/)
    incremental_exports_per_minute: int = 10


class ZendeskSettingsSchema(SettingsSchema):
    subdomain = fields.String(required=True, validate=validate.Regexp(
        r"^[a-z0-9][a-z0-9-]*$", error="just the subdomain: acme for acme.zendesk.com"))
    email = fields.Email(required=True)
    api_token = fields.String(required=True, validate=validate.Length(min=1))
    webhook_secret = fields.String(required=True, validate=validate.Length(min=1))
    trigger_webhook_secret = fields.String(load_default=None, allow_none=True,
                                           validate=validate.Length(min=1))
    api_base_url = ServiceUrl(load_default=None, allow_none=True)
    batch_size = WholeNumber(load_default=100, validate=validate.Range(min=1, max=100))
    csat_scale = WholeNumber(load_default=5, validate=validate.OneOf(
        (2, 3, 5), error="the CSAT survey's rating scale: 2, 3 or 5"))
    requests_per_minute = WholeNumber(load_default=200, validate=validate.Range(min=1, max=100000))
    incremental_exports_per_minute = WholeNumber(load_default=10, validate=validate.Range(min=1,
                                                                                        max=1000))

    @post_load
    def _make(self, data: dict, **_: Any) -> ZendeskSettings:
        base = data.get("api_base_url") or f"https://{data['subdomain']}.zendesk.com"
        data["api_base_url"] = base.rstrip("/")
        return ZendeskSettings(**data)


class ZendeskConnector(Connector):
    name = "zendesk"
    title = "Zendesk"
    settings_schema = ZendeskSettingsSchema
    secret_settings = ("api_token", "webhook_secret", "trigger_webhook_secret")
    reads_request_url = False  # the signature does not cover the URL
    lookup_batch_size = SHOW_MANY_LIMIT

    @classmethod
    def demo_settings(cls) -> dict[str, Any]:
        return {"subdomain": "demo", "email": "demo@example.com",
                "api_token": "demo-token-not-for-production",
                "webhook_secret": "demo-webhook-secret-not-for-production"}

    # -- write-back (connectors/zendesk/writer.py and setup.py) --
    writes_back = True
    write_batch_max = writer.MAX_USERS
    #: update jobs run server-side: a few in flight keep the budget busy while they do
    write_concurrency = 4

    @cached_property
    def _api(self) -> Session:
        return writer.session(self.settings.api_base_url, self.settings.email, self.settings.api_token)

    def rate_budget(self) -> RateBudget:
        n = self.settings.requests_per_minute
        return RateBudget("window", n, 60.0, describe=f"{n} requests / minute")

    def write_batch(self, writes: list[RecordWrite], throttle: Throttle) -> dict[str, WriteResult]:
        return writer.write(self._api, throttle, writes)

    def describe_write(self, writes: list[RecordWrite]) -> list[PlannedRequest]:
        return writer.describe(writes)

    def setup(self, *, dry_run: bool, throttle: Throttle) -> SetupReport:
        return setup.run(self._api, throttle, dry_run=dry_run)

    # -- alerts (connectors/zendesk/notes.py) --
    alert_target = "user note"

    def post_alert(self, alert: RecordAlert, throttle: Throttle) -> str:
        """Appended to the user's notes, which agents see on the profile (see
        :mod:`connectors.zendesk.notes`)."""
        return notes.post(self._api, throttle, alert)

    # -- inbound -----------------------------------------------------------------------

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        s = self.settings
        signatures.verify([s.webhook_secret, s.trigger_webhook_secret or ""], body, headers, now=now,
                          tolerance=self.signature_tolerance)

    def sign(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
             now: datetime) -> dict[str, str]:
        return signatures.sign(self.settings.webhook_secret, body, now=now)

    def delivery_key(self, delivery: Delivery) -> str:
        """Zendesk's invocation id, else the event's id, else the body hash: a retried
        invocation, or the same event sent twice, is one delivery (Zendesk may deliver more
        than once: https://developer.zendesk.com/api-reference/webhooks/introduction)."""
        invocation = (delivery.headers.get(INVOCATION_HEADER) or "").strip()
        if _TOKEN_RE.match(invocation):
            return "invocation:" + invocation
        try:
            event = normalise.event_id(delivery.payload)
        except PayloadError:
            event = None
        return "event:" + event if event else super().delivery_key(delivery)

    def topic(self, delivery: Delivery) -> str:
        try:
            return normalise.topic(delivery.payload)
        except PayloadError:
            return ""

    @cached_property
    def _options(self) -> normalise.Options:
        return normalise.Options(source=self.name, csat_scale=self.settings.csat_scale)

    def normalise(self, delivery: Delivery, *, now: datetime) -> Normalised:
        return normalise.normalise(delivery.payload, self._options)

    def sample_deliveries(self) -> list[SampleDelivery]:
        """The demo story in ``samples/demo.json``: Bob (known to the shop by email) signs up
        in Zendesk, opens a ticket by email, gets an answer, it is solved, reopened, solved
        again and rated; Carol's chat ticket arrives through the trigger template."""
        raw = (files("connectors.zendesk") / "samples" / "demo.json").read_bytes()
        return [SampleDelivery(name=f"zendesk/{item['name']}", body=json.dumps(item["body"]).encode(),
                               headers=dict(item.get("headers") or {}))
                for item in json.loads(raw)]

    def writable_record(self, source_id: str) -> bool:
        return source_id.isdigit()  # every Zendesk identity we keep is a user id

    def record_url(self, source_id: str) -> str | None:
        return f"https://{self.settings.subdomain}.zendesk.com/agent/users/{source_id}"

    # -- enrichment ----------------------------------------------------------------------

    @cached_property
    def client(self) -> ZendeskClient:
        s = self.settings
        return ZendeskClient(base_url=s.api_base_url, email=s.email, api_token=s.api_token,
                             source=self.name)

    def lookup(self, source_ids: list[str], *, now: datetime) -> Lookup:
        """Requesters' email, name and phone (``users/show_many``, 100 per request)."""
        return self.client.lookup_users(source_ids)

    # -- backfill (connectors/zendesk/backfill.py) ------------------------------------------

    backfill_resources = backfill.RESOURCES

    def backfill_budgets(self) -> dict[str, RateBudget]:
        n = self.settings.incremental_exports_per_minute
        return {"api": self.rate_budget(),
                "export": RateBudget("window", n, 60.0, describe=f"{n} incremental exports / minute")}

    def backfill_page(self, resource: str, cursor: str | None, *, since: datetime | None,
                      throttles: Mapping[str, Throttle], now: datetime) -> BackfillPage:
        return backfill.page(self.client, self._options, resource, cursor, since=since,
                             throttles=throttles)
