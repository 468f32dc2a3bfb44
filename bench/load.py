"""Load and faults: mixed signed webhooks from HubSpot, Zendesk and Shopify against the
deployment as users run it (gunicorn with the shipped settings, ``WEB_CONCURRENCY=2``, and
the clock process scoring and syncing on a short schedule), write-back going to a local
mock of the three platforms' write APIs.

    python bench/load.py search [--database-url URL]   # highest rate with p99 < 100 ms, + baseline
    python bench/load.py run --rate 50 --seconds 20    # one paced run at a fixed rate, checked
    python bench/load.py faults --rate 60 --seconds 90 # SIGKILL web workers and the clock meanwhile
    python bench/load.py dbaway --database-url postgresql+psycopg://...  # the database gone 10 s

Every mode takes ``--database-url`` (default: a temporary SQLite file) and ``--reset``
(drop everything in that PostgreSQL database first: the checks count rows, so they need
an empty one), and prints one JSON document; ``--json FILE`` also writes it to a file.

Traffic (:class:`Traffic`): deliveries of the three platforms in turn, each correctly
signed at the moment it is sent (HubSpot v3 over ``webhook_url``, Zendesk's timestamped
HMAC, Shopify's body HMAC): HubSpot batches of 1 to 100 contact events (creations, email
and lifecycle-stage changes), Zendesk trigger bodies (tickets opened, then solved),
Shopify ``customers/create``, ``orders/create`` and ``orders/paid``, for a pool of
customers who are the same people on all three platforms (linked by email). About 5 %
of deliveries are a delivery sent again (same body, same delivery id) and about 10 %
arrive out of order (the follow-up of a fact before the fact: an email change before
the contact's creation, a ticket solved before it was opened, an order paid before it
was placed). The key and touchpoint ids of each delivery are computed with the
connectors' own code, for the checks.

Client: open-loop and paced (asyncio, raw sockets, one connection per request; the
exchange itself is ``bench/ingest.py``'s), so a slow server cannot slow the offered
rate down and latency is measured from the moment a request was due.

``search``: a step search for the highest rate whose p99 stays under ``--p99-ms``
(doubling from ``--start-rate`` with probes of ``--probe-seconds``, then bisecting),
confirmed by a run of ``--confirm-seconds`` at the found rate (stepping down 10 % while
it fails), for cx-connector and for the bare Flask endpoint of ``bench/ingest.py``
under the same gunicorn settings (the baseline), in the same invocation.

``faults``: during the run a web worker (a gunicorn worker pid: the master forks a
new one) or the clock process is SIGKILLed at random moments (the clock restarted
after a second). Every delivery not answered 2xx is sent again (same delivery id, as
the platforms retry) until it is. ``dbaway``: the database (reached through
``bench/dbproxy.py``, which the web workers and the clock both go through) goes away for
``--away`` seconds mid-run: connections reset for the first half, a host that never
answers for the second; the same retries, and one webhook sent 1 s into the outage is
read with its headers (503 and ``Retry-After``). Exit 1 also on any 5xx but 503.

Checks after every run, once the clock has caught up (nothing due for scoring, the
outbox empty): every acknowledged delivery is stored once (``deliveries``), every
touchpoint of them exists once, every customer is scored, every platform record holds
exactly the last values written (``written_values``, formatted by the connectors'
code, against what the mock received last), and no value was sent twice to a record
(a repeat is allowed only when the process that sent it first was killed before it
could record the answer). Lost or duplicated counts above zero exit 1.

CPU time is measured per process group from /proc over each run: gunicorn (master and
workers), the clock (and its children), this PostgreSQL database's backends, the
mock, the client, and the machine as a whole (/proc/stat), so the figures say which
process runs out first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import ingest  # noqa: E402  (bench/ingest.py: the client exchange, the bare app, gunicorn)
import writeback  # noqa: E402  (bench/writeback.py: the mock platforms' write APIs)
from dbproxy import TcpProxy  # noqa: E402

from connectors.hubspot import signatures as hubspot_sig  # noqa: E402
from connectors.zendesk import signatures as zendesk_sig  # noqa: E402
from connectors.zendesk.normalise import TEMPLATE_MARKER, TEMPLATE_VERSION  # noqa: E402

SECRETS = {"hubspot": "load-hubspot-client-secret-0123", "zendesk": "load-zendesk-signing-secret-0123",
           "shopify": "load-shopify-client-secret-0123"}
SHOP = "load-bench.myshopify.com"
FIXTURES = ROOT / "tests" / "fixtures"
LIFECYCLE = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer")


# --- traffic -----------------------------------------------------------------------------


@dataclass
class Message:
    """One delivery as a platform sends it: signed when sent, the same bytes on a retry."""

    source: str
    body: bytes
    headers: dict[str, str]
    events: int = 1
    kind: str = "first"  # first | duplicate | out_of_order
    key: str = ""  # the delivery key, by the connector's code
    touchpoints: tuple[str, ...] = ()

    def raw(self, port: int, path: str | None = None) -> bytes:
        now = datetime.now(UTC)
        headers = dict(self.headers)
        if self.source == "hubspot":
            headers.update(hubspot_sig.sign_v3(SECRETS["hubspot"], "POST", self.headers["_url"], self.body,
                                               now))
        elif self.source == "zendesk":
            headers.update(zendesk_sig.sign(SECRETS["zendesk"], self.body, now=now))
        headers.pop("_url", None)
        head = (f"POST {path or '/webhooks/' + self.source} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Connection: close\r\n\r\n")
        return head.encode() + self.body


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


class Traffic:
    """An endless, reproducible stream of deliveries; see the module docstring.

    ``customers`` people, each a HubSpot contact, a Zendesk user and a Shopify customer
    with one email. A fact's follow-up (the contact's email after its creation, a
    ticket's solving after its opening, an order's payment after its placing) is queued
    and sent later; with probability ``reorder`` the follow-up goes first instead.
    """

    def __init__(self, port: int, customers: int = 3000, seed: int = 1, duplicates: float = 0.05,
                 reorder: float = 0.2) -> None:
        self.rng = random.Random(seed)
        self.port, self.customers, self.duplicates, self.reorder = port, customers, duplicates, reorder
        self.url = f"http://127.0.0.1:{port}/webhooks/hubspot"
        self.ids = itertools.count(1)
        self.start = datetime.now(UTC) - timedelta(days=60)
        self.hubspot_created: set[int] = set()
        self.shopify_created: set[int] = set()
        self.later: dict[str, list[tuple[Any, ...]]] = {"hubspot": [], "zendesk": [], "shopify": []}
        self.recent: list[Message] = []
        self.turn = itertools.cycle(("hubspot", "zendesk", "shopify"))
        self.order = json.loads((FIXTURES / "shopify" / "orders_create.json").read_text())
        self.customer = json.loads((FIXTURES / "shopify" / "customers_create.json").read_text())
        self.counts: Counter[str] = Counter()

    def when(self) -> datetime:
        return self.start + timedelta(seconds=next(self.ids) * 7)

    def __iter__(self) -> Traffic:
        return self

    def __next__(self) -> Message:
        if self.recent and self.rng.random() < self.duplicates:
            m = self.rng.choice(self.recent)
            msg = Message(m.source, m.body, m.headers, m.events, "duplicate", m.key, m.touchpoints)
        else:
            msg = getattr(self, next(self.turn))()
            self.recent = [*self.recent[-199:], msg]
        self.counts[msg.kind] += 1
        self.counts[msg.source] += 1
        self.counts["events"] += msg.events
        return msg

    def _follow(self, source: str, first: Any, then: Any) -> tuple[Any, bool]:
        """Queue ``then`` for a later delivery, or (reordered) send it now and queue ``first``."""
        if self.rng.random() < self.reorder:
            self.later[source].append(first)
            return then, True
        self.later[source].append(then)
        return first, False

    def _pending(self, source: str) -> Any:
        q = self.later[source]
        return q.pop(self.rng.randrange(len(q))) if q and self.rng.random() < 0.5 else None

    # HubSpot: a batch of contact events ------------------------------------------------------

    def _contact_event(self, c: int) -> tuple[dict[str, Any], bool]:
        cid = 500000000000 + c
        base = {"objectId": cid, "portalId": 48975575, "appId": 39522895, "subscriptionId": 6527612,
                "attemptNumber": 0, "changeSource": "INTEGRATION", "sourceId": "39522895"}
        at = self.when()
        if c not in self.hubspot_created:
            self.hubspot_created.add(c)
            created = {**base, "eventId": next(self.ids), "occurredAt": _ms(at),
                       "subscriptionType": "contact.creation", "changeFlag": "CREATED"}
            email = {**base, "eventId": next(self.ids), "occurredAt": _ms(at) + 1000,
                     "subscriptionType": "contact.propertyChange", "propertyName": "email",
                     "propertyValue": f"c{c}@example.com"}
            return self._follow("hubspot", created, email)
        return {**base, "eventId": next(self.ids), "occurredAt": _ms(at),
                "subscriptionType": "contact.propertyChange", "propertyName": "lifecyclestage",
                "propertyValue": self.rng.choice(LIFECYCLE)}, False

    def hubspot(self) -> Message:
        r = self.rng.random()
        size = 1 if r < 0.5 else self.rng.randint(2, 10) if r < 0.8 else \
            self.rng.randint(11, 50) if r < 0.95 else self.rng.randint(51, 100)
        events, reordered = [], False
        while len(events) < size:
            ev = self._pending("hubspot")
            if ev is None:
                ev, flipped = self._contact_event(self.rng.randrange(self.customers))
                reordered |= flipped
            events.append(ev)
        return Message("hubspot", json.dumps(events).encode(), {"_url": self.url}, len(events),
                       "out_of_order" if reordered else "first")

    # Zendesk: trigger bodies (the README's template), a ticket opened then solved -------------

    def zendesk(self) -> Message:
        pending, reordered = self._pending("zendesk"), False
        if pending is None:
            c = self.rng.randrange(self.customers)
            tid, at = next(self.ids), self.when()
            opened = (c, tid, "New", at, at)
            solved = (c, tid, "Solved", at, at + timedelta(hours=2))
            pending, reordered = self._follow("zendesk", opened, solved)
        c, tid, status, created, updated = pending
        body = {TEMPLATE_MARKER: TEMPLATE_VERSION,
                "ticket": {"id": str(tid), "status": status, "priority": "Normal", "type": "Question",
                           "via": "Web form", "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "updated_at": updated.strftime("%Y-%m-%dT%H:%M:%SZ")},
                "requester": {"id": str(8400000000000 + c), "email": f"c{c}@example.com",
                              "name": f"Customer {c}", "phone": ""},
                "satisfaction": {"rating": "", "comment": ""}}
        return Message("zendesk", json.dumps(body).encode(),
                       {"X-Zendesk-Webhook-Id": "01HLOADBENCH", "X-Zendesk-Webhook-Invocation-Id":
                        f"inv-{next(self.ids)}"}, 1, "out_of_order" if reordered else "first")

    # Shopify: customers/create, orders/create, orders/paid -------------------------------------

    def _shopify_customer(self, c: int) -> dict[str, Any]:
        return {"id": 7300000000000000 + c, "email": f"c{c}@example.com", "first_name": "Customer",
                "last_name": str(c), "phone": None, "state": "enabled", "currency": "EUR",
                "created_at": self.start.isoformat(), "updated_at": self.start.isoformat()}

    def shopify(self) -> Message:
        pending, reordered = self._pending("shopify"), False
        if pending is None:
            c = self.rng.randrange(self.customers)
            if c not in self.shopify_created:
                self.shopify_created.add(c)
                pending = ("customers/create", c, None, self.when())
            else:
                oid, at = next(self.ids), self.when()
                pending, reordered = self._follow("shopify", ("orders/create", c, oid, at),
                                                  ("orders/paid", c, oid, at + timedelta(minutes=5)))
        topic, c, oid, at = pending
        if topic == "customers/create":
            body = {**self.customer, **self._shopify_customer(c), "created_at": at.isoformat(),
                    "updated_at": at.isoformat()}
        else:
            price = f"{10 + (oid % 90)}.{oid % 100:02d}"
            body = {**self.order, "id": 820982911946000000 + oid, "name": f"#{oid}", "order_number": oid,
                    "email": f"c{c}@example.com", "contact_email": f"c{c}@example.com",
                    "created_at": at.isoformat(), "processed_at": at.isoformat(),
                    "updated_at": at.isoformat(),
                    "total_price": price, "current_total_price": price, "currency": "EUR",
                    "financial_status": "paid" if topic == "orders/paid" else "pending",
                    "customer": {**self.order.get("customer", {}), **self._shopify_customer(c)},
                    "cancelled_at": None, "refunds": []}
        raw = json.dumps(body).encode()
        mac = hmac.new(SECRETS["shopify"].encode(), raw, hashlib.sha256).digest()
        hmac_b64 = base64.b64encode(mac).decode()
        return Message("shopify", raw, {
            "X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": hmac_b64, "X-Shopify-Shop-Domain": SHOP,
            "X-Shopify-API-Version": "2026-07", "X-Shopify-Webhook-Id": f"wh-{next(self.ids)}",
            "X-Shopify-Triggered-At": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")},
            1, "out_of_order" if reordered else "first")


class Keys:
    """Each message's delivery key and touchpoint ids, computed by the connectors' own code
    (the same the web workers run), so the checks know what must be stored."""

    def __init__(self, config_path: Path) -> None:
        from cx_connector.config import load_config
        from cx_connector.runtime import build

        self.rt = build(load_config(config_path))

    def fill(self, msg: Message) -> Message:
        if msg.key:
            return msg
        from cx_connector.connector import Delivery

        headers = {k: v for k, v in msg.headers.items() if not k.startswith("_")}
        delivery = Delivery(msg.source, msg.body, headers, datetime.now(UTC))
        connector = self.rt.connectors[msg.source]
        msg.key = connector.delivery_key(delivery)
        msg.touchpoints = tuple(tp.touchpoint_id for tp in connector.normalise(
            delivery, now=datetime.now(UTC)).touchpoints)
        return msg


# --- the mock platforms ---------------------------------------------------------------------


class _Recorded(dict):
    """A record's fields on the mock platform; every write is also appended to ``history``."""

    def __init__(self, source: str, record: str, history: list, counts: dict) -> None:
        super().__init__()
        self.source, self.record, self.history, self.counts = source, record, history, counts

    def update(self, values: dict) -> None:  # type: ignore[override]
        self.history.append([self.source, self.record, dict(values), time.time(), self.counts[self.source]])
        super().update(values)

    def __setitem__(self, key: str, value: Any) -> None:  # Shopify: one metafield at a time
        self.history.append([self.source, self.record, {key: value}, time.time(), self.counts[self.source]])
        super().__setitem__(key, value)


