"""No configured secret ever appears in anything cx-connector outputs.

One full run, as an admin and the platforms would drive it, with every secret set to
a distinctive value: the configuration checked (good, and with mistakes), the schema
upgraded, every connector's sample webhooks delivered (and bad ones: tampered, stale,
malformed, oversized, unknown), an internal error, scoring, enrichment, set-up and
write-back (dry run, then for real against platform APIs that fail, one of them
echoing our credentials back in its error), the clock's jobs, and the admin's CLI
views of all of it. Everything printed, logged or answered is collected and searched
for every secret.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import responses
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from cx_connector import enrich, inbox, logs
from cx_connector.app import create_app
from cx_connector.cli import main
from cx_connector.config import load_config
from cx_connector.runtime import build
from tests.conftest import NOW

SECRETS = {
    "CX_ADMIN_TOKEN": "Adm1n-t0ken-zq81-leakcheck",
    "GENERIC_SECRET": "Gen3ric-s3cret-zq81-leakcheck",
    "HUBSPOT_CLIENT_SECRET": "HubSp0t-client-zq81-leakcheck",
    "HUBSPOT_ACCESS_TOKEN": "pat-eu1-HubSp0t-access-zq81-leakcheck",
    "ZENDESK_API_TOKEN": "Z3ndesk-api-zq81-leakcheck",
    "ZENDESK_WEBHOOK_SECRET": "Z3ndesk-hook-zq81-leakcheck",
    "ZENDESK_TRIGGER_SECRET": "Z3ndesk-trigger-zq81-leakcheck",
    "SHOPIFY_ACCESS_TOKEN": "shpat_Sh0pify-access-zq81-leakcheck",
    "SHOPIFY_CLIENT_SECRET": "Sh0pify-client-zq81-leakcheck",
}
DB_PASSWORD = "DBpassw0rd-zq81-leakcheck"

CONFIG = """
database_url: ${DATABASE_URL}
admin_token: ${CX_ADMIN_TOKEN}
logging: {level: DEBUG, format: json}
writeback: {max_attempts: 2, backoff_base: 1s, max_wait: 1s}
connectors:
  generic:
    secret: ${GENERIC_SECRET}
  hubspot:
    client_secret: ${HUBSPOT_CLIENT_SECRET}
    access_token: ${HUBSPOT_ACCESS_TOKEN}
    webhook_url: https://cx.example.com/webhooks/hubspot
    api_base_url: https://api.hubapi.test
  zendesk:
    subdomain: acme
    email: admin@acme.test
    api_token: ${ZENDESK_API_TOKEN}
    webhook_secret: ${ZENDESK_WEBHOOK_SECRET}
    trigger_webhook_secret: ${ZENDESK_TRIGGER_SECRET}
    api_base_url: https://acme.zendesk.test
  shopify:
    shop: acme.myshopify.com
    access_token: ${SHOPIFY_ACCESS_TOKEN}
    client_secret: ${SHOPIFY_CLIENT_SECRET}
    api_base_url: https://acme.myshopify.test
"""


def forms(secret: str) -> list[str]:
    """The secret, and the forms it travels in (HTTP basic auth is base64)."""
    return [secret, base64.b64encode(f"admin@acme.test/token:{secret}".encode()).decode()]


class Collected:
    """Everything the run outputs, in one place, with where it came from."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, str]] = []
        self.log = io.StringIO()

    def add(self, where: str, text: str | bytes | None) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.parts.append((where, text or ""))

    def leaks(self, secrets: list[str]) -> list[str]:
        found = []
        for where, text in [*self.parts, ("logs", self.log.getvalue())]:
            for secret in secrets:
                for form in forms(secret):
                    if form in text:
                        at = text.index(form)
                        found.append(f"{where}: ...{text[max(0, at - 120):at + len(form) + 40]}...")
        return found


def echo(request: Any) -> tuple[int, dict[str, str], str]:
    """A platform that refuses everything and quotes our credentials back in its error."""
    sent = {k: v for k, v in request.headers.items()
            if k.lower() in ("authorization", "x-shopify-access-token")}
    body = json.dumps({"status": "error", "message": f"Invalid input. You sent {sent} to {request.url}",
                       "errors": [{"message": f"credentials {sent}"}]})
    return 400, {"Content-Type": "application/json"}, body


def server_error(request: Any) -> tuple[int, dict[str, str], str]:
    sent = request.headers.get("X-Shopify-Access-Token") or request.headers.get("Authorization")
    return 500, {"Content-Type": "text/plain"}, f"upstream failure for token {sent}"


