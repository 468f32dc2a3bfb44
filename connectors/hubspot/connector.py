"""HubSpot connector: webhook signatures (v3, v2, v1), event normalisation, contact lookup.

https://developers.hubspot.com/docs/api/webhooks
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from importlib.resources import files
from typing import Any

from marshmallow import ValidationError, fields, post_load, validate

from connectors.hubspot import backfill, setup, signatures, tasks, writer
from connectors.hubspot import normalise as norm
from connectors.hubspot.client import Contact, HubSpotClient
from cx_connector.connector import (
    BackfillPage,
    Connector,
    CustomerRef,
    Delivery,
    Link,
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
    dedupe_keys,
)
from cx_connector.http import Session

#: HubSpot object type ids used in record URLs (https://developers.hubspot.com/docs/api/crm/understanding-the-crm)
_OBJECT_TYPE_IDS = {"": "0-1", "deal": "0-3", "ticket": "0-5"}


@dataclass(frozen=True)
class HubSpotSettings:
    client_secret: str
    access_token: str
    webhook_url: str
    api_base_url: str = "https://api.hubapi.com"
    batch_size: int = 100
    #: the HubSpot account (hub) id: needed for links to records in HubSpot's UI
    portal_id: str | None = None
    #: HubSpot's web app (``https://app-eu1.hubspot.com`` for EU-hosted accounts)
    app_url: str = "https://app.hubspot.com"
    #: the id of the app whose token writes scores back: its property changes are ignored
    app_id: str | None = None
    won_stages: tuple[str, ...] = ("closedwon",)
    lost_stages: tuple[str, ...] = ("closedlost",)
    ticket_closed_stages: tuple[str, ...] = ("4",)
    survey_properties: Mapping[str, norm.SurveyProperty] = field(
        default_factory=lambda: dict(norm.Rules().survey_properties))
    accept_legacy_signatures: bool = True
    #: the account's company currency (ISO 4217), given to deal amounts
    currency: str | None = None
    #: the account's API budget: 100 per 10 s (Free/Starter), 190 (Professional/Enterprise),
    #: 250 (API limit increase); https://developers.hubspot.com/changelog/increasing-our-api-limits
    requests_per_10s: int = 100
    #: alert tasks: assigned to ``contact_owner``, to nobody (``none``) or to this owner id
    alert_task_owner: str = "contact_owner"
    #: alert tasks' priority: LOW, MEDIUM or HIGH
    alert_task_priority: str = "HIGH"


class SurveyPropertyField(fields.Field):
    """``nps`` / ``csat`` / ``ces``, or ``{type: csat, scale_max: 5}``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> norm.SurveyProperty:
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict) or set(value) - {"type", "scale_max"}:
            raise ValidationError("use nps, csat or ces, or {type: ..., scale_max: ...}")
        kind = value.get("type")
        if kind not in norm.DEFAULT_SCALES:
            raise ValidationError("type must be nps, csat or ces")
        scale = value.get("scale_max", norm.DEFAULT_SCALES[kind])
        if isinstance(scale, bool) or not isinstance(scale, int | float | str | Decimal):
            raise ValidationError("scale_max must be a number")
        try:
            scale = Decimal(str(scale))
        except ArithmeticError:
            raise ValidationError("scale_max must be a number") from None
        if not scale.is_finite() or not 1 <= scale <= 100:
            raise ValidationError("scale_max must be between 1 and 100")
        return norm.SurveyProperty(kind, scale)


