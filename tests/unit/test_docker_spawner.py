"""The Docker backend's site settings, its validation of user_options, and its GPU and mount rules."""

from __future__ import annotations

import pytest

from campushub.hubconfig import extra_config_problems, hub_config
from campushub.profiles import Profile, ProfileError
from campushub.site import SiteError, parse_site
from campushub.spawners.docker import (
    exposes_engine,
    free_gpus,
    gpu_environment,
    memory_bytes,
    resolve_container_request,
)

IMAGES = ["registry.campus.edu/lab:1", "registry.campus.edu/lab-gpu:1"]


def site(docker=None, **extra):
    data = {"spawner": {"backend": "docker", "docker": {"images": IMAGES, **(docker or {})}}, **extra}
    return parse_site(data)


def problems(data) -> list[str]:
    with pytest.raises(SiteError) as e:
        parse_site(data)
    return e.value.problems


def docker_problems(docker=None, **extra) -> list[str]:
    return problems({"spawner": {"backend": "docker", "docker": {"images": IMAGES, **(docker or {})}}, **extra})


def test_docker_settings_defaults():
    d = site().spawner.docker
    assert d.url == "unix:///var/run/docker.sock"
    assert d.image == IMAGES[0] and d.gpus == [] and d.homes == "volume"
    assert site({"default_image": IMAGES[1]}).spawner.docker.image == IMAGES[1]


def test_the_docker_backend_needs_its_settings():
    assert problems({"spawner": {"backend": "docker"}}) == [
        "spawner: spawner.docker is required when spawner.backend is docker"
    ]


def test_bad_docker_settings_name_their_key():
    assert docker_problems({"url": "http//docker"})[0].startswith(
        "spawner.docker.url: 'http//docker' is not a Docker API address: give unix:///var/run/docker.sock"
    )
    assert docker_problems({"images": []})[0].startswith("spawner.docker.images: list should have at least 1")
    assert docker_problems({"images": ["Not An Image"]})[0].startswith("spawner.docker.images[0]:")
    assert docker_problems({"default_image": "other:1"}) == [
        "spawner.docker: default_image: 'other:1' is not one of images"
    ]
    assert docker_problems({"gpus": ["/dev/nvidia0", "/dev/nvidia0"]}) == [
        "spawner.docker: gpus: listed more than once: /dev/nvidia0"
    ]
    assert docker_problems({"gpus": ["nvidia0"]})[0].startswith("spawner.docker.gpus[0]:")
    assert docker_problems({"homes": "nfs"})[0].startswith("spawner.docker.homes:")
    assert docker_problems({"home_volume": "home"})[0].startswith("spawner.docker.home_volume:")
    assert docker_problems({"memory": "lots"})[0].startswith("spawner.docker.memory:")
    assert docker_problems({"cpus": 0})[0].startswith("spawner.docker.cpus:")
    assert docker_problems({"ulimits": {"nofile": -2}})[0].startswith("spawner.docker.ulimits.nofile:")
    assert docker_problems({"ulimits": {"stack": 1}})[0].startswith("spawner.docker.ulimits.stack: extra inputs")
    assert docker_problems({"pull_policy": "sometimes"})[0].startswith("spawner.docker.pull_policy:")
    assert docker_problems({"socket": "x"})[0].startswith("spawner.docker.socket: extra inputs are not permitted")


def test_bound_homes_need_a_campus_login():
    assert docker_problems({"homes": "bind"}) == [
        "spawner.docker.homes: bind mounts users' unix homes, which needs a campus login (oidc or github), "
        "not shared-password"
    ]


def test_profiles_on_docker_name_allowed_images_and_no_slurm_keys():
    profile = {"slug": "p", "display_name": "P", "everyone": True}
    ok = site(profiles=[{**profile, "resources": {"image": IMAGES[1], "cpus": 2, "memory": "4G"}}])
    assert ok.profiles[0].resources.image == IMAGES[1]
    found = docker_problems(
        {"gpus": ["/dev/nvidia0"]},
        profiles=[
            {**profile, "resources": {"image": "other:1", "partition": "gpu", "gpus": 2}, "choices": {"hours": {"min": 1, "max": 2}}}
        ],
    )  # fmt: skip
    assert found == [
        "profiles[0].resources.image: 'other:1' is not one of spawner.docker.images; profiles[0].resources.partition: "
        "is for Slurm; spawner.backend is docker; profiles[0].choices.hours: is for Slurm; spawner.backend is docker; "
        "profiles[0].resources.gpus: asks for up to 2 GPUs; spawner.docker.gpus lists 1"
    ]
    slurm = {"backend": "slurm", "slurm": {"partition": "gpu"}}
    assert problems(
        {"auth": {"kind": "github", "github": {"client_id": "x", "client_secret_file": "/s", "allowed_users": ["a"]}},
         "spawner": slurm, "profiles": [{**profile, "resources": {"image": IMAGES[0]}}]}
    ) == ["profiles[0].resources.image: needs spawner.docker (its images)"]  # fmt: skip


def test_docker_spawner_settings_that_the_site_file_models_are_refused_in_extra_config():
    assert extra_config_problems({"DockerSpawner": {"image": "x", "extra_host_config": {}, "debug": True}}) == [
        "DockerSpawner.image: the site file sets it: spawner.docker.images (and default_image)",
        "DockerSpawner.extra_host_config: the site file sets it: spawner.docker (gpus, runtime, ulimits); "
        "the security settings are CampusHub's",
    ]