class _Platform(dict):
    def __init__(self, source: str, history: list, counts: dict) -> None:
        super().__init__()
        self.source, self.history, self.counts = source, history, counts

    def setdefault(self, record: str, default: Any = None) -> Any:  # type: ignore[override]
        if record not in self:
            dict.__setitem__(self, record, _Recorded(self.source, record, self.history, self.counts))
        return self[record]


def serve_mock(port_out: Any) -> None:
    """The write APIs of bench/writeback.py's mock (HubSpot batch update, Zendesk
    update_many + job statuses, Shopify metafieldsSet), without its scaled-down rate limits
    (this benchmark is about our side), recording every write; ``GET /_history``. Also
    HubSpot's contact batch read, which the enrich job calls at every clock start (a 404
    there would mean "deleted", and the write-back would rightly skip those contacts)."""
    mock = writeback.Mock(0.0, 1)
    mock.hubspot = writeback.Window(10**9, 1.0)
    mock.zendesk = writeback.Window(10**9, 1.0)
    mock.shopify = writeback.Bucket(1e12, 1e12)
    history: list = []
    mock.landed = {s: _Platform(s, history, mock.counts) for s in ("hubspot", "zendesk", "shopify")}

    class Handler(writeback.handler(mock)):  # type: ignore[misc]
        def do_GET(self) -> None:
            if self.path == "/_history":
                with mock.lock:
                    return self.reply(200, {"history": history, "counts": mock.counts})
            return super().do_GET()

        def do_POST(self) -> None:
            if self.path == "/crm/v3/objects/contacts/batch/read":  # the enrich job's lookup
                ids = [str(i["id"]) for i in self.body()["inputs"]]
                return self.reply(200, {"status": "COMPLETE", "results": [
                    {"id": i, "properties": {"email": f"c{int(i) - 500000000000}@example.com"}}
                    for i in ids]})
            return super().do_POST()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_out.put(server.server_address[1])
    server.serve_forever()