def unauthorised(request: Any) -> tuple[int, dict[str, str], str]:
    return 401, {"Content-Type": "application/json"}, json.dumps(
        {"error": "Couldn't authenticate you", "details": request.headers.get("Authorization")})


@pytest.fixture
def setting(tmp_path, database_url, monkeypatch):
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql" and not url.password:  # trust auth ignores it
        url = url.set(password=DB_PASSWORD)
    for name, value in {**SECRETS, "DATABASE_URL": url.render_as_string(hide_password=False)}.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "cx.yaml"
    path.write_text(CONFIG)
    secrets = list(SECRETS.values()) + ([DB_PASSWORD] if url.password else [])
    return path, secrets


def test_no_secret_in_any_output_of_a_full_run(setting, tmp_path, monkeypatch):
    path, secrets = setting
    out = Collected()
    runner = CliRunner()

    def cli(*args: str, code: int | None = 0, config: Path = path) -> str:
        result = runner.invoke(main, ["--config", str(config), *args], catch_exceptions=False)
        out.add(f"$ cx-connector {' '.join(args)} (stdout)", result.stdout)
        out.add(f"$ cx-connector {' '.join(args)} (stderr)", result.stderr)
        if code is not None:
            assert result.exit_code == code, (args, result.output)
        capture_logs()  # the command installed its own log handler on its own streams
        return result.stdout

    config = load_config(path)

    def capture_logs() -> None:
        real, sys.stderr = sys.stderr, out.log
        try:
            logs.configure("DEBUG", "json", config.secrets())
        finally:
            sys.stderr = real

    assert set(secrets) <= set(config.secrets()), "the leak check must know every secret"

    # configuration: good, then with mistakes (a bad URL carrying credentials among them)
    cli("check-config")
    broken = tmp_path / "broken.yaml"
    broken.write_text(CONFIG.replace("webhook_url: https://cx.example.com/webhooks/hubspot",
                                     "webhook_url: https://admin:${HUBSPOT_CLIENT_SECRET}@cx.example.com/x")
                      .replace("subdomain: acme", "subdomain: ${ZENDESK_API_TOKEN}")
                      .replace("level: DEBUG", 'level: "${CX_ADMIN_TOKEN}"'))
    assert "webhook_url" in cli("check-config", code=2, config=broken) + out.parts[-1][1]
    cli("db", "upgrade")
    cli("db", "current")

    # webhooks, through the real app with its real logging
    rt = build(config, clock=lambda: NOW)
    app = create_app(rt=rt)
    capture_logs()
    client = app.test_client()

    def post(source: str, body: bytes, headers: dict[str, str], where: str) -> Any:
        r = client.post(f"/webhooks/{source}", data=body, headers=headers)
        out.add(f"POST /webhooks/{source} {where} -> {r.status_code}", r.get_data())
        out.add(f"POST /webhooks/{source} {where} headers", str(dict(r.headers)))
        return r

    for name, connector in rt.connectors.items():
        samples = connector.sample_deliveries()
        assert samples, name
        for sample in samples:
            url = f"https://cx.example.com/webhooks/{name}"
            headers = {**sample.headers, "Content-Type": "application/json"}
            headers.update(connector.sign(sample.body, headers, method="POST", url=url, now=NOW))
            assert post(name, sample.body, headers, sample.name).status_code == 200
            tampered = sample.body.replace(b"}", b" }", 1)
            assert post(name, tampered, headers, f"{sample.name} tampered").status_code == 401
        body = samples[0].body
        stale = connector.sign(body, dict(samples[0].headers), method="POST", url="",
                               now=NOW.replace(year=2025))
        post(name, body, {**samples[0].headers, **stale}, "stale")  # 401 where timestamps are signed
        post(name, body, {}, "unsigned")
    generic = rt.connectors["generic"]
    for bad in (b"{not json", b"[]", b'{"touchpoint_id": 1}'):
        assert post("generic", bad, generic.sign(bad, {}, method="POST", url="", now=NOW),
                    "malformed").status_code == 200  # kept as failed, replayable
    big = b"[" + b" " * (1024 * 1024) + b"]"
    assert post("generic", big, generic.sign(big, {}, method="POST", url="", now=NOW),
                "oversized").status_code == 413
    assert post("nowhere", b"{}", {}, "unknown").status_code == 404
    for method, target in (("GET", "/webhooks/generic"), ("GET", "/healthz"), ("GET", "/nothing-here"),
                           ("DELETE", "/healthz")):
        r = client.open(target, method=method)
        out.add(f"{method} {target} -> {r.status_code}", r.get_data())

    def crash(*_: Any, **__: Any) -> Any:  # a bug whose message quotes secrets
        raise RuntimeError(f"kaput with {SECRETS['GENERIC_SECRET']} and {SECRETS['CX_ADMIN_TOKEN']}")

    monkeypatch.setattr(inbox, "receive", crash)
    body = b'{"touchpoint_id": "x"}'
    assert post("generic", body, generic.sign(body, {}, method="POST", url="", now=NOW),
                "internal error").status_code == 500
    monkeypatch.undo()
    for name, value in {**SECRETS}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", str(rt.engine.url.render_as_string(hide_password=False)))

    # the admin's views, scoring, the platforms failing, the clock
    cli("events", "list")
    for delivery_id in range(1, 8):
        cli("events", "show", str(delivery_id), code=None)
    cli("events", "replay", "--failed", code=None)
    cli("customers", "list")
    cli("score", "--full")
    cli("kpis")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, re.compile(r"https://api\.hubapi\.test/.*"), callback=echo)
        mock.add_callback(responses.GET, re.compile(r"https://api\.hubapi\.test/.*"), callback=echo)
        for method in (responses.GET, responses.POST, responses.PUT):
            mock.add_callback(method, re.compile(r"https://acme\.zendesk\.test/.*"), callback=unauthorised)
        mock.add_callback(responses.POST, re.compile(r"https://acme\.myshopify\.test/.*"),
                          callback=server_error)
        cli("enrich", code=None)
        cli("setup", "--dry-run", code=None)
        cli("sync", "--dry-run")
        cli("sync", code=None)
        cli("sync", "--json", code=None)
        cli("scheduler", "--once", code=None)
        assert mock.calls, "the platforms were never called"

    def job_bug(*_: Any, **__: Any) -> Any:  # a job whose exception quotes secrets
        raise ValueError(f"bad settings {SECRETS['HUBSPOT_ACCESS_TOKEN']} {SECRETS['ZENDESK_API_TOKEN']}")

    monkeypatch.setattr(enrich, "enrich", job_bug)
    assert "bad settings" in cli("scheduler", "--once", "--job", "enrich", code=1)
    cli("outbox")
    cli("outbox", "--dead")
    cli("outbox", "--json")
    cli("customers", "list")
    dead = json.loads(cli("outbox", "--dead", "--json"))
    assert dead, "some writes should have failed for good"

    logging.getLogger("cx_connector.test").warning("log capture works")
    assert "log capture works" in out.log.getvalue()
    assert len(out.parts) > 60
    leaks = out.leaks(secrets)
    assert not leaks, "\n".join(leaks[:10])
    rt.engine.dispose()


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    level = root.level
    yield
    for h in list(root.handlers):
        if h.get_name() == "cx-connector":
            root.removeHandler(h)
    root.setLevel(level)


