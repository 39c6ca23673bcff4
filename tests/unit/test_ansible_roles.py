"""The Ansible roles' own documentation and pins (the playbook itself is tested on hosts in
tests/integration/test_deploy.py and linted by ansible-lint in make check)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import campushub

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"


def roles() -> list[Path]:
    return sorted(p for p in ROLES.iterdir() if (p / "tasks" / "main.yml").exists())


def test_the_roles_are_the_documented_ones():
    assert [r.name for r in roles()] == [
        "campushub", "campushub_singleuser", "munge", "slurm", "slurm_controller", "slurm_node",
    ]  # fmt: skip


@pytest.mark.parametrize("role", roles(), ids=lambda p: p.name)
def test_every_default_is_in_the_argument_specs(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    documented = set(specs["main"].get("options") or {})
    assert set(defaults) <= documented, f"not in {role.name}'s meta/argument_specs.yml: {set(defaults) - documented}"
    for name, option in (specs["main"].get("options") or {}).items():
        assert option.get("description"), f"{role.name}: {name} has no description"


def test_the_roles_install_this_version():
    hub = yaml.safe_load((ROLES / "campushub" / "defaults" / "main.yml").read_text())
    assert hub["campushub_version"] == campushub.__version__
    nodes = yaml.safe_load((ROLES / "campushub_singleuser" / "defaults" / "main.yml").read_text())
    assert f"default('{campushub.__version__}')" in nodes["campushub_singleuser_version"]
