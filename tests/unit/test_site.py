"""The site file: validation, defaults, errors that name their key, the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from campushub.hubconfig import check_site, hub_config, public_url
from campushub.site import Site, SiteError, load_site, parse_site, site_schema

EXAMPLE = Path(__file__).parents[2] / "hub_config" / "campushub.example.yaml"


def problems(data) -> list[str]:
    with pytest.raises(SiteError) as e:
        parse_site(data)
    return e.value.problems


def test_defaults_are_the_demo(tmp_path):
    site = parse_site({}, base=tmp_path)
    assert site.hub.ip == "127.0.0.1" and site.hub.port == 8000
    assert site.spawner.backend == "local"
    assert site.auth.kind == "shared-password"
    assert site.hub.state_dir == tmp_path / "campushub-state"


def test_no_file_gives_defaults_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_site(None).hub.state_dir == tmp_path / "campushub-state"


def test_relative_paths_resolve_against_the_site_file(tmp_path):
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "campushub.yaml"
    f.write_text("hub:\n  state_dir: state\nspawner:\n  backend: local\n  local:\n    python_env: env\n")
    site = load_site(f)
    assert site.hub.state_dir == tmp_path / "etc" / "state"
    assert site.spawner.local.python_env == tmp_path / "etc" / "env"
    assert site.source == f


def test_missing_partition_is_named():
    assert problems({"spawner": {"backend": "slurm", "slurm": {}}}) == ["spawner.slurm.partition: field required"]


def test_slurm_backend_needs_its_section():
    assert problems({"spawner": {"backend": "slurm"}}) == [
        "spawner: spawner.slurm is required when spawner.backend is slurm"
    ]


def test_every_error_is_reported_with_its_key():
    found = problems(
        {
            "hub": {"port": 0, "colour": "blue"},
            "spawner": {"backend": "kubernetes"},
            "auth": {"kind": "ldap"},
        }
    )
    keys = sorted(p.split(":")[0] for p in found)
    assert keys == ["auth.kind", "hub.colour", "hub.port", "spawner.backend"]
    assert any("extra inputs are not permitted" in p for p in found)


@pytest.mark.parametrize(
    "key, value",
    [
        ("partition", "gpu; rm -rf /"),
        ("partition", "gpu\n#SBATCH --uid=0"),
        ("account", "$(id)"),
        ("memory", "4G --uid=0"),
        ("walltime", "8h"),
        ("cpus", 0),
        ("submit_prefix", []),
        ("submit_prefix", ["sudo", ""]),
    ],
)
def test_slurm_values_that_could_break_a_job_are_refused(key, value):
    slurm = {"partition": "gpu", key: value}
    found = problems({"spawner": {"backend": "slurm", "slurm": slurm}})
    assert found and all(p.startswith(f"spawner.slurm.{key}") for p in found), found


def test_top_level_must_be_a_mapping():
    assert problems(["hub"]) == ["(top level): expected a mapping of sections, got list"]


SLURM = {"backend": "slurm", "slurm": {"partition": "gpu"}}


def test_profiles_need_the_slurm_or_docker_backend():
    assert problems({"profiles": [{"slug": "cpu", "display_name": "CPU"}]}) == [
        "profiles: need spawner.backend: slurm or docker"
    ]


def test_profile_errors_name_the_profile_and_key():
    found = problems(
        {
            "spawner": SLURM,
            "profiles": [
                {"slug": "cpu", "display_name": "CPU", "default": True},
                {"slug": "Bad Slug!", "display_name": "x", "resources": {"gpus": -1, "gpu_type": "a100;id"}},
                {
                    "slug": "gpu",
                    "display_name": "GPU",
                    "resources": {"gpus": 4},
                    "choices": {"gpus": {"min": 0, "max": 2}},
                },
                {"slug": "long", "display_name": "Long", "choices": {"hours": {"min": 5, "max": 2}}},
            ],
        }
    )
    assert "profiles[1].slug: string should match pattern '^[a-z0-9][a-z0-9-]{0,29}$'" in found
    assert "profiles[1].resources.gpus: input should be greater than or equal to 0" in found
    assert any(p.startswith("profiles[1].resources.gpu_type:") for p in found)
    assert "profiles[2]: resources.gpus must lie within choices.gpus" in found
    assert "profiles[3].choices.hours: min must not be larger than max" in found


def test_profile_slugs_are_unique_and_one_default_at_most():
    same = {"slug": "cpu", "display_name": "CPU", "default": True}
    assert problems({"spawner": SLURM, "profiles": [same, same]}) == ["profiles: slug used more than once: cpu"]


def test_yaml_syntax_errors_name_the_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("hub:\n  port: 8000\n   ip: x\n")
    with pytest.raises(SiteError) as e:
        load_site(f)
    assert f"{f}:3:" in e.value.problems[0] and "not valid YAML" in e.value.problems[0]


def test_unreadable_file(tmp_path):
    with pytest.raises(SiteError) as e:
        load_site(tmp_path / "missing.yaml")
    assert "cannot read the site file" in e.value.problems[0]


def test_example_site_file_is_valid():
    site = load_site(EXAMPLE)
    assert site.spawner.backend == "slurm"


def schema_keys(schema: dict, node: dict, prefix: str = "") -> set[str]:
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    for option in node.get("anyOf", []):
        if "$ref" in option:
            return schema_keys(schema, option, prefix)
    if node.get("type") == "array" and "$ref" in node.get("items", {}):
        return schema_keys(schema, node["items"], prefix.removesuffix(".") + "[].")
    keys = set()
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        keys.add(path)
        keys |= schema_keys(schema, sub, path + ".")
    return keys


def data_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in data.items():
        keys.add(f"{prefix}{name}")
        if isinstance(value, dict) and name != "extra_config":  # its keys are JupyterHub's
            keys |= data_keys(value, f"{prefix}{name}.")
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                keys |= data_keys(item, f"{prefix}{name}[].")
    return keys


def test_example_site_file_shows_every_key_with_a_comment():
    schema = site_schema()
    documented = schema_keys(schema, schema)
    assert documented and "spawner.slurm.partition" in documented
    assert data_keys(yaml.safe_load(EXAMPLE.read_text())) == documented


def test_every_setting_in_the_example_has_a_comment_above_it():
    """A setting's first appearance follows a comment, directly or within a run of settings below one."""
    lines = EXAMPLE.read_text().splitlines()

    def setting(line):  # `key: value` (a section header `key:` has no value)
        body = line.split("#")[0].strip()
        return ":" in body and not body.endswith(":") and not body.endswith("|")

    seen = set()
    for i, line in enumerate(lines):
        key = line.split("#")[0].strip().removeprefix("- ").split(":")[0]
        if not setting(line) or key in seen:
            continue
        seen.add(key)
        j = i - 1
        while j >= 0 and setting(lines[j]):
            j -= 1
        assert j >= 0 and lines[j].lstrip().startswith("#"), f"line {i + 1} has no comment: {line}"


