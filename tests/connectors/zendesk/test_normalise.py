"""Zendesk normalisation rules, one behaviour per test (pure function; the endpoint tests
are in test_webhooks.py)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from connectors.zendesk import normalise
from connectors.zendesk.normalise import Options, channel_for, parse_satisfaction
from cx_connector.connector import parse_json
from cx_connector.errors import PayloadError
from tests.conftest import fixture_json

OPTS = Options()


def run(payload, opts=OPTS):
    return normalise.normalise(parse_json(json.dumps(payload).encode()), opts)


def ticket_event(etype="ticket.status_changed", event=None, **detail):
    body = fixture_json("zendesk", "ticket_status_changed.json")
    body["type"] = "zen:event-type:" + etype
    body["event"] = event if event is not None else {}
    if etype == "ticket.created":
        body["detail"]["status"] = "OPEN"
    body["detail"].update(detail)
    return body


def user_event(etype="user.created", event=None, **detail):
    body = fixture_json("zendesk", "user_active_changed_docs.json")
    body["type"] = "zen:event-type:" + etype
    body["event"] = event if event is not None else {}
    body["detail"].update({"email": "ann@example.com", **detail})
    return body


def only(result):
    assert result.ignored is None, result.ignored
    assert len(result.touchpoints) == 1, result.touchpoints
    return result.touchpoints[0]


# --- ticket status ---------------------------------------------------------------------------


@pytest.mark.parametrize(("previous", "current", "kind"), [
    ("OPEN", "SOLVED", "ticket_solved"),
    ("NEW", "SOLVED", "ticket_solved"),
    ("PENDING", "CLOSED", "ticket_solved"),
    ("HOLD", "SOLVED", "ticket_solved"),
    (None, "SOLVED", "ticket_solved"),
    ("SOLVED", "OPEN", "ticket_reopened"),
    ("SOLVED", "PENDING", "ticket_reopened"),
    ("CLOSED", "OPEN", "ticket_reopened"),
    ("SOLVED", "CLOSED", None),
    ("NEW", "OPEN", None),
    ("OPEN", "PENDING", None),
    ("PENDING", "HOLD", None),
    ("OPEN", "DELETED", None),
    (None, "OPEN", None),
])
def test_status_changes(previous, current, kind):
    result = run(ticket_event(event={"current": current, "previous": previous}))
    if kind is None:
        assert result.ignored and not result.touchpoints
        return
    tp = only(result)
    assert tp.kind == kind
    assert tp.occurred_at == datetime(2025, 1, 8, 16, 45, 20, 987654, tzinfo=UTC)
    suffix = "solved" if kind == "ticket_solved" else "reopened"
    assert tp.touchpoint_id == f"ticket:5158:{suffix}:20250108T164520Z"
    assert tp.attributes.get("previous_status") == (previous.lower() if previous else None)
    if kind == "ticket_reopened":
        assert tp.attributes["reopened"] is True


def test_lower_case_statuses_are_understood():
    assert only(run(ticket_event(event={"current": "solved", "previous": "open"}))).kind == "ticket_solved"


def test_reasons_of_ignored_status_changes_say_why():
    assert "already solved" in run(ticket_event(event={"current": "CLOSED", "previous": "SOLVED"})).ignored
    pending = run(ticket_event(event={"current": "PENDING", "previous": "OPEN"}))
    assert "between open statuses" in pending.ignored


def test_a_ticket_created_solved_is_opened_and_solved():
    tps = run(ticket_event("ticket.created", status="SOLVED", created_at="2025-01-08T10:12:07Z")).touchpoints
    assert [(t.kind, t.touchpoint_id) for t in tps] == [
        ("ticket_opened", "ticket:5158:opened"), ("ticket_solved", "ticket:5158:solved:20250108T101207Z")]
    assert tps[1].attributes["resolution_seconds"] == 0


def test_ticket_customer_is_the_requester_without_email():
    tp = only(run(ticket_event("ticket.created", requester_id="99999999999")))
    assert tp.customer.source_id == "99999999999" and tp.customer.email is None


def test_integer_ids_are_kept_exact_as_strings():
    tp = only(run(ticket_event("ticket.created", id=9007199254740993, requester_id=18446744073709551615)))
    assert tp.attributes["ticket_id"] == "9007199254740993"
    assert tp.customer.source_id == "18446744073709551615"


@pytest.mark.parametrize("bad", [{"requester_id": None}, {"requester_id": "abc"}, {"id": ""},
                                 {"id": 12.5}, {"via": "web"}, {"created_at": "yesterday"}])
def test_malformed_ticket_details_are_payload_errors(bad):
    with pytest.raises(PayloadError):
        run(ticket_event("ticket.created", **bad))


def test_missing_event_time_is_a_payload_error():
    body = ticket_event("ticket.created")
    del body["time"]
    with pytest.raises(PayloadError, match="time is missing"):
        run(body)


# --- comments --------------------------------------------------------------------------------


def comment(**fields):
    c = {"id": "77", "body": "hello", "is_public": True, "author": {"id": "8447388090494", "is_staff": False}}
    c.update(fields)
    return ticket_event("ticket.comment_added", event={"comment": c})


def test_customer_comment():
    tp = only(run(comment()))
    assert tp.kind == "ticket_commented" and tp.touchpoint_id == "ticket:5158:comment:77"
    assert tp.attributes["author"] == "customer" and tp.attributes["public"] is True


def test_private_staff_note():
    tp = only(run(comment(is_public=False, author={"id": "5", "is_staff": True})))
    assert tp.attributes["author"] == "staff" and tp.attributes["public"] is False


@pytest.mark.parametrize(("author_id", "role"), [("8447388090494", "customer"), ("4242", "customer")])
def test_author_without_is_staff_is_the_requester_or_a_customer(author_id, role):
    body = comment(author={"id": author_id})
    body["detail"]["assignee_id"] = "1111"
    assert only(run(body)).attributes["author"] == role


def test_author_without_is_staff_who_is_the_assignee_is_staff():
    body = comment(author={"id": "1111"})
    body["detail"].update(assignee_id="1111")
    assert only(run(body)).attributes["author"] == "staff"


def test_comment_without_id_is_keyed_by_the_event():
    tp = only(run(comment(id=None)))
    assert tp.touchpoint_id == "ticket:5158:comment:event:a8b9c1d2-3e4f-5a6b-7c8d-9e0f1a2b3c4d"


def test_comment_created_is_the_same_event():
    body = comment()
    body["type"] = "zen:event-type:ticket.comment_created"
    assert only(run(body)).kind == "ticket_commented"


# --- satisfaction ----------------------------------------------------------------------------


@pytest.mark.parametrize(("score", "scale", "expected", "satisfied"), [
    ("good", None, (1, 1), True),
    ("GOOD", None, (1, 1), True),
    ("good_with_comment", None, (1, 1), True),
    ("Good, I'm satisfied", None, (1, 1), True),
    ("bad", None, (0, 1), False),
    ("BAD", None, (0, 1), False),
    (5, 5, (5, 5), True),
    (4, 5, (4, 5), True),
    ("3", 5, (3, 5), False),
    (1, 5, (1, 5), False),
    (2, 2, (2, 2), True),
    (1, 2, (1, 2), False),
    (3, 3, (3, 3), True),
    (2, 3, (2, 3), False),
    ("Very satisfied", None, (5, 5), True),
    ("neutral", None, (3, 5), False),
    (Decimal("4"), "5", (4, 5), True),
])
def test_satisfaction_scales_map_onto_a_csat_rating(score, scale, expected, satisfied):
    sat = parse_satisfaction(score, scale=scale)
    assert sat.rating.type == "csat"
    assert (sat.rating.score, sat.rating.scale_max) == tuple(Decimal(x) for x in expected)
    assert sat.satisfied is satisfied


@pytest.mark.parametrize("score", [None, "", "offered", "Unoffered", "{{satisfaction.current_rating}}"])
def test_unanswered_surveys_are_no_rating(score):
    assert parse_satisfaction(score) is None


@pytest.mark.parametrize(("score", "scale"), [("great", None), (6, 5), (0, 5), (True, None), (4.5, 5),
                                              (3, 11), (3, "x"), ("NaN", None), ([], None)])
def test_unrecognised_scores_are_payload_errors(score, scale):
    with pytest.raises(PayloadError):
        parse_satisfaction(Decimal(str(score)) if isinstance(score, float) else score, scale=scale)


def test_numeric_answers_without_a_scale_use_the_configured_scale():
    assert parse_satisfaction(3, default_scale=3).satisfied is True
    assert parse_satisfaction(3, default_scale=5).satisfied is False


def csat(event):
    return ticket_event("ticket.csat_received", event=event)


@pytest.mark.parametrize("event", [
    {"satisfaction_score": {"score": "BAD", "reason": "Too slow", "comment": "meh"}},
    {"satisfaction_score": "BAD"},
    {"score": "bad"},
    {"current": "BAD", "previous": "OFFERED"},
    {"current": {"score": "bad"}},
])
def test_csat_received_shapes(event):
    tp = only(run(csat(event)))
    assert tp.kind == "csat_rating" and tp.touchpoint_id == "ticket:5158:csat:20250108T164520Z"
    assert tp.rating.score == 0 and tp.rating.scale_max == 1 and tp.attributes["satisfied"] is False


def test_csat_reason_and_comment_presence_without_the_text():
    tp = only(run(csat({"satisfaction_score": {"score": "BAD", "reason": "Too slow", "comment": "meh"}})))
    assert tp.attributes["reason"] == "Too slow" and tp.attributes["has_comment"] is True
    assert "meh" not in json.dumps(tp.attributes)


def test_csat_survey_answer_with_its_scale():
    tp = only(run(csat({"satisfaction_score": {"score": 4, "scale": 5}})))
    assert (tp.rating.score, tp.rating.scale_max, tp.attributes["satisfied"]) == (4, 5, True)
    assert tp.attributes["scale"] == "1-5" and tp.attributes["score"] == "4of5"


def test_csat_survey_answer_uses_the_configured_scale():
    tp = only(run(csat({"satisfaction_score": {"score": 3}}), Options(csat_scale=3)))
    assert (tp.rating.score, tp.rating.scale_max, tp.attributes["satisfied"]) == (3, 3, True)


def test_csat_offered_is_ignored_and_missing_score_fails():
    assert run(csat({"satisfaction_score": {"score": "OFFERED"}})).ignored
    with pytest.raises(PayloadError, match="without a score"):
        run(csat({}))


def test_legacy_satisfaction_rating_object():
    rating = fixture_json("zendesk", "satisfaction_rating_api_show.json")["satisfaction_rating"]
    tp = normalise.satisfaction_rating_touchpoint(rating, OPTS)
    assert tp.touchpoint_id == "ticket:99999:csat:20240122T152832Z"
    assert tp.customer.source_id == "9001" and tp.rating.score == 1 and tp.attributes["has_comment"] is True
    assert tp.attributes["rating_id"] == "1000" and tp.attributes["assignee_id"] == "9000"


# --- users -------------------------------------------------------------------------------------


def test_user_created_is_a_contact_with_email():
    tp = only(run(user_event(name="Ann Example", external_id="crm-7", organization_id="42")))
    assert tp.kind == "contact_created" and tp.touchpoint_id == "user:6596848315901:created"
    assert tp.customer == normalise.CustomerRef("6596848315901", email="ann@example.com", name="Ann Example")
    assert tp.occurred_at == datetime(2099, 7, 4, 5, 27, 58, tzinfo=UTC)  # detail.created_at
    assert tp.attributes["external_id"] == "crm-7" and tp.attributes["organization_id"] == "42"


def test_obfuscated_docs_email_does_not_link():
    tp = only(run(user_event(email="[email protected]")))
    assert tp.customer.email is None


@pytest.mark.parametrize("role", ["agent", "admin"])
def test_staff_users_are_not_customers(role):
    assert "staff user" in run(user_event(role=role)).ignored


def test_loop_guard_our_own_fields_are_ignored():
    for field in ({"key": "cx_score", "title": "CX score"}, "cx_health", {"title": "cx_churn_risk"}):
        result = run(user_event("user.custom_field_changed", {"field": field, "current": 1, "previous": 0}))
        assert "loop guard" in result.ignored and not result.touchpoints


def test_other_custom_field_changes_update_the_profile():
    tp = only(run(user_event("user.custom_field_changed",
                             {"field": {"key": "vip_tier", "title": "VIP"}, "current": "gold"})))
    assert tp.kind == "profile_updated" and tp.attributes["changed"] == "field:vip_tier"
    assert tp.touchpoint_id == "user:6596848315901:field:vip_tier:2b24ef10-19d4-4740-93cf-8f98ec4776c0"


def test_custom_field_change_of_an_unknown_field_is_ignored():
    assert "cannot tell" in run(user_event("user.custom_field_changed", {"current": 1})).ignored


def test_name_change_updates_the_name():
    tp = only(run(user_event("user.name_changed", {"current": "Ann Newname", "previous": "Ann"})))
    assert tp.kind == "profile_updated" and tp.customer.name == "Ann Newname"
    assert tp.customer.email == "ann@example.com"


def test_phone_identity_adds_the_phone():
    tp = only(run(user_event("user.identity_created",
                             {"identity": {"type": "phone_number", "value": "+1 555 625 1199"}})))
    assert tp.customer.phone == "+15556251199"


def test_other_user_events_are_ignored():
    for etype in ("user.active_changed", "user.deleted", "user.group_membership_created", "user.merged",
                  "user.last_login_changed"):
        assert run(user_event(etype)).ignored
        body = user_event(etype)
        del body["time"]  # an unused event is ignored whatever its shape
        assert "is not used" in run(body).ignored


# --- the trigger template ------------------------------------------------------------------------


def template(status="Open", created="2026-06-02T09:00:00Z", updated="2026-06-02T10:00:00Z", rating="Offered",
             **ticket):
    body = copy.deepcopy(normalise.TRIGGER_TEMPLATE)
    body["ticket"].update(id="7002", status=status, priority="Urgent", type="Incident", via="Web Form",
                          created_at=created, updated_at=updated, **ticket)
    body["requester"].update(id="9100000000002", email="carol@acme.example", name="Carol", phone="")
    body["satisfaction"].update(rating=rating, comment="")
    return body


def kinds(result):
    return [(t.kind, t.touchpoint_id) for t in result.touchpoints]


def test_template_created():
    result = run(template("New", updated="2026-06-02T09:00:00Z", rating="Unoffered"))
    assert kinds(result) == [("ticket_opened", "ticket:7002:opened")]
    tp = result.touchpoints[0]
    assert tp.channel == "web" and tp.customer.email == "carol@acme.example"
    assert tp.attributes["priority"] == "urgent" and tp.attributes["trigger"] is True


def test_template_minute_precision_times_are_understood():
    result = run(template("Open", created="2026-06-02T09:00Z", updated="2026-06-02T09:00Z"))
    assert kinds(result) == [("ticket_opened", "ticket:7002:opened")]


def test_template_solved():
    assert kinds(run(template("Solved"))) == [("ticket_solved", "ticket:7002:solved:20260602T100000Z")]


def test_template_reopened():
    assert kinds(run(template("Open"))) == [("ticket_reopened", "ticket:7002:reopened:20260602T100000Z")]
    assert kinds(run(template("On-hold")))[0][0] == "ticket_reopened"


def test_template_rating_on_a_solved_ticket_is_only_the_rating_and_repeats_collapse():
    first = run(template("Solved", rating="Good"))
    again = run(template("Solved", rating="Good", updated="2026-06-05T10:00:00Z"))
    assert kinds(first) == kinds(again) == [("csat_rating", "ticket:7002:csat:good")]


def test_template_closed_adds_nothing():
    assert "nothing new" in run(template("Closed")).ignored


@pytest.mark.parametrize(("change", "message"), [
    ({"cx_connector": "zendesk-trigger/9"}, "not supported"),
    ({"ticket": {"id": "{{ticket.id}}"}}, "ticket.id"),
    ({"requester": {"id": ""}}, "requester.id"),
    ({"ticket": {"status": "Waiting"}}, "not a Zendesk status"),
    ({"satisfaction": {"rating": "Gut"}}, "satisfaction score"),
])
def test_template_errors_say_what_is_wrong(change, message):
    body = template()
    for key, value in change.items():
        if isinstance(value, dict):
            body[key].update(value)
        else:
            body[key] = value
    with pytest.raises(PayloadError, match=message):
        run(body)


@pytest.mark.parametrize("payload", [[], "text", 42, None, {}, {"type": 5}, {"ticket": {"id": "1"}}])
def test_unknown_shapes_are_payload_errors_pointing_at_the_readme(payload):
    with pytest.raises(PayloadError, match="README"):
        run(payload)


# --- channels -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("via", "channel"), [
    ("web", "web"), ("web_form", "web"), ("Web Form", "web"), ("help_center", "web"), ("mobile_sdk", "web"),
    ("email", "email"), ("Mail", "email"),
    ("chat", "chat"), ("native_messaging", "chat"), ("Messaging", "chat"), ("whatsapp", "chat"),
    ("sms", "chat"),
    ("voice", "phone"), ("phone", "phone"), ("Phone call (inbound)", "phone"), ("voicemail", "phone"),
    ("twitter", "social"), ("facebook_post", "social"), ("instagram_dm", "social"),
    ("api", "api"), ("web_service", "api"), ("Web service", "api"), ("API", "api"),
    ("rule", "other"), ("closed_ticket", "other"), ("merge", "other"), (None, "other"), ("", "other"),
])
def test_channels(via, channel):
    assert channel_for(via) == channel


def test_attributes_are_plain_json():
    for body in (ticket_event("ticket.created"), csat({"score": 4}), template("Solved")):
        for tp in run(body).touchpoints:
            assert json.loads(json.dumps(tp.attributes)) == tp.attributes
