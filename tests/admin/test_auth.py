"""Who gets into the admin console and the API: the token, the session cookie, CSRF,
the slow-down of wrong tokens, and a console that is closed without a token."""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest
from sqlalchemy import select

from cx_connector import db
from cx_connector.admin import auth
from cx_connector.app import create_app
from cx_connector.models import audit_log, deliveries
from cx_connector.runtime import build
from tests.admin.conftest import TOKEN, csrf_of, login
from tests.conftest import NOW, make_config


def cookie_of(resp, name: str = "cx_admin") -> dict[str, str]:
    """The attributes of the Set-Cookie for ``name`` (lower-case keys; flags map to "")."""
    for header in resp.headers.getlist("Set-Cookie"):
        if header.startswith(name + "="):
            parts = [p.strip() for p in header.split(";")]
            out = {"value": parts[0].split("=", 1)[1]}
            for p in parts[1:]:
                key, _, value = p.partition("=")
                out[key.lower()] = value
            return out
    raise AssertionError(f"no {name} cookie set")


@pytest.fixture
def app_with(database_url):
    """Apps on the test database with other settings (each its own engine, disposed after)."""
    runtimes = []

    def make(**overrides):
        rt = build(make_config(database_url, **overrides), clock=lambda: NOW)
        runtimes.append(rt)
        return create_app(rt=rt, configure_logging=False)

    yield make
    for rt in runtimes:
        rt.engine.dispose()


# --- no token: closed, saying how to open it ----------------------------------------------------


def test_without_an_admin_token_the_console_and_the_api_refuse_and_say_how_to_set_one(app_with):
    app = app_with(admin_token=None)
    client = app.test_client()
    for path in ("/admin/", "/admin/login", "/admin/customers", "/admin/operations"):
        resp = client.get(path)
        assert resp.status_code == 403, path
        assert "admin_token" in resp.text and "secrets.token_urlsafe" in resp.text
    resp = client.post("/admin/login", data={"token": "", "csrf_token": ""})
    assert resp.status_code == 403
    for headers in ({}, {"Authorization": "Bearer anything-at-all-here"}):
        resp = client.get("/api/v1/kpis", headers=headers)
        assert resp.status_code == 403
        assert resp.get_json()["error"] == "admin_disabled"
        assert "set admin_token" in resp.get_json()["message"]
    assert not resp.headers.getlist("Set-Cookie")  # no session without a key


# --- logging in ------------------------------------------------------------------------------------


def test_pages_send_you_to_the_login_form_and_back(client):
    resp = client.get("/admin/customers?health=red")
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/admin/login?next=/admin/customers?health%3Dred"
    page = client.get(resp.headers["Location"])
    assert page.status_code == 200 and 'type="password"' in page.text
    done = client.post("/admin/login", data={"csrf_token": csrf_of(page.text), "token": TOKEN,
                                             "next": "/admin/customers?health=red"})
    assert done.status_code == 303 and done.headers["Location"] == "/admin/customers?health=red"
    assert client.get("/admin/customers?health=red").status_code == 200


def test_a_wrong_token_is_refused_with_the_form_and_no_session(client, caplog):
    resp = login(client, "not-the-token-but-long-enough")
    assert resp.status_code == 401
    assert "That is not the admin token" in resp.text and 'type="password"' in resp.text
    assert client.get("/admin/").status_code == 302  # still not logged in
    assert "admin login refused" in caplog.text and "not-the-token" not in caplog.text


@pytest.mark.parametrize("target", ["https://evil.example/admin", "//evil.example/admin", "/webhooks/x",
                                    "/\\evil.example", "javascript:alert(1)"])
def test_the_next_page_is_always_inside_the_console(client, target):
    page = client.get("/admin/login")
    resp = client.post("/admin/login", data={"csrf_token": csrf_of(page.text), "token": TOKEN,
                                             "next": target})
    assert resp.status_code == 303 and resp.headers["Location"] == "/admin/"


def test_the_session_cookie_is_httponly_samesite_lax_and_expires(client):
    resp = login(client)
    c = cookie_of(resp)
    assert "httponly" in c and c["samesite"] == "Lax" and c["path"] == "/"
    assert "secure" not in c  # plain http: a Secure cookie would never come back
    assert "expires" in c