def test_every_key_has_a_description():
    schema = site_schema()

    def walk(node):
        for name, sub in node.get("properties", {}).items():
            assert sub.get("description"), name
        for definition in schema["$defs"].values():
            for name, sub in definition.get("properties", {}).items():
                assert sub.get("description"), name

    walk(schema)


def test_site_is_immutable():
    site = Site()
    with pytest.raises(ValidationError):
        site.hub.port = 1


def test_a_container_runtime_needs_an_image():
    slurm = {"partition": "gpu", "container": {"runtime": "apptainer"}}
    assert problems({"spawner": {"backend": "slurm", "slurm": slurm}}) == [
        "spawner.slurm.container: image is required with runtime apptainer"
    ]
    slurm["container"] = {"runtime": "docker", "image": "x"}
    assert problems({"spawner": {"backend": "slurm", "slurm": slurm}})[0].startswith("spawner.slurm.container.runtime:")


def test_extra_config_is_checked_against_jupyterhubs_own_settings():
    extra = {"JupyterHub": {"shutdown_on_logout": True}, "Spawner": {"notebook_dir": "~/work"}}
    assert parse_site({"hub": {"extra_config": extra}}).hub.extra_config == extra
    found = problems({"hub": {"extra_config": {
        "JupyterHub": {"shutdown_on_logot": True}, "SlurmSpawner": {"req_partition": "gpu"}, "Spawnr": {},
    }}})  # fmt: skip
    assert found == [
        "hub.extra_config: not JupyterHub settings: JupyterHub.shutdown_on_logot: JupyterHub has no such setting "
        "(did you mean 'shutdown_on_logout'?); SlurmSpawner.req_partition: does nothing in CampusHub: set "
        "spawner.slurm.partition; Spawnr: no such JupyterHub class (did you mean 'Spawner'?)"
    ]