def test_the_hub_config_uses_campushubs_docker_spawner(tmp_path):
    s = site(hub={"state_dir": str(tmp_path / "state")})
    c = hub_config(s)
    assert c.JupyterHub.spawner_class.__module__ == "campushub.spawners.docker"
    assert c.DockerSpawner.settings == s.spawner.docker
    assert c.DockerSpawner.cmd == ["jupyterhub-singleuser"]


PROFILES = [
    Profile(slug="cpu", display_name="CPU", everyone=True, default=True, resources={"cpus": 2, "memory": "4G"}),
    Profile(slug="gpu", display_name="GPU", everyone=True, resources={"gpus": 1, "image": IMAGES[1]}),
]


def request(options):
    settings = site({"gpus": ["/dev/nvidia0"]}).spawner.docker
    return resolve_container_request(options, settings=settings, profiles=PROFILES, granted=PROFILES)


def test_user_options_become_a_typed_container_request():
    r = request({})
    assert (r.profile, r.image, r.cpus, r.memory, r.gpus) == ("cpu", IMAGES[0], 2.0, "4G", 0)
    r = request({"profile": "gpu"})
    assert (r.image, r.cpus, r.memory, r.gpus) == (IMAGES[1], 1.0, "2G", 1)
    assert request({"profile": "cpu", "image": IMAGES[1]}).image == IMAGES[1]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"image": "evil.example/miner:latest"}, "image: 'evil.example/miner:latest' is not one of the site's images"),
        ({"image": ["x"]}, "image: ['x'] is not one of the site's images"),
        ({"profile": "gpu", "gpus": 2}, "gpus: the profile 'gpu' does not let you choose gpus"),
        ({"mem_limit": "64G"}, "unknown option 'mem_limit': the options are profile, gpus, hours, image"),
        ({"profile": "nope"}, "profile: there is no profile 'nope'"),
    ],
)
def test_bad_user_options_are_refused_naming_the_field(options, message):
    with pytest.raises(ProfileError) as e:
        request(options)
    assert str(e.value).startswith(message)


def test_gpus_are_taken_from_the_pool_and_named_to_cuda():
    assert free_gpus(["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2"], {"/dev/nvidia1"}) == [
        "/dev/nvidia0",
        "/dev/nvidia2",
    ]
    env = gpu_environment(["/dev/nvidia2", "/dev/nvidia3"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "2,3" and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert gpu_environment([])["CUDA_VISIBLE_DEVICES"] == ""


def test_memory_sizes_and_the_engine_socket():
    assert memory_bytes("512M") == 512 * 2**20 and memory_bytes("2T") == 2 * 2**40 and memory_bytes("100") == 100
    assert exposes_engine("/var/run/docker.sock", "unix:///var/run/docker.sock")
    assert exposes_engine("/run/podman", "unix:///run/podman/podman.sock")
    assert exposes_engine("/srv/x/docker.sock", "tcp://10.0.0.1:2376")
    assert not exposes_engine("/home/ada", "unix:///var/run/docker.sock")


def spawner(docker=None, user="ada"):
    from types import SimpleNamespace

    from traitlets.config import Config

    from campushub.spawners.docker import DockerSpawner

    c = Config()
    c.DockerSpawner.settings = site({"gpus": ["/dev/nvidia0", "/dev/nvidia1"], **(docker or {})}).spawner.docker
    c.DockerSpawner.profiles = list(PROFILES)
    who = SimpleNamespace(name=user, url=f"/user/{user}/", escaped_name=user, admin=False, groups=[])
    return DockerSpawner(config=c, user=who)


def test_every_container_is_unprivileged_and_gets_only_its_own_gpus():
    s = spawner({"gpu_support_devices": ["/dev/nvidiactl"], "runtime": "runc", "ulimits": {"nofile": 1024}})
    config = s.host_config()
    assert config["cap_drop"] == ["ALL"] and config["security_opt"] == ["no-new-privileges"]
    assert config["privileged"] is False and config["auto_remove"] is False
    assert config["devices"] == [] and config["runtime"] == "runc"
    assert config["ulimits"] == [{"name": "nofile", "soft": 1024, "hard": 1024}]
    s.gpu_devices = ["/dev/nvidia1"]
    assert s.host_config()["devices"] == ["/dev/nvidia1:/dev/nvidia1:rwm", "/dev/nvidiactl:/dev/nvidiactl:rwm"]


def test_the_spawners_state_keeps_its_gpus():
    s = spawner()
    s.gpu_devices = ["/dev/nvidia1"]
    state = s.get_state()
    assert state["gpu_devices"] == ["/dev/nvidia1"]
    again = spawner()
    again.load_state(state)
    assert again.gpu_devices == ["/dev/nvidia1"]
    again.clear_state()
    assert again.gpu_devices == [] and "gpu_devices" not in again.get_state()


def test_a_users_volume_name():
    assert spawner().volume_name() == "campushub-home-ada"
    assert spawner(user="ada-l").volume_name() == "campushub-home-ada-2dl"


async def test_progress_shows_each_phase_once():
    s = spawner()
    events = s.progress()
    s.phase = "Preparing your container"
    assert await anext(events) == {"message": "Preparing your container"}
    s.phase = "Your container runs: starting JupyterLab"
    assert await anext(events) == {"message": "Your container runs: starting JupyterLab"}
    await events.aclose()