@pytest.mark.parametrize("how", [{"base_url": "https://localhost"},
                                 {"headers": {"X-Forwarded-Proto": "https"}},
                                 {"headers": {"X-Forwarded-Proto": "https, http"}},
                                 {"headers": {"Forwarded": 'for=192.0.2.60;proto="https";by=203.0.113.43'}}])
def test_the_cookie_is_secure_over_tls_directly_or_behind_a_proxy(client, how):
    page = client.get("/admin/login", **how)
    assert "secure" in cookie_of(page)
    resp = client.post("/admin/login", data={"csrf_token": csrf_of(page.text), "token": TOKEN}, **how)
    assert resp.status_code == 303 and "secure" in cookie_of(resp)


def test_a_forwarded_header_cannot_take_the_secure_flag_away(client):
    page = client.get("/admin/login", base_url="https://localhost", headers={"X-Forwarded-Proto": "http"})
    assert "secure" in cookie_of(page)


def test_secure_cookie_always(app_with):
    client = app_with(admin={"secure_cookie": "always"}).test_client()
    assert "secure" in cookie_of(client.get("/admin/login"))


def test_every_worker_accepts_the_session_and_another_token_does_not(app_with):
    first = app_with().test_client()
    cookie = cookie_of(login(first))["value"]
    other_worker = app_with().test_client()
    other_worker.set_cookie("cx_admin", cookie)
    assert other_worker.get("/admin/").status_code == 200
    new_token = app_with(admin_token="a-new-admin-token-after-rotation").test_client()
    new_token.set_cookie("cx_admin", cookie)
    assert new_token.get("/admin/").status_code == 302  # rotating the token logs everyone out
    tampered = app_with().test_client()
    tampered.set_cookie("cx_admin", cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"))
    assert tampered.get("/admin/").status_code == 302


def test_a_session_expires_after_its_lifetime(app_with, monkeypatch):
    import itsdangerous.timed

    now = itsdangerous.timed.TimestampSigner.get_timestamp

    def cookie_signed(minutes_ago: int) -> str:
        with monkeypatch.context() as m:
            m.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp",
                      lambda self: now(self) - minutes_ago * 60)
            return cookie_of(login(app_with(admin={"session_lifetime": "30m"})
                                   .test_client()))["value"]

    for minutes_ago, status in ((29, 200), (31, 302)):
        client = app_with(admin={"session_lifetime": "30m"}).test_client()
        client.set_cookie("cx_admin", cookie_signed(minutes_ago))
        assert client.get("/admin/").status_code == status, minutes_ago


def test_logging_out_ends_the_session(admin):
    page = admin.get("/admin/")
    resp = admin.post("/admin/logout", data={"csrf_token": csrf_of(page.text)})
    assert resp.status_code == 303 and resp.headers["Location"] == "/admin/login"
    assert "You are logged out" in admin.get("/admin/login").text
    assert admin.get("/admin/").status_code == 302


# --- CSRF ---------------------------------------------------------------------------------------------


def test_the_login_form_needs_its_csrf_token(client):
    client.get("/admin/login")
    missing = client.post("/admin/login", data={"token": TOKEN})
    assert missing.status_code == 403 and "without its CSRF token" in missing.text
    wrong = client.post("/admin/login", data={"token": TOKEN, "csrf_token": "x" * 43})
    assert wrong.status_code == 403 and "does not match" in wrong.text
    no_cookie = client.application.test_client().post("/admin/login",
                                                        data={"token": TOKEN, "csrf_token": "x" * 43})
    assert no_cookie.status_code == 403 and "cookies" in no_cookie.text
    assert client.get("/admin/").status_code == 302


