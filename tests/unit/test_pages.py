"""The hub's page templates (campushub/templates), rendered through JupyterHub's own loader as the hub
builds it: JupyterHub's templates under "templates/", CampusHub's before them, autoescaped."""

from __future__ import annotations

import html
from pathlib import Path

import jupyterhub
import pytest
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader

from campushub.hubconfig import HUB_TEMPLATES, page_vars
from campushub.site import SiteError, parse_site

JUPYTERHUB_TEMPLATES = Path(jupyterhub.__file__).parents[4] / "share" / "jupyterhub" / "templates"


def hub_env(*site_templates: Path) -> Environment:
    paths = [str(p) for p in (*site_templates, HUB_TEMPLATES, JUPYTERHUB_TEMPLATES)]
    loader = ChoiceLoader(
        [PrefixLoader({"templates": FileSystemLoader([str(JUPYTERHUB_TEMPLATES)])}, "/"), FileSystemLoader(paths)]
    )
    return Environment(loader=loader, autoescape=True)


def render(name: str, site: dict | None = None, env: Environment | None = None, **ns) -> str:
    base = dict(
        base_url="/hub/", prefix="/", user=None, login_url="/hub/login", logout_url="/hub/logout",
        static_url=lambda path, **kw: f"/hub/static/{path}", version_hash="", services=[], parsed_scopes={},
        expanded_scopes=set(), xsrf="x", login_service="your campus account", authenticator_login_url="/hub/oauth_login",
        campushub=page_vars(parse_site(site or {})),
    )  # fmt: skip
    return (env or hub_env()).get_template(name).render(**base, **ns)


SITE = {
    "branding": {
        "name": "Campus <AI> Hub",
        "description": "For researchers & students",
        "support": "help@campus.example",
    }
}


def test_the_login_page_names_the_service_escaped():
    page = render("login.html", SITE)
    assert "<title>Campus &lt;AI&gt; Hub</title>" in page
    assert "<h1>Campus &lt;AI&gt; Hub</h1>" in page and "For researchers &amp; students" in page
    assert '<a href="mailto:help@campus.example">help@campus.example</a>' in page
    assert "Sign in with your campus account" in page


def test_the_defaults_say_campushub():
    page = render("login.html")
    assert "<title>CampusHub</title>" in page and "JupyterHub logo" not in page
    assert "mailto:" not in page


def test_a_refused_login_states_its_message_once_with_help_and_another_account():
    message = "chub-eve may not use Campus <AI> Hub: it is open to members of these groups: researchers."
    page = render("error.html", SITE, status_code=403, status_message=message, message=message)
    assert page.count("may not use") == 1
    assert "403 :" not in page and "You cannot use Campus &lt;AI&gt; Hub with this account" in page
    assert html.escape(message, quote=False) in page.replace("&#39;", "'")
    assert 'href="/hub/logout">Sign in with another account' in page
    assert "mailto:help@campus.example" in page


def test_a_site_template_replaces_a_page_and_may_extend_jupyterhubs(tmp_path):
    (tmp_path / "login.html").write_text('{% extends "templates/login.html" %}{% block title %}Ours{% endblock %}')
    page = render("login.html", SITE, env=hub_env(tmp_path))
    assert "<title>Ours</title>" in page


@pytest.mark.parametrize(
    "branding, problem",
    [
        ({"support": "not a contact"}, "branding.support: string should match pattern"),
        ({"timezone": "Mars/Olympus"}, "branding.timezone: 'Mars/Olympus' is not a time zone name"),
        ({"name": ""}, "branding.name: string should have at least 1 character"),
    ],
)
def test_bad_branding_is_refused_naming_the_key(branding, problem):
    with pytest.raises(SiteError) as e:
        parse_site({"branding": branding})
    assert e.value.problems[0].startswith(problem), e.value.problems
