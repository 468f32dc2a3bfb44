"""HubSpot connector. Settings are complete; verification and normalisation land
with the connectors issue (until then every delivery is refused with 401, nothing stored)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from marshmallow import fields, post_load, validate

from connectors.hubspot import setup, writer
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
class HubSpotSettings:
    client_secret: str
    access_token: str
    webhook_url: str
    api_base_url: str = "https://api.hubapi.com"
    batch_size: int = 100
    #: the account's API budget: 100 per 10 s (Free/Starter), 190 (Professional/Enterprise),
    #: 250 (API limit increase); https://developers.hubspot.com/changelog/increasing-our-api-limits
    requests_per_10s: int = 100


class HubSpotSettingsSchema(SettingsSchema):
    client_secret = fields.String(required=True, validate=validate.Length(min=1))
    access_token = fields.String(required=True, validate=validate.Length(min=1))
    webhook_url = fields.Url(required=True, schemes={"https", "http"}, require_tld=False)
    api_base_url = fields.Url(load_default="https://api.hubapi.com", schemes={"https", "http"},
                              require_tld=False)
    batch_size = fields.Integer(load_default=100, validate=validate.Range(min=1, max=100))
    requests_per_10s = fields.Integer(load_default=100, validate=validate.Range(min=1, max=10000))

    @post_load
    def _make(self, data: dict, **_: Any) -> HubSpotSettings:
        data["api_base_url"] = data["api_base_url"].rstrip("/")
        return HubSpotSettings(**data)


class HubSpotConnector(Connector):
    name = "hubspot"
    title = "HubSpot"
    settings_schema = HubSpotSettingsSchema
    secret_settings = ("client_secret", "access_token")

    # -- write-back (connectors/hubspot/writer.py and setup.py) --
    writes_back = True
    write_batch_max = writer.MAX_INPUTS

    @cached_property
    def _api(self) -> Session:
        return writer.session(self.settings.api_base_url, self.settings.access_token)

    def rate_budget(self) -> RateBudget:
        n = self.settings.requests_per_10s
        return RateBudget("window", n, 10.0, describe=f"{n} requests / 10 s")

    def write_batch(self, writes: list[RecordWrite], throttle: Throttle) -> dict[str, WriteResult]:
        return writer.write(self._api, throttle, writes)

    def describe_write(self, writes: list[RecordWrite]) -> list[PlannedRequest]:
        return writer.describe(writes)

    def setup(self, *, dry_run: bool, throttle: Throttle) -> SetupReport:
        return setup.run(self._api, throttle, dry_run=dry_run)

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        raise SignatureError("HubSpot signature verification is not implemented yet")
