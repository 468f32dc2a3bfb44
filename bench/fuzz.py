"""Fuzz run: correctly signed random and mutated webhooks at volume, nothing lost, no 500.

Every case is a request to ``POST /webhooks/<source>`` of the real app (``create_app`` with
a real, migrated database, through Flask's in-process test client) for the four sources
(HubSpot, Zendesk, Shopify, generic), in turn. Bodies are mutations of the platforms'
real samples (``tests/fixtures``, the generic demo), HubSpot batches of good and bad
events, random JSON and random bytes; each is signed with that platform's scheme and
sent with the headers the platform sends (a few with mutated headers, some of which are
deliberately invalid and must get 401; some bodies are at or beyond the size limit and
must get 413). Afterwards the deliveries table is compared with what was sent:

* no 5xx at all (there is no database outage here, so not even a 503);
* a 401 only for a case made with a bad signature (or a Shopify compliance request whose
  body names another shop), a 413 only at or above ``webhooks.max_body_bytes``, no other 4xx;
* every 200 is ``processed``, ``failed`` or ``ignored`` with a delivery id, or a ``duplicate``
  of a delivery key already stored in this run;
* every distinct delivery key answered 200 is one row with the answered status, failed and
  ignored rows carry a reason, nothing else is in the table; a failure is a payload error,
  never a crash of the normaliser ("internal error while normalising") or of the store
  ("could not store");
* two different bodies merged as one delivery by the dedupe key are reported (only
  redeliveries the script made on purpose may do that);
* replaying a sample of the failed deliveries (``inbox.replay``, what ``cx-connector events
  replay`` runs) raises nothing and gives a status with a reason.

Each case is generated from its own random stream (``seed:index``), so any one can be
regenerated alone: ``--show N`` prints case N without sending anything.

    python bench/fuzz.py                               # 100,000 cases, SQLite in a temp dir
    python bench/fuzz.py --count 2000 --seed 7
    python bench/fuzz.py --database-url postgresql+psycopg://postgres@127.0.0.1/cx_fuzz --reset
    python bench/fuzz.py --show 4242                   # one case, as it would be sent

``--database-url`` must point at an empty database (tables are created); ``--reset`` empties
it first (PostgreSQL: drops and re-creates the ``public`` schema). Exit code 1 on any
violation, 0 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import logging
import os
import platform
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: the repo's packages first
    sys.path.insert(0, str(ROOT))

from sqlalchemy import event, text  # noqa: E402

from connectors.hubspot import signatures as hubspot_sig  # noqa: E402
from connectors.shopify import signatures as shopify_sig  # noqa: E402
from connectors.zendesk import signatures as zendesk_sig  # noqa: E402
from cx_connector import db, inbox  # noqa: E402
from cx_connector.app import create_app  # noqa: E402
from cx_connector.config import config_from_mapping  # noqa: E402
from cx_connector.connector import Delivery, Headers, parse_json  # noqa: E402
from cx_connector.errors import PayloadError  # noqa: E402
from cx_connector.runtime import build  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
SOURCES = ("hubspot", "zendesk", "shopify", "generic")
SHOP = "fuzz-shop.myshopify.com"
HUBSPOT_URL = "https://cx.example.com/webhooks/hubspot"
SETTINGS: dict[str, dict[str, Any]] = {
    "generic": {"secret": "fuzz-generic-secret-0123456789"},
    "hubspot": {"client_secret": "fuzz-hubspot-secret", "access_token": "fuzz-hubspot-token",
                "webhook_url": HUBSPOT_URL, "api_base_url": "https://api.hubapi.test"},
    "zendesk": {"subdomain": "fuzz", "email": "admin@fuzz.test", "api_token": "fuzz-zendesk-token",
                "webhook_secret": "fuzz-zendesk-secret", "trigger_webhook_secret": "fuzz-zendesk-trigger",
                "api_base_url": "https://fuzz.zendesk.test"},
    "shopify": {"shop": SHOP, "access_token": "shpat_fuzz_token", "client_secret": "fuzz-shopify-secret",
                "api_base_url": "https://fuzz.myshopify.test"},
}
MAX_BODY = 1024 * 1024  # webhooks.max_body_bytes (the default): this size and above get 413
TOLERANCE = timedelta(minutes=5)  # webhooks.signature_tolerance (the default)


# --- seeds: the platforms' real samples ------------------------------------------------------


def _load(path: Path) -> Any:
    return json.loads(path.read_bytes())


def load_seeds() -> dict[str, list[tuple[str, Any]]]:
    """``{source: [(topic or label, payload)]}`` from tests/fixtures and the bundled demo."""
    hubspot = [("event", e) for p in sorted((FIXTURES / "hubspot").glob("*.json")) for e in _load(p)]
    zendesk_files = ["ticket_comment_added", "ticket_created", "ticket_status_changed",
                     "trigger_custom_payload_ticket_update", "user_active_changed_docs",
                     "user_group_membership_created_signed_body"]
    zendesk = [("event", _load(FIXTURES / "zendesk" / f"{n}.json")) for n in zendesk_files]
    zendesk += [("event", item["body"]) for item in _load(ROOT / "connectors/zendesk/samples/demo.json")]
    shop_files = {"orders_create": ["orders/create", "orders/cancelled", "orders/fulfilled"],
                  "orders_paid": ["orders/paid"], "refunds_create": ["refunds/create"],
                  "checkouts_create": ["checkouts/create", "checkouts/update"],
                  "customers_create": ["customers/create"], "customers_update": ["customers/update"],
                  "customers_delete": ["customers/delete"],
                  "customers_data_request": ["customers/data_request"],
                  "customers_redact": ["customers/redact"], "shop_redact": ["shop/redact"]}
    shopify = []
    for name, topics in shop_files.items():
        raw = (FIXTURES / "shopify" / f"{name}.json").read_bytes().replace(b"{shop}.myshopify.com",
                                                                            SHOP.encode())
        shopify += [(t, json.loads(raw)) for t in topics]
    shopify += [(t, _load(FIXTURES / "shopify" / "crafted" / "products_create.json"))
                for t in ("products/create", "products/update")]
    generic = [("touchpoint", tp) for tp in _load(ROOT / "connectors/generic/samples/demo.json")]
    return {"hubspot": hubspot, "zendesk": zendesk, "shopify": shopify, "generic": generic}


SHOPIFY_EXTRA_TOPICS = ["orders/updated", "app/uninstalled", "ORDERS/CREATE", "Customers/Update",
                        "orders/create ", "orders", "../../etc/passwd", "checkouts/delete", "é/ü"]
HUBSPOT_TYPES = ["contact.creation", "contact.propertyChange", "contact.merge", "contact.deletion",
                 "contact.privacyDeletion", "contact.restore", "contact.associationChange",
                 "deal.creation", "deal.propertyChange", "deal.merge", "deal.deletion",
                 "ticket.creation", "ticket.propertyChange", "ticket.deletion",
                 "conversation.newMessage", "conversation.creation", "conversation.privacyDeletion",
                 "company.creation", "object.creation", "CONTACT.CREATION", "contact.", ".", ""]
HUBSPOT_PROPERTIES = ["lifecyclestage", "dealstage", "amount", "email", "phone", "mobilephone",
                      "firstname", "lastname", "hs_pipeline_stage", "hs_feedback_last_nps_rating",
                      "cx_score", "cx_health", "unknown_property", ""]
ZENDESK_TYPES = ["zen:event-type:ticket.created", "zen:event-type:ticket.status_changed",
                 "zen:event-type:ticket.comment_added", "zen:event-type:ticket.csat_received",
                 "zen:event-type:user.created", "zen:event-type:user.custom_field_changed",
                 "zen:event-type:ticket.deleted", "zen:event-type:ticket.merged",
                 "zen:event-type:user.deleted", "zen:event-type:organization.created",
                 "zen:event-type:unknown", "ticket.created", "", "End User Comment"]
GENERIC_KINDS = ["order_placed", "order_paid", "order_cancelled", "refund_issued", "ticket_opened",
                 "ticket_solved", "contact_created", "rating_given", "chat_message", "page_view",
                 "ORDER_PLACED", ""]

#: values that break naive code: wrong types, extremes, bad dates, hostile text
EVIL: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 10**30, -(10**30), 1.5, -0.0,
    1e308, -1e-308, float("nan"), float("inf"), float("-inf"),
    "", " ", "null", "None", "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "0x1F", "1_000",
    "\u0661\u0662\u0663", "12.34.56", "-5", "1,234.56", "9" * 40, "-0",
    "2026-02-30T10:00:00Z", "2026-13-01", "0000-00-00T00:00:00Z", "9999-12-31T23:59:59+14:00",
    "0001-01-01T00:00:00-12:00", "2026-06-15T12:00:00", "2026-06-15", "yesterday", "1782371969536",
    "99999999999999999999", "-62135596800000", "2026-06-15T25:61:61Z", "+275760-09-13T00:00:00Z",
    "\x00", "a\x00b", "\ud800", "x\udfffy", "\u202egnp.exe", "\ufeff", "\U0001f600" * 3, "\r\n\t",
    "x" * 3000, "\u00e9\u00fc\u00df", "<script>alert(1)</script>", "'; DROP TABLE deliveries; --",
    "%s%n%x", "{}", "[]", "ann@example.com", "ANN@EXAMPLE.COM ", "not-an-email", "@", "+1 555 0100",
    "closedwon", "closedlost", "customer", "solved", "open", "good", "bad", "USD", "usd", "XXX",
    [], {}, [None], [[]], {"": None}, ["a", 1, None], {"id": None}, [{"id": 1}] * 3,
]
SCALARS = [v for v in EVIL if not isinstance(v, list | dict)]
#: share of the erasing samples (deletions, redact and data requests) kept when drawn: an
#: erasure or export scans every stored body for the person (privacy.mentioning_deliveries),
#: so at this volume they would be most of the run's time (3.5 s each at 14,000 deliveries)
ERASING = 0.02
#: raw JSON literals Python's json.dumps never writes (spliced in after serialising)
RAW = ["1e400", "-1e400", "1E-400", "-0", "123456789012345678901234567890123456789",
       "9" * 5000, "NaN", "-Infinity", "0.000000000000000000000000000001", "1.0e+2"]
CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/json; charset=latin-1", "application/xml", "", "*/*",
                 "application/json; charset=utf-16"]


# --- one case ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One request: the body, the headers before signing, how to sign it, what must happen."""

    index: int
    source: str
    kind: str                      # what made the body (for the tables)
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    sign: str = "good"             # "good", "legacy-v1", "legacy-v2" or "bad:<why>"
    skew: float = 0.0              # seconds the signed time is off "now" (within the window)
    resend_of: int | None = None   # a deliberate redelivery of this earlier case

    @property
    def expect(self) -> str:
        """``413``, ``401:<why>`` or ``200``."""
        if len(self.body) >= MAX_BODY:
            return "413"
        if self.sign.startswith("bad:"):
            return "401:" + self.sign[4:]
        if self.source == "shopify":
            topic = (shopify_sig.header(Headers(self.headers), shopify_sig.TOPIC) or "").lower()
            if topic in shopify_sig.COMPLIANCE_TOPICS:
                try:
                    payload = parse_json(self.body)  # as the app reads it: NaN is no JSON
                except PayloadError:
                    payload = None
                domain = payload.get("shop_domain") if isinstance(payload, dict) else None
                if not isinstance(domain, str) or domain.strip().lower() != SHOP:
                    return "401:compliance body names another shop"
        return "200"


