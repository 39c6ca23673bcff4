"""The notebook templates (notebooks/templates), run for real with papermill in a Python kernel of this
environment: with their defaults, with parameters overridden, and with bad input. What a run produced
is read back from its output notebook and from the results.json it wrote, as the nightly scheduler
will read it."""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import statistics
from pathlib import Path

import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

TEMPLATES = Path(__file__).parents[2] / "notebooks" / "templates"

# What the scheduler will read with papermill.inspect_notebook: each template's parameters and their types.
PARAMETERS = {
    "gpu-check": {"size": "int", "repeats": "int", "dtype": "str", "cpu_size": "int", "output_dir": "str"},
    "csv-profile": {"csv_path": "str", "delimiter": "str", "missing_values": "str", "output_dir": "str"},
    "train-classifier": {
        "seed": "int",
        "samples": "int",
        "features": "int",
        "noise": "float",
        "epochs": "int",
        "learning_rate": "float",
        "batch_size": "int",
        "output_dir": "str",
    },
    "run-report": {"results_path": "str", "title": "str", "output_dir": "str"},
}


def execute(name: str, cwd: Path, **parameters):
    """Runs a template as the scheduler will: papermill, a python3 kernel, the run's folder as working directory."""
    cwd.mkdir(parents=True, exist_ok=True)
    return papermill.execute_notebook(
        str(TEMPLATES / f"{name}.ipynb"),
        str(cwd / f"{name}.out.ipynb"),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(cwd),
        progress_bar=False,
    )


