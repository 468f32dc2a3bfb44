"""The admin pages through Flask's test client: what each shows on the seeded shop and on
an empty database, and what the replay and retry buttons really change."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, update

from cx_connector import db, identity
from cx_connector.admin import pages
from cx_connector.errors import PayloadError
from cx_connector.models import (
    audit_log,
    customers,
    deliveries,
    kpi_snapshots,
    outbox,
    scores,
    touchpoints,
    written_values,
)
from tests.admin.conftest import csrf_of
from tests.conftest import NOW


def latest_snapshot(rt) -> dict:
    with db.read(rt.engine) as conn:
        return conn.execute(select(kpi_snapshots.c.kpi_values).order_by(kpi_snapshots.c.day.desc())
                            .limit(1)).scalar_one()


def health_of(rt) -> dict[int, str | None]:
    with db.read(rt.engine) as conn:
        return {cid: (values or {}).get("cx_health") for cid, values in conn.execute(
            select(scores.c.customer_id, scores.c.score_values))}


def ids_in(html: str) -> list[int]:
    """Customer ids linked from a list, in page order."""
    return [int(i) for i in dict.fromkeys(re.findall(r'href="/admin/customers/(\d+)"', html))]


# --- overview ------------------------------------------------------------------------------------------


def test_the_overview_shows_kpis_with_trends_funnel_distribution_and_who_is_at_risk(shop, admin, rt):
    html = admin.get("/admin/").text
    latest = latest_snapshot(rt)
    assert html.count('class="tile"') == 7
    assert html.count('<svg class="chart sparkline') == 7
    for key in ("nps", "csat", "retention_rate", "churn_rate", "cross_sell_rate", "avg_cx_score", "revenue"):
        tile = re.search(rf'data-kpi="{key}">.*?<span class="value">([^<]*)<', html, re.S).group(1)
        value = latest[key]
        decimals = 0 if key == "revenue" or float(value).is_integer() else 1
        assert tile == f"{value:,.{decimals}f}", key
    # sparklines: a week of daily snapshots, described for screen readers
    assert re.search(r'<desc id="chart\d+-desc">8 values from 2026-06-08', html)
    assert 'role="img"' in html and "<title" in html
    funnel = re.search(r'<svg class="chart hbars".*?</svg>', html, re.S).group(0)
    stages = latest["customers_per_stage"]
    assert f">{sum(stages.values())}<" in funnel  # all of them reached awareness
    assert f'>{stages["advocacy"]} · ' in funnel
    assert "<svg class=\"chart histogram" in html and '<svg class="chart stacked' in html
    bands = re.search(r'<svg class="chart histogram.*?<desc[^>]*>([^<]*)</desc>', html, re.S).group(1)
    counts = latest["cx_histogram"]
    assert bands.startswith(f"0\u20139: {counts[0]}, 10\u201319: {counts[1]},")  # en dashes
    at_risk = ids_in(html.split('id="at-risk"')[1])
    health = health_of(rt)
    assert at_risk and all(health[c] == "red" for c in at_risk)
    assert f"{sum(1 for h in health.values() if h == 'red')} red now" in html


def test_the_overview_of_an_empty_database_says_what_to_run(admin):
    html = admin.get("/admin/").text
    assert "No KPI snapshot yet" in html and "cx-connector kpis" in html
    assert "No scores yet" in html and "No customer is red" in html
    assert html.count("no data yet") >= 7


def test_before_the_first_snapshot_the_figures_come_from_the_scores(shop, admin, rt):
    with db.write(rt.engine) as conn:
        conn.execute(kpi_snapshots.delete())
    html = admin.get("/admin/").text
    assert "No KPI snapshot yet" in html
    assert "Journey funnel" in html and "as of" not in html.split("Journey funnel")[1][:80]
    assert f"{shop.customers} customers, {shop.customers} scored" in html


def test_the_overview_is_cached_until_a_scoring_run_finishes(shop, admin, rt):
    from cx_connector import scheduler
    from cx_connector.scoring import run as scoring

    red = sum(1 for h in health_of(rt).values() if h == "red")
    assert red and f"{red} red now" in admin.get("/admin/").text
    with db.write(rt.engine) as conn:  # behind the cache's back
        conn.execute(update(scores).values(score_values={"cx_health": "green", "cx_score": 90}))
    assert f"{red} red now" in admin.get("/admin/").text
    scheduler.run_job(rt, "score", lambda r: {"customers_scored": 0}, lease=scoring.LEASE)
    assert "0 red now" in admin.get("/admin/").text


# --- pain points ---------------------------------------------------------------------------------------


def test_pain_points_show_where_the_points_go(shop, admin, rt):
    html = admin.get("/admin/pain-points").text
    lost = latest_snapshot(rt)["pain_points"]["losses"]
    assert f"<strong>{lost['mean_cx']:.1f}</strong>" in html
    assert "points</strong> short of 100" in html and "How this is measured" in html
    costliest = lost["experiences"][0]
    assert f"{costliest['points']:.2f} pts" in html
    for stage in {e["stage"] for e in lost["experiences"] if e["customers"]}:
        assert f'id="stage-{stage}"' in html
    assert "Where CX is lower" in html and 'id="kinds"' in html and "Drag of each channel" in html


def test_pain_points_before_the_first_snapshot(admin):
    assert "Not computed yet" in admin.get("/admin/pain-points").text


# --- customers -----------------------------------------------------------------------------------------


def test_the_customer_list_filters_by_health_and_pages_by_cursor(shop, admin, rt, monkeypatch):
    health = health_of(rt)
    everyone = ids_in(admin.get("/admin/customers").text)
    assert len(everyone) == shop.customers and everyone == sorted(everyone, reverse=True)
    red = ids_in(admin.get("/admin/customers?health=red").text)
    assert red == sorted((c for c, h in health.items() if h == "red"), reverse=True)
    monkeypatch.setattr(pages, "PAGE", 4)
    seen, url = [], "/admin/customers?health=red"
    while url:
        html = admin.get(url).text
        seen += ids_in(html)
        found = re.search(r'rel="next" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert seen == red


def test_the_customer_list_searches_names_and_emails_and_jumps_to_an_exact_match(shop, admin, rt):
    with db.read(rt.engine) as conn:
        cid, email, name = conn.execute(select(customers.c.id, customers.c.email, customers.c.name)
                                        .order_by(customers.c.id).limit(1)).one()
    by_name = admin.get("/admin/customers", query_string={"q": name.split()[1][:4].upper()})
    assert cid in ids_in(by_name.text)
    exact = admin.get("/admin/customers", query_string={"q": email})
    assert exact.status_code == 302 and exact.headers["Location"] == f"/admin/customers/{cid}"
    none = admin.get("/admin/customers", query_string={"q": "nobody-here%_"})
    assert "No customers match" in none.text


@pytest.mark.parametrize("query", ["health=purple", "before=abc", "before=-3"])
def test_bad_list_parameters_are_a_400_page(admin, query):
    resp = admin.get(f"/admin/customers?{query}")
    assert resp.status_code == 400 and "<html" in resp.text and "invalid parameter" in resp.text.lower()


def test_the_customer_page_shows_identities_scores_explained_timeline_and_write_back(shop, admin, rt):
    with db.read(rt.engine) as conn:
        cid = identity.find_customer(conn, "zendesk:7000000001")
        n = conn.execute(select(func.count()).where(touchpoints.c.customer_id == cid)).scalar_one()
    with db.write(rt.engine) as conn:
        conn.execute(insert(written_values).values(source="zendesk", external_id="7000000001",
                                                   field="cx_score", value=42, written_at=NOW))
    html = admin.get(f"/admin/customers/{cid}").text
    assert 'href="https://acme.zendesk.com/agent/users/7000000001"' in html
    assert 'rel="noopener noreferrer"' in html
    assert html.count('class="explanation"') == 13 and "CX pyramid" in html
    assert html.count("<tr>", html.index('id="timeline"')) >= min(n, 50)
    wb = html.split('id="wb-head"')[1].split("</section>")[0]
    assert "Zendesk" in wb and "pending" in wb and "<code>cx_score</code></dt><dd>42</dd>" in wb


def test_the_timeline_pages_back_by_cursor(shop, admin, rt, monkeypatch):
    with db.read(rt.engine) as conn:
        cid, n = conn.execute(select(touchpoints.c.customer_id, func.count())
                              .group_by(touchpoints.c.customer_id)
                              .order_by(func.count().desc()).limit(1)).one()
    monkeypatch.setattr(pages, "PAGE", 5)
    url, rows = f"/admin/customers/{cid}", 0
    while url:
        html = admin.get(url).text
        rows += html.split('id="timeline"')[1].split("</table>")[0].count("<code title=")
        found = re.search(r'rel="next" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert rows == n
    assert admin.get(f"/admin/customers/{cid}?older=yesterday_1").status_code == 400


def test_an_unknown_customer_is_a_404_page_and_a_merged_one_leads_to_the_survivor(shop, admin, rt):
    resp = admin.get("/admin/customers/999999")
    assert resp.status_code == 404 and "no customer 999999" in resp.text
    with db.write(rt.engine) as conn:
        a, b = conn.execute(select(customers.c.id).order_by(customers.c.id).limit(2)).scalars()
        identity.merge(conn, [a, b], now=NOW, actor="test", reason="test")
        survivor = identity.find_customer(conn, str(b))
        gone = a if survivor == b else b
    resp = admin.get(f"/admin/customers/{gone}")
    assert resp.status_code == 302 and resp.headers["Location"] == f"/admin/customers/{survivor}"


# --- operations ----------------------------------------------------------------------------------------


def test_operations_shows_the_inbox_outbox_and_jobs(shop, admin):
    html = admin.get("/admin/operations").text
    assert f'data-delivery="{shop.failed_delivery}"' in html and "body is not valid JSON" in html
    assert f'data-write="{shop.dead_write}"' in html and "Property cx_score does not exist" in html
    assert "HTTP 503: Service Unavailable" in html  # the retrying write
    for job in ("score", "kpis", "sync"):
        row = html.split(f'data-job="{job}"')[1].split("</tr>")[0]
        assert '<span class="badge ok">ok</span>' in row and " ms<" in row
    assert 'data-job="enrich"' in html and "never run" in html


def test_the_jobs_table_also_shows_jobs_recorded_outside_the_scheduler(admin, rt):
    """The names come from a loose index scan (pages.recorded_jobs), not SELECT DISTINCT
    over every run ever recorded."""
    from cx_connector.models import job_runs

    with db.read(rt.engine) as conn:
        assert pages.recorded_jobs(conn) == []
    with db.write(rt.engine) as conn:
        conn.execute(insert(job_runs), [
            {"job": job, "started_at": NOW - timedelta(minutes=k), "finished_at": NOW, "status": "ok",
             "duration_ms": 10, "details": {}, "host": "test"}
            for job in ("sync", "backfill:shopify", "privacy", "backfill:hubspot", "zz") for k in range(3)])
    with db.read(rt.engine) as conn:
        assert pages.recorded_jobs(conn) == ["backfill:hubspot", "backfill:shopify", "privacy", "sync", "zz"]
    html = admin.get("/admin/operations").text
    jobs = re.findall(r'data-job="([^"]+)"', html)
    assert jobs[-3:] == ["backfill:hubspot", "backfill:shopify", "zz"]  # after the scheduler's
    assert {"privacy", "sync"} <= set(jobs)


def post(client, url, **data):
    return client.post(url, data={"csrf_token": csrf_of(client.get("/admin/operations").text), **data})


def test_replaying_a_failed_delivery_stores_its_touchpoints_and_is_audited(admin, rt, post_signed,
                                                                          monkeypatch):
    generic = type(rt.connectors["generic"])

    def broken(self, delivery, *, now):
        raise PayloadError("field customer.email: a bug in the normaliser")

    body = {"source": "generic", "touchpoint_id": "o-1", "occurred_at": "2026-06-01T10:00:00Z",
            "customer": {"source_id": "c-1", "email": "ann@example.com"}, "kind": "order_placed",
            "value": "10", "currency": "EUR"}
    monkeypatch.setattr(generic, "normalise", broken)
    delivery = post_signed("generic", body).get_json()["delivery_id"]
    monkeypatch.undo()  # the bug is fixed
    resp = post(admin, f"/admin/deliveries/{delivery}/replay")
    assert resp.status_code == 303 and resp.headers["Location"] == "/admin/operations#inbox"
    page = admin.get("/admin/operations").text
    assert f"Replayed delivery {delivery}: processed (1 new touchpoint)" in page
    with db.read(rt.engine) as conn:
        assert conn.execute(select(deliveries.c.status, deliveries.c.attempts)
                            .where(deliveries.c.id == delivery)).one() == ("processed", 2)
        assert conn.execute(select(func.count()).select_from(touchpoints)).scalar_one() == 1
        entry = conn.execute(select(audit_log.c.actor, audit_log.c.details)
                             .where(audit_log.c.action == "delivery_replayed")).one()
    assert entry.actor == "admin" and entry.details == {"delivery_id": delivery, "was": "failed",
                                                         "status": "processed", "touchpoints": 1}


def test_replay_all_failed_of_one_source_or_every_source(admin, rt, post_signed):
    ids = [post_signed("generic", b"{broken %d" % i).get_json()["delivery_id"] for i in range(3)]
    bad = post(admin, "/admin/deliveries/replay-failed", source="nonesuch")
    assert bad.status_code == 400
    resp = post(admin, "/admin/deliveries/replay-failed", source="generic")
    assert resp.status_code == 303
    assert "Replayed 3 failed deliveries: 3 failed." in admin.get("/admin/operations").text
    with db.read(rt.engine) as conn:
        attempts = dict(conn.execute(select(deliveries.c.id, deliveries.c.attempts)).all())
        audited = conn.execute(select(func.count()).where(audit_log.c.action == "delivery_replayed",
                                                          audit_log.c.actor == "admin")).scalar_one()
    assert [attempts[i] for i in ids] == [2, 2, 2] and audited == 3
    post(admin, "/admin/deliveries/replay-failed")
    with db.read(rt.engine) as conn:
        assert set(conn.execute(select(deliveries.c.attempts)).scalars()) == {3}
    assert post(admin, "/admin/deliveries/999999/replay").status_code == 404


def test_retrying_a_dead_write_queues_it_again_and_is_audited(shop, admin, rt):
    resp = post(admin, f"/admin/outbox/{shop.dead_write}/retry")
    assert resp.status_code == 303 and resp.headers["Location"] == "/admin/operations#outbox"
    assert f"Write {shop.dead_write} is queued again" in admin.get("/admin/operations").text
    with db.read(rt.engine) as conn:
        row = conn.execute(select(outbox.c.status, outbox.c.attempts, outbox.c.last_error)
                           .where(outbox.c.id == shop.dead_write)).one()
        entry = conn.execute(select(audit_log.c.actor)
                             .where(audit_log.c.action == "score_write_requeued")).one()
    assert tuple(row) == ("pending", 0, None) and entry.actor == "admin"
    again = post(admin, f"/admin/outbox/{shop.dead_write}/retry")
    assert again.status_code == 303 and "is not dead" in admin.get("/admin/operations").text


def test_retry_all_dead_writes_of_a_platform(shop, admin, rt):
    with db.write(rt.engine) as conn:
        conn.execute(update(outbox).where(outbox.c.status == "pending", outbox.c.attempts == 0)
                     .values(status="dead", last_error="HTTP 401", updated_at=NOW - timedelta(hours=1)))
        by_source = dict(conn.execute(select(outbox.c.source, func.count()).where(outbox.c.status == "dead")
                                      .group_by(outbox.c.source)).all())
    source = sorted(by_source)[0]
    post(admin, "/admin/outbox/retry-dead", source=source)
    assert f"Queued {by_source[source]} dead writes again" in admin.get("/admin/operations").text
    with db.read(rt.engine) as conn:
        left = dict(conn.execute(select(outbox.c.source, func.count()).where(outbox.c.status == "dead")
                                 .group_by(outbox.c.source)).all())
    assert source not in left and left == {s: n for s, n in by_source.items() if s != source}


def test_the_token_never_appears_in_a_page_an_answer_or_the_log(shop, client, rt, caplog):
    from tests.admin.conftest import TOKEN, login

    caplog.set_level("DEBUG")
    login(client, "a-wrong-token-" + TOKEN[::-1])
    login(client)
    with db.read(rt.engine) as conn:
        cid = conn.execute(select(customers.c.id).limit(1)).scalar_one()
    bodies = [client.get(path).get_data(as_text=True) for path in (
        "/admin/", "/admin/pain-points", "/admin/customers", f"/admin/customers/{cid}", "/admin/operations",
        "/admin/customers/999999", "/admin/customers?health=bad", "/api/v1/kpis", f"/api/v1/customers/{cid}",
        "/api/v1/customers?limit=0")]
    headers = [str(r.headers) for r in (client.get("/admin/"), client.get("/api/v1/kpis"))]
    for text in [*bodies, *headers, caplog.text]:
        assert TOKEN not in text and TOKEN[::-1] not in text


def test_a_queued_privacy_request_is_counted_and_its_replay_applies_it(admin, rt):
    from tests.connectors.shopify.conftest import compliance_sample, shopify_headers

    body = compliance_sample("customers_redact.json")
    r = admin.post("/webhooks/shopify", data=body, headers=shopify_headers("customers/redact", body))
    assert r.get_json()["status"] == "queued"
    delivery_id = r.get_json()["delivery_id"]
    html = admin.get("/admin/operations").text
    assert "Privacy queued" in html
    row = html.split('data-source="shopify"')[1].split("</tr>")[0]
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    assert cells[:3] == ["0", "0", "1"]  # processed, ignored, privacy queued
    r = post(admin, f"/admin/deliveries/{delivery_id}/replay")
    assert r.status_code == 303
    with rt.engine.connect() as conn:
        status = conn.execute(select(deliveries.c.status).where(deliveries.c.id == delivery_id)).scalar_one()
        erased = conn.execute(select(func.count()).select_from(audit_log).where(
            audit_log.c.action == "privacy_forget")).scalar_one()
    assert status == "processed" and erased == 4  # the customer and its 3 orders_to_redact


# --- privacy requests waiting for the clock --------------------------------------------------------


def queue_privacy_request(admin, sample: str, topic: str) -> int:
    """A Shopify compliance webhook through the real app: stored ``queued`` for the clock."""
    from tests.connectors.shopify.conftest import compliance_sample, shopify_headers

    body = compliance_sample(sample)
    answer = admin.post("/webhooks/shopify", data=body, headers=shopify_headers(topic, body)).get_json()
    assert answer["status"] == "queued"
    return answer["delivery_id"]


def queued_row(html: str, delivery_id: int) -> str:
    table = html.split('<table id="queued-deliveries">')[1].split("</table>")[0]
    return table.split(f'data-delivery="{delivery_id}"')[1].split("</tr>")[0]


def test_queued_privacy_requests_are_listed_and_overdue_ones_say_to_check_the_clock(admin, rt, monkeypatch):
    from cx_connector import inbox, scheduler

    erase = queue_privacy_request(admin, "customers_redact.json", "customers/redact")
    export = queue_privacy_request(admin, "customers_data_request.json", "customers/data_request")
    monkeypatch.setattr(rt, "clock", lambda: NOW + timedelta(minutes=2))
    html = admin.get("/admin/operations").text
    row = queued_row(html, erase)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[:5] == [str(erase), "2026-06-15 12:00 UTC", "Shopify", "<code>customers/redact</code>",
                         "2 min 0 s"]
    assert "waiting" in row and "overdue" not in row and "Apply now" in row
    assert "customers/data_request" in queued_row(html, export)
    assert "2 waiting" in html and 'id="queued-overdue"' not in html

    # the clock is not running: past 5 minutes each is flagged, with what to check
    monkeypatch.setattr(rt, "clock", lambda: NOW + timedelta(minutes=6))
    html = admin.get("/admin/operations").text
    assert '<span class="badge failed">overdue</span>' in queued_row(html, erase)
    assert "6 min 0 s" in queued_row(html, export)
    message = html.split('id="queued-overdue">')[1].split("</div>")[0]
    assert "2 privacy requests have waited longer than 5 minutes" in message
    assert "has never run" in message and "the clock is probably not running" in message
    assert "<code>clock</code> process of the Procfile" in message

    # one applied from the page (the export: the erasure would empty its body first),
    # the other by the clock's privacy job
    action = re.search(r'<form class="inline" method="post" action="([^"]+)"',
                       queued_row(html, export)).group(1)
    assert action == f"/admin/deliveries/{export}/replay"
    assert post(admin, action).status_code == 303
    html = admin.get("/admin/operations").text
    assert f'data-delivery="{export}"' not in html.split('<table id="queued-deliveries">')[1]
    assert "1 privacy request has waited" in html
    scheduler.run_job(rt, "privacy", inbox.privacy_job)
    html = admin.get("/admin/operations").text
    assert "No privacy requests waiting." in html and 'id="queued-overdue"' not in html
    with db.read(rt.engine) as conn:
        assert set(conn.execute(select(deliveries.c.status).where(
            deliveries.c.id.in_([erase, export]))).scalars()) == {"processed"}


def test_a_queued_request_older_than_the_inbox_window_is_still_listed(admin, rt, monkeypatch):
    """The inbox counts cover 7 days; a request the clock never applied stays on the page."""
    delivery = queue_privacy_request(admin, "customers_redact.json", "customers/redact")
    monkeypatch.setattr(rt, "clock", lambda: NOW + pages.INBOX_WINDOW + timedelta(days=1))
    html = admin.get("/admin/operations").text
    counts = html.split('<table id="inbox-counts">')[1].split('data-source="shopify"')[1].split("</tr>")[0]
    assert re.findall(r'<td class="num">([^<]*)</td>', counts)[2] == "0"  # privacy queued, last 7 days
    assert "overdue" in queued_row(html, delivery)
    assert "1 privacy request has waited longer than 5 minutes" in html


def test_an_overdue_request_while_the_clock_runs_points_at_the_job_and_the_connector(admin, rt, monkeypatch):
    """The privacy job ran, but the request's connector was disabled since it arrived: it
    waits (see inbox.apply_queued), and the page says so instead of blaming the clock."""
    from cx_connector import inbox, scheduler

    delivery = queue_privacy_request(admin, "customers_redact.json", "customers/redact")
    monkeypatch.setattr(rt, "clock", lambda: NOW + timedelta(minutes=10))
    monkeypatch.delitem(rt.connectors, "shopify")
    scheduler.run_job(rt, "privacy", inbox.privacy_job)
    html = admin.get("/admin/operations").text
    message = html.split('id="queued-overdue">')[1].split("</div>")[0]
    assert "The clock is running" in message and "last ran just now" in message
    assert "probably not running" not in message
    assert "connector is not enabled in the configuration waits until it is" in message
    row = queued_row(html, delivery)
    assert "connector not enabled" in row and "Apply now" not in row
