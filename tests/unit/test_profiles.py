"""Profiles: who is granted what, and how user_options become one typed request."""

from __future__ import annotations

import pytest

from campushub.profiles import (
    Profile,
    ProfileError,
    granted_profiles,
    options_form,
    options_from_form,
    resolve_request,
)
from campushub.site import SlurmSettings

DEFAULTS = SlurmSettings(partition="gpu", cpus=1, memory="4G", walltime="08:00:00")
CPU = Profile(slug="cpu", display_name="CPU", everyone=True, default=True, resources={"cpus": 2})
GPU = Profile(
    slug="gpu-1",
    display_name="One GPU <fast>",
    description="A100 & friends",
    groups=["researchers"],
    resources={"gpus": 1, "gpu_type": "a100", "walltime": "04:00:00", "partition": "a100"},
    choices={"hours": {"min": 1, "max": 12}},
)
MULTI = Profile(
    slug="gpu-multi",
    display_name="Several GPUs",
    resources={"gpus": 2},
    choices={"gpus": {"min": 1, "max": 4}},
)
ALL = [CPU, GPU, MULTI]


def granted(groups=None, admin=False):
    return granted_profiles(ALL, admin=admin, groups=groups or {})


def resolve(options, groups=None, admin=False):
    return resolve_request(options, profiles=ALL, granted=granted(groups, admin), defaults=DEFAULTS)


def test_grants_by_everyone_group_property_and_admin():
    assert [p.slug for p in granted()] == ["cpu"]
    assert [p.slug for p in granted({"researchers": {}})] == ["cpu", "gpu-1"]
    assert [p.slug for p in granted({"course-ml101": {"campushub_profiles": ["gpu-multi"]}})] == ["cpu", "gpu-multi"]
    assert [p.slug for p in granted({"odd": {"campushub_profiles": "gpu-multi"}})] == ["cpu"]
    assert [p.slug for p in granted(admin=True)] == ["cpu", "gpu-1", "gpu-multi"]


def test_no_options_give_the_default_profile():
    r = resolve({})
    assert (r.profile, r.partition, r.cpus, r.memory, r.gpus, r.walltime) == ("cpu", "gpu", 2, "4G", 0, "08:00:00")
    assert r.gres is None


def test_a_granted_profile_with_choices():
    r = resolve({"profile": "gpu-1", "hours": 6}, groups={"researchers": {}})
    assert (r.partition, r.gpus, r.gres, r.walltime) == ("a100", 1, "gpu:a100:1", "06:00:00")
    r = resolve({"profile": "gpu-multi", "gpus": "3"}, admin=True)
    assert r.gres == "gpu:3"


@pytest.mark.parametrize(
    "options, starts",
    [
        ({"profile": "gpu-multi"}, "profile: 'gpu-multi' is not granted to you"),
        ({"profile": "nope"}, "profile: there is no profile 'nope'"),
        ({"profile": "cpu; rm -rf ~"}, "profile: there is no profile"),
        ({"profile": ["cpu"]}, "profile: there is no profile"),
        ({"cpus": 64}, "unknown option 'cpus'"),
        ({"partition": "debug"}, "unknown option 'partition'"),
        ({"gpus": 1}, "gpus: the profile 'cpu' does not let you choose gpus"),
        ({"profile": "gpu-1", "hours": 13}, "hours: must be from 1 to 12"),
        ({"profile": "gpu-1", "hours": 0}, "hours: must be from 1 to 12"),
        ({"profile": "gpu-1", "hours": "4\n#SBATCH --uid=0"}, "hours: must be a whole number"),
        ({"profile": "gpu-1", "hours": "$(id)"}, "hours: must be a whole number"),
        ({"profile": "gpu-1", "hours": True}, "hours: must be a whole number"),
        ({"profile": "gpu-1", "hours": 4.5}, "hours: must be a whole number"),
        ({"profile": "gpu-1", "hours": " 4"}, "hours: must be a whole number"),
    ],
)
def test_bad_options_name_the_field(options, starts):
    with pytest.raises(ProfileError) as e:
        resolve(options, groups={"researchers": {}})
    assert str(e.value).startswith(starts), str(e.value)


def test_options_must_be_an_object():
    with pytest.raises(ProfileError, match="must be an object"):
        resolve(["cpu"])


def test_nothing_granted():
    with pytest.raises(ProfileError, match="no profile is granted to you"):
        resolve_request({}, profiles=[GPU], granted=[], defaults=DEFAULTS)


def test_the_form_lists_granted_profiles_escaped_with_their_choices():
    html = options_form(granted({"researchers": {}}), DEFAULTS, notice="Your last server stopped: <time>")
    assert 'value="cpu" checked' in html and 'value="gpu-1"' in html and "gpu-multi" not in html
    assert "One GPU &lt;fast&gt;" in html and "A100 &amp; friends" in html and "&lt;time&gt;" in html
    assert 'name="hours-gpu-1" min="1" max="12" value="4"' in html
    assert "1 CPU · 4G memory · 1 GPU (a100) · 1-12 h" in html


def test_a_site_can_replace_the_form_template():
    from jinja2 import DictLoader, Environment

    env = Environment(
        loader=DictLoader({"campushub-spawn-form.html": "{% for p in profiles %}[{{ p.slug }}]{% endfor %}"})
    )
    assert options_form(granted({"researchers": {}}), DEFAULTS, env=env) == "[cpu][gpu-1]"
    # a hub whose template folders hold no form of their own uses CampusHub's
    assert 'value="gpu-1"' in options_form(
        granted({"researchers": {}}), DEFAULTS, env=Environment(loader=DictLoader({}))
    )


def test_form_fields_of_the_chosen_profile_only():
    form = {"profile": ["gpu-1"], "hours-gpu-1": ["5"], "gpus-gpu-multi": ["4"]}
    assert options_from_form(form) == {"profile": "gpu-1", "hours": "5"}