class HubSpotSettingsSchema(SettingsSchema):
    client_secret = fields.String(required=True, validate=validate.Length(min=1))
    access_token = fields.String(required=True, validate=validate.Length(min=1))
    webhook_url = ServiceUrl(required=True)
    api_base_url = ServiceUrl(load_default="https://api.hubapi.com")
    batch_size = WholeNumber(load_default=100, validate=validate.Range(min=1, max=100))
    portal_id = fields.String(load_default=None, allow_none=True,
                              validate=validate.Regexp(r"^\d{1,20}$", error="the numeric account id"))
    app_url = ServiceUrl(load_default="https://app.hubspot.com")
    app_id = fields.String(load_default=None, allow_none=True,
                           validate=validate.Regexp(r"^\d{1,20}$", error="the numeric app id"))
    won_stages = fields.List(fields.String(validate=validate.Length(min=1, max=100)),
                             load_default=["closedwon"], validate=validate.Length(min=1))
    lost_stages = fields.List(fields.String(validate=validate.Length(min=1, max=100)),
                              load_default=["closedlost"], validate=validate.Length(min=1))
    ticket_closed_stages = fields.List(fields.String(validate=validate.Length(min=1, max=100)),
                                       load_default=["4"], validate=validate.Length(min=1))
    survey_properties = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=100)),
                                    values=SurveyPropertyField(), load_default=None)
    accept_legacy_signatures = fields.Boolean(load_default=True)
    currency = fields.String(load_default=None, allow_none=True,
                             validate=validate.Regexp(r"^[A-Z]{3}$", error="an ISO 4217 code, e.g. EUR"))
    requests_per_10s = WholeNumber(load_default=100, validate=validate.Range(min=1, max=10000))
    alert_task_owner = fields.String(load_default="contact_owner", validate=validate.Regexp(
        r"^(contact_owner|none|\d{1,20})$", error="contact_owner, none, or a numeric HubSpot owner id"))
    alert_task_priority = fields.String(load_default="HIGH",
                                        validate=validate.OneOf(["LOW", "MEDIUM", "HIGH"]))

    @post_load
    def _make(self, data: dict, **_: Any) -> HubSpotSettings:
        data["api_base_url"] = data["api_base_url"].rstrip("/")
        data["app_url"] = data["app_url"].rstrip("/")
        for key in ("won_stages", "lost_stages", "ticket_closed_stages"):
            data[key] = tuple(data[key])
        if data["survey_properties"] is None:
            del data["survey_properties"]
        both = set(data["won_stages"]) & set(data["lost_stages"])
        if both:
            raise ValidationError(f"a stage cannot be both won and lost: {', '.join(sorted(both))}",
                                  "lost_stages")
        return HubSpotSettings(**data)


