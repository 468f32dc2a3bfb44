"""GET /metrics through the real app: who may read it, what webhooks count, what it never shows."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from cx_connector import scheduler
from cx_connector.app import create_app
from cx_connector.models import deliveries
from cx_connector.runtime import build
from tests.conftest import NOW, TEST_CONNECTORS, make_config
from tests.metrics.scraping import ADMIN, parse, scrape, series, value

METRICS_TOKEN = "prometheus-scrape-token-0123456789"


def tp(i: str, **extra) -> dict:
    return {"touchpoint_id": f"m:{i}", "occurred_at": "2026-05-01T10:00:00Z",
            "customer": {"source_id": f"c{i}", "email": f"c{i}@example.com"},
            "kind": "order_placed", "value": "9.99", "currency": "EUR", **extra}


# --- access -------------------------------------------------------------------------------------


def test_metrics_need_a_bearer_token(client):
    r = client.get("/metrics")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.get_json()["error"] == "unauthorized"
    assert "cx_" not in r.get_data(as_text=True)
    for header in ("Bearer wrong-token-0123456789", f"Basic {ADMIN}", "Bearer", ADMIN,
                   f"Bearer {ADMIN}x", f"Bearer {ADMIN[:-1]}"):
        assert client.get("/metrics", headers={"Authorization": header}).status_code == 401, header
    assert client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"bearer  {ADMIN} "}).status_code == 200


def test_the_metrics_token_is_accepted_and_so_is_the_admin_token(database_url):
    rt = build(make_config(database_url, metrics={"token": METRICS_TOKEN}), clock=lambda: NOW)
    try:
        client = create_app(rt=rt, configure_logging=False).test_client()
        assert "cx_info" in client.get("/metrics", headers={
            "Authorization": f"Bearer {METRICS_TOKEN}"}).get_data(as_text=True)
        assert client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    finally:
        rt.engine.dispose()


def test_without_any_token_configured_metrics_are_disabled(database_url):
    rt = build(make_config(database_url, admin_token=None), clock=lambda: NOW)
    try:
        r = create_app(rt=rt, configure_logging=False).test_client().get(
            "/metrics", headers={"Authorization": "Bearer anything-at-all-0123456789"})
        assert r.status_code == 404 and "metrics.token" in r.get_json()["message"]
    finally:
        rt.engine.dispose()


def test_a_short_metrics_token_is_a_configuration_error_and_an_empty_one_is_none(database_url):
    from cx_connector.config import config_from_mapping
    from cx_connector.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config(database_url, metrics={"token": "short"})
    assert "metrics.token" in str(err.value)
    assert make_config(database_url, metrics={"token": ""}).metrics.token is None
    unset = config_from_mapping({"metrics": {"token": "${CX_METRICS_TOKEN:-}"}}, env={})
    assert unset.metrics.token is None
    assert config_from_mapping({"metrics": {"token": "${T}"}}, env={"T": METRICS_TOKEN}).secrets() == \
        [METRICS_TOKEN]


# --- webhooks -----------------------------------------------------------------------------------


def test_webhook_outcomes_move_their_counters(client, post_signed, engine):
    before = scrape(client)

    def delta(after, name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert post_signed("generic", [tp("1"), tp("2")]).get_json()["status"] == "processed"
    assert post_signed("generic", tp("3"), {"X-CX-Delivery-Id": "d-3"}).status_code == 200
    assert post_signed("generic", tp("3"), {"X-CX-Delivery-Id": "d-3"}).get_json()["status"] == "duplicate"
    assert post_signed("generic", {"not": "a touchpoint"}).get_json()["status"] == "failed"
    assert client.post("/webhooks/generic", data=json.dumps(tp("4")),
                       headers={"X-CX-Signature": "AAAA"}).status_code == 401
    assert client.post("/webhooks/generic", data=json.dumps(tp("5"))).status_code == 401
    assert post_signed("shopify", b"{}", {"X-Shopify-Topic": "carts/create",
                                          "X-Shopify-Webhook-Id": "w-1"}).get_json()["status"] == "ignored"
    assert client.post("/webhooks/nosuchsource", data=b"{}").status_code == 404
    after = scrape(client)

    assert delta(after, "cx_webhook_deliveries_total", source="generic", status="processed") == 2
    assert delta(after, "cx_webhook_deliveries_total", source="generic", status="duplicate") == 1
    assert delta(after, "cx_webhook_deliveries_total", source="generic", status="failed") == 1
    assert delta(after, "cx_webhook_deliveries_total", source="shopify", status="ignored") == 1
    assert delta(after, "cx_webhook_normalise_failures_total", source="generic") == 1
    assert delta(after, "cx_webhook_signature_failures_total", source="generic") == 2
    assert delta(after, "cx_touchpoints_stored_total", source="generic") == 3
    assert delta(after, "cx_webhook_requests_total", source="generic", code="200") == 4
    assert delta(after, "cx_webhook_requests_total", source="generic", code="401") == 2
    assert delta(after, "cx_http_requests_total", route="/webhooks/<source>", method="POST",
                 code="404") == 1
    assert delta(after, "cx_http_request_duration_seconds_count", route="/webhooks/<source>") == 8
    # every enabled source has its series from the start; a made-up source never gets one
    assert ("cx_webhook_deliveries_total", frozenset({("source", "zendesk"), ("status", "failed")})) \
        in after
    assert "nosuchsource" not in json.dumps([sorted(k[1]) for k in after])
    # the failed delivery is also visible, deployment-wide, from the database
    assert value(after, "cx_inbox_failed_deliveries", source="generic") == 1
    assert value(after, "cx_inbox_failed_deliveries", source="hubspot") == 0
    with engine.connect() as conn:
        assert conn.execute(select(deliveries.c.status).where(deliveries.c.status == "failed")).all()


# --- what the scrape never contains ------------------------------------------------------------


def test_no_configured_secret_ever_appears_in_metrics(database_url, tmp_path):
    config = make_config(database_url, metrics={"token": METRICS_TOKEN})
    secrets = config.secrets()
    assert METRICS_TOKEN in secrets and ADMIN in secrets
    assert {v for c in TEST_CONNECTORS.values() for k, v in c.items() if "secret" in k or "token" in k} \
        <= set(secrets)
    rt = build(config, clock=lambda: NOW)
    try:
        client = create_app(rt=rt, configure_logging=False).test_client()
        generic = rt.connectors["generic"]
        secret = TEST_CONNECTORS["generic"]["secret"]
        body = json.dumps(tp("s", attributes={"note": secret})).encode()
        headers = generic.sign(body, {}, method="POST", url="http://localhost/webhooks/generic", now=NOW)
        client.post("/webhooks/generic", data=body, headers=headers)
        client.post("/webhooks/generic", data=body, headers={"X-CX-Signature": secret})
        client.post(f"/webhooks/{secret}", data=body)
        client.get(f"/admin/{ADMIN}")

        def leaky(_rt):
            raise RuntimeError(f"connection to https://user:{secret}@host failed")

        scheduler.run_job(rt, "score", leaky)
        scheduler.run_job(rt, "sync", lambda _rt: {"dry_run": False, "platforms": {}})
        text = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).get_data(
            as_text=True)
    finally:
        rt.engine.dispose()
    assert "cx_job_runs_total" in text and "cx_webhook_deliveries_total" in text
    for s in secrets:
        assert s not in text


# --- the database -------------------------------------------------------------------------------


def test_when_the_database_is_unreachable_the_scrape_still_answers(tmp_path):
    config = make_config(f"sqlite:///{tmp_path}/missing/dir/cx.db")
    rt = build(config, clock=lambda: NOW)
    try:
        client = create_app(rt=rt, configure_logging=False).test_client()
        samples = scrape(client)
    finally:
        rt.engine.dispose()
    assert value(samples, "cx_database_up") == 0
    assert not series(samples, "cx_outbox_writes")
    assert series(samples, "cx_webhook_deliveries_total")  # this instance's counters still there
    assert value(samples, "cx_info", version=__import__("cx_connector").__version__) == 1


def test_scrape_output_is_valid_prometheus_text(client):
    text = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).get_data(as_text=True)
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(names) == len(set(names))  # one family per name, whichever collector made it
    assert parse(text)
    assert value(parse(text), "cx_database_up") == 1


def test_every_app_in_a_process_gets_the_series_of_its_sources():
    from cx_connector.metrics import web

    web.web({"generic": None})
    m = web.web({"shopify": None, "made-up-for-this-test": None})
    assert {"generic", "shopify", "made-up-for-this-test"} <= m.sources
    families = {f.name: f for f in m.registry.collect()}
    labels = {tuple(sorted(s.labels.items())) for s in families["cx_webhook_signature_failures"].samples}
    assert (("source", "made-up-for-this-test"),) in labels


def test_a_scrape_counts_the_open_writes_from_the_outbox_index_alone(client, engine):
    """Prometheus scrapes every 15-60 s; after a full scoring pass the outbox holds a
    pending write per platform record, whose rows a scrape must not read (migration 0006)."""
    from tests.conftest import plans_of

    plans = plans_of(engine, lambda: scrape(client))
    [plan] = [p for statement, p in plans if "FROM outbox" in statement]
    index = "ix_outbox_status_attempts_source_next_attempt_at"
    if engine.dialect.name == "sqlite":
        # grouped in the index's order: no sort of every pending write (grouping by
        # "attempts > 0" did one, 3x the time at 100,000 pending writes)
        assert f"COVERING INDEX {index}" in plan and "TEMP B-TREE" not in plan, plan
    else:
        assert f"Index Only Scan using {index}" in plan, plan
