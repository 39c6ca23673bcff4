"""`campushub course plan | apply | retire FILE`: a course manifest against a running hub."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from . import CourseError

SCOPES_APPLY = "admin:users admin:groups"
SCOPES_RETIRE = "admin:users admin:groups admin:servers"

EPILOG = f"""\
The hub: --url, else the site file's hub API (http://hub_ip:hub_port/hub/api). The token: --token-file,
else $JUPYTERHUB_API_TOKEN. Least scopes: plan and apply need {SCOPES_APPLY}; retire needs
{SCOPES_RETIRE}. An admin makes such a token with
  curl -H "Authorization: token $ADMIN_TOKEN" -d '{{"scopes": ["admin:users", "admin:groups"], "expires_in": 3600}}' \\
       http://127.0.0.1:8081/hub/api/users/ADMIN/tokens
apply and retire run as root on the hub host (unix groups, shared folders, the staff roles file in the
state folder). Everything takes effect at once, with no hub restart: a new course's staff role too (the
hub loads the roles file when apply asks it to). See docs/courses.md.
"""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """The epilog as written (its command lines); the description wrapped like the rest."""

    def _fill_text(self, text, width, indent):
        if text is EPILOG:
            return super()._fill_text(text, width, indent)
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def context(args):
    from ..hubconfig import listen_url
    from ..profiles import site_profiles
    from ..site import load_site
    from .hubapi import Hub
    from .manifest import load_course

    site = load_site(args.config or os.environ.get("CAMPUSHUB_CONFIG") or None)
    profiles = [p.slug for p in site_profiles(site.profiles)] if site.source else None
    course = load_course(args.file, profiles)
    if args.url:
        url = args.url
    else:
        ip = "127.0.0.1" if site.hub.hub_ip in ("0.0.0.0", "::", "") else site.hub.hub_ip
        url = f"{listen_url(ip, site.hub.hub_port)}{site.hub.base_url}hub/api"
    return site, course, Hub(url, read_token(args))


def read_token(args) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise CourseError(f"{args.token_file}: cannot read the token: {e.strerror}") from None
    else:
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "").strip()
    if not token:
        raise CourseError(f"no hub token: give --token-file FILE or set JUPYTERHUB_API_TOKEN (scopes: {SCOPES_APPLY})")
    return token


def needs_root(course, what: str) -> None:
    if course.manifest.folders is not None and os.geteuid() != 0:
        raise CourseError(f"{what} creates unix groups and the course's folders: run it as root on the hub host")


def cmd_plan(args) -> int:
    from .plan import check_accounts, diff, read_state, render, slurm_accounting

    site, course, hub = context(args)
    check_accounts(course)
    accounting = slurm_accounting(course)
    steps = diff(course, read_state(hub, course, site.hub.state_dir, accounting), site.hub.state_dir, accounting)
    print(render(course, steps, hub.url))
    return 0


def cmd_apply(args) -> int:
    from .plan import apply, check_accounts, diff, read_state, render, slurm_accounting

    site, course, hub = context(args)
    check_accounts(course)
    needs_root(course, "apply")
    accounting = slurm_accounting(course)
    steps = diff(course, read_state(hub, course, site.hub.state_dir, accounting), site.hub.state_dir, accounting)
    changes = [s for s in steps if not s.note]
    if not changes:
        print(render(course, steps, hub.url))
        return 0
    done = apply(hub, steps, say)
    # a second look: what apply did is now the hub's state
    after = diff(course, read_state(hub, course, site.hub.state_dir, accounting), site.hub.state_dir, accounting)
    after = [s for s in after if not s.note and "without a unix account yet" not in s.text]
    print(f"course {course.id}: applied {len(done)} change(s)")
    for line in done:
        print(f"  + {line}")
    for s in steps:
        if s.note:
            print(f"  = {s.area}: {s.text}")
    if after:
        raise CourseError("after apply the hub still differs: " + "; ".join(s.text for s in after))
    return 0


def cmd_retire(args) -> int:
    from .retire import retire

    site, course, hub = context(args)
    if args.yes:
        needs_root(course, "retire")
    archive_dir = Path(args.archive_dir or Path(args.file).resolve().parent / "archive").resolve()
    for line in retire(course, hub, site.hub.state_dir, archive_dir, yes=args.yes,
                       purge_homes=args.purge_homes, say=say):  # fmt: skip
        print(line)
    return 0


def add_parser(commands, site_option, func) -> None:
    course = commands.add_parser(
        "course",
        help="semester courses: plan, apply and retire a course manifest",
        description="A course manifest (YAML) and its roster (CSV) become hub users, the groups "
        "course-<id>-students and course-<id>-staff, a staff role over the course's students, profile grants "
        "and shared folders. Every command is safe to re-run.",
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    actions = course.add_subparsers(dest="course_command", metavar="SUBCOMMAND", required=True)

    def common(p, handler):
        p.set_defaults(func=func, course_func=handler)
        p.add_argument("file", metavar="FILE", help="the course manifest (YAML)")
        site_option(p)
        p.add_argument("--url", help="the hub API, e.g. http://127.0.0.1:8081/hub/api (default: the site file's)")
        p.add_argument("--token-file", metavar="FILE", help="file holding a hub token (default: $JUPYTERHUB_API_TOKEN)")

    plan = actions.add_parser(
        "plan",
        help="print what apply would change (changes nothing)",
        description="Compare the manifest and roster with the hub (users, group memberships, the staff role, "
        "profile grants, folders) and print each difference. Every problem of the manifest or the roster is "
        "listed with its line.",
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    common(plan, cmd_plan)
    apply = actions.add_parser(
        "apply",
        help="make the hub match the manifest (a second run changes nothing)",
        description="Create missing users and groups, set memberships (a student dropped from the roster "
        "leaves the course's groups; their account and home stay), grant the profiles, write the staff role, "
        "create the unix groups and folders. Progress goes to stderr. An interrupted apply converges when "
        "run again.",
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    common(apply, cmd_apply)
    retire = actions.add_parser(
        "retire",
        help="end the course: archive, then remove (a dry run unless --yes)",
        description="Stop the students' servers, archive the course folder (materials and every student's "
        "exchange folder) with sha256 checksums and verify it, then remove the staff role, the grants and "
        "the groups, and the folder; write a report next to the archive. Accounts and homes stay.",
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    common(retire, cmd_retire)
    retire.add_argument("--yes", action="store_true", help="retire for real (without it: print the steps only)")
    retire.add_argument("--archive-dir", metavar="DIR", help="where the archive and report go [archive/ beside FILE]")
    retire.add_argument(
        "--purge-homes", action="store_true",
        help="also delete the homes of students in no other course, after the archive is verified",
    )  # fmt: skip


def run_command(args) -> int:
    return args.course_func(args)
