"""Alembic's environment for the scheduler's store: the engine comes from campushub.scheduler.store."""

from alembic import context

from campushub.scheduler.models import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    context.run_migrations()