def produced(nb, folder: Path) -> dict:
    """A run's results: its output notebook holds no error and shows them, and results.json holds them."""
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, errors
    assert not nb.metadata.papermill.get("exception")
    shown = [o for cell in nb.cells for o in cell.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert shown, "the notebook shows its results"
    return json.loads((folder / "results.json").read_text())


def injected(nb) -> str:
    """The source of the cell papermill injected right after the cell tagged `parameters`."""
    tags = [cell.metadata.get("tags", []) for cell in nb.cells]
    at = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert "injected-parameters" in tags[at + 1], tags
    return nb.cells[at + 1].source


def no_injected_cell(nb) -> bool:
    return not any("injected-parameters" in cell.metadata.get("tags", []) for cell in nb.cells)


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory) -> tuple[Path, dict]:
    """gpu-check, csv-profile and train-classifier with their defaults, each in its own folder of one root:
    what a night of scheduled runs leaves behind."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name in ("gpu-check", "csv-profile", "train-classifier"):
        nb = execute(name, root / name)
        assert no_injected_cell(nb), "no parameters given, none injected"
        runs[name] = produced(nb, root / name)
    return root, runs


def test_each_template_declares_typed_documented_parameters():
    assert sorted(p.stem for p in TEMPLATES.glob("*.ipynb")) == sorted(PARAMETERS)
    for name, expected in PARAMETERS.items():
        path = TEMPLATES / f"{name}.ipynb"
        found = papermill.inspect_notebook(path)
        assert {p: found[p]["inferred_type_name"] for p in found} == expected, name
        for parameter in found.values():
            default = ast.literal_eval(parameter["default"])
            assert type(default).__name__ == parameter["inferred_type_name"], (name, parameter)
            assert len(parameter["help"]) > 10, (name, parameter)
        assert found["output_dir"]["default"] == '"."', name
        intro = json.loads(path.read_text())["cells"][0]
        assert intro["cell_type"] == "markdown", name
        for parameter in expected:
            assert f"`{parameter}`" in "".join(intro["source"]), (name, parameter)


def test_templates_are_stored_without_outputs_and_install_nothing():
    for name in PARAMETERS:
        nb = json.loads((TEMPLATES / f"{name}.ipynb").read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
        assert [c for c in code if "parameters" in c["metadata"].get("tags", [])], name
        assert len([c for c in code if "parameters" in c["metadata"].get("tags", [])]) == 1, name
        for cell in code:
            assert cell["outputs"] == [] and cell["execution_count"] is None, name
            source = "".join(cell["source"])
            for installer in ("pip install", "%pip", "!pip", "conda install", "%conda"):
                assert installer not in source, (name, installer)


def test_gpu_check_reports_no_gpu_here_and_measures_the_cpu(default_runs):
    results = default_runs[1]["gpu-check"]
    assert results["template"] == "gpu-check"
    assert results["parameters"] == {
        "size": 8192,
        "repeats": 50,
        "dtype": "bfloat16",
        "cpu_size": 128,
        "output_dir": ".",
    }
    # this machine has no GPU, and this environment no PyTorch
    assert results["gpu"] is None
    assert results["torch"]["importable"] is False and "torch" in results["torch"]["error"]
    assert results["summary"].startswith("no GPU: PyTorch is not importable")
    if shutil.which("nvidia-smi") is None:
        assert results["nvidia_smi"] is None and results["nvidia_smi_note"] == "nvidia-smi not found"
    assert results["cpu"]["size"] == 128 and results["cpu"]["repeats"] >= 1
    assert results["cpu"]["gflops"] > 0
    assert results["cpu"]["backend"] == "python" or results["cpu"]["backend"].startswith("numpy")


def test_gpu_check_with_parameters_lists_what_nvidia_smi_reports(tmp_path, monkeypatch):
    # No GPU here: a stand-in nvidia-smi prints what the real one prints on a two-GPU H100 job.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(
        '#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\n'
        "printf 'NVIDIA H100 80GB HBM3, 81559 MiB\\nNVIDIA H100 80GB HBM3, 81559 MiB\\n'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    run = tmp_path / "run"
    overrides = {"size": 1024, "repeats": 3, "dtype": "float32", "cpu_size": 24, "output_dir": "out/gpu"}

    nb = execute("gpu-check", run, **overrides)

    assert 'dtype = "float32"' in injected(nb) and "cpu_size = 24" in injected(nb)
    assert not (run / "results.json").exists()
    results = produced(nb, run / "out" / "gpu")
    assert results["parameters"] == overrides
    assert (bin_dir / "args").read_text().split() == ["--query-gpu=name,memory.total", "--format=csv,noheader"]
    h100 = {"name": "NVIDIA H100 80GB HBM3", "memory_total": "81559 MiB"}
    assert results["nvidia_smi"] == [h100, h100] and results["nvidia_smi_note"] is None
    assert results["cuda_visible_devices"] == ""
    assert results["gpu"] is None
    assert results["summary"].startswith(
        "no GPU: CUDA_VISIBLE_DEVICES is empty: this job was given no GPU; "
        "nvidia-smi lists 2: NVIDIA H100 80GB HBM3, NVIDIA H100 80GB HBM3; CPU ("
    )
    assert results["cpu"]["size"] == 24 and results["cpu"]["gflops"] > 0


def test_gpu_check_refuses_an_unknown_dtype_and_writes_nothing(tmp_path):
    with pytest.raises(PapermillExecutionError) as failed:
        execute("gpu-check", tmp_path, dtype="int8")
    assert failed.value.ename == "ValueError"
    assert failed.value.evalue == "dtype must be one of bfloat16, float16, float32, not 'int8'"
    assert not (tmp_path / "results.json").exists()


def test_csv_profile_of_the_built_in_sample(default_runs):
    root, runs = default_runs
    results = runs["csv-profile"]
    sample = root / "csv-profile" / "sample.csv"
    assert results["source"] == "sample.csv" and sample.is_file()
    with sample.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert (results["rows"], results["columns"], results["malformed_rows"]) == (len(table), 7, 0) == (200, 7, 0)
    profiles = {p["name"]: p for p in results["column_profiles"]}
    assert {name: p["type"] for name, p in profiles.items()} == {
        "job_id": "int",
        "user": "str",
        "partition": "str",
        "gpus": "int",
        "hours": "float",
        "wait_minutes": "float",
        "completed": "bool",
    }
    # the same figures, computed here from the file
    for name, missing in (("hours", {""}), ("wait_minutes", {"NA"})):
        values = [float(row[name]) for row in table if row[name] not in missing]
        assert profiles[name]["missing"] == 200 - len(values) > 0
        assert profiles[name]["mean"] == pytest.approx(statistics.fmean(values))
        assert (profiles[name]["min"], profiles[name]["max"]) == (min(values), max(values))
    assert (profiles["job_id"]["min"], profiles["job_id"]["max"], profiles["job_id"]["mean"]) == (1000, 1199, 1099.5)
    assert profiles["user"]["distinct"] == len({row["user"] for row in table})
    assert profiles["completed"]["mean"] is None and profiles["completed"]["top"]["value"] == "True"


def test_csv_profile_of_a_known_csv_with_parameters(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "known.csv").write_text(
        "id;name;score;passed;note;empty\n"
        "1;ada;9.5;true;x|y;\n"
        "2;bob;NA;false;;\n"
        "\n"
        "3;cy;7;TRUE;hello\n"
        "-4;dan;-1.5;false;hello;;extra\n"
    )

    nb = execute("csv-profile", tmp_path, csv_path="data/known.csv", delimiter=";", output_dir="profile")

    assert 'csv_path = "data/known.csv"' in injected(nb)
    results = produced(nb, tmp_path / "profile")
    assert results["source"] == "data/known.csv"
    assert (results["rows"], results["columns"], results["malformed_rows"]) == (4, 6, 2)
    profiles = {p["name"]: p for p in results["column_profiles"]}
    assert profiles["id"] == {
        "name": "id",
        "type": "int",
        "count": 4,
        "missing": 0,
        "distinct": 4,
        "mean": 0.5,
        "min": -4,
        "max": 3,
        "top": None,
    }
    score = profiles["score"]
    assert (score["type"], score["count"], score["missing"], score["min"], score["max"]) == ("float", 3, 1, -1.5, 9.5)
    assert score["mean"] == pytest.approx(5.0)
    assert profiles["passed"]["type"] == "bool" and profiles["passed"]["top"] == {"value": "false", "count": 2}
    note = profiles["note"]
    assert (note["type"], note["missing"], note["distinct"], note["top"]) == (
        "str",
        1,
        2,
        {"value": "hello", "count": 2},
    )
    assert (profiles["empty"]["type"], profiles["empty"]["missing"], profiles["empty"]["mean"]) == ("empty", 4, None)
    assert not (tmp_path / "profile" / "sample.csv").exists(), "no sample is made when a file is given"


def test_csv_profile_names_a_file_that_is_not_there(tmp_path):
    with pytest.raises(PapermillExecutionError) as failed:
        execute("csv-profile", tmp_path, csv_path="jobs.csv")
    assert failed.value.ename == "FileNotFoundError"
    assert failed.value.evalue == f"csv_path 'jobs.csv': no such file (a relative path starts at {tmp_path})"
    assert not (tmp_path / "results.json").exists()


def test_training_run_learns_the_synthetic_task(default_runs):
    results = default_runs[1]["train-classifier"]
    assert results["parameters"]["seed"] == 0 and results["parameters"]["epochs"] == 30
    assert (results["train_size"], results["test_size"]) == (320, 80)
    history = results["history"]
    assert [h["epoch"] for h in history] == list(range(1, 31))
    assert results["final"]["test_accuracy"] >= 0.85
    assert results["final"]["train_accuracy"] >= 0.85
    assert history[-1]["train_loss"] < history[0]["train_loss"] < 0.6931  # below a coin's log loss
    assert results["final"] == {k: v for k, v in history[-1].items() if k != "epoch"}
    assert len(results["weights"]) == 4 and all(w > 0 for w in results["weights"]), "class 1 lies at +0.75"
    assert abs(results["bias"]) < 0.2, "the two classes are as large and as far from 0: no offset to learn"


def test_training_run_is_reproducible_for_a_seed(tmp_path, default_runs):
    first = execute("train-classifier", tmp_path, seed=3, epochs=5, output_dir="a")
    again = execute("train-classifier", tmp_path, seed=3, epochs=5, output_dir="b")

    assert "seed = 3" in injected(first) and "epochs = 5" in injected(first)
    a, b = produced(first, tmp_path / "a"), produced(again, tmp_path / "b")
    assert len(a["history"]) == 5
    assert (a["history"], a["weights"], a["bias"]) == (b["history"], b["weights"], b["bias"])
    # another seed (all else the same in the first epoch): another data set, other numbers
    seed_0 = default_runs[1]["train-classifier"]
    assert seed_0["history"][0] != a["history"][0]


def test_report_summarises_a_folder_of_runs(tmp_path, default_runs):
    root, runs = default_runs
    folder = tmp_path / "nights"
    shutil.copytree(root, folder)
    (folder / "broken").mkdir()
    (folder / "broken" / "results.json").write_text("{not json")

    nb = execute("run-report", folder)

    report = produced(nb, folder)
    assert no_injected_cell(nb)
    assert report["template"] == "run-report" and report["count"] == 3
    by_template = {run["template"]: run for run in report["runs"]}
    assert sorted(by_template) == ["csv-profile", "gpu-check", "train-classifier"]
    assert by_template["gpu-check"]["summary"] == runs["gpu-check"]["summary"]
    assert by_template["gpu-check"]["path"] == "gpu-check/results.json"
    assert by_template["csv-profile"]["summary"].startswith("200 rows, 7 columns, ")
    accuracy = runs["train-classifier"]["final"]["test_accuracy"]
    assert by_template["train-classifier"]["summary"].startswith(f"test accuracy {accuracy:.1%}, test loss ")
    assert [s["path"] for s in report["skipped"]] == ["broken/results.json"]
    assert report["skipped"][0]["reason"].startswith("JSONDecodeError")
    markdown = (folder / "report.md").read_text()
    assert markdown.startswith("# Run report\n")
    assert f"| gpu-check/results.json | gpu-check | {runs['gpu-check']['finished_at']} |" in markdown

    # with parameters, in a folder that now holds the first report's own results.json: reports are no runs
    nb = execute("run-report", folder, title="Nightly GPU checks", output_dir="reports/today")

    assert 'title = "Nightly GPU checks"' in injected(nb)
    again = produced(nb, folder / "reports" / "today")
    assert again["count"] == 3 and len(again["skipped"]) == 1
    assert (folder / "reports" / "today" / "report.md").read_text().startswith("# Nightly GPU checks\n")