def test_actions_need_the_sessions_csrf_token_and_change_nothing_without_it(admin, rt, post_signed):
    failed = post_signed("generic", b"{not json").get_json()["delivery_id"]
    url = f"/admin/deliveries/{failed}/replay"
    assert admin.post(url).status_code == 403
    assert admin.post(url, data={"csrf_token": "forged-token-from-another-site"}).status_code == 403
    other = admin.application.test_client()
    login(other)
    token_of_another_session = csrf_of(other.get("/admin/").text)
    assert admin.post(url, data={"csrf_token": token_of_another_session}).status_code == 403
    assert admin.post("/admin/logout").status_code == 403
    assert admin.get("/admin/").status_code == 200  # still logged in
    with db.read(rt.engine) as conn:
        assert conn.execute(select(deliveries.c.attempts).where(deliveries.c.id == failed)).scalar_one() == 1
        assert conn.execute(select(audit_log.c.id).where(audit_log.c.action == "delivery_replayed")).first() \
            is None
    ok = admin.post(url, data={"csrf_token": csrf_of(admin.get("/admin/operations").text)})
    assert ok.status_code == 303


def test_an_action_after_the_session_ended_goes_to_the_login_form(client, rt, post_signed):
    failed = post_signed("generic", b"{not json").get_json()["delivery_id"]
    resp = client.post(f"/admin/deliveries/{failed}/replay", data={"csrf_token": "whatever"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/admin/login"
    with db.read(rt.engine) as conn:
        assert conn.execute(select(deliveries.c.attempts).where(deliveries.c.id == failed)).scalar_one() == 1


# --- the slow-down -------------------------------------------------------------------------------------


class Ticking:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wrong_tokens_are_slowed_down_per_address_and_the_api_shares_the_count(client):
    clock = Ticking()
    client.application.extensions["cx_admin_throttle"].clock = clock
    for _ in range(auth.BURST):
        assert login(client, "wrong-token-wrong-token").status_code == 401
    blocked = login(client)  # even the right token waits now
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) == auth.REFILL_SECONDS
    assert "too many wrong tokens" in blocked.text
    api = client.get("/api/v1/kpis", headers={"Authorization": f"Bearer {TOKEN}"})
    assert api.status_code == 429 and api.get_json()["error"] == "too_many_attempts"
    assert api.headers["Retry-After"]
    other = client.get("/api/v1/kpis", headers={"Authorization": f"Bearer {TOKEN}"},
                       environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert other.status_code == 200  # another address is not held up
    clock.now += auth.REFILL_SECONDS
    assert login(client).status_code == 303


def test_the_throttle_forgets_the_oldest_addresses():
    t = auth.Throttle(burst=1, refill_seconds=60, clock=Ticking(), max_clients=2)
    for key in ("a", "b", "c"):
        t.failed(key)
    assert t.wait("a") == 0 and t.wait("b") == 60 and t.wait("c") == 60
    t.succeeded("b")
    assert t.wait("b") == 0


def test_tokens_are_compared_by_hmac_in_constant_time():
    assert auth.token_matches("same-token-value-123", "same-token-value-123")
    assert not auth.token_matches("same-token-value-124", "same-token-value-123")
    assert not auth.token_matches("", "same-token-value-123")
    assert not auth.token_matches("sämé-tökén", "same-token")


# --- the API's credentials --------------------------------------------------------------------------


def test_the_api_wants_a_bearer_token(client):
    resp = client.get("/api/v1/kpis")
    assert resp.status_code == 401 and resp.get_json()["error"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="cx-connector"'
    wrong = client.get("/api/v1/kpis", headers={"Authorization": "Bearer not-the-token-at-all"})
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    basic = client.get("/api/v1/kpis", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401 and "Bearer" in basic.get_json()["message"]
    ok = client.get("/api/v1/kpis", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.headers["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in ok.headers  # the API sets no session


def test_the_pages_session_also_opens_the_api(admin):
    assert admin.get("/api/v1/kpis").status_code == 200


# --- headers -------------------------------------------------------------------------------------------


def test_pages_forbid_framing_caching_inline_code_and_referrers(admin):
    for path in ("/admin/", "/admin/login"):
        resp = admin.get(path, follow_redirects=True)
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
    with admin.get("/admin/static/admin.css") as css:
        assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]


def test_the_stylesheet_needs_no_login_and_the_pages_load_nothing_from_elsewhere(client):
    with client.get("/admin/static/admin.css") as css:
        assert css.status_code == 200 and "svg.chart" in css.text
    page = client.get("/admin/login").text
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_session_cookie_name_is_the_consoles(client):
    resp = client.get("/admin/login")
    jar = SimpleCookie()
    jar.load(resp.headers["Set-Cookie"])
    assert list(jar) == ["cx_admin"]
