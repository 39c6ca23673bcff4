"""Schedule definitions: every wrong field is refused with a message naming it."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from campushub.scheduler.definitions import (
    ScheduleError,
    check_parameters,
    inspect_parameters,
    list_templates,
    next_due,
    parameter_type,
    parse_definition,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "notebooks" / "templates"


def parse(**body):
    return parse_definition({"notebook": "template:run-report", "cron": "0 2 * * *", **body}, max_timeout=86400)


def refused(body, **kw) -> str:
    with pytest.raises(ScheduleError) as e:
        parse_definition(body, max_timeout=kw.pop("max_timeout", 86400), **kw)
    return str(e.value)


def test_a_good_definition_gets_its_defaults():
    d = parse(parameters={"title": "Nightly"}, timezone="Europe/Berlin")
    assert (d.cron, d.timezone, d.timeout, d.retries, d.max_concurrent, d.missed) == (
        "0 2 * * *", "Europe/Berlin", 3600, 0, 1, "skip",
    )  # fmt: skip
    assert d.template == "run-report" and d.display_name == "run-report"
    assert parse(notebook="projects/etl.ipynb").display_name == "etl"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"cron": "61 * * * *"}, "cron: '61 * * * *' is not a valid cron expression"),
        ({"cron": "* * * *"}, "cron: '* * * *' must have 5 fields"),
        ({"cron": "0 0 * * * *"}, "must have 5 fields"),
        ({"cron": "@reboot"}, "cron: '@reboot' is not one of"),
        ({"cron": ""}, "cron: give an expression"),
        ({"timezone": "Mars/Olympus"}, "timezone: unknown time zone 'Mars/Olympus'"),
        ({"notebook": "/etc/passwd.ipynb"}, "notebook: '/etc/passwd.ipynb' is outside your home folder"),
        ({"notebook": "../bob/secret.ipynb"}, "outside your home folder"),
        ({"notebook": "a/../../x.ipynb"}, "outside your home folder"),
        ({"notebook": "~bob/x.ipynb"}, "outside your home folder"),
        ({"notebook": "notes.txt"}, "is not a notebook (.ipynb)"),
        ({"notebook": "template:../../etc/x"}, "there is no template"),
        ({"timeout": 10}, "timeout: Input should be greater than or equal to 60"),
        ({"timeout": "600"}, "timeout: Input should be a valid integer"),
        ({"timeout": 90000}, "timeout: at most 86400 seconds"),
        ({"retries": 9}, "retries: Input should be less than or equal to 5"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"missed": "catch_up"}, "missed: Input should be 'skip' or 'run_once'"),
        ({"alerts": {"emails": ["not an address"]}}, "alerts.emails"),
        ({"alerts": {"webhooks": ["file:///etc/passwd"]}}, "alerts.webhooks"),
        ({"alerts": {"sms": ["+1 555"]}}, "alerts.sms: not a setting of a schedule"),
        ({"owner": "bob"}, "owner: not a setting of a schedule"),
        ({"name": "x\ny"}, "name: no control characters"),
    ],
)
def test_a_wrong_field_is_named(body, field):
    from campushub.scheduler.alerts import webhook_problem

    full = {"notebook": "template:run-report", "cron": "0 2 * * *", **body}
    assert field in refused(full, webhook_check=lambda url: webhook_problem(url, []))


def test_a_body_that_is_not_an_object_is_refused():
    assert "must be a JSON object" in refused(["notebook"])
    assert "notebook: Field required" in refused({"cron": "0 2 * * *"})


def test_parameters_are_checked_against_the_notebooks_own():
    declared = inspect_parameters((TEMPLATES / "train-classifier.ipynb").read_bytes())
    check_parameters({"epochs": 5, "learning_rate": 0.5, "noise": 2}, declared)  # an int is a float too
    with pytest.raises(ScheduleError, match=r"parameters.epoch: the notebook has no such parameter \(it has: seed"):
        check_parameters({"epoch": 5}, declared)
    with pytest.raises(ScheduleError, match=r'parameters.epochs: must be int, not str "5"'):
        check_parameters({"epochs": "5"}, declared)
    with pytest.raises(ScheduleError, match="parameters.epochs: must be int, not bool"):
        check_parameters({"epochs": True}, declared)
    with pytest.raises(ScheduleError, match="parameters.learning_rate: must be float, not list"):
        check_parameters({"learning_rate": [1]}, declared)


def test_a_notebook_without_parameters_takes_none():
    import nbformat

    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    declared = inspect_parameters(nbformat.writes(plain).encode())
    check_parameters({}, declared)
    with pytest.raises(ScheduleError, match="has no cell tagged 'parameters'"):
        check_parameters({"x": 2}, declared)


def test_a_file_that_is_not_a_notebook_is_refused():
    with pytest.raises(ScheduleError, match="notebook: not a readable notebook"):
        inspect_parameters(b"print('hello')")


def test_parameter_types_come_from_annotations_or_defaults():
    assert parameter_type({"inferred_type_name": "int", "default": "1"}) == "int"
    assert parameter_type({"inferred_type_name": "None", "default": "0.5"}) == "float"
    assert parameter_type({"inferred_type_name": "None", "default": "True"}) == "bool"
    assert parameter_type({"inferred_type_name": "None", "default": "'x'"}) == "str"
    assert parameter_type({"inferred_type_name": "None", "default": "os.getcwd()"}) is None


def test_next_due_follows_the_time_zone_and_daylight_saving():
    after = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    # 02:30 does not exist in Berlin on the night summer time starts: croniter runs it at 03:00 local
    assert next_due("30 2 * * *", "Europe/Berlin", after).astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert next_due("0 2 * * *", "America/New_York", after).astimezone(UTC) == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)
    assert next_due("@daily", "UTC", after) == datetime(2026, 3, 29, 0, 0, tzinfo=UTC)


def test_the_templates_are_listed_with_a_site_folder_first(tmp_path):
    assert {"gpu-check", "csv-profile", "train-classifier", "run-report"} <= set(list_templates(None))
    (tmp_path / "run-report.ipynb").write_text((TEMPLATES / "gpu-check.ipynb").read_text())
    (tmp_path / "Not A Name.ipynb").write_text("{}")
    found = list_templates(tmp_path)
    assert found["run-report"] == tmp_path / "run-report.ipynb"
    assert "Not A Name" not in found
