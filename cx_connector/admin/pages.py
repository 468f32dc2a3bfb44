"""The admin pages (``/admin``): server-rendered, readable without JavaScript.

Reading is GET; every action (replay, retry, logout) is a POST form carrying the
session's CSRF token, answered with a redirect (post/redirect/get) and a message, and
recorded in the audit log with actor ``admin``. Errors on these pages are pages too
(the JSON API answers through the app's JSON error handler).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException

from cx_connector import customers as people
from cx_connector import db, identity, inbox, sync
from cx_connector.admin import auth, insights
from cx_connector.errors import CxError, InvalidParameter, NotFound, TooManyAttempts
from cx_connector.models import deliveries, job_runs
from cx_connector.runtime import Runtime
from cx_connector.wording import counted

console = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
                    static_folder="static", static_url_path="/static")

#: customers per page of the list, touchpoints per page of the timeline
PAGE = 50
#: failed deliveries replayed by one click (the rest: click again)
REPLAY_BATCH = 200
#: how far back the inbox counts go
INBOX_WINDOW = timedelta(days=7)

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def rt() -> Runtime:
    return current_app.extensions["cx"]


def titles() -> dict[str, str]:
    """Connector name -> its title (``shopify`` -> ``Shopify``), for display."""
    return {n: c.title or n for n, c in rt().connectors.items()}


# --- access ------------------------------------------------------------------------------------


@console.before_request
def _guard() -> Any:
    if request.endpoint == "admin.static":
        return None
    if not auth.admin_token():
        return render_template("admin/disabled.html", how=auth.HOW_TO_ENABLE), 403
    if request.endpoint == "admin.login" or auth.logged_in():
        return None
    if request.method == "GET":
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    flash("Your session has ended: log in again, then repeat the action.", "error")
    return redirect(url_for("admin.login"), code=303)


@console.after_request
def _headers(resp: Any) -> Any:
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "admin.static":
        resp.headers["Cache-Control"] = "no-store"
    return resp


@console.errorhandler(CxError)
@console.errorhandler(HTTPException)
def _error_page(exc: Exception) -> Any:
    if isinstance(exc, CxError):
        status, title, message = exc.http_status, exc.code.replace("_", " "), exc.message
    else:
        status = getattr(exc, "code", None) or 500
        title, message = (getattr(exc, "name", "") or "error"), (getattr(exc, "description", "") or "")
    resp = current_app.make_response((render_template("admin/error.html", status=status, title=title,
                                                      message=message), status))
    resp.headers.extend(getattr(exc, "headers", None) or {})
    return resp


def _safe_next(target: str | None) -> str:
    """Only a path inside the console (never another site: ``//evil``, ``https://...``)."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith("/admin") \
                and not target.startswith("//") and "\\" not in target:
            return target
    return url_for("admin.overview")


@console.route("/login", methods=["GET", "POST"])
def login() -> Any:
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if auth.logged_in():
            return redirect(next_url)
        auth.csrf_token()  # the form's token, in a session cookie set before logging in
        return render_template("admin/login.html", next=next_url, error=None)
    auth.check_csrf()
    try:
        ok = auth.check_token(request.form.get("token", ""))
    except TooManyAttempts as exc:
        resp = current_app.make_response((render_template(
            "admin/login.html", next=next_url, error=exc.message), 429))
        resp.headers.extend(exc.headers)
        return resp
    if not ok:
        current_app.logger.warning("admin login refused: wrong token")
        return render_template("admin/login.html", next=next_url,
                               error="That is not the admin token."), 401
    auth.log_in()
    return redirect(next_url, code=303)


@console.post("/logout")
def logout() -> Any:
    auth.check_csrf()
    auth.log_out()
    flash("You are logged out.", "info")
    return redirect(url_for("admin.login"), code=303)


@console.app_template_global()
def csrf_token() -> str:
    return auth.csrf_token() if auth.admin_token() else ""


@console.app_template_global()
def logged_in() -> bool:
    return auth.logged_in()


# --- overview and pain points ------------------------------------------------------------------------


@console.get("/")
def overview() -> Any:
    r = rt()
    with db.read(r.engine) as conn:
        version = insights.data_version(conn)
        data = insights.cache().get("overview", version, lambda: insights.overview(conn, r.now()))
    return render_template("admin/overview.html", data=data, settings=r.config.scoring)


@console.get("/pain-points")
def pain_points() -> Any:
    from cx_connector.scoring.explain import EVENT_WORDS, LAYER_WORDS

    r = rt()
    with db.read(r.engine) as conn:
        data = insights.pain_points(conn)
    return render_template("admin/pain_points.html", data=data, settings=r.config.scoring,
                           event_words=EVENT_WORDS, layer_words=LAYER_WORDS)


# --- customers ------------------------------------------------------------------------------------


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise InvalidParameter(f"{name} must be a positive whole number, not {raw!r}")
    return int(raw)


@console.get("/customers")
def customer_list() -> Any:
    health = request.args.get("health") or None
    if health is not None and health not in people.HEALTH_FILTERS:
        raise InvalidParameter(f"health must be one of {', '.join(people.HEALTH_FILTERS)}")
    query = (request.args.get("q") or "").strip()
    before = _int_arg("before")
    r = rt()
    with db.read(r.engine) as conn:
        if query and before is None:
            exact = identity.find_customer(conn, query)
            if exact is not None:
                return redirect(url_for("admin.customer", customer_id=exact))
        ids = people.listing(conn, health=health, query=query or None, limit=PAGE + 1, before=before)
        rows = people.summaries(conn, ids[:PAGE])
    more = ids[PAGE - 1] if len(ids) > PAGE else None
    return render_template("admin/customers.html", rows=rows, health=health, query=query,
                           next_before=more, first_page=before is None, filters=people.HEALTH_FILTERS,
                           titles=titles())


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timeline_cursor(touchpoint: dict[str, Any]) -> str:
    """``<microseconds since 1970>_<id>`` of the last touchpoint shown: where the next page starts."""
    return f"{(touchpoint['occurred_at'] - _EPOCH) // timedelta(microseconds=1)}_{touchpoint['id']}"


def _timeline_cursor() -> tuple[datetime, int] | None:
    raw = request.args.get("older")
    if not raw:
        return None
    micros, _, tid = raw.partition("_")
    if not micros.isdigit() or not tid.isdigit():
        raise InvalidParameter("older must be the cursor of the timeline's 'older' link")
    return _EPOCH + timedelta(microseconds=int(micros)), int(tid)


@console.get("/customers/<int:customer_id>")
def customer(customer_id: int) -> Any:
    from cx_connector.fields import FIELDS

    r = rt()
    older = _timeline_cursor()
    with db.read(r.engine) as conn:
        cid = identity.find_customer(conn, str(customer_id))
        if cid is None:
            raise NotFound(f"no customer {customer_id}")
        if cid != customer_id:
            flash(f"Customer {customer_id} was merged into customer {cid}.", "info")
            return redirect(url_for("admin.customer", customer_id=cid))
        summary = people.summaries(conn, [cid], r.connectors)[0]
        explained = people.explained(conn, cid)
        timeline = people.timeline(conn, cid, limit=PAGE + 1, before=older)
        writes = people.writeback(conn, r.connectors, cid)
        history = _score_history(conn, cid)
        audit = _audit(conn, cid)
    more = timeline[PAGE - 1] if len(timeline) > PAGE else None
    older_cursor = timeline_cursor(more) if more else None
    return render_template("admin/customer.html", c=summary, explained=explained, fields=FIELDS,
                           timeline=timeline[:PAGE], older=older_cursor, newest=older is None,
                           writes=writes, history=history, audit=audit,
                           titles=titles())


def _score_history(conn: Any, cid: int) -> list[tuple[str, float | None]]:
    """The CX score after each scoring run that changed a value (up to the latest 60)."""
    from cx_connector.models import score_snapshots

    rows = conn.execute(select(score_snapshots.c.scored_at, score_snapshots.c.score_values)
                        .where(score_snapshots.c.customer_id == cid)
                        .order_by(score_snapshots.c.scored_at.desc(), score_snapshots.c.id.desc())
                        .limit(60)).all()
    return [(at.strftime("%Y-%m-%d %H:%M"), (values or {}).get("cx_score")) for at, values in reversed(rows)]


def _audit(conn: Any, cid: int) -> list[dict[str, Any]]:
    from cx_connector.models import audit_log

    return [dict(r) for r in conn.execute(
        select(audit_log.c.at, audit_log.c.actor, audit_log.c.action, audit_log.c.source,
               audit_log.c.external_id, audit_log.c.details)
        .where(audit_log.c.customer_id == cid).order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
        .limit(20)).mappings()]


# --- operations ---------------------------------------------------------------------------------


def recorded_jobs(conn: Any) -> list[str]:
    """The names of the jobs that have runs recorded, in order.

    One index seek per name (the next name after the last, a "loose index scan"):
    ``SELECT DISTINCT job`` read the whole ``(job, started_at)`` index instead, a row per
    run, and runs are never deleted (the ``privacy`` job alone records 43,200 a month).
    """
    names = select(func.min(job_runs.c.job).label("job")).cte("names", recursive=True)
    after = select(func.min(job_runs.c.job)).where(job_runs.c.job > names.c.job).scalar_subquery()
    names = names.union_all(select(after).where(names.c.job.is_not(None)))
    return list(conn.execute(select(names.c.job).where(names.c.job.is_not(None))).scalars())


def last_runs(conn: Any, limit: int = 30) -> list[dict[str, Any]]:
    """Per job (of the scheduler, plus any other recorded, e.g. backfill): its latest runs,
    newest first; one indexed query per job."""
    from cx_connector import scheduler

    names = [j.id for j in scheduler.jobs()]
    names += [j for j in recorded_jobs(conn) if j not in names]
    out = []
    for name in names:
        runs = [dict(r) for r in conn.execute(
            select(job_runs.c.id, job_runs.c.started_at, job_runs.c.finished_at, job_runs.c.status,
                   job_runs.c.duration_ms, job_runs.c.error, job_runs.c.host)
            .where(job_runs.c.job == name).order_by(job_runs.c.started_at.desc(), job_runs.c.id.desc())
            .limit(limit)).mappings()]
        out.append({"job": name, "runs": runs, "last": runs[0] if runs else None,
                    "last_ok": next((x for x in runs if x["status"] == "ok"), None)})
    return out


@console.get("/operations")
def operations() -> Any:
    r = rt()
    now = r.now()
    with db.read(r.engine) as conn:
        counts = inbox.counts(conn, since=now - INBOX_WINDOW)
        failed_total = dict(conn.execute(
            select(deliveries.c.source, func.count()).where(deliveries.c.status == "failed")
            .group_by(deliveries.c.source)).all())
        failed = inbox.list_deliveries(conn, status="failed", limit=50)
        queued = inbox.queued(conn, now=now, limit=50)
        jobs = last_runs(conn)
    outbox_counts = sync.counts(r.engine)
    dead = sync.list_writes(r.engine, status="dead", limit=50)
    retrying = sync.list_writes(r.engine, status="retrying", limit=50)
    sources = sorted(set(counts) | set(failed_total) | set(outbox_counts) | set(r.connectors))
    # the message for overdue requests: a recent run of the privacy job means the clock
    # runs and the job itself is the suspect; none means the clock is not running
    privacy_job = next((j for j in jobs if j["job"] == "privacy"), None)
    privacy_ran = bool(privacy_job and privacy_job["last"]
                       and privacy_job["last"]["started_at"] >= now - inbox.QUEUED_OVERDUE)
    return render_template("admin/operations.html", counts=counts, failed_total=failed_total,
                           failed=failed, queued=queued, privacy_job=privacy_job, privacy_ran=privacy_ran,
                           overdue_minutes=int(inbox.QUEUED_OVERDUE.total_seconds() // 60),
                           enabled=set(r.connectors), outbox_counts=outbox_counts, dead=dead,
                           retrying=retrying, jobs=jobs, sources=sources, window_days=INBOX_WINDOW.days,
                           titles=titles(), replay_batch=REPLAY_BATCH)


def _source_field() -> str | None:
    source = request.form.get("source") or None
    if source is not None and source not in rt().connectors:
        raise InvalidParameter(f"no enabled connector named {source!r}")
    return source


def _receipt_words(receipt: inbox.Receipt) -> str:
    text = f"delivery {receipt.delivery_id}: {receipt.status}"
    if receipt.status == "processed":
        text += f" ({counted(receipt.touchpoints, 'new touchpoint')})"
    if receipt.error:
        text += f": {receipt.error}"
    return text


@console.post("/deliveries/<int:delivery_id>/replay")
def replay(delivery_id: int) -> Any:
    auth.check_csrf()
    r = rt()
    receipt = inbox.replay(r.engine, r.connectors, delivery_id, now=r.now(), actor="admin")
    if receipt.status == "missing":
        raise NotFound(f"no delivery {delivery_id}")
    ok = receipt.status in ("processed", "ignored")
    flash("Replayed " + _receipt_words(receipt), "info" if ok else "error")
    return redirect(url_for("admin.operations") + "#inbox", code=303)


@console.post("/deliveries/replay-failed")
def replay_failed() -> Any:
    auth.check_csrf()
    r = rt()
    source = _source_field()
    receipts = inbox.replay_failed(r.engine, r.connectors, source=source, now=r.now(), actor="admin",
                                   limit=REPLAY_BATCH)
    if not receipts:
        flash("No failed deliveries to replay.", "info")
    else:
        tally: dict[str, int] = {}
        for rec in receipts:
            tally[rec.status] = tally.get(rec.status, 0) + 1
        words = ", ".join(f"{n} {status}" for status, n in sorted(tally.items()))
        more = " (the first batch: replay again for the rest)" if len(receipts) == REPLAY_BATCH else ""
        flash(f"Replayed {counted(len(receipts), 'failed delivery', 'failed deliveries')}{more}: {words}.",
              "error" if tally.get("failed") else "info")
    return redirect(url_for("admin.operations") + "#inbox", code=303)


@console.post("/outbox/<int:write_id>/retry")
def retry(write_id: int) -> Any:
    auth.check_csrf()
    r = rt()
    done = sync.requeue_dead(r.engine, now=r.now(), ids=[write_id], actor="admin")
    flash(f"Write {write_id} is queued again; it goes out with the next sync." if done else
          f"Write {write_id} is not dead (any more): nothing to retry, or a newer value has landed.",
          "info")
    return redirect(url_for("admin.operations") + "#outbox", code=303)


@console.post("/outbox/retry-dead")
def retry_dead() -> Any:
    auth.check_csrf()
    r = rt()
    done = sync.requeue_dead(r.engine, now=r.now(), source=_source_field(), actor="admin")
    flash(f"Queued {counted(len(done), 'dead write')} again; they go out with the next sync." if done else
          "No dead writes to retry.", "info")
    return redirect(url_for("admin.operations") + "#outbox", code=303)

