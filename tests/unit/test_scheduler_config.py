"""The scheduler in the hub's config (a managed service with its own role) and its store's schema."""

from __future__ import annotations

import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from campushub.hubconfig import SCHEDULER_SCOPES, hub_config
from campushub.scheduler.models import Base
from campushub.scheduler.store import head_revision, open_engine, revision, upgrade
from campushub.site import parse_site


def config(tmp_path, **sections):
    return hub_config(parse_site({"hub": {"state_dir": str(tmp_path / "state")}, **sections}))


def test_the_scheduler_is_a_managed_service_with_a_role_of_its_own(tmp_path):
    c = config(tmp_path, scheduler={"port": 8123})
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "scheduler"]
    assert service["command"] == [sys.executable, "-m", "campushub.scheduler"]
    assert service["url"] == "http://127.0.0.1:8123"
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["campushub-scheduler"]["services"] == ["scheduler"]
    assert roles["campushub-scheduler"]["scopes"] == SCHEDULER_SCOPES
    assert not any(s.startswith(("admin", "access:servers", "delete", "list:users")) for s in SCHEDULER_SCOPES)
    assert roles["user"]["scopes"] == ["self", "access:services!service=scheduler"]
    assert "access:services!service=scheduler" in c.Spawner.server_token_scopes
    assert c.Spawner.environment["CAMPUSHUB_SCHEDULER_URL"] == "http://127.0.0.1:8000/services/scheduler/"
    # the culler keeps its own service and role beside it
    assert {s["name"] for s in c.JupyterHub.services} == {"idle-culler", "scheduler"}
    assert "idle-culler" in roles


def test_a_site_without_the_scheduler_has_no_trace_of_it(tmp_path):
    c = config(tmp_path, scheduler={"enabled": False})
    assert [s["name"] for s in c.JupyterHub.services] == ["idle-culler"]
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["idle-culler"]
    assert "CAMPUSHUB_SCHEDULER_URL" not in c.Spawner.environment
    assert "server_token_scopes" not in c.Spawner


def test_the_migrations_build_exactly_the_models_schema(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'store.sqlite'}")
    assert revision(engine) is None
    upgrade(engine)
    upgrade(engine)  # a second upgrade is a no-op
    assert revision(engine) == head_revision()
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