def mock_history(base: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(base + "/_history", timeout=60) as resp:
        return json.loads(resp.read())


# --- CPU per process group ----------------------------------------------------------------


TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[int, float] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / TICKS, sum(v[:8]) / TICKS


class CpuMeter:
    """CPU seconds per group of processes over a window, sampled every half second so
    short-lived processes (a killed worker, a restarted clock) count too."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.new_pids: set[int] = set()
        self.backend_group: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def groups(self) -> dict[int, tuple[str, float]]:
        roots = self.stack.roots()
        out: dict[int, tuple[str, float]] = {}
        parents: dict[int, int] = {}
        cpu: dict[int, float] = {}
        backends: list[tuple[int, str]] = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _stat(entry)
                if st:
                    parents[int(entry)], cpu[int(entry)] = st
        for pid in cpu:
            group, p, hops = None, pid, 0
            while p and hops < 6:
                if p in roots:
                    group = roots[p]
                    break
                p, hops = parents.get(p, 0), hops + 1
            if group is None and self.stack.pg_database:
                cmd = _cmdline(str(pid))
                if cmd.startswith("postgres: "):
                    backends.append((pid, cmd))
            if group:
                out[pid] = (group, cpu[pid])
        for pid, cmd in backends:  # once every process of ours is known
            out[pid] = (self.backend_of(pid, cmd, out) if f" {self.stack.pg_database} " in cmd
                        else "postgres_aux", cpu[pid])
        return out

    def backend_of(self, pid: int, cmd: str, ours: dict[int, tuple[str, float]]) -> str:
        """``postgres:<group>``: whose connection this backend serves (web workers, the clock,
        this script), found from the client port in its process title through /proc/net/tcp
        and the sockets our processes hold. Cached per backend."""
        if pid in self.backend_group:
            return self.backend_group[pid]
        port = cmd.rsplit("(", 1)[-1].split(")", 1)[0] if "(" in cmd else ""
        group = "postgres"
        if port.isdigit():
            inodes: dict[str, str] = {}
            for p, (g, _) in [*ours.items(), (os.getpid(), ("client", 0.0))]:
                with contextlib.suppress(OSError):
                    for fd in os.listdir(f"/proc/{p}/fd"):
                        with contextlib.suppress(OSError):
                            target = os.readlink(f"/proc/{p}/fd/{fd}")
                            if target.startswith("socket:["):
                                inodes[target[8:-1]] = g
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                with contextlib.suppress(OSError):
                    for line in Path(table).read_text().splitlines()[1:]:
                        cols = line.split()
                        if int(cols[1].rsplit(":", 1)[1], 16) == int(port) and cols[9] in inodes:
                            group = "postgres:" + inodes[cols[9]].split("_")[0]
        if group != "postgres":
            self.backend_group[pid] = group
        return group

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            for pid, v in self.groups().items():
                if pid not in self.first:
                    self.new_pids.add(pid)
                    self.first[pid] = (v[0], 0.0)
                self.last[pid] = v

    def start(self) -> CpuMeter:
        self.first = self.groups()
        self.last = dict(self.first)
        self.machine0 = machine_busy()
        self.client0 = time.process_time()
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread:
            self._thread.join()
        for pid, v in self.groups().items():
            self.last[pid] = v
            self.first.setdefault(pid, (v[0], 0.0))
        wall = time.perf_counter() - self.t0
        per: dict[str, float] = Counter()
        for pid, (group, c) in self.last.items():
            per[group] += c - self.first[pid][1]
        per["client"] = time.process_time() - self.client0  # this process, the meter's thread included
        busy, total = machine_busy()
        per_core_total = total - self.machine0[1]
        machine = busy - self.machine0[0]
        per = {k: round(v, 2) for k, v in sorted(per.items())}
        return {"wall_s": round(wall, 2), "cpu_s": per, "machine_busy_s": round(machine, 2),
                "machine_capacity_s": round(per_core_total, 2),
                "machine_busy_share": round(machine / per_core_total, 3) if per_core_total else None,
                "others_s": round(machine - sum(per.values()), 2)}


# --- the deployment -------------------------------------------------------------------------


class Stack:
    """Database, mock platforms, gunicorn (and the bare app's gunicorn), the clock."""

    def __init__(self, args: argparse.Namespace, *, proxy: bool = False, bare: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="cx-load-"))
        self.args = args
        self.db_url = args.database_url or f"sqlite:///{self.tmp / 'load.db'}"
        self.pg_database = self.db_url.rsplit("/", 1)[1].split("?")[0] if "postgres" in self.db_url else None
        if args.reset and self.pg_database:
            reset_postgres(self.db_url)
        self.proxy = None
        app_db = self.db_url
        if proxy:
            from sqlalchemy.engine import make_url

            u = make_url(self.db_url)
            self.proxy = TcpProxy((u.host or "127.0.0.1", u.port or 5432))
            app_db = u.set(port=self.proxy.port).render_as_string(hide_password=False)
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        self.mock = ctx.Process(target=serve_mock, args=(q,), daemon=True)
        self.mock.start()
        self.api = f"http://127.0.0.1:{q.get(timeout=30)}"
        self.port = ingest.free_port()
        self.config = self.tmp / "cx.yaml"
        self.config.write_text(json.dumps({
            "database_url": app_db,
            "logging": {"level": "INFO"},
            "schedule": {"score_every": args.score_every, "sync_every": args.sync_every,
                         "enrich_every": "24h"},
            "writeback": {"claim_timeout": "15s", "backoff_base": "1s", "max_wait": "5s"},
            "connectors": {
                "hubspot": {"client_secret": SECRETS["hubspot"], "access_token": "load-token",
                            "webhook_url": f"http://127.0.0.1:{self.port}/webhooks/hubspot",
                            "api_base_url": self.api},
                "zendesk": {"subdomain": "loadbench", "email": "bench@example.com", "api_token": "load-token",
                            "webhook_secret": SECRETS["zendesk"], "api_base_url": self.api},
                "shopify": {"shop": SHOP, "access_token": "load-token", "client_secret": SECRETS["shopify"],
                            "api_base_url": self.api, "graphql_points_per_second": 100000,
                            "graphql_bucket_size": 100000}}}))  # JSON is YAML
        self.env = {"CX_CONNECTOR_CONFIG": str(self.config), "WEB_CONCURRENCY": "2",
                    "PYTHONPATH": f"{self.tmp}:{ROOT}"}
        subprocess.run([sys.executable, "-m", "cx_connector", "--config", str(self.config), "db", "upgrade"],
                       check=True, env={**os.environ, **self.env}, stdout=subprocess.DEVNULL)
        self.keys = Keys(self.config)
        self.bare = self.bare_port = None
        if bare:
            (self.tmp / "bare_app.py").write_text(ingest.BARE_APP)
            self.bare_port = ingest.free_port()
            self.bare = ingest.Gunicorn("bare_app:create_app()", self.bare_port, self.env, self.tmp, 2, 4)
        self.web = ingest.Gunicorn("cx_connector:create_app()", self.port, self.env, self.tmp, 2, 4)
        self.clock_log = (self.tmp / "clock.log").open("ab")
        self.clock: subprocess.Popen | None = None
        self.clock_starts = 0
        self.start_clock()

    def start_clock(self) -> None:
        self.clock = subprocess.Popen([sys.executable, "-m", "cx_connector", "scheduler"],
                                      env={**os.environ, **self.env}, cwd=self.tmp, stdout=self.clock_log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.clock_starts += 1

    def workers(self) -> list[int]:
        master = self.web.proc.pid
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and (_stat(p) or (0,))[0] == master]

    def roots(self) -> dict[int, str]:
        r = {self.web.proc.pid: "gunicorn", self.mock.pid: "mock"}
        if self.clock:
            r[self.clock.pid] = "clock"
        if self.bare:
            r[self.bare.proc.pid] = "gunicorn_bare"
        return r

    def engine(self) -> Any:
        from cx_connector import db

        return db.make_engine(self.db_url)

    def stop(self) -> None:
        for server in (self.web, self.bare):
            if server:
                with contextlib.suppress(Exception):
                    server.stop()
        if self.clock and self.clock.poll() is None:
            os.killpg(self.clock.pid, signal.SIGTERM)
            try:
                self.clock.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.clock.pid, signal.SIGKILL)
        self.mock.terminate()
        self.mock.join(10)
        if self.proxy:
            self.proxy.close()


def reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


# --- the client -------------------------------------------------------------------------------


@dataclass
class Outcome:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # first attempts, seconds from due
    acked: list[Message] = field(default_factory=list)
    failed_for_good: list[Message] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (wall time, status) of every attempt
    lag: list[float] = field(default_factory=list)  # how late the client sent (its own slowness)
    due_at: list[float] = field(default_factory=list)  # wall time each first attempt was due
    sizes: list[int] = field(default_factory=list)  # events in each (HubSpot batches: 1 to 100)


async def exchange(port: int, raw: bytes, timeout: float) -> int:
    """One request (bench/ingest.py's exchange); 0 when the connection failed or timed out."""
    try:
        status, _ = await asyncio.wait_for(ingest.one(port, raw), timeout)
        return status
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return 0


async def paced(port: int, msgs: Any, rate: float, seconds: float, *, retry: bool, path: str | None = None,
                timeout: float = 10.0, give_up_after: float = 120.0) -> Outcome:
    """Open loop: message i is due at t0 + i / rate, whatever the server does. With
    ``retry`` a message not answered 2xx is sent again (re-signed, same delivery id)
    after 0.5 s, 1 s, 2 s... (at most 5 s apart), as the platforms retry."""
    out = Outcome()
    loop_t0 = time.perf_counter()
    n = int(rate * seconds)

    async def deliver(msg: Message, due: float) -> None:
        delay, first, deadline = 0.5, True, time.perf_counter() + give_up_after
        while True:
            out.sent += 1
            status = await exchange(port, msg.raw(port, path), timeout)
            now = time.perf_counter()
            out.statuses[status] += 1
            out.timeline.append((time.time(), status))
            if first:
                out.latencies.append(now - due)
                out.due_at.append(time.time() - (now - due))
                out.sizes.append(msg.events)
                first = False
            if 200 <= status < 300:
                out.acked.append(msg)
                return
            if not retry or now > deadline:
                out.failed_for_good.append(msg)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    tasks = []
    for i in range(n):
        due = loop_t0 + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        out.lag.append(max(0.0, time.perf_counter() - due))
        tasks.append(asyncio.create_task(deliver(next(msgs), due)))
    await asyncio.gather(*tasks)
    return out