def _sentinel(rng: random.Random, raw: str) -> str:
    return f"__RAW{rng.getrandbits(32)}__{raw}__"


_SENTINEL = re.compile(rb'"__RAW\d+__(.*?)__"')


def dumps(value: Any) -> bytes:
    """JSON with the raw literals spliced in (NaN/Infinity are written as Python does)."""
    out = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return _SENTINEL.sub(lambda m: m.group(1), out) if b"__RAW" in out else out


class Fuzzer:
    """Deterministic cases: case ``i`` of seed ``s`` comes from ``random.Random(f"{s}:{i}")``."""

    def __init__(self, seed: int, sources: tuple[str, ...] = SOURCES) -> None:
        self.seed = seed
        self.sources = sources
        self.seeds = load_seeds()
        self.keys = {s: sorted({k for _, p in self.seeds[s] for k in _keys(p)}) for s in SOURCES}

    def case(self, index: int, *, resends: bool = True) -> Case:
        """Case ``index`` of this seed, from its own random stream (reproducible alone)."""
        rng = random.Random(f"{self.seed}:{index}")
        source = self.sources[index % len(self.sources)]
        if resends and index >= 40 and rng.random() < 0.02:  # a redelivery of a recent case
            back = index - len(self.sources) * rng.randint(1, 10)
            orig = self.case(back, resends=False)
            if orig.sign.startswith("bad:") or len(orig.body) >= MAX_BODY:
                orig.sign = "good"
            headers = dict(orig.headers)
            if source == "hubspot" and rng.random() < 0.5:  # HubSpot re-signs with a new attemptNumber
                orig.body = orig.body.replace(b'"attemptNumber": 0', b'"attemptNumber": 1')
            return Case(index, source, "redelivery", orig.body, headers, orig.sign, orig.skew, back)
        return self.fresh(rng, index, source)

    def fresh(self, rng: random.Random, index: int, source: str) -> Case:
        """A new case (not a redelivery) for ``source``, drawn from ``rng`` (any
        ``random.Random``: the test suite passes hypothesis' own)."""
        roll, topic = rng.random(), None
        if roll < 0.05:
            kind, body = "random-bytes", rng.randbytes(rng.choice([0, 1, 3, 16, 100, 1000, 5000]))
        elif roll < 0.12:
            kind, body = "random-json", dumps(self.random_json(rng, source, 6))
        elif roll < 0.125:
            kind, body = self.oversize(rng, source)
        else:
            kind, body, topic = self.mutated(rng, source)
        case = Case(index, source, kind, body)
        self.headers(rng, case, topic)
        return case

    # -- bodies -----------------------------------------------------------------------------

    def pick(self, rng: random.Random, source: str) -> tuple[str, Any]:
        """A sample (a private copy); erasures are kept rare (see ERASING)."""
        topic, payload = rng.choice(self.seeds[source])
        while _erasing(topic, payload) and rng.random() > ERASING:
            topic, payload = rng.choice(self.seeds[source])
        return topic, json.loads(json.dumps(payload))

    def mutated(self, rng: random.Random, source: str) -> tuple[str, bytes, str | None]:
        topic, payload = self.pick(rng, source)
        self.freshen(rng, source, payload)
        kind = "sample"
        if source == "hubspot":
            n = rng.choices([1, 2, 3, 5, 10, 30, 100, 150], weights=[50, 15, 10, 10, 7, 5, 2, 1])[0]
            events = [payload]
            for _ in range(n - 1):
                other = self.pick(rng, source)[1]
                self.freshen(rng, source, other)
                events.append(other)
            bad = rng.random()
            for e in events:
                if rng.random() < bad * 0.6:
                    self.mutate(rng, source, e, rng.choice([1, 1, 2, 3]))
            payload = events if rng.random() < 0.97 else events[0]
            kind = "batch" if n > 1 else "event"
        elif source == "generic" and rng.random() < 0.2:
            payload = [payload] + [self.freshen(rng, source, self.pick(rng, source)[1])
                                   for _ in range(rng.randint(0, 20))]
            kind = "batch"
        ops = rng.choices([0, 1, 2, 3, 5, 8], weights=[25, 30, 20, 10, 10, 5])[0]
        if ops:
            self.mutate(rng, source, payload, ops)
            kind += "+mutated"
        body = dumps(payload)
        if rng.random() < 0.1:
            body = self.mangle(rng, body)
            kind += "+bytes"
        if source == "shopify" and rng.random() < 0.05:
            topic = rng.choice(SHOPIFY_EXTRA_TOPICS)
        if any(_erasing(topic or "", e) for e in (payload if isinstance(payload, list) else [payload])):
            kind += "+erasure"  # asks to erase a person (if the mutations left it readable)
        return kind, body, topic

    def freshen(self, rng: random.Random, source: str, payload: Any) -> Any:
        """New ids and times, so that distinct cases are distinct deliveries and facts."""
        if not isinstance(payload, dict):
            return payload
        now_ms = int(time.time() * 1000)
        if source == "hubspot":
            payload["eventId"] = rng.getrandbits(40)
            payload["objectId"] = rng.choice([rng.getrandbits(40), rng.randint(1, 500)])
            payload["occurredAt"] = now_ms - rng.randint(0, 30 * 86400_000)
            if rng.random() < 0.3:
                payload["subscriptionType"] = rng.choice(HUBSPOT_TYPES)
                while _erasing("", payload) and rng.random() > ERASING:
                    payload["subscriptionType"] = rng.choice(HUBSPOT_TYPES)
            if rng.random() < 0.2:
                payload["propertyName"] = rng.choice(HUBSPOT_PROPERTIES)
                payload["propertyValue"] = rng.choice([_evil(rng), "closedwon", "customer", "9", "100.5"])
        elif source == "zendesk":
            if "id" in payload:
                payload["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            detail = payload.get("detail")
            if isinstance(detail, dict) and rng.random() < 0.7:
                detail["id"] = str(rng.randint(1, 10**13))
            if "ticketID" in payload:
                payload["ticketID"] = str(rng.randint(1, 10**6))
            if rng.random() < 0.2:
                payload["type"] = rng.choice(ZENDESK_TYPES)
        elif source == "shopify":
            if "id" in payload:
                payload["id"] = rng.getrandbits(40)
            cust = payload.get("customer")
            if isinstance(cust, dict) and rng.random() < 0.5:
                cust["id"] = rng.randint(1, 2000)
        elif source == "generic":
            payload["touchpoint_id"] = f"fuzz:{rng.getrandbits(64):x}"
            if rng.random() < 0.2:
                payload["kind"] = rng.choice(GENERIC_KINDS)
        return payload

    def mutate(self, rng: random.Random, source: str, payload: Any, ops: int) -> None:
        """``ops`` changes at random places of the tree, in place."""
        for _ in range(ops):
            parents = _containers(payload)
            parent = rng.choice(parents)
            if isinstance(parent, dict):
                if not parent or rng.random() < 0.15:
                    new_key = rng.choice([*self.keys[source], "", "\u00e9", "x" * 300])
                    parent[new_key] = self.value(rng, source)
                    continue
                key = rng.choice(list(parent))
                op = rng.random()
                if op < 0.25:
                    del parent[key]
                elif op < 0.35:
                    parent[rng.choice([key.upper(), key + "_", "", " " + key, "\u0000" + key,
                                       rng.choice(self.keys[source])])] = parent.pop(key)
                else:
                    parent[key] = self.value(rng, source, parent[key])
            else:
                op = rng.random()
                if not parent or op < 0.2:
                    parent.append(self.value(rng, source))
                elif op < 0.4:
                    parent.pop(rng.randrange(len(parent)))
                elif op < 0.5:
                    parent.extend(parent[:rng.randint(1, 3)])  # repeated items
                elif op < 0.55:
                    parent.clear()
                else:
                    i = rng.randrange(len(parent))
                    parent[i] = self.value(rng, source, parent[i])

    def value(self, rng: random.Random, source: str, old: Any = None) -> Any:
        r = rng.random()
        if r < 0.55:
            return _evil(rng)
        if r < 0.62:
            return _sentinel(rng, rng.choice(RAW))
        if r < 0.66:  # deep nesting, spliced in raw (json.dumps would recurse as deep)
            n = rng.choices([30, 300, 3000, 100_000], weights=[40, 40, 15, 5])[0]
            return _sentinel(rng, "[" * n + "]" * n)
        if r < 0.70:
            return rng.choices(SCALARS, k=rng.choices([100, 2000], weights=[4, 1])[0])
        if r < 0.80 and old is not None:  # the same value, but the wrong type
            return {str: lambda v: [v], int: str, float: str, bool: str, list: lambda v: {"0": v},
                    dict: lambda v: list(v.values()), type(None): lambda v: 0}.get(type(old), str)(old)
        if r < 0.90:
            return self.random_json(rng, source, 3)
        if isinstance(old, str) and old:
            cut = rng.randrange(len(old))
            odd = rng.choice(["\x00", "\ud800", "\u202e", "\U0001f600", "\x7f", "\\"])
            return old[:cut] + odd + old[cut:]
        if isinstance(old, int | float) and not isinstance(old, bool):
            return rng.choice([-old, old * 10**20, -1, 0])
        return _evil(rng)

    def random_json(self, rng: random.Random, source: str, budget: int) -> Any:
        if budget <= 0 or rng.random() < 0.3:
            return _evil(rng) if rng.random() < 0.7 else rng.choice(
                [rng.random() * 10 ** rng.randint(-5, 20), rng.getrandbits(70) - 2**69,
                 "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 12)))])
        if rng.random() < 0.5:
            return [self.random_json(rng, source, budget - 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(self.keys[source]) if rng.random() < 0.8 else str(rng.random()):
                self.random_json(rng, source, budget - 1) for _ in range(rng.randint(0, 5))}

    def mangle(self, rng: random.Random, body: bytes) -> bytes:
        """Byte-level damage: truncation, flipped bytes, invalid UTF-8, other encodings."""
        op = rng.randrange(9)
        if op == 0 and body:
            return body[:rng.randrange(len(body))]
        if op == 1 and body:
            b = bytearray(body)
            for _ in range(rng.randint(1, 5)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            return bytes(b)
        if op == 2:
            i = rng.randrange(len(body) + 1)
            return body[:i] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                          b"\x00", b"\xfe\xff"]) + body[i:]
        if op == 3:
            return b"\xef\xbb\xbf" + body  # UTF-8 BOM
        if op == 4:
            return body.decode("utf-8", "replace").encode("utf-16")
        if op == 5:
            return body.decode("utf-8", "replace").encode("latin-1", "replace")
        if op == 6:
            return body + rng.choice([b"garbage", b"\n{}", b",", b"]", b"\x00"])
        if op == 7:
            return b" \n\t" * rng.randint(1, 50) + body
        return rng.choice([b"", b"null", b"[]", b"{}", b'""', b"0", b"true", b"[[[[", b"{\"a\":}"])

    def oversize(self, rng: random.Random, source: str) -> tuple[str, bytes]:
        """A body padded to just under, at, or beyond the size limit."""
        size = rng.choice([MAX_BODY - 1, MAX_BODY - 1000, MAX_BODY // 2, MAX_BODY, MAX_BODY + 1,
                           2 * MAX_BODY])
        _topic, payload = self.pick(rng, source)
        self.freshen(rng, source, payload)
        if source == "hubspot":
            payload = [payload]
        head = dumps(payload)
        if head.endswith(b"]"):
            head, tail = head[:-2], b'}]'
        else:
            head, tail = head[:-1], b"}"
        pad_key = b', "padding": "'
        filler = max(0, size - len(head) - len(pad_key) - len(tail) - 1)
        body = head + pad_key + b"x" * filler + b'"' + tail
        return f"oversize-{'over' if len(body) >= MAX_BODY else 'under'}", body

    # -- headers ----------------------------------------------------------------------------

    def headers(self, rng: random.Random, case: Case, topic: str | None) -> None:
        """The platform's headers, the signing mode, and now and then a mutated header."""
        h = case.headers
        h["Content-Type"] = "application/json"
        case.skew = rng.uniform(-240, 240) if rng.random() < 0.3 else 0.0
        if case.source == "shopify":
            h[shopify_sig.TOPIC] = topic or rng.choice(self.seeds["shopify"])[0]
            h[shopify_sig.SHOP_DOMAIN] = SHOP
            h[shopify_sig.API_VERSION] = "2026-07"
            h[shopify_sig.WEBHOOK_ID] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            h[shopify_sig.EVENT_ID] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            if rng.random() < 0.9:  # Shopify retries with the original trigger time, up to 4 h late
                case.skew = -rng.uniform(0, 4 * 3600) if rng.random() < 0.3 else case.skew
                h[shopify_sig.TRIGGERED_AT] = "signed"
        elif case.source == "zendesk":
            h["X-Zendesk-Webhook-Id"] = "01HZFUZZ" + f"{rng.getrandbits(64):018X}"
            h["X-Zendesk-Account-Id"] = "22129848"
            h["X-Zendesk-Webhook-Invocation-Id"] = str(rng.getrandbits(63))
        elif case.source == "generic" and rng.random() < 0.5:
            h["X-CX-Delivery-Id"] = f"fuzz-{rng.getrandbits(64):x}"
        if rng.random() < 0.08:
            self.mutate_headers(rng, case)

    def mutate_headers(self, rng: random.Random, case: Case) -> None:
        h = case.headers
        benign = rng.random() < 0.7
        if benign:
            op = rng.randrange(6)
            if op == 0:
                ct = rng.choice(CONTENT_TYPES)
                if ct:
                    h["Content-Type"] = ct
                else:
                    del h["Content-Type"]
            elif op == 1:  # HTTP/2 lower-cases every header name
                case.headers = {k.lower(): v for k, v in h.items()}
            elif op == 2:
                h["X-Request-Id"] = rng.choice(["", "x" * 500, "\u00e9\u00e9", "../..", "a-b-c"])
                h["X-Unknown-" + str(rng.randrange(100))] = rng.choice(["", "\u00ff" * 10, "1" * 2000])
            elif op == 3 and case.source == "shopify":
                h[shopify_sig.TOPIC] = rng.choice([*SHOPIFY_EXTRA_TOPICS, h[shopify_sig.TOPIC].upper()])
                if rng.random() < 0.3:  # the Events preview's spelling, without "X-"
                    case.headers = {k.removeprefix("X-"): v for k, v in h.items()}
            elif op == 3 and case.source == "zendesk":
                odd = rng.choice(["", " ", "x" * 300, "a b", "\u00e9", "../", "-", "x" * 199])
                h["X-Zendesk-Webhook-Invocation-Id"] = odd + str(rng.getrandbits(32))
            elif op == 3 and case.source == "generic":
                h["X-CX-Delivery-Id"] = rng.choice(["", " ", "d" * 400, "\u00e9", "0"]) + str(rng.random())
            elif op == 3 and case.source == "hubspot":
                case.sign = rng.choice(["legacy-v1", "legacy-v2"])
            elif op == 4 and case.source == "shopify":
                h[shopify_sig.SHOP_DOMAIN] = SHOP.upper()
            elif op == 5 and case.source == "hubspot":
                case.skew = rng.choice([-299.0, 299.0])
            return
        case.sign = "bad:" + rng.choice({
            "hubspot": ["stale timestamp", "future timestamp", "missing timestamp", "garbage signature",
                        "no signature", "legacy without version", "wrong secret"],
            "zendesk": ["stale timestamp", "future timestamp", "timestamp not ISO", "garbage signature",
                        "no signature", "wrong secret"],
            "shopify": ["wrong secret", "no signature", "missing webhook id", "missing topic",
                        "another shop", "stale triggered-at", "future triggered-at", "triggered-at not ISO"],
            "generic": ["wrong secret", "no signature", "garbage signature"],
        }[case.source])


def _erasing(topic: str, payload: Any) -> bool:
    """Whether a sample asks to erase or export a person, or a shop (privacy.forget, forget_all,
    export: each reads every stored body)."""
    if topic in ("customers/redact", "shop/redact", "customers/data_request"):
        return True
    return isinstance(payload, dict) and payload.get("subscriptionType") in (
        "contact.deletion", "contact.privacyDeletion", "conversation.privacyDeletion")


def _evil(rng: random.Random) -> Any:
    """One of :data:`EVIL`; a list or object is a fresh copy (mutations must not reach the pool)."""
    v = rng.choice(EVIL)
    return json.loads(json.dumps(v)) if isinstance(v, list | dict) else v


def _keys(value: Any) -> set[str]:
    out: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            out.update(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return out


def _containers(value: Any) -> list[Any]:
    out = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            out.append(v)
            stack.extend(x for x in v.values() if isinstance(x, dict | list))
        elif isinstance(v, list):
            out.append(v)
            stack.extend(x for x in v if isinstance(x, dict | list))
    return out or [{}]


# --- signing ----------------------------------------------------------------------------------


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def signed_headers(case: Case, now: datetime) -> dict[str, str]:
    """The case's headers with its signature: each platform's own scheme, computed here."""
    h = dict(case.headers)
    body = case.body
    when = now + timedelta(seconds=case.skew)
    bad = case.sign[4:] if case.sign.startswith("bad:") else ""
    if bad in ("stale timestamp", "stale triggered-at"):
        when = now - timedelta(hours=6) - TOLERANCE
    elif bad in ("future timestamp", "future triggered-at"):
        when = now + TOLERANCE + timedelta(minutes=2)
    s = SETTINGS[case.source]
    if case.source == "hubspot":
        secret = "not-the-secret" if bad == "wrong secret" else s["client_secret"]
        if case.sign in ("legacy-v1", "legacy-v2") or bad == "legacy without version":
            version = "v1" if case.sign == "legacy-v1" else "v2"
            h[hubspot_sig.LEGACY_HEADER] = (hubspot_sig.compute_v1(secret, body) if version == "v1"
                                            else hubspot_sig.compute_v2(secret, "POST", HUBSPOT_URL, body))
            if not bad:
                h[hubspot_sig.VERSION_HEADER] = version
        elif bad != "no signature":
            h.update(hubspot_sig.sign_v3(secret, "POST", HUBSPOT_URL, body, when))
            if bad == "missing timestamp":
                del h[hubspot_sig.TIMESTAMP_HEADER]
            elif bad == "garbage signature":
                h[hubspot_sig.V3_HEADER] = "not base64!"
    elif case.source == "zendesk":
        # the trigger webhook's secret signs one in seven (both may post to this URL)
        secret = s["trigger_webhook_secret"] if case.index % 7 == 0 else s["webhook_secret"]
        if bad == "wrong secret":
            secret = "not-the-secret"
        ts = zendesk_sig.format_timestamp(when) if bad != "timestamp not ISO" else "14/03/2026 09:00"
        if bad != "no signature":
            h[zendesk_sig.SIGNATURE_HEADER] = zendesk_sig.compute(secret, ts, body)
            h[zendesk_sig.TIMESTAMP_HEADER] = ts
        if bad == "garbage signature":
            h[zendesk_sig.SIGNATURE_HEADER] = "%%%"
    elif case.source == "shopify":
        secret = "not-the-secret" if bad == "wrong secret" else s["client_secret"]
        if bad != "no signature":
            h[shopify_sig.HMAC] = _b64(hmac.new(secret.encode(), body, hashlib.sha256).digest())
        for name in list(h):
            if name.lower().removeprefix("x-") == "shopify-triggered-at":
                h[name] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if bad in ("stale triggered-at", "future triggered-at"):
            h[shopify_sig.TRIGGERED_AT] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        elif bad == "triggered-at not ISO":
            h[shopify_sig.TRIGGERED_AT] = "Tue, 10 Jul 2025 16:15:47 GMT"
        elif bad == "missing webhook id":
            h = {k: v for k, v in h.items() if k.lower().removeprefix("x-") != "shopify-webhook-id"}
        elif bad == "missing topic":
            h = {k: v for k, v in h.items() if k.lower().removeprefix("x-") != "shopify-topic"}
        elif bad == "another shop":
            h[shopify_sig.SHOP_DOMAIN] = "other-shop.myshopify.com"
    else:
        secret = "not-the-secret" if bad == "wrong secret" else s["secret"]
        if bad == "garbage signature":
            h["X-CX-Signature"] = "***"
        elif bad != "no signature":
            h["X-CX-Signature"] = _b64(hmac.new(secret.encode(), body, hashlib.sha256).digest())
    return h


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Sent:
    source: str
    kind: str
    expect: str
    code: int
    status: str            # the JSON status of a 200, else the error code
    delivery_id: int | None
    key: str | None
    body_hash: bytes
    resend_of: int | None
    error: str
    ms: float = 0.0        # the request's time in the app (test client included)


class Check:
    """Violations, by rule, with a few examples each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def note(self, rule: str, example: str) -> None:
        """Not a violation, but shown with examples (for a human to judge)."""
        self.notes[rule] += 1
        if len(self.examples[rule]) < 8:
            self.examples[rule].append(example[:400])

    def fail(self, rule: str, example: str) -> None:
        self.counts[rule] += 1
        if len(self.examples[rule]) < 8:
            self.examples[rule].append(example[:400])

    @property
    def ok(self) -> bool:
        return not self.counts


class ErrorLog(logging.Handler):
    """Counts what the app logs at ERROR and above (a crash it survived is still a bug)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.records[f"{record.name}: {record.getMessage()[:80]}"
                     + (f" ({type(exc).__name__}: {str(exc)[:120]})" if exc else "")] += 1


def reason_group(error: str) -> str:
    """An error message with its particulars (numbers, quoted values) blanked, for counting."""
    g = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", error or "")
    g = re.sub(r"\d+", "N", g)
    return g[:110]


def prepare(url: str | None, reset: bool, tmp: Path) -> str:
    url = url or f"sqlite:///{tmp / 'fuzz.db'}"
    engine = db.make_engine(url)
    try:
        if reset:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(text("DROP SCHEMA public CASCADE"))
                    conn.execute(text("CREATE SCHEMA public"))
                else:
                    tables = conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'")).all()
                    for (name,) in tables:
                        conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
        db.upgrade(engine)
        with engine.connect() as conn:
            n = conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one()
        if n:
            sys.exit(f"{url.split('@')[-1]}: {n} deliveries already stored; use an empty database "
                     "or --reset (which empties it)")
    finally:
        engine.dispose()
    return url


def fuzz_runtime(url: str, export_dir: Path, *, durable: bool = True) -> Any:
    """The runtime under test: every connector enabled with this script's settings.

    ``durable=False`` (PostgreSQL): commits do not wait for the WAL flush
    (``synchronous_commit=off``). A crash is not part of this run, and what a commit makes
    visible is unchanged, so the comparison with the table holds; it just does not wait
    for the disk (SQLite in WAL mode already does not flush on commit).
    """
    rt = build(config_from_mapping({
        "database_url": url, "connectors": SETTINGS, "logging": {"level": "ERROR"},
        "privacy": {"export_dir": str(export_dir)},
        "webhooks": {"max_body_bytes": MAX_BODY, "signature_tolerance": "5m"},
    }, env={}))
    if not durable and rt.engine.dialect.name == "postgresql":
        @event.listens_for(rt.engine, "connect")
        def _relax(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute("SET synchronous_commit TO OFF")
            dbapi_conn.commit()
    return rt


class Target:
    """The app under test, and what was sent to it and answered."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.client = create_app(rt=rt, configure_logging=False).test_client()
        self.check = Check()
        self.sent: list[Sent] = []
        #: (source, key) -> (delivery id, body hash) of every delivery stored
        self.stored: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.t_gen = self.t_req = 0.0

    def send(self, case: Case) -> Sent:
        """Sign, post, judge the answer (violations go to :attr:`check`)."""
        t0 = time.perf_counter()
        now = datetime.now(UTC)
        headers = signed_headers(case, now)
        key = inbox.delivery_key(self.rt.connectors[case.source], Delivery(
            source=case.source, body=case.body, headers=headers, received_at=now))
        t1 = time.perf_counter()
        # the raw bytes as a server passes them on: given as data=, the test client would
        # build a form body of its own for an empty body sent as multipart/form-data
        r = self.client.post(f"/webhooks/{case.source}", input_stream=io.BytesIO(case.body),
                             headers={**headers, "Content-Length": str(len(case.body))})
        t2 = time.perf_counter()
        self.t_gen += t1 - t0
        self.t_req += t2 - t1
        try:
            out = json.loads(r.data)
        except ValueError:
            out = {}
        status = out.get("status") if r.status_code == 200 else out.get("error", "?")
        rec = Sent(case.source, case.kind, case.expect, r.status_code, str(status), out.get("delivery_id"),
                   key, hashlib.sha256(case.body).digest()[:12], case.resend_of,
                   (out.get("error") if r.status_code == 200 else out.get("message")) or "",
                   (t2 - t1) * 1000)
        self.sent.append(rec)
        judge(self.check, case.index, case, rec, self.stored)
        return rec


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="cx-fuzz-"))
    url = prepare(args.database_url, args.reset, tmp)
    rt = fuzz_runtime(url, tmp / "exports", durable=args.durable)
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    logging.getLogger().setLevel(logging.ERROR)
    target = Target(rt)
    fuzzer = Fuzzer(args.seed)
    started = time.perf_counter()
    for i in range(args.count):
        t0 = time.perf_counter()
        case = fuzzer.case(i)
        target.t_gen += time.perf_counter() - t0
        target.send(case)
        if args.progress and (i + 1) % args.progress == 0:
            el = time.perf_counter() - started
            print(f"  {i + 1:>7} cases  {el:6.1f} s  {(i + 1) / el:6.0f}/s  "
                  f"violations {sum(target.check.counts.values())}",
                  file=sys.stderr, flush=True)
    duration = time.perf_counter() - started
    check, sent = target.check, target.sent
    rows = compare(check, rt.engine, sent)
    replayed = replay_sample(check, rt, args.replay, args.seed)
    report(args, url, sent, rows, replayed, check, errors, duration, target.t_gen, target.t_req)
    rt.engine.dispose()
    return 0 if check.ok and not errors.records else 1


def judge(check: Check, i: int, case: Case, rec: Sent, stored_key: dict) -> None:
    """The answer to one case against what it had to be."""
    where = (f"case {i} ({case.source}, {case.kind}, expect {case.expect}): "
             f"{rec.code} {rec.status} {rec.error}")
    if rec.code >= 500:
        check.fail(f"{rec.code} answer", where)
        return
    if case.expect == "413" or rec.code == 413:
        if rec.code != 413 or case.expect != "413":
            check.fail("413 expected" if case.expect == "413" else "unexpected 413", where)
        return
    if case.expect.startswith("401"):
        if rec.code != 401:
            check.fail("bad signature accepted" if rec.code == 200 else f"{rec.code} for a bad signature",
                       where)
        return
    if rec.code != 200:
        check.fail(f"unexpected {rec.code}", where)
        return
    # queued: a privacy request, answered at once and left to the clock's privacy job
    if rec.status not in ("processed", "queued", "failed", "ignored", "duplicate"):
        check.fail("unknown status", where)
        return
    k = (case.source, rec.key)
    if rec.status == "duplicate":
        first = stored_key.get(k)
        if first is None:
            check.fail("duplicate of nothing stored (lost)", where)
        elif first[1] != rec.body_hash and case.resend_of is None:
            # another body with the same platform id (a mutation wrote a constant into the id
            # field): a redelivery by the platform's contract; reported, for review
            check.note("different body, same delivery key: answered as a redelivery",
                       where + f" key {rec.key[:120]}")
        return
    if not isinstance(rec.delivery_id, int):
        check.fail("no delivery id", where)
        return
    if k in stored_key:
        check.fail("stored twice under one key", where)
    stored_key[k] = (rec.delivery_id, rec.body_hash)
    if rec.status in ("failed", "ignored") and not rec.error.strip():
        check.fail(f"{rec.status} without a reason", where)
    if rec.error.startswith(("internal error", "could not store")):
        check.fail("crash kept as failed", where)


def compare(check: Check, engine: Any, sent: list[Sent]) -> dict[str, Counter]:
    """The deliveries table against the answers: one row per stored key, same status, reasons."""
    answered = {s.delivery_id: s for s in sent if s.code == 200 and s.status != "duplicate"}
    by_source: dict[str, Counter] = defaultdict(Counter)
    seen: set[int] = set()
    with engine.connect() as conn:
        for did, source, key, status, error in conn.execute(text(
                "SELECT id, source, delivery_key, status, error FROM deliveries")):
            by_source[source][status] += 1
            seen.add(did)
            s = answered.get(did)
            if s is None:
                check.fail("row nobody was answered for", f"delivery {did} {source} {status}")
                continue
            if (s.source, s.key, s.status) != (source, key, status):
                check.fail("row differs from the answer",
                           f"delivery {did}: row {source} {status} {key[:60]}; answer {s.source} {s.status} "
                           f"{(s.key or '')[:60]}")
            if status in ("failed", "ignored") and not (error or "").strip():
                check.fail(f"{status} row without a reason", f"delivery {did} {source}")
            if status not in ("processed", "queued", "failed", "ignored"):
                check.fail("row with another status", f"delivery {did} {source} {status}")
    for did, s in answered.items():
        if did not in seen:
            check.fail("answered but not stored (lost)", f"delivery {did} {s.source} {s.status}")
    return by_source


def replay_sample(check: Check, rt: Any, n: int, seed: int) -> Counter:
    """``inbox.replay`` (what ``cx-connector events replay`` runs) on a sample of the failed."""
    with rt.engine.connect() as conn:
        failed = [r[0] for r in conn.execute(text(
            "SELECT id FROM deliveries WHERE status = 'failed' ORDER BY id"))]
    sample = random.Random(seed).sample(failed, min(n, len(failed)))
    out: Counter[str] = Counter()
    for did in sample:
        try:
            receipt = inbox.replay(rt.engine, rt.connectors, did)
        except Exception as exc:
            check.fail("replay raised", f"delivery {did}: {type(exc).__name__}: {exc}")
            out["raised"] += 1
            continue
        out[receipt.status] += 1
        # "redacted": erased for privacy since (a Shopify redact in the run), said so
        if receipt.status not in ("processed", "failed", "ignored", "redacted"):
            check.fail("replay status", f"delivery {did}: {receipt.status} {receipt.error}")
        elif receipt.status != "processed" and not (receipt.error or "").strip():
            check.fail("replay without a reason", f"delivery {did}: {receipt.status}")
        elif (receipt.error or "").startswith(("internal error", "could not store")):
            check.fail("replay crashed", f"delivery {did}: {receipt.error}")
    return out


def report(args: argparse.Namespace, url: str, sent: list[Sent], rows: dict[str, Counter], replayed: Counter,
           check: Check, errors: ErrorLog, duration: float, t_gen: float, t_req: float) -> None:
    load = os.getloadavg()
    engine_name = "PostgreSQL" if url.startswith("postgres") else "SQLite"
    if engine_name == "PostgreSQL":
        engine_name += "" if args.durable else " (synchronous_commit off)"
    print(f"\nfuzz: {len(sent)} cases, seed {args.seed}, {engine_name}, {duration:.1f} s "
          f"({len(sent) / duration:.0f} cases/s; generating+signing {t_gen:.1f} s, requests {t_req:.1f} s); "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {platform.python_version()}")
    head = f"{'source':<8} {'sent':>7} {'200':>7} {'401':>6} {'413':>5} {'other':>5} | {'processed':>9} " \
           f"{'failed':>7} {'ignored':>7} {'dup':>6} | {'stored p/f/i':>20}"
    print("\n" + head + "\n" + "-" * len(head))
    total: Counter[str] = Counter()
    for source in SOURCES:
        mine = [s for s in sent if s.source == source]
        if not mine:
            continue
        codes = Counter(s.code for s in mine)
        st = Counter(s.status for s in mine if s.code == 200)
        r = rows.get(source, Counter())
        line = Counter({"sent": len(mine), "200": codes[200], "401": codes[401], "413": codes[413],
                        "other": len(mine) - codes[200] - codes[401] - codes[413],
                        "processed": st["processed"], "failed": st["failed"], "ignored": st["ignored"],
                        "dup": st["duplicate"], "sp": r["processed"], "sf": r["failed"], "si": r["ignored"]})
        total.update(line)
        _line(source, line)
    print("-" * len(head))
    _line("all", total)
    print("\nkinds of case: sent, mean ms per request (x: against the unchanged samples, the "
          "baseline of this run), answers")
    kinds: dict[str, Counter] = defaultdict(Counter)
    ms: Counter[str] = Counter()
    for s in sent:
        kind = s.kind.split("+")[0] + "".join(f"+{k}" for k in ("mutated", "bytes", "erasure")
                                              if f"+{k}" in s.kind)
        kinds[kind][s.code] += 1
        ms[kind] += s.ms
    base = ms["sample"] / max(1, sum(kinds["sample"].values()))
    for kind, c in sorted(kinds.items(), key=lambda kv: -sum(kv[1].values())):
        mean = ms[kind] / sum(c.values())
        print(f"  {kind:<26} {sum(c.values()):>7} {mean:7.2f} ms {mean / base:5.2f}x   "
              + "  ".join(f"{k}: {v}" for k, v in sorted(c.items())))
    print("\n401 answers, by the bad signature each case was made with:")
    why = Counter(f"{s.source}: {s.expect[4:]}" for s in sent if s.code == 401)
    for k, v in why.most_common():
        print(f"  {v:>6}  {k}")
    print("\ntop reasons of failed / ignored deliveries, per source:")
    for source in SOURCES:
        for status in ("failed", "ignored"):
            reasons = Counter(reason_group(s.error) for s in sent
                              if s.source == source and s.code == 200 and s.status == status)
            for reason, n in reasons.most_common(args.top):
                print(f"  {source:<8} {status:<7} {n:>6}  {reason}")
    print(f"\nreplayed failed deliveries (sample of {args.replay}): "
          + (", ".join(f"{k} {v}" for k, v in sorted(replayed.items())) or "none failed"))
    if errors.records:
        print("\nlogged at ERROR by the app:")
        for k, v in errors.records.most_common(20):
            print(f"  {v:>6}  {k}")
    for rule, n in check.notes.most_common():
        print(f"\nnoted (not a violation): {n} {rule}")
        for ex in check.examples[rule]:
            print(f"          {ex}")
    if check.ok:
        print("\nOK: no 5xx, every 4xx explained, every answered delivery stored exactly once "
              "with its reason")
    else:
        print("\nVIOLATIONS:")
        for rule, n in check.counts.most_common():
            print(f"  {n:>6}  {rule}")
            for ex in check.examples[rule]:
                print(f"          {ex}")


def _line(name: str, c: Counter) -> None:
    print(f"{name:<8} {c['sent']:>7} {c['200']:>7} {c['401']:>6} {c['413']:>5} {c['other']:>5} | "
          f"{c['processed']:>9} {c['failed']:>7} {c['ignored']:>7} {c['dup']:>6} | "
          f"{c['sp']:>6}/{c['sf']:>6}/{c['si']:>6}")


def show(args: argparse.Namespace) -> int:
    case = Fuzzer(args.seed).case(args.show)
    headers = signed_headers(case, datetime.now(UTC))
    print(json.dumps({"index": case.index, "source": case.source, "kind": case.kind, "expect": case.expect,
                      "sign": case.sign, "resend_of": case.resend_of, "headers": headers,
                      "body_bytes": len(case.body)}, indent=2))
    sys.stdout.buffer.write(case.body[:4000] + b"\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=100_000, help="cases to send (default 100000)")
    p.add_argument("--seed", type=int, default=1, help="the run's seed (default 1): same seed, same cases")
    p.add_argument("--database-url", default=None, help="default: a new SQLite file in a temp directory")
    p.add_argument("--reset", action="store_true", help="empty the database first (drops every table)")
    p.add_argument("--durable", action="store_true",
                   help="PostgreSQL: wait for the WAL flush at every commit (default: not; see fuzz_runtime)")
    p.add_argument("--replay", type=int, default=500, help="failed deliveries to replay (default 500)")
    p.add_argument("--top", type=int, default=6, help="error reasons listed per source and status")
    p.add_argument("--progress", type=int, default=10_000, help="a progress line every N cases (0: none)")
    p.add_argument("--show", type=int, default=None, metavar="N", help="print case N and exit")
    args = p.parse_args(argv)
    return show(args) if args.show is not None else run(args)


if __name__ == "__main__":
    sys.exit(main())
