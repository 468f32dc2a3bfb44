"""Counts in words (:mod:`cx_connector.wording`), as the CLI prints them."""

from __future__ import annotations

import pytest

from cx_connector.wording import counted, plural


@pytest.mark.parametrize(("n", "noun", "says"), [
    (1, "customer", "1 customer"),
    (0, "customer", "0 customers"),
    (2371, "customer", "2,371 customers"),
    (1, "raw delivery", "1 raw delivery"),
    (3, "raw delivery", "3 raw deliveries"),
    (2, "identity", "2 identities"),
    (2, "day", "2 days"),            # a vowel before the y: a plain s
    (1, "record write", "1 record write"),
    (4, "record write", "4 record writes"),
    (2, "index", "2 indexes"),
    (1.5, "day", "1.5 days"),
])
def test_counted(n, noun, says):
    assert counted(n, noun) == says


def test_an_irregular_plural_is_given():
    assert counted(2, "person", "people") == "2 people"
    assert counted(1, "person", "people") == "1 person"
    assert plural("batch") == "batches"


def test_only_customers_never_says_only_zero():
    from cx_connector.wording import only_customers
    assert only_customers(0, "purchases") == "no customer has purchases"
    assert only_customers(1, "purchases") == "only 1 customer has purchases"
    assert only_customers(2357, "purchases") == "only 2,357 customers have purchases"