def summary(o: Outcome, seconds: float, rate: float) -> dict[str, Any]:
    lat = ingest.summarise(o.latencies, dict(o.statuses), seconds)
    lag = sorted(o.lag)
    return {"offered_rate": rate, "deliveries": len(o.latencies), "p50_ms": lat["p50_ms"],
            "p99_ms": lat["p99_ms"],
            "max_ms": round(max(o.latencies, default=0) * 1000, 1), "statuses": lat["status"],
            "client_lag_p99_ms": round(lag[int(len(lag) * 0.99)] * 1000, 1) if lag else 0.0,
            "acknowledged": len(o.acked), "latency_by_events": latency_by_size(o)}


def latency_by_size(o: Outcome) -> dict[str, Any]:
    """p50/p99 by events per delivery: a HubSpot batch of 100 is a hundred events' work."""
    out = {}
    for name, lo, hi in (("1", 1, 1), ("2-10", 2, 10), ("11-50", 11, 50), ("51-100", 51, 100)):
        lat = sorted(x * 1000 for x, n in zip(o.latencies, o.sizes, strict=True) if lo <= n <= hi)
        if len(lat) > 1:
            q = statistics.quantiles(lat, n=100)
            out[name] = {"requests": len(lat), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1),
                         "max_ms": round(lat[-1], 1)}
    return out


# --- checks -------------------------------------------------------------------------------------


def wait_caught_up(stack: Stack, timeout: float) -> dict[str, Any]:
    """Until nothing is due: no customer changed since scored, no write pending or in flight,
    and a sync run has finished after that was first seen."""
    from sqlalchemy import func, or_, select

    from cx_connector.models import customers, job_runs, outbox

    engine = stack.engine()
    t0 = time.time()
    seen_idle_at = None
    try:
        while True:
            if stack.clock and stack.clock.poll() is not None:
                stack.start_clock()
            with engine.connect() as conn:
                due = conn.execute(select(func.count()).select_from(customers).where(
                    customers.c.merged_into_id.is_(None), customers.c.redacted_at.is_(None),
                    or_(customers.c.scored_at.is_(None), customers.c.changed_at > customers.c.scored_at))
                ).scalar_one()
                open_writes = conn.execute(select(func.count()).select_from(outbox).where(
                    outbox.c.status.in_(("pending", "in_flight")))).scalar_one()
                last_sync = conn.execute(select(func.max(job_runs.c.finished_at)).where(
                    job_runs.c.job == "sync", job_runs.c.status == "ok")).scalar_one()
            idle = due == 0 and open_writes == 0
            now = datetime.now(UTC)
            if idle and seen_idle_at is None:
                seen_idle_at = now
            elif not idle:
                seen_idle_at = None
            if idle and last_sync is not None and seen_idle_at is not None and \
                    last_sync.replace(tzinfo=last_sync.tzinfo or UTC) > seen_idle_at:
                return {"caught_up_s": round(time.time() - t0, 1), "due": 0, "open_writes": 0}
            if time.time() - t0 > timeout:
                return {"caught_up_s": None, "due": due, "open_writes": open_writes}
            time.sleep(1.0)
    finally:
        engine.dispose()


def platform_form(source: str, values: dict[str, Any]) -> dict[str, Any]:
    """Score fields as the connector sends them to its platform (names and values)."""
    from connectors.hubspot import fields as hubspot_fields
    from connectors.shopify import fields as shopify_fields
    from connectors.zendesk import fields as zendesk_fields

    if source == "hubspot":
        return hubspot_fields.properties(dict(values))
    if source == "zendesk":
        return zendesk_fields.user_fields(dict(values))
    return {shopify_fields.key(k): shopify_fields.value(k, v) for k, v in values.items() if v is not None}


