"""The CDNOW sample (Fader, Hardie & Lee 2005) as data for tests: the published summary,
and the raw transactions loaded into the database as ``order_placed`` touchpoints."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from cx_connector import db
from cx_connector.models import customers, touchpoints
from tests.conftest import FIXTURES

CDNOW = FIXTURES / "cdnow"
#: end of the calibration period (inclusive)
CUTOFF = date(1997, 9, 30)
CUTOFF_END = datetime(1997, 9, 30, 23, 59, 59, tzinfo=UTC)


def summary() -> list[dict[str, float]]:
    """ID, x, t_x, T, zbar from the published summaries (weeks)."""
    with (CDNOW / "cdnow_customers_summary_with_transactions.csv").open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def transactions() -> list[tuple[int, date, Decimal]]:
    """(customer id, day, dollar value) of every CDNOW transaction."""
    out = []
    for line in (CDNOW / "CDNOW_sample.txt").read_text().splitlines():
        if line.strip():
            _master, sample_id, day, _cds, value = line.split()
            out.append((int(sample_id), date(int(day[:4]), int(day[4:6]), int(day[6:])), Decimal(value)))
    return out


def load(engine) -> int:
    """Every transaction as an ``order_placed`` touchpoint (at noon UTC) of customer ``sample_id``."""
    rows = transactions()
    ids = sorted({cid for cid, _, _ in rows})
    created = datetime(1996, 12, 31, tzinfo=UTC)
    with db.write(engine) as conn:
        conn.execute(customers.insert(), [{"id": cid, "created_at": created, "updated_at": created,
                                           "profile_times": {}, "changed_at": created} for cid in ids])
        conn.execute(touchpoints.insert(), [
            {"source": "cdnow", "touchpoint_id": f"order:{i}", "customer_id": cid,
             "customer_source_id": str(cid), "occurred_at": datetime(d.year, d.month, d.day, 12, tzinfo=UTC)
             + timedelta(minutes=i % 600), "kind": "order_placed", "stage": "purchase", "channel": "web",
             "value": value, "currency": "USD", "products": [], "attributes": {"order_id": str(i)},
             "created_at": created} for i, (cid, d, value) in enumerate(rows)])
    return len(ids)
