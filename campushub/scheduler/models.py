"""The service's store: schedule definitions and their runs (SQLAlchemy; the schema is Alembic's migrations/)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Schedule(Base):
    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(80))
    notebook: Mapped[str] = mapped_column(String(1024))
    parameters: Mapped[dict] = mapped_column(JSON, default=dict)
    cron: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64))
    profile: Mapped[str | None] = mapped_column(String(64), nullable=True)
    timeout: Mapped[int] = mapped_column(Integer)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    retry_delay: Mapped[int] = mapped_column(Integer, default=60)
    max_concurrent: Mapped[int] = mapped_column(Integer, default=1)
    missed: Mapped[str] = mapped_column(String(16), default="skip")
    alert_emails: Mapped[list] = mapped_column(JSON, default=list)
    alert_webhooks: Mapped[list] = mapped_column(JSON, default=list)
    alert_on_success: Mapped[bool] = mapped_column(Boolean, default=False)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_due: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # a deleted schedule is hidden and never runs again; its runs stay in the history
    deleted: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    runs: Mapped[list[Run]] = relationship(
        back_populates="schedule", cascade="all, delete-orphan", passive_deletes=True
    )


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    # pending (waiting in the service) -> submitting -> queued (in Slurm) -> running -> an end state
    state: Mapped[str] = mapped_column(String(16), index=True)
    trigger: Mapped[str] = mapped_column(String(16))  # schedule | missed | manual | retry
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    due: Mapped[datetime] = mapped_column(UTCDateTime)  # not submitted before this time
    parameters: Mapped[dict] = mapped_column(JSON, default=dict)
    folder: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")  # Slurm's reason while queued; the error once ended
    note: Mapped[str] = mapped_column(Text, default="")  # what the service changed, e.g. a withdrawn profile
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    has_html: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    submitted: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    schedule: Mapped[Schedule] = relationship(back_populates="runs")


ACTIVE_STATES = ("submitting", "queued", "running")
END_STATES = ("succeeded", "failed", "timed_out", "cancelled")
RUN_STATES = ("pending", *ACTIVE_STATES, *END_STATES)