def check(stack: Stack, acked: list[Message], kills: list[tuple[float, str]]) -> dict[str, Any]:
    """Lost and duplicated, delivery by delivery, touchpoint by touchpoint, value by value."""
    from sqlalchemy import func, select

    from cx_connector.models import customers, deliveries, outbox, scores, touchpoints, written_values

    for m in acked:
        stack.keys.fill(m)
    engine = stack.engine()
    with engine.connect() as conn:
        stored = Counter((r.source, r.delivery_key) for r in conn.execute(
            select(deliveries.c.source, deliveries.c.delivery_key)))
        statuses = Counter(r[0] for r in conn.execute(select(deliveries.c.status)))
        tps = Counter((r.source, r.touchpoint_id) for r in conn.execute(
            select(touchpoints.c.source, touchpoints.c.touchpoint_id)))
        orphans = conn.execute(select(func.count()).select_from(touchpoints).where(
            touchpoints.c.delivery_id.is_not(None),
            touchpoints.c.delivery_id.not_in(select(deliveries.c.id)))).scalar_one()
        live = conn.execute(select(customers.c.id, customers.c.changed_at, customers.c.scored_at).where(
            customers.c.merged_into_id.is_(None), customers.c.redacted_at.is_(None))).all()
        scored = set(conn.execute(select(scores.c.customer_id)).scalars())
        outbox_status = Counter(conn.execute(select(outbox.c.status)).scalars())
        sends_recorded: Counter[tuple[str, str, str]] = Counter()  # per field, in the platform's names
        for src, ext, flds, attempts in conn.execute(select(outbox.c.source, outbox.c.external_id,
                                                            outbox.c.fields, outbox.c.attempts)):
            for name in platform_form(src, {k: v for k, v in flds.items() if v is not None}):
                sends_recorded[(src, ext, name)] += attempts
        written: dict[tuple[str, str], dict[str, Any]] = {}
        for src, ext, fld, val in conn.execute(select(written_values.c.source, written_values.c.external_id,
                                                      written_values.c.field, written_values.c.value)):
            written.setdefault((src, ext), {})[fld] = val
    engine.dispose()
    acked_keys = {(m.source, m.key) for m in acked}
    want_tps = {(m.source, t) for m in acked for t in m.touchpoints}
    unscored = [c for c in live if c.id not in scored or
                (c.changed_at is not None and (c.scored_at is None or c.changed_at > c.scored_at))]

    state = mock_history(stack.api)
    landed: dict[tuple[str, str], dict[str, Any]] = {}
    sent: dict[tuple[str, str, str], list[tuple[float, Any]]] = {}  # (source, record, field) -> sends
    writes: dict[tuple[str, str], dict[int, list[Any]]] = {}  # record -> request no -> [time, values]
    for src, rec, vals, at, reqno in state["history"]:
        landed.setdefault((src, rec), {}).update(vals)
        for k, v in vals.items():
            sent.setdefault((src, rec, k), []).append((at, v))
        writes.setdefault((src, rec), {}).setdefault(reqno, [at, {}])[1].update(vals)

    wrong_value = [k for k, vals in written.items() if platform_form(k[0], vals) != landed.get(k, {})]
    not_written = [k for k in landed if k not in written]
    # a field sent to a record more often than the outbox recorded sending it is a
    # duplicate, unless an earlier send happened just before a clock was killed (its answer
    # died with the process, the claim expired and the next clock sent it again)
    clock_kills = [t for t, what in kills if what == "clock"]
    repeats, allowed, examples = 0, 0, []
    same_shown: Counter[str] = Counter()  # a changed value sent that looks the same there
    for key, sends in sent.items():
        excess = len(sends) - sends_recorded.get(key, 0)
        if excess > 0:
            if any(t <= k <= t + 5 for t, _ in sends[:-1] for k in clock_kills):
                allowed += excess
            else:
                repeats += excess
                examples.append([*key, len(sends), sends_recorded.get(key, 0)])
        same = sum(1 for (_, a), (_, b) in itertools.pairwise(sends) if a == b)
        if same:
            same_shown[f"{key[0]}.{key[2]}"] += same
    # the same write (every field the same) sent to a record twice in a row: a duplicate,
    # unless a clock was killed within 5 s after the first (the write was in flight there;
    # recover_expired counts that send in the write's attempts and sends it again)
    for key, by_req in writes.items():
        seq = [by_req[r] for r in sorted(by_req)]
        for (ta, a), (tb, b) in itertools.pairwise(seq):
            if a == b:
                if any(ta <= k <= min(tb, ta + 5) for k in clock_kills):
                    allowed += 1
                else:
                    repeats += 1
                    examples.append([*key, "same write twice", a])
    lost = {"deliveries": len(acked_keys - set(stored)), "touchpoints": len(want_tps - set(tps)),
            "unscored_customers": len(unscored), "platform_values": len(wrong_value),
            # nothing is deleted on the mock platforms: a write given up as "gone" is lost
            "writes_not_done": sum(outbox_status.get(k, 0) for k in ("pending", "in_flight", "dead", "gone"))}
    duplicated = {"deliveries": sum(n - 1 for n in stored.values() if n > 1),
                  "touchpoints": sum(n - 1 for n in tps.values() if n > 1),
                  "writes_sent_twice": repeats}
    return {"lost": lost, "duplicated": duplicated, "lost_total": sum(lost.values()),
            "duplicated_total": sum(duplicated.values()),
            "resent_after_clock_kill": allowed, "repeat_examples": examples[:8],
            "same_shown_values_resent": sum(same_shown.values()),
            "same_shown_by_field": dict(same_shown.most_common()), "not_written_but_landed": len(not_written),
            "acknowledged_deliveries": len(acked_keys), "stored_deliveries": sum(stored.values()),
            "stored_not_acknowledged": len(set(stored) - acked_keys), "delivery_statuses": dict(statuses),
            "touchpoints_expected": len(want_tps), "touchpoints_stored": sum(tps.values()),
            "touchpoints_orphaned": orphans, "customers": len(live), "records_written": len(written),
            "platform_writes": len(state["history"]), "outbox": dict(outbox_status),
            # what the platforms' rate limits are spent on (docs/scaling.md): field values
            # per platform, against the acknowledged deliveries above
            "values_by_platform": dict(sum((Counter({h[0]: len(h[2])}) for h in state["history"]),
                                           Counter())),
            "mock_requests": state["counts"]}


# --- modes --------------------------------------------------------------------------------------


def database_name(stack: Stack) -> str:
    return "PostgreSQL" if stack.pg_database else "SQLite"


