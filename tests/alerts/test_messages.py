"""Alert wording: counts agree with their nouns."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cx_connector.alerts import messages


@pytest.mark.parametrize(("reopens", "words"), [(1, "1 time"), (3, "3 times"), (None, "repeatedly")])
def test_a_reopened_ticket_counts_its_reopens(reopens, words):
    a = messages.Alert(key="k", rule="reopens", condition="ticket_reopened", event="fired",
                       fired_at=datetime(2026, 6, 15, tzinfo=UTC),
                       details={"ticket_id": "7", "source": "zendesk", "reopens": reopens,
                                "last_reopened_at": "2026-06-14T10:00:00Z"},
                       customer=messages.Customer(id=4, email="ann@example.com"))
    assert ("Reopened", words) in messages.facts(a)
    assert f"was reopened {words}, last on 2026-06-14" in messages.summary(a)
