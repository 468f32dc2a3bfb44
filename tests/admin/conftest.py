"""Fixtures of the admin console's tests: the seeded shop, logging in, CSRF tokens."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.admin.seed import Shop, seed

TOKEN = "test-admin-token-0123456789"  # tests/conftest.py's make_config
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def login(client: Any, token: str = TOKEN) -> Any:
    """Log in through the form, as a browser does; returns the POST's response."""
    page = client.get("/admin/login")
    return client.post("/admin/login", data={"csrf_token": csrf_of(page.text), "token": token})


@pytest.fixture
def shop(rt, post_signed) -> Shop:
    return seed(rt, post_signed)


@pytest.fixture
def admin(client) -> Any:
    """The test client, logged in."""
    assert login(client).status_code == 303
    return client


@pytest.fixture
def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
