"""Zendesk connector. Settings are complete; verification and normalisation land
with the connectors issue (until then every delivery is refused with 401, nothing stored)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from marshmallow import fields, post_load, validate

from connectors.zendesk import setup, writer
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
class ZendeskSettings:
    subdomain: str
    email: str
    api_token: str
    webhook_secret: str
    api_base_url: str
    batch_size: int = 100
    #: the plan's API budget per minute: Team 200, Growth/Professional 400, Enterprise 700,
    #: High Volume add-on 2500 (https://developer.zendesk.com/api-reference/introduction/rate-limits)
    requests_per_minute: int = 200


class ZendeskSettingsSchema(SettingsSchema):
    subdomain = fields.String(required=True, validate=validate.Regexp(
        r"^[a-z0-9][a-z0-9-]*$", error="just the subdomain: acme for acme.zendesk.com"))
    email = fields.Email(required=True)
    api_token = fields.String(required=True, validate=validate.Length(min=1))
    webhook_secret = fields.String(required=True, validate=validate.Length(min=1))
    api_base_url = fields.Url(load_default=None, allow_none=True, schemes={"https", "http"},
                              require_tld=False)
    batch_size = fields.Integer(load_default=100, validate=validate.Range(min=1, max=100))
    requests_per_minute = fields.Integer(load_default=200, validate=validate.Range(min=1, max=100000))

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

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        raise SignatureError("Zendesk signature verification is not implemented yet")
