"""The demo's example schedule: what a newcomer sees within a minute of `make demo`."""

from __future__ import annotations

from sqlalchemy import select

from .models import Schedule
from .service import Scheduler

DEMO_OWNER = "demo"
EXAMPLE = {
    "name": "Example: nightly training run",
    "notebook": "template:train-classifier",
    "cron": "0 2 * * *",
    "parameters": {"epochs": 20},
}


async def add_example(scheduler: Scheduler) -> None:
    """On a first start (an empty store): the example schedule, owned by the demo user, and a first run now."""
    with scheduler.session() as db:
        if db.scalar(select(Schedule.id).limit(1)) is not None:
            return
    made = await scheduler.add(DEMO_OWNER, EXAMPLE)
    with scheduler.session() as db:
        scheduler.run_now(db, db.get(Schedule, made["id"]))
