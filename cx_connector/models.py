"""Database tables (SQLAlchemy 2). Alembic migrations in ``migrations/`` create them.

Every table of the data flow is here, in flow order: the inbox (``deliveries``),
``touchpoints``, ``customers`` and their ``identities``, ``scores`` (+ history),
the ``outbox`` and the values last written per record, then bookkeeping (job runs,
leases, audit log, backfill cursors, alert states, metric values).

External ids are strings everywhere (HubSpot and Zendesk ids exceed 2^32, Shopify's
exceed 2^53). Times are stored in UTC and always read back time-zone aware.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    Date,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Money(TypeDecorator):
    """Exact ``Decimal`` (18 digits, 4 places) on PostgreSQL; on SQLite, whose NUMERIC is
    a float, values are rounded back to 4 places so they compare exactly."""

    impl = Numeric(18, 4)
    cache_ok = True
    _Q = Decimal("0.0001")

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Numeric(18, 4, asdecimal=False))
        return dialect.type_descriptor(Numeric(18, 4))

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        value = Decimal(value).quantize(self._Q)
        return float(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        if value is None:
            return None
        return Decimal(repr(value) if isinstance(value, float) else value).quantize(self._Q)


ID = BigInteger().with_variant(Integer, "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# --- inbox ----------------------------------------------------------------------------


class Delivery(Base):
    """Every verified webhook request, as received: the inbox. Bad signatures never get here."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("source", "delivery_key"),
        Index(None, "status", "received_at"),
        Index(None, "source", "received_at"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    delivery_key: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(128), default="")
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    headers: Mapped[dict] = mapped_column(Json, default=dict)
    #: the raw bytes as signed; NULL once redacted for privacy
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: received | processed | failed | ignored
    status: Mapped[str] = mapped_column(String(16), default="received")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    redacted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


# --- customers and identities ---------------------------------------------------------