def one_run(stack: Stack, traffic: Traffic, rate: float, seconds: float, *, bare: bool = False,
            retry: bool = False, during: Any = None) -> tuple[Outcome, dict[str, Any]]:
    port = stack.bare_port if bare else stack.port
    path = "/webhooks/generic" if bare else None
    meter = CpuMeter(stack).start()
    events0 = traffic.counts["events"]
    load1 = os.getloadavg()[0]

    async def go() -> Outcome:
        side = asyncio.get_running_loop().run_in_executor(None, during) if during else None
        o = await paced(port, traffic, rate, seconds, retry=retry, path=path)
        if side:
            await side
        return o

    o = asyncio.run(go())
    cpu = meter.stop()
    s = summary(o, seconds, rate)
    s["events"] = traffic.counts["events"] - events0
    s["load_average"] = [round(load1, 2), round(os.getloadavg()[0], 2)]
    s["cpu"] = cpu
    n = max(1, s["deliveries"])
    if not bare:
        s["latency_by_clock_job"] = latency_by_job(stack, o)
    s["cpu_ms_per_delivery"] = {k: round(v * 1000 / n, 3) for k, v in cpu["cpu_s"].items()}
    s["cpu_ms_per_event"] = {k: round(v * 1000 / max(1, s["events"]), 3) for k, v in cpu["cpu_s"].items()}
    s["cores_used"] = {k: round(v / cpu["wall_s"], 2) for k, v in cpu["cpu_s"].items()}
    return o, s


def latency_by_job(stack: Stack, o: Outcome) -> dict[str, Any]:
    """p50/p99 of the requests that arrived while the clock ran a score or a sync job,
    and of the others: what the clock's work costs the webhooks."""
    from sqlalchemy import select

    from cx_connector.models import job_runs

    if not o.due_at:
        return {}
    t0 = datetime.fromtimestamp(min(o.due_at) - 120, UTC)
    engine = stack.engine()
    try:
        with engine.connect() as conn:
            runs = conn.execute(select(job_runs.c.job, job_runs.c.started_at, job_runs.c.finished_at).where(
                job_runs.c.started_at >= t0, job_runs.c.job.in_(("score", "sync")))).all()
    finally:
        engine.dispose()
    spans = [(job, a.replace(tzinfo=a.tzinfo or UTC).timestamp(),
              (b.replace(tzinfo=b.tzinfo or UTC).timestamp() if b else time.time())) for job, a, b in runs]
    groups: dict[str, list[float]] = {"score": [], "sync": [], "neither": []}
    for at, lat in zip(o.due_at, o.latencies, strict=True):
        jobs = {job for job, a, b in spans if a <= at + lat and at <= b}
        groups["score" if "score" in jobs else "sync" if "sync" in jobs else "neither"].append(lat)
    out = {}
    for name, lat in groups.items():
        if len(lat) > 1:
            q = statistics.quantiles([x * 1000 for x in lat], n=100)
            out[name] = {"requests": len(lat), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1)}
    busy = {job: round(sum(b - a for j, a, b in spans if j == job), 2) for job in ("score", "sync")}
    return {**out, "job_seconds": busy}


def passes(s: dict[str, Any], p99_ms: float) -> bool:
    only_2xx = all(200 <= int(k) < 300 for k in s["statuses"])
    return only_2xx and s["p99_ms"] < p99_ms


def search_one(stack: Stack, traffic: Traffic, args: argparse.Namespace, *, bare: bool) -> dict[str, Any]:
    """Double until a probe fails, bisect, then confirm over ``confirm_seconds``."""
    probes, acked = [], []
    good, bad, rate = 0.0, None, args.start_rate
    while True:
        o, s = one_run(stack, traffic, rate, args.probe_seconds, bare=bare)
        acked += o.acked
        s["pass"] = passes(s, args.p99_ms)
        probes.append(s)
        print(f"  probe {'bare' if bare else 'cx'} {rate:.0f}/s: p99 {s['p99_ms']} ms, {s['statuses']}",
              file=sys.stderr)
        time.sleep(args.settle)
        if s["pass"]:
            good = rate
        else:
            bad = rate
        if bad is None:
            if rate >= args.max_rate:
                break
            rate = min(rate * 2, args.max_rate)
        elif good == 0:
            rate = bad / 2
            if rate < 1:
                break
        elif bad - good <= max(5.0, good * 0.1):
            break
        else:
            rate = round((good + bad) / 2)
    confirm, rate = None, good
    for _ in range(args.confirm_tries):
        o, s = one_run(stack, traffic, rate, args.confirm_seconds, bare=bare)
        acked += o.acked
        s["pass"] = passes(s, args.p99_ms)
        print(f"  confirm {'bare' if bare else 'cx'} {rate:.0f}/s: p99 {s['p99_ms']} ms, {s['statuses']}",
              file=sys.stderr)
        confirm = s
        if s["pass"]:
            break
        time.sleep(args.settle)
        rate = round(rate * 0.9)
    return {"rate": rate if confirm and confirm["pass"] else None, "confirm": confirm, "probes": probes,
            "acked": acked}


