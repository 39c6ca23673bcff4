"""Profiles: who is granted what, and how user_options become one typed request."""

from __future__ import annotations

import pytest

from campushub.gpus import parse_nodes
from campushub.profiles import (
    Profile,
    ProfileError,
    duration_words,
    granted_profiles,
    hours_minutes,
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
    assert "1 CPU · 4G memory · 1 GPU (a100) · 1 h to 12 h" in html
    assert "2 CPU · 4G memory · up to 8 h" in html  # time in hours and minutes, not 08:00:00


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


def test_time_is_shown_in_hours_and_minutes():
    assert hours_minutes("08:00:00") == "8 h"
    assert hours_minutes("01:30:00") == "1 h 30 min"
    assert hours_minutes("00:45:00") == "45 min"
    assert hours_minutes("1-02:00:00") == "26 h"
    assert duration_words(20) == "1 min"


def four_gpus(in_use=0):
    """The test cluster: one node of 4 GPUs, as scontrol reports it."""
    alloc = f",gres/gpu={in_use}" if in_use else ""
    return parse_nodes(
        f"NodeName=vm Arch=x86_64 Gres=gpu:4 State=MIXED Partitions=gpu AllocTRES=cpu=1,mem=1G{alloc}\n", "gpu"
    )


def test_the_form_offers_only_what_a_node_can_run_and_says_what_is_free():
    eight = Profile(slug="gpu-8", display_name="Eight GPUs", everyone=True, resources={"gpus": 8})
    wide = Profile(
        slug="gpu-wide",
        display_name="Wide",
        everyone=True,
        resources={"gpus": 2},
        choices={"gpus": {"min": 1, "max": 8}},
    )
    html = options_form([CPU, eight, wide, MULTI], DEFAULTS, clusters={"gpu": four_gpus(in_use=1)})
    assert 'value="gpu-8"' not in html
    assert "Eight GPUs is not offered: the largest node has 4 GPUs." in html
    assert 'name="gpus-gpu-wide" min="1" max="4" value="2"' in html
    assert "1-4 GPUs" in html and "1-8 GPUs" not in html
    assert html.count("3 of 4 GPUs free now") == 2
    assert "all 4 GPUs in use now" in options_form([wide], DEFAULTS, clusters={"gpu": four_gpus(in_use=4)})


def test_the_form_preselects_the_last_choice_and_shows_what_went_wrong_next_to_it():
    last = {"profile": "gpu-multi", "gpus": "3"}
    html = options_form([CPU, MULTI], DEFAULTS, last=last, problem="Slurm refused <it>")
    assert 'value="gpu-multi" checked' in html and 'value="cpu" checked' not in html
    assert 'name="gpus-gpu-multi" min="1" max="4" value="3"' in html
    card = html.split('data-profile="gpu-multi"')[1]
    assert "Slurm refused &lt;it&gt;" in card
    # a last choice out of bounds now falls back to the profile's default
    assert 'value="2"' in options_form([MULTI], DEFAULTS, last={"profile": "gpu-multi", "gpus": 9})


def test_form_fields_of_the_chosen_profile_only():
    form = {"profile": ["gpu-1"], "hours-gpu-1": ["5"], "gpus-gpu-multi": ["4"]}
    assert options_from_form(form) == {"profile": "gpu-1", "hours": "5"}