class Customer(Base):
    """One person across every platform. Merged customers are kept, pointing at the survivor."""

    __tablename__ = "customers"
    __table_args__ = (Index(None, "changed_at"), Index(None, "email"))

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    phone: Mapped[str | None] = mapped_column(String(32), nullable=True)
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: field -> occurred_at (ISO) of the newest fact that set email/phone/name: an older
    #: fact arriving late never overwrites a newer one, so delivery order does not matter
    profile_times: Mapped[dict] = mapped_column(Json, default=dict)
    #: set whenever the customer's touchpoints change; scoring picks up changed_at > scored_at
    changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    scored_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    merged_into_id: Mapped[int | None] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="SET NULL"), nullable=True)
    redacted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Identity(Base):
    """A key that points at a customer: a platform record id, an email or a phone number.

    ``kind`` is ``id`` (``source`` = the platform, ``value`` = its record id, possibly
    namespaced by the connector, e.g. ``deal:123``), ``email`` or ``phone`` (``source``
    empty: an address links records across platforms).
    """

    __tablename__ = "identities"
    # value first: lookups are ``value IN (...)``, which every database can serve from
    # this index (SQLite cannot use an index for a row-value IN)
    __table_args__ = (UniqueConstraint("value", "kind", "source"), Index(None, "customer_id"))

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ID, ForeignKey("customers.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(32), default="")
    value: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: when the enrichment job last looked this record up on its platform
    enriched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: the platform record was deleted or merged away: never written to again
    gone_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


# --- touchpoints -------------------------------------------------------------------------


class TouchpointRow(Base):
    __tablename__ = "touchpoints"
    __table_args__ = (
        UniqueConstraint("source", "touchpoint_id"),
        Index(None, "customer_id", "occurred_at"),
        Index(None, "kind", "occurred_at"),
        Index(None, "occurred_at"),
        Index(None, "delivery_id"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    touchpoint_id: Mapped[str] = mapped_column(String(255))
    customer_id: Mapped[int | None] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="SET NULL"), nullable=True)
    customer_source_id: Mapped[str] = mapped_column(String(255))
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))
    value: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    rating_type: Mapped[str | None] = mapped_column(String(8), nullable=True)
    rating_score: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    rating_scale_max: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    products: Mapped[list] = mapped_column(Json, default=list)
    attributes: Mapped[dict] = mapped_column(Json, default=dict)
    delivery_id: Mapped[int | None] = mapped_column(
        ID, ForeignKey("deliveries.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class CatalogueEntry(Base):
    """Product catalogue per source: the category of products whose line items lack one."""

    __tablename__ = "products"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    title: Mapped[str | None] = mapped_column(String(255), nullable=True)
    category: Mapped[str | None] = mapped_column(String(255), nullable=True)
    sku: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


# --- scores --------------------------------------------------------------------------------


class Score(Base):
    """The latest scores of a customer, with the explanation of each.

    Also indexed by the expression ``score_values ->> 'cx_health'`` (``ix_scores_health``,
    migration ``0004_admin``, with ``customer_id``): lists by health. The expression is
    spelt per database, so the index is declared in :data:`SCORE_HEALTH_INDEX` below.
    """

    __tablename__ = "scores"

    customer_id: Mapped[int] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    scored_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    score_values: Mapped[dict] = mapped_column(Json, default=dict)
    explanation: Mapped[dict] = mapped_column(Json, default=dict)


class ScoreSnapshot(Base):
    """Score history: one row per customer per scoring run that changed something."""

    __tablename__ = "score_snapshots"
    __table_args__ = (Index(None, "customer_id", "scored_at"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ID, ForeignKey("customers.id", ondelete="CASCADE"))
    scored_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    score_values: Mapped[dict] = mapped_column(Json, default=dict)


class ScoreContext(Base):
    """What every explanation of a scoring run shares: the population models' parameters
    and the settings the scores were computed with.

    Explanations (``scores.explanation``) name their context by id instead of carrying
    a copy (half of each explanation, a hundred megabytes per full pass of 100,000
    customers). Rows are written once, deduplicated by ``digest`` (SHA-256 of the
    canonical JSON), and never changed or deleted: an explanation stays explainable
    after the configuration changes. They are small (one per full pass and per
    settings change). Read explanations through
    :func:`cx_connector.scoring.explain.expand`.
    """

    __tablename__ = "score_contexts"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    context: Mapped[dict] = mapped_column(Json, default=dict)


class PopulationModel(Base):
    """Fitted population-level models (BG/NBD, Gamma-Gamma, co-occurrence), reused between full passes."""

    __tablename__ = "population_models"
    __table_args__ = (Index(None, "kind", "fitted_at"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    fitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    params: Mapped[dict] = mapped_column(Json, default=dict)


class KpiSnapshot(Base):
    __tablename__ = "kpi_snapshots"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    computed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    kpi_values: Mapped[dict] = mapped_column(Json, default=dict)


# --- write-back -------------------------------------------------------------------------------


class OutboxWrite(Base):
    """A pending write of changed score fields to one platform record.

    ``status``: pending -> in_flight (claimed) -> done, or back to pending with
    ``next_attempt_at`` after a retryable failure, or ``dead`` with ``last_error``.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        # claiming: the due writes of a platform in order (sync.claim)
        Index(None, "status", "next_attempt_at"),
        # a record's writes (enqueue, fold, a customer's page)
        Index(None, "source", "external_id"),
        # the open writes counted by platform, status and attempts (the Operations page,
        # ``cx-connector outbox``, /metrics with the oldest due time) from the index alone,
        # and the retried ones (pending with attempts) found without reading every pending
        # write: after a full pass that is 100,000 rows (migration 0006, BENCHMARKS.md)
        Index(None, "status", "attempts", "source", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    customer_id: Mapped[int | None] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="SET NULL"), nullable=True)
    source: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(255))
    #: field -> new value
    fields: Mapped[dict] = mapped_column(Json, default=dict)
    #: field -> value last written (for the audit log's old -> new)
    previous: Mapped[dict] = mapped_column(Json, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WrittenValue(Base):
    """The value last successfully written to each field of each platform record."""

    __tablename__ = "written_values"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    field: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(Json, nullable=True)
    written_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


# --- bookkeeping --------------------------------------------------------------------------------


class JobRun(Base):
    __tablename__ = "job_runs"
    __table_args__ = (Index(None, "job", "started_at"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: running | ok | failed | skipped
    status: Mapped[str] = mapped_column(String(16), default="running")
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    details: Mapped[dict] = mapped_column(Json, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    host: Mapped[str] = mapped_column(String(128), default="")


class Lease(Base):
    """A named, expiring lock held in the database (one scheduler, one job run at a time)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "customer_id", "at"), Index(None, "action", "at"))

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: webhook | cli | scheduler | admin | api
    actor: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[int | None] = mapped_column(ID, nullable=True)
    source: Mapped[str | None] = mapped_column(String(32), nullable=True)
    external_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    details: Mapped[dict] = mapped_column(Json, default=dict)


class BackfillState(Base):
    """Where a backfill of one resource of one source stands (saved after every page)."""

    __tablename__ = "backfill_state"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[str | None] = mapped_column(Text, nullable=True)
    since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    pages: Mapped[int] = mapped_column(Integer, default=0)
    records: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class AlertState(Base):
    """An alert fires once per customer per rule until its condition clears."""

    __tablename__ = "alert_states"

    customer_id: Mapped[int] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    fired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    cleared_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    details: Mapped[dict] = mapped_column(Json, default=dict)


class MetricValue(Base):
    """A counter (or last value) for ``/metrics`` that the clock process, the CLI and the
    admin pages record: one row per metric and label set, changed once per job run or
    per batch, never per webhook (see :mod:`cx_connector.metrics`). Kept in the
    database so that every web instance, on any host, reports the same figures and
    they survive restarts."""

    __tablename__ = "metric_values"

    name: Mapped[str] = mapped_column(String(96), primary_key=True)
    #: the label set as canonical JSON (sorted keys), ``{}`` for none
    labels: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class AlertRule(Base):
    """A configured alert rule as the alerts job knows it. The first evaluation of a rule
    records the customers who already match as a baseline (nothing sent), so enabling a
    rule does not page anyone about every customer who was red long before."""

    __tablename__ = "alert_rules"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    condition: Mapped[str] = mapped_column(String(32))
    first_evaluated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_evaluated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class AlertDelivery(Base):
    """One action of one alert (a signed POST, a HubSpot task, a Zendesk note): the
    alerts' outbox. Decided in the transaction that fires (or clears) the alert, sent
    afterwards: ``pending`` -> ``in_flight`` (claimed) -> ``done``, or back to pending
    with ``next_attempt_at`` after a retryable failure, or ``dead`` with ``last_error``
    (``cx-connector alerts retry`` re-queues it), or ``skipped`` when there is nothing to
    send it to (no HubSpot contact). ``details`` holds what fired, never personal data:
    the message is rendered when it is sent."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index(None, "status", "next_attempt_at"), Index(None, "customer_id", "rule"))

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    customer_id: Mapped[int | None] = mapped_column(
        ID, ForeignKey("customers.id", ondelete="SET NULL"), nullable=True)
    rule: Mapped[str] = mapped_column(String(64))
    condition: Mapped[str] = mapped_column(String(32))
    #: fired | cleared
    event: Mapped[str] = mapped_column(String(16))
    #: when the alert (this episode of it) fired: with customer and rule, names the alert
    fired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: ``webhook:<name>`` or ``platform:<connector>``
    action: Mapped[str] = mapped_column(String(80))
    #: the platform record it was sent to (platform actions)
    external_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    details: Mapped[dict] = mapped_column(Json, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: an earlier attempt may have landed (timeout, 5xx, a worker that died): the next
    #: one looks before creating again where the target allows it
    uncertain: Mapped[bool] = mapped_column(Boolean, default=False)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: what the target answered (HTTP status, task id)
    result: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


#: ``ix_scores_health`` per database (cx_connector.customers.health_of spells the same expression)
SCORE_HEALTH_INDEX = {
    "sqlite": "CREATE INDEX ix_scores_health ON scores "
              "(json_extract(score_values, '$.cx_health'), customer_id)",
    "postgresql": "CREATE INDEX ix_scores_health ON scores ((score_values ->> 'cx_health'), customer_id)",
}
for _dialect, _ddl in SCORE_HEALTH_INDEX.items():
    event.listen(Score.__table__, "after_create", DDL(_ddl).execute_if(dialect=_dialect))


#: PostgreSQL only (migration 0006): statistics of status and attempts together. Taking
#: them for independent, the planner guessed "pending with attempts" (the retried writes,
#: a few hundred) to be a quarter of the outbox, since done writes have attempts too, and
#: served the retried list's ``ORDER BY id LIMIT 50`` by walking the primary key through
#: every done write (~0.2 s at 300,000 of them) instead of reading the index range.
OUTBOX_STATUS_ATTEMPTS_STATISTICS = ("CREATE STATISTICS st_outbox_status_attempts (mcv) "
                                     "ON status, attempts FROM outbox")
event.listen(OutboxWrite.__table__, "after_create",
             DDL(OUTBOX_STATUS_ATTEMPTS_STATISTICS).execute_if(dialect="postgresql"))


deliveries = Delivery.__table__
customers = Customer.__table__
identities = Identity.__table__
touchpoints = TouchpointRow.__table__
products = CatalogueEntry.__table__
scores = Score.__table__
score_snapshots = ScoreSnapshot.__table__
score_contexts = ScoreContext.__table__
population_models = PopulationModel.__table__
kpi_snapshots = KpiSnapshot.__table__
outbox = OutboxWrite.__table__
written_values = WrittenValue.__table__
job_runs = JobRun.__table__
leases = Lease.__table__
audit_log = AuditEntry.__table__
backfill_state = BackfillState.__table__
alert_states = AlertState.__table__
metric_values = MetricValue.__table__
alert_rules = AlertRule.__table__
alert_deliveries = AlertDelivery.__table__