class HubSpotConnector(Connector):
    name = "hubspot"
    title = "HubSpot"
    settings_schema = HubSpotSettingsSchema
    secret_settings = ("client_secret", "access_token")
    reads_request_url = False  # v2/v3 signatures cover the configured webhook_url, not the request's
    lookup_batch_size = 100

    def __init__(self, settings: HubSpotSettings) -> None:
        super().__init__(settings)
        self.rules = norm.Rules(
            won_stages=frozenset(settings.won_stages), lost_stages=frozenset(settings.lost_stages),
            ticket_closed_stages=frozenset(settings.ticket_closed_stages),
            survey_properties=dict(settings.survey_properties), app_id=settings.app_id,
            currency=settings.currency)
        self._client: HubSpotClient | None = None

    @classmethod
    def demo_settings(cls) -> dict[str, Any]:
        return {"client_secret": "demo-hubspot-client-secret", "access_token": "demo-hubspot-token",
                "webhook_url": "http://localhost:8000/webhooks/hubspot", "portal_id": "48975575"}

    @property
    def client(self) -> HubSpotClient:
        if self._client is None:
            self._client = HubSpotClient(self.settings.api_base_url, self.settings.access_token)
        return self._client

    # -- write-back (connectors/hubspot/writer.py and setup.py) --
    writes_back = True
    write_batch_max = writer.MAX_INPUTS
    #: a batch update takes HubSpot a good part of a second: one at a time would use a
    #: fraction of the 10-second budget
    write_concurrency = 4

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

    # -- alerts (connectors/hubspot/tasks.py) --
    alert_target = "task"

    def post_alert(self, alert: RecordAlert, throttle: Throttle) -> str:
        """A task on the contact, assigned to its owner (see :mod:`connectors.hubspot.tasks`)."""
        return tasks.post(self._api, throttle, alert, owner=self.settings.alert_task_owner,
                          priority=self.settings.alert_task_priority)

    # -- inbound ------------------------------------------------------------------------

    def verify(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
               now: datetime) -> None:
        """Signed over the configured ``webhook_url``, never ``url`` (the URL as it reached us)."""
        signatures.verify(self.settings.client_secret, body, headers, method=method,
                          uri=self.settings.webhook_url, now=now,
                          tolerance=self.signature_tolerance,
                          accept_legacy=self.settings.accept_legacy_signatures)

    def sign(self, body: bytes, headers: Mapping[str, str], *, method: str, url: str,
             now: datetime) -> dict[str, str]:
        return signatures.sign_v3(self.settings.client_secret, method, self.settings.webhook_url,
                                  body, now)

    def delivery_key(self, delivery: Delivery) -> str:
        return dedupe_keys(norm.dedupe_parts(delivery.payload))

    def topic(self, delivery: Delivery) -> str:
        try:
            kinds = {norm.event_type(e) for e in norm.events_of(delivery.payload)}
        except Exception:
            return ""
        return ",".join(sorted(k for k in kinds if k))[:128]

    def normalise(self, delivery: Delivery, *, now: datetime) -> Normalised:
        return norm.normalise(delivery.payload, self.rules)

    def sample_deliveries(self) -> list[SampleDelivery]:
        folder = files("connectors.hubspot") / "samples"
        return [SampleDelivery(name=f"hubspot/{entry.name}", body=entry.read_bytes())
                for entry in sorted(folder.iterdir(), key=lambda e: e.name)
                if entry.name.endswith(".json")]

    def writable_record(self, source_id: str) -> bool:
        """Scores go to contacts (plain ids), never to deals, tickets or threads."""
        return source_id.isdigit()

    def record_url(self, source_id: str) -> str | None:
        """The record in HubSpot's UI; needs ``portal_id`` (webhooks carry it, the settings
        must too). Conversation threads have no stable record URL: ``None``."""
        portal = self.settings.portal_id
        prefix, _, object_id = source_id.rpartition(":")
        if not portal or prefix not in _OBJECT_TYPE_IDS or not object_id.isdigit():
            return None
        return (f"{self.settings.app_url}/contacts/{portal}/record/"
                f"{_OBJECT_TYPE_IDS[prefix]}/{object_id}")

    # -- enrichment ------------------------------------------------------------------------

    def lookup(self, source_ids: list[str], *, now: datetime) -> Lookup:
        """Contact details for contacts; the associated contact for deals, tickets and
        threads. A deal or ticket with several contacts is linked to the lowest contact
        id only: linking it to all of them would merge different people into one
        customer. Deleted ids, and ids merged away (linked to the survivor as well),
        are ``missing``."""
        missing: set[str] = set()
        owner: dict[str, str] = {}  # deal:/ticket:/conversation: id -> contact id
        by_type: dict[str, list[str]] = {"": [], "deal": [], "ticket": [], "conversation": []}
        for sid in dict.fromkeys(source_ids):
            prefix, _, object_id = sid.rpartition(":")
            if prefix in by_type and object_id.isdigit():
                by_type[prefix].append(object_id)
            else:
                missing.add(sid)  # not an id HubSpot can have
        for prefix, object_type in (("deal", "deals"), ("ticket", "tickets")):
            ids = by_type[prefix]
            if not ids:
                continue
            assoc = self.client.associated_contacts(object_type, ids)
            for i in ids:
                if assoc.get(i):
                    owner[f"{prefix}:{i}"] = min(assoc[i], key=lambda c: (len(c), c))
            lonely = [i for i in ids if not assoc.get(i)]
            if lonely:
                alive = self.client.existing(object_type, lonely)
                missing |= {f"{prefix}:{i}" for i in lonely if i not in alive}
        for thread in by_type["conversation"]:
            exists, contact = self.client.thread_contact(thread)
            if not exists:
                missing.add(f"conversation:{thread}")
            elif contact:
                owner[f"conversation:{thread}"] = contact
        contacts = self.client.read_contacts(list(dict.fromkeys(by_type[""] + list(owner.values()))))
        found: list[Link] = []
        for cid in by_type[""]:
            record = contacts.get(cid)
            if record is None or record.id != cid:
                missing.add(cid)  # deleted, or merged into record.id
            if record is not None:
                found.append(self._link(cid, record))
        for sid, cid in owner.items():
            record = contacts.get(cid)
            if record is not None:
                found.append(self._link(sid, record))
        return Lookup(found=tuple(found), missing=tuple(sorted(missing)))

    # -- backfill (connectors/hubspot/backfill.py) ------------------------------------------

    backfill_resources = backfill.RESOURCES

    def backfill_budgets(self) -> dict[str, RateBudget]:
        return {"api": self.rate_budget(), "search": backfill.search_budget()}

    def backfill_page(self, resource: str, cursor: str | None, *, since: datetime | None,
                      throttles: Mapping[str, Throttle], now: datetime) -> BackfillPage:
        return backfill.page(self.client, self.rules, resource, cursor, since=since, throttles=throttles)

    def _link(self, source_id: str, contact: Contact) -> Link:
        return Link(source=self.name, source_id=source_id,
                    customer=CustomerRef(source_id=contact.id, email=contact.email,
                                         phone=contact.phone, name=contact.name))
