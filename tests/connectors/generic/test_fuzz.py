"""Property test: random and mutated generic touchpoint bodies, validly signed, never get a 500.

Every body is answered 200 and stored as processed, failed with a validation message (never
"internal error" or "could not store": whatever the schema accepts, the database stores) or
ignored.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cx_connector.touchpoint import CHANNELS, KINDS, STAGES

BASE = {"touchpoint_id": "order:1:placed", "occurred_at": "2026-05-01T10:00:00Z",
        "customer": {"source_id": "c-1", "email": "ann@example.com", "phone": "+49 30 1234567",
                     "name": "Ann"},
        "kind": "order_placed", "channel": "web", "value": "59.90", "currency": "EUR",
        "products": [{"id": "p1", "sku": "S1", "title": "Shoe", "category": "Shoes", "quantity": 1,
                      "price": "59.90"}],
        "attributes": {"order_id": "1"}}
NUMBERS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["1e30", "-1e30", "99999999999999.99995", "123456789012345678", "0.00001", "NaN",
                     "Infinity", "-0", "1e-30", "12,50", "", "١٢"]))
DATES = ["2026-05-01T10:00:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00",
         "2026-02-30T00:00:00Z", "2026-05-01T10:00:00+23:59", "1970-01-01T00:00:00Z",
         "2026-05-01T10:00:00.123456789Z", "2026-05-01"]
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20),
                    st.sampled_from([*DATES, "\u0000", "\ud800", "x" * 300, *KINDS, *STAGES,
                                     *CHANNELS]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=5)
PATHS = [("touchpoint_id",), ("occurred_at",), ("kind",), ("stage",), ("channel",), ("value",),
         ("currency",), ("rating",), ("rating", "score"), ("rating", "scale_max"), ("rating", "type"),
         ("customer",), ("customer", "source_id"), ("customer", "email"), ("customer", "phone"),
         ("customer", "name"), ("products",), ("attributes",), ("source",)]


@st.composite
def mutated(draw):
    tp = json.loads(json.dumps(BASE))
    tp["touchpoint_id"] = f"t:{draw(st.integers(0, 2**40))}"
    if draw(st.booleans()):
        tp["kind"] = draw(st.sampled_from(sorted(KINDS)))
    if draw(st.booleans()):
        tp["occurred_at"] = draw(st.sampled_from(DATES))
    if not draw(st.integers(0, 3)):  # a quarter stay valid, so storing is exercised too
        return tp
    if draw(st.booleans()):
        tp["rating"] = {"type": draw(st.sampled_from(["nps", "csat", "ces", "x"])),
                        "score": draw(NUMBERS), "scale_max": draw(NUMBERS)}
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = tp
        for key in path[:-1]:
            if not isinstance(parent.get(key), dict):
                parent[key] = {}
            parent = parent[key]
        if draw(st.booleans()):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(VALUES)
    if draw(st.booleans()):
        tp["products"] = [{"price": draw(NUMBERS), "quantity": draw(NUMBERS)}]
    return tp


bodies = st.one_of(
    mutated().map(lambda t: json.dumps(t).encode()),
    st.lists(mutated(), max_size=4).map(lambda t: json.dumps(t).encode()),
    VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=100),
)


@pytest.mark.slow
def test_random_and_mutated_bodies_never_get_a_500(post_signed):
    seen: Counter[str] = Counter()
    delivery = iter(range(10**9))

    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=bodies)
    def post(body):
        r = post_signed("generic", body, {"X-CX-Delivery-Id": f"fuzz-{next(delivery)}"})
        assert r.status_code == 200, (r.status_code, r.get_data(as_text=True)[:300])
        out = r.get_json()
        assert out["status"] in ("processed", "failed", "ignored", "duplicate"), out
        error = out.get("error") or ""
        assert not error.startswith(("internal error", "could not store")), (body[:300], error)
        seen[out["status"]] += 1

    post()
    assert min(seen["processed"], seen["failed"]) >= 20, seen
