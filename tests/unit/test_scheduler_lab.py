"""What the scheduler offers a user's Lab: a template's notebook with parameters injected (the Lab saves
the copy), and the profiles granted to the caller now. The service layer under the REST routes
`POST api/templates/<name>/notebook` and `GET api/profiles`, with real templates and real papermill.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest

from campushub.scheduler.definitions import ScheduleError
from campushub.scheduler.executors import executor_for
from campushub.scheduler.service import HubClient, Scheduler
from campushub.scheduler.store import open_store
from campushub.site import parse_site


def make_scheduler(tmp_path: Path, hub: HubClient | None = None, **site) -> Scheduler:
    site = parse_site({"hub": {"state_dir": str(tmp_path / "state")}, **site})
    store = open_store(f"sqlite:///{tmp_path / 'scheduler.sqlite'}")
    return Scheduler(site, store, executor_for(site), hub, tmp_path / "html", lambda i: f"http://hub/runs/{i}")


def test_a_templates_notebook_has_the_parameters_injected_after_its_parameters_cell(tmp_path):
    s = make_scheduler(tmp_path)
    nb = s.template_notebook("train-classifier", {"parameters": {"epochs": 2, "learning_rate": 0.5}})
    nbformat.validate(nb)
    tags = [cell.metadata.get("tags", []) for cell in nb.cells]
    injected = tags.index(["injected-parameters"])
    assert tags[injected - 1] == ["parameters"]
    source = nb.cells[injected].source
    assert "epochs = 2" in source and "learning_rate = 0.5" in source
    assert nb.metadata.kernelspec.name == "python3"
    assert "papermill" not in nb.metadata  # a copy to edit, not a papermill run
    # without values: the template as it is, no injected cell
    plain = s.template_notebook("train-classifier", {})
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in plain.cells)


def test_a_template_in_the_sites_folder_is_found_first(tmp_path):
    site_dir = tmp_path / "site-templates"
    site_dir.mkdir()
    cell = nbformat.v4.new_code_cell("greeting = 'hi'")
    cell.metadata["tags"] = ["parameters"]
    (site_dir / "hello.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook(cells=[cell])))
    s = make_scheduler(tmp_path, scheduler={"templates_dir": str(site_dir)})
    nb = s.template_notebook("hello", {"parameters": {"greeting": "salut"}})
    assert nb.cells[1].source == '# Parameters\ngreeting = "salut"\n'


@pytest.mark.parametrize(
    ("name", "body", "status", "message"),
    [
        ("no-such", {}, 404, "there is no template 'no-such'"),
        ("../etc/passwd", {}, 404, "there is no template '../etc/passwd'"),
        ("gpu-check", {"parameters": {"size": "big"}}, 400, 'parameters.size: must be int, not str "big"'),
        ("gpu-check", {"parameters": {"sise": 1}}, 400, "parameters.sise: the notebook has no such parameter"),
        ("gpu-check", {"parameters": [1]}, 400, "parameters: must be an object"),
        ("gpu-check", {"folder": "x"}, 400, "the body must be a JSON object such as"),
        ("gpu-check", [], 400, "the body must be a JSON object such as"),
    ],
)
def test_a_bad_template_request_is_refused_with_a_message(tmp_path, name, body, status, message):
    s = make_scheduler(tmp_path)
    with pytest.raises(ScheduleError) as refused:
        s.template_notebook(name, body)
    assert refused.value.status == status
    assert message in str(refused.value)


def test_runs_that_are_not_slurm_jobs_offer_no_profiles(tmp_path):
    assert asyncio.run(make_scheduler(tmp_path).profiles("ada")) == {"profiles": [], "default": None}


class Hub(HubClient):
    """The hub's answers for users and groups. A stand-in: no hub runs in the unit tests (the integration
    tests ask a real one)."""

    def __init__(self, users: dict, groups: dict):
        super().__init__("http://hub.invalid/hub/api", "unused")
        self.answers = {f"/users/{k}": v for k, v in users.items()} | {f"/groups/{k}": v for k, v in groups.items()}

    async def get(self, path: str):
        return self.answers.get(path)


SLURM_SITE = {
    "auth": {
        "kind": "oidc",
        "oidc": {
            "issuer": "https://sso.campus.example/realms/c",
            "client_id": "hub",
            "client_secret_file": "/s",
            "allowed_groups": ["campus"],
        },
    },  # fmt: skip
    "spawner": {"backend": "slurm", "slurm": {"partition": "batch", "cpus": 2, "memory": "4G", "walltime": "02:00:00"}},
    "profiles": [
        {"slug": "cpu", "display_name": "CPU", "description": "Two cores.", "everyone": True, "default": True},
        {
            "slug": "gpu-1",
            "display_name": "One GPU",
            "groups": ["ml-lab"],
            "resources": {"partition": "gpu", "gpus": 1, "gpu_type": "a100", "memory": "32G"},
            "choices": {"hours": {"min": 1, "max": 8}},
        },
        {"slug": "course-gpu", "display_name": "Course GPU", "resources": {"gpus": 1, "walltime": "01:00:00"}},
    ],
}


def test_profiles_are_those_granted_to_the_caller_now(tmp_path):
    hub = Hub(
        users={"ada": {"name": "ada", "groups": ["ml-lab"]}, "bob": {"name": "bob", "groups": ["course-x"]}},
        groups={"ml-lab": {"properties": {}}, "course-x": {"properties": {"campushub_profiles": ["course-gpu"]}}},
    )
    s = make_scheduler(tmp_path, hub, **SLURM_SITE)
    ada = asyncio.run(s.profiles("ada"))
    assert [p["name"] for p in ada["profiles"]] == ["cpu", "gpu-1"] and ada["default"] == "cpu"
    gpu = ada["profiles"][1]
    assert gpu | {"summary": ""} == {
        "name": "gpu-1", "display_name": "One GPU", "description": "", "partition": "gpu", "cpus": 2,
        "memory": "32G", "gpus": 1, "gpu_type": "a100", "walltime": "02:00:00",
        "choices": {"gpus": None, "hours": {"min": 1, "max": 8}}, "summary": "",
    }  # fmt: skip
    assert "1 GPU (a100)" in gpu["summary"]
    assert ada["profiles"][0]["description"] == "Two cores." and ada["profiles"][0]["partition"] == "batch"
    # a grant through a group's property, changed without a restart, is seen at the next request
    bob = asyncio.run(s.profiles("bob"))
    assert [p["name"] for p in bob["profiles"]] == ["cpu", "course-gpu"]
    hub.answers["/groups/course-x"] = {"properties": {}}
    assert [p["name"] for p in asyncio.run(s.profiles("bob"))["profiles"]] == ["cpu"]
    with pytest.raises(ScheduleError, match="the hub has no user 'eve'"):
        asyncio.run(s.profiles("eve"))
