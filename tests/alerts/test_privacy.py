"""An erased person is not alerted about any more, and an export includes their alerts."""

from __future__ import annotations

import random

import responses

from cx_connector import db, privacy
from cx_connector.alerts import decide, deliver
from cx_connector.throttle import FakeClock
from tests.alerts.conftest import customer, deliveries, set_scores, states
from tests.conftest import NOW


def test_forget_deletes_pending_alerts_and_export_lists_them(make, tmp_path):
    rt = make({"red": {"condition": "turned_red", "webhooks": ["ops"], "notify_existing": True}})
    ann, bob = customer(rt, "ann"), customer(rt, "bob")
    for c in (ann, bob):
        set_scores(rt, c, cx_health="red")
    decide.evaluate(rt.engine, list(rt.config.alerts.rules.values()), now=rt.now())
    with db.read(rt.engine) as conn:
        document = privacy.collect(conn, privacy.Target(customer_id=ann), now=NOW)
    [person] = document["customers"]
    assert [d["action"] for d in person["alert_deliveries"]] == ["webhook:ops"]
    assert [a["rule"] for a in person["alerts"]] == ["red"]

    with db.write(rt.engine) as conn:
        privacy.forget(conn, privacy.Target(customer_id=ann), now=NOW, actor="test")
    assert [d["customer_id"] for d in deliveries(rt)] == [bob]
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, rt.config.alerts.webhooks["ops"].url, status=200)
        deliver.deliver(rt, clock=FakeClock(NOW), rng=random.Random(1), worker="w")
        assert len(mock.calls) == 1 and b"ann@example.com" not in mock.calls[0].request.body
    assert {s["customer_id"] for s in states(rt)} == {ann, bob}  # the alert states stay, scrubbed