def mode_search(args: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(args, bare=not args.no_baseline)
    try:
        result: dict[str, Any] = {"mode": "search", "database": database_name(stack)}
        traffic = Traffic(stack.port, args.customers, args.seed)
        time.sleep(3)  # the clock's first runs
        if not args.no_baseline:
            bare = search_one(stack, Traffic(stack.port, args.customers, args.seed + 1), args, bare=True)
            bare.pop("acked")
            result["baseline"] = bare
        cx = search_one(stack, traffic, args, bare=False)
        acked = cx.pop("acked")
        result["cx"] = cx
        if cx["rate"] and result.get("baseline", {}).get("rate"):
            result["ratio_to_baseline"] = round(cx["rate"] / result["baseline"]["rate"], 3)
        result["traffic"] = dict(traffic.counts)
        result["catch_up"] = wait_caught_up(stack, args.catch_up)
        result["check"] = check(stack, acked, [])
        return result
    finally:
        stack.stop()


def mode_run(args: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(args)
    try:
        traffic = Traffic(stack.port, args.customers, args.seed)
        time.sleep(1)
        o, s = one_run(stack, traffic, args.rate, args.seconds)
        return {"mode": "run", "database": database_name(stack), "run": s,
                "traffic": dict(traffic.counts), "catch_up": wait_caught_up(stack, args.catch_up),
                "check": check(stack, o.acked, [])}
    finally:
        stack.stop()


def mode_faults(args: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(args)
    kills: list[tuple[float, str]] = []
    rng = random.Random(args.seed)
    end = time.time() + args.seconds

    def killer() -> None:
        while True:
            time.sleep(rng.uniform(args.kill_min, args.kill_max))
            if time.time() > end - 3:
                return
            if rng.random() < 0.5:
                workers = stack.workers()
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    kills.append((time.time(), "web"))
            elif stack.clock and stack.clock.poll() is None:
                os.killpg(stack.clock.pid, signal.SIGKILL)
                stack.clock.wait()
                kills.append((time.time(), "clock"))
                time.sleep(1.0)
                stack.start_clock()

    try:
        traffic = Traffic(stack.port, args.customers, args.seed)
        time.sleep(2)
        o, s = one_run(stack, traffic, args.rate, args.seconds, retry=True, during=killer)
        caught = wait_caught_up(stack, args.catch_up)
        result = {"mode": "faults", "database": database_name(stack), "run": s,
                  "kills": {"web_worker": sum(1 for _, w in kills if w == "web"),
                            "clock": sum(1 for _, w in kills if w == "clock")},
                  "never_acknowledged": len(o.failed_for_good), "attempts": o.sent,
                  "traffic": dict(traffic.counts), "catch_up": caught, "clock_starts": stack.clock_starts,
                  "check": check(stack, o.acked, kills)}
        clock_log = (stack.tmp / "clock.log").read_text(errors="replace")
        result["clock_log_tracebacks"] = clock_log.count("Traceback")
        return result
    finally:
        stack.stop()


def probe_503(stack: Stack) -> dict[str, Any]:
    """One Zendesk delivery sent while the database is away, read with its headers."""
    import http.client

    msg = Traffic(stack.port, 10, seed=99).zendesk()
    msg.headers["X-Zendesk-Webhook-Invocation-Id"] = "probe-while-away"
    raw = msg.raw(stack.port)
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=15)
    try:
        conn.request("POST", "/webhooks/zendesk", body=body, headers=headers)
        resp = conn.getresponse()
        return {"status": resp.status, "retry_after": resp.getheader("Retry-After"),
                "body": resp.read()[:200].decode(errors="replace")}
    finally:
        conn.close()


def mode_dbaway(args: argparse.Namespace) -> dict[str, Any]:
    if "postgres" not in (args.database_url or ""):
        raise SystemExit("dbaway needs --database-url postgresql+psycopg://...")
    stack = Stack(args, proxy=True)
    marks: dict[str, float] = {}

    def outage() -> None:
        time.sleep(args.away_at)
        marks["cut"] = time.time()
        stack.proxy.cut("reset")
        time.sleep(1)
        marks["probe"] = probe_503(stack)  # what a platform sees: the status and Retry-After
        time.sleep(args.away / 2 - 1)
        stack.proxy.cut("hang")  # the second half: a host that does not answer at all
        time.sleep(args.away / 2)
        stack.proxy.restore()
        marks["restored"] = time.time()

    try:
        traffic = Traffic(stack.port, args.customers, args.seed)
        time.sleep(2)
        o, s = one_run(stack, traffic, args.rate, args.seconds, retry=True, during=outage)
        after = [(t, st) for t, st in sorted(o.timeline) if t >= marks["restored"]]
        first_ok = next((t for t, st in after if 200 <= st < 300), None)
        during = Counter(st for t, st in o.timeline if marks["cut"] <= t <= marks["restored"] + 0.5)
        last_bad = max((t for t, st in o.timeline if not 200 <= st < 300), default=None)
        caught = wait_caught_up(stack, args.catch_up)
        return {"mode": "dbaway", "database": "PostgreSQL", "run": s, "away_s": args.away,
                "probe_while_away": marks.get("probe"),
                "statuses_all_attempts": {str(k): v for k, v in sorted(o.statuses.items())},
                "statuses_while_away": {str(k): v for k, v in sorted(during.items())},
                "first_2xx_after_restore_s": round(first_ok - marks["restored"], 2) if first_ok else None,
                "last_non_2xx_after_restore_s": round(last_bad - marks["restored"], 2) if last_bad else None,
                "never_acknowledged": len(o.failed_for_good), "attempts": o.sent,
                "catch_up": caught, "check": check(stack, o.acked, [])}
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    common.add_argument("--reset", action="store_true",
                        help="drop everything in the PostgreSQL database first")
    common.add_argument("--customers", type=int, default=3000)
    common.add_argument("--seed", type=int, default=1)
    common.add_argument("--score-every", default="5s")
    common.add_argument("--sync-every", default="2s")
    common.add_argument("--catch-up", type=float, default=600,
                        help="longest wait for the clock to catch up, s")
    common.add_argument("--json", default=None, help="also write the result to this file")
    s = sub.add_parser("search", parents=[common])
    s.add_argument("--start-rate", type=float, default=40)
    s.add_argument("--max-rate", type=float, default=1600)
    s.add_argument("--probe-seconds", type=float, default=10)
    s.add_argument("--confirm-seconds", type=float, default=60)
    s.add_argument("--confirm-tries", type=int, default=4, help="confirming runs, each 10 %% slower")
    s.add_argument("--p99-ms", type=float, default=100)
    s.add_argument("--settle", type=float, default=3, help="pause between probes, s")
    s.add_argument("--no-baseline", action="store_true")
    r = sub.add_parser("run", parents=[common])
    r.add_argument("--rate", type=float, default=50)
    r.add_argument("--seconds", type=float, default=20)
    f = sub.add_parser("faults", parents=[common])
    f.add_argument("--rate", type=float, default=50)
    f.add_argument("--seconds", type=float, default=90)
    f.add_argument("--kill-min", type=float, default=5)
    f.add_argument("--kill-max", type=float, default=15)
    d = sub.add_parser("dbaway", parents=[common])
    d.add_argument("--rate", type=float, default=50)
    d.add_argument("--seconds", type=float, default=40)
    d.add_argument("--away", type=float, default=10)
    d.add_argument("--away-at", type=float, default=10)
    args = p.parse_args(argv)
    modes = {"search": mode_search, "run": mode_run, "faults": mode_faults, "dbaway": mode_dbaway}
    result = modes[args.mode](args)
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                         "load_average_end": [round(x, 2) for x in os.getloadavg()],
                         "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    c = result.get("check", {})
    bad = c.get("lost_total", 1) or c.get("duplicated_total", 1)
    if args.mode == "dbaway":
        bad = bad or any(k.startswith("5") and k != "503" for k in result["statuses_all_attempts"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