def test_extra_config_comes_after_the_site_file(tmp_path):
    site = parse_site({"hub": {"state_dir": str(tmp_path), "extra_config": {
        "JupyterHub": {"shutdown_on_logout": True}, "Spawner": {"http_timeout": 99},
    }}})  # fmt: skip
    c = hub_config(site)
    assert c.JupyterHub.shutdown_on_logout is True
    assert c.Spawner.http_timeout == 99  # the site file's spawner.http_timeout set it first


def test_a_campus_login_with_local_servers_needs_a_root_hub(tmp_path, monkeypatch):
    oidc = {"issuer": "https://sso.campus.example", "client_id": "hub", "client_secret_file": str(tmp_path / "s"),
            "allowed_groups": ["r"]}  # fmt: skip
    (tmp_path / "s").write_text("secret\n")
    (tmp_path / "s").chmod(0o600)
    site = parse_site({"hub": {"state_dir": str(tmp_path / "state")}, "auth": {"kind": "oidc", "oidc": oidc}})
    # a hub not running as root cannot start servers as users' accounts (only the euid is stood in for)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(SiteError, match="so the hub must run as root"):
        hub_config(site)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    c = hub_config(site)
    assert c.JupyterHub.spawner_class.__name__ == "LocalSpawner" and "allow_root" not in str(c.Spawner.args)


def test_only_the_demo_runs_servers_as_the_hubs_account(tmp_path, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    c = hub_config(parse_site({"hub": {"state_dir": str(tmp_path)}}))
    assert c.JupyterHub.spawner_class == "simple" and c.Spawner.args == ["--ServerApp.allow_root=True"]


@pytest.mark.parametrize("key", ["ip", "hub_ip"])
@pytest.mark.parametrize("value", ["not-an-ip", "999.1.1.1", "10.0.0", "", "hub.campus.edu"])
def test_hub_addresses_must_be_ip_addresses(key, value):
    assert problems({"hub": {key: value}}) == [
        f"hub.{key}: {value!r} is not an IP address: give one such as 127.0.0.1 or 10.0.0.5 "
        "(0.0.0.0 listens on every interface)"
    ]


@pytest.mark.parametrize("value", ["127.0.0.1", "localhost", "::1", "0.0.0.0", "10.0.0.5", "::"])
def test_hub_api_addresses_that_are_addresses_pass(value):
    assert parse_site({"hub": {"hub_ip": value}}).hub.hub_ip == value


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"hub": {"prot": 8000}}, "hub.prot: extra inputs are not permitted; did you mean 'port'?"),
        ({"spawnr": {}}, "spawnr: extra inputs are not permitted; did you mean 'spawner'?"),
        (
            {"spawner": {"backend": "slurm", "slurm": {"partition": "gpu", "cpu": 2}}},
            "spawner.slurm.cpu: extra inputs are not permitted; did you mean 'cpus'?",
        ),
        (
            {
                "spawner": {"backend": "slurm", "slurm": {"partition": "gpu"}},
                "profiles": [{"slug": "a", "display_name": "A", "resorces": {}}],
            },
            "profiles[0].resorces: extra inputs are not permitted; did you mean 'resources'?",
        ),
        ({"hub": {"colour": "blue"}}, "hub.colour: extra inputs are not permitted"),
    ],
)
def test_a_misspelt_key_names_the_nearest_valid_one(data, problem):
    assert problems(data) == [problem]


def test_an_ipv6_hub_address_is_bracketed_in_urls(tmp_path):
    site = parse_site({"hub": {"ip": "::1", "state_dir": str(tmp_path)}})
    assert hub_config(site).JupyterHub.bind_url == "http://[::1]:8000/"
    assert public_url(site) == "http://[::1]:8000/"


def test_a_generated_secret_opened_to_others_is_refused_before_the_start(tmp_path):
    hub_config(parse_site({"hub": {"state_dir": str(tmp_path)}}))
    (tmp_path / "proxy_auth_token").chmod(0o644)
    with pytest.raises(SiteError, match=r"proxy_auth_token is readable by others: chmod 600 it"):
        check_site(parse_site({"hub": {"state_dir": str(tmp_path)}}))