def test_platform_errors_never_quote_the_credentials_sent():
    """A platform that quotes the request back in its error (bearer token, basic auth, an
    access-token header, a token in the query string): the error message has none of it."""
    from requests.auth import _basic_auth_str

    from cx_connector import http
    from cx_connector.errors import PlatformValidationError

    token, password, shop_token = "Bearer-t0ken-zq81", "Basic-passw0rd-zq81", "shpat_zq81-access"
    with responses.RequestsMock() as mock:
        def quote(request: Any) -> tuple[int, dict[str, str], str]:
            sent = request.headers.get("Authorization"), request.headers.get("X-Shopify-Access-Token")
            return 400, {}, f"refused: {sent} at {request.url}"

        mock.add_callback(responses.POST, re.compile(r"https://api\.example\.test/.*"), callback=quote)
        session = http.Session("demo", "https://api.example.test", headers={
            "Authorization": f"Bearer {token}", "X-Shopify-Access-Token": shop_token})
        with pytest.raises(PlatformValidationError) as err:
            session.call("POST", "/things?access_token=Query-t0ken-zq81&page=2", json={})
        basic = http.Session("demo", "https://api.example.test")
        basic.auth = ("admin@acme.test/token", password)
        with pytest.raises(PlatformValidationError) as err2:
            basic.call("POST", "/things", json={})
    for message in (err.value.message, err.value.body, err2.value.message, err2.value.body):
        for secret in (token, shop_token, "Query-t0ken-zq81", password,
                       _basic_auth_str("admin@acme.test/token", password).split()[1]):
            assert secret not in message
        assert "[redacted]" in message
    assert "page=2" in err.value.message  # only the credential is cut
