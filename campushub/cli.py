"""The `campushub` command."""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import __version__
from .hubconfig import check_site, hub_config, listen_url, public_url
from .proxy import ProxyNotFound, connectable, find_proxy, proxy_command
from .site import Site, SiteError, load_site, site_schema
from .state import StateDir

# Seconds the users' address may take to answer at all, once the hub answers
PROXY_WAIT = 15
# Seconds the hub's services may take to start, once the hub answers
SERVICES_WAIT = 90


class CommandError(Exception):
    """A failure the CLI reports in one message (exit 2)."""


def site_from(args) -> Site:
    return load_site(args.config or os.environ.get("CAMPUSHUB_CONFIG") or None)


# --- config ---------------------------------------------------------------------------------


def cmd_config_check(args) -> int:
    site = load_site(args.file)
    check_site(site)
    empty = "empty: the demo defaults apply; " if not site.model_fields_set - {"source"} else ""
    print(f"OK: {site.source} ({empty}spawner backend: {site.spawner.backend}, login: {site.auth.kind})")
    for name, settings in site.hub.extra_config.items():
        for key, value in settings.items():
            print(f"  extra JupyterHub setting (hub.extra_config): {name}.{key} = {value!r}")
    return 0


def cmd_config_schema(args) -> int:
    print(json.dumps(site_schema(), indent=2))
    return 0


# --- proxy and hub --------------------------------------------------------------------------


def cmd_proxy(args) -> int:
    site = site_from(args)
    check_addresses_free(site, hub=False)
    state = StateDir(site.hub.state_dir).ensure()
    argv, env = proxy_command(site, state)
    env = dict(os.environ, **env)
    sys.stdout.flush()
    os.execve(argv[0], argv, env)


def cmd_hub(args) -> int:
    site = site_from(args)  # a bad site file stops here, with every problem listed
    hub_config(site)  # and so does what only its files can tell (secret files), before anything is created
    from .database import LOCK_FILE, lock_holder, take_hub_lock

    state = StateDir(site.hub.state_dir)
    # held while the hub lives (the kernel drops it when the process ends): `campushub db upgrade` and
    # `campushub restore` refuse while it is held, and a second hub on this state folder does not start
    if take_hub_lock(state) is None:
        raise CommandError(
            f"process {lock_holder(state)} holds {state.path / LOCK_FILE}: a hub, a database upgrade or a "
            "restore runs on this state folder already"
        )
    from .database import schema_problem

    problem = schema_problem(site, state)
    if problem:
        raise CommandError(problem)
    if site.source:
        os.environ["CAMPUSHUB_CONFIG"] = str(site.source)
    else:
        os.environ.pop("CAMPUSHUB_CONFIG", None)
    argv = ["--config", str(Path(__file__).with_name("jupyterhub_config.py"))]
    if args.cleanup_servers:
        argv.append("--JupyterHub.cleanup_servers=True")
    if args.debug:
        argv.append("--debug")
    from jupyterhub.app import main as jupyterhub_main

    # JupyterHub handles SIGTERM and SIGINT only once it has started: stopped before, it would leave the
    # services it started running. Until its own handlers replace these, a stop ends them with it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_while_starting)
    jupyterhub_main(argv)
    return 0


def _stop_while_starting(signum, frame):
    for child in child_processes(os.getpid()):
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass
    os._exit(128 + signum)


def child_processes(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


# --- up -------------------------------------------------------------------------------------


class Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise Stop()


def http_address(ip: str, port: int) -> str:
    return listen_url(connectable(ip), port)


def hub_api_answer(address: str, site: Site) -> tuple[int, str, str] | None:
    """(status, Server header, body) of GET <address><base_url>hub/api/, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{address}{site.hub.base_url}hub/api/", timeout=2) as r:
            return r.status, r.headers.get("Server", ""), r.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Server", ""), ""
    except (OSError, http.client.HTTPException):
        return None


def services_up(address: str, site: Site) -> bool:
    """Whether the hub has started its services: the proxy routes to the nightly-notebooks service once it
    answers (the hub registers its signal handlers after its services, so it stops cleanly only from then)."""
    if not site.scheduler.enabled:
        return True
    try:
        with urllib.request.urlopen(f"{address}{site.hub.base_url}services/scheduler/api/health", timeout=2) as r:
            return r.status == 200
    except (OSError, http.client.HTTPException):
        return False


def check_addresses_free(site: Site, hub: bool = True) -> None:
    """Refuse to start when another program listens where the proxy (or the hub) must: the proxy would
    only log it and go on, and users would reach that program."""
    addresses = [
        (site.hub.ip, site.hub.port, "hub.port", "where users reach CampusHub"),
        ("127.0.0.1", site.proxy.api_port, "proxy.api_port", "the proxy's API"),
    ]
    if hub:
        addresses.insert(1, (site.hub.hub_ip, site.hub.hub_port, "hub.hub_port", "the hub's API"))
        if site.scheduler.enabled:
            addresses.append(("127.0.0.1", site.scheduler.port, "scheduler.port", "the nightly-notebooks service"))
    problems = []
    for ip, port, key, what in addresses:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy and the hub bind
            try:
                s.bind((ip, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    problems.append(
                        f"{http_address(ip, port)} ({what}) is in use by another program: "
                        f"stop it, or choose another {key} in a site file"
                    )
                else:
                    problems.append(f"cannot listen on {http_address(ip, port)} ({what}): {e.strerror}")
    if problems:
        raise CommandError("\n  ".join(["CampusHub cannot start:", *problems]))


def not_campushub(address: str, answer: tuple[int, str, str] | None) -> str:
    if answer is None:
        return f"nothing answers at {address}: the proxy does not listen there (see its messages above)"
    status, server, _ = answer
    who = f"HTTP {status}" + (f", server {server}" if server else "")
    return (
        f"{address} answers as another program ({who}), not as CampusHub: "
        "stop that program, or choose another hub.port in a site file"
    )


def stop_child(proc: subprocess.Popen, name: str, timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"campushub: the {name} did not stop within {timeout:.0f} s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def cmd_up(args) -> int:
    site = site_from(args)
    check_site(site)
    find_proxy(site.proxy.kind)
    check_addresses_free(site)
    state = StateDir(site.hub.state_dir).ensure()
    common = ["--config", str(site.source)] if site.source else []
    me = [sys.executable, "-m", "campushub"]
    url = public_url(site)

    homes = ", users' files in homes/" if site.spawner.backend == "local" else ""
    print(f"CampusHub {__version__}: starting at {url}")
    print(f"  state folder (database, secrets{homes}): {state.path}")
    print("  the hub and the proxy log to this terminal")
    if site.auth.kind == "shared-password":
        password, created = state.demo_password()
        if created:
            print(f"  log in with any user name and this password (shown once): {password}")
        else:
            print(f"  log in with any user name and the password in {state.path / 'demo_password'}")
        if site.auth.admin_users:
            state.demo_admin_password()
            print(f"  admins ({', '.join(site.auth.admin_users)}) log in with the password in "
                  f"{state.path / 'demo_admin_password'}")  # fmt: skip
    if site.scheduler.enabled:
        from .scheduler.demo import DEMO_OWNER

        print(f"  nightly notebooks: {url.rstrip('/')}/services/scheduler/", end="")
        print(
            f" (log in as {DEMO_OWNER} to see the example schedule's runs)"
            if site.auth.kind == "shared-password"
            else ""
        )
    sys.stdout.flush()

    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    # Own sessions: Ctrl-C reaches only this process, which then stops the hub (and with it every
    # server) before the proxy.
    proxy = subprocess.Popen([*me, "proxy", *common], start_new_session=True)
    hub = subprocess.Popen([*me, "hub", "--cleanup-servers", *common], start_new_session=True)
    hub_address = http_address(site.hub.hub_ip, site.hub.hub_port)
    users_address = http_address(site.hub.ip, site.hub.port)
    ready = False
    hub_up_since = None
    code = 0
    try:
        while True:
            for proc, name in ((proxy, "proxy"), (hub, "hub")):
                if proc.poll() is not None:
                    print(f"campushub: the {name} exited (status {proc.returncode}); stopping", file=sys.stderr)
                    code = 1
                    raise Stop()
            hub_says = None if ready else hub_api_answer(hub_address, site)
            if hub_says and hub_says[0] == 200:
                # Ready only once the users' address, through the proxy, answers as this hub does.
                users_get = hub_api_answer(users_address, site)
                hub_up_since = hub_up_since or time.monotonic()
                answers_as_hub = users_get and (users_get[0], users_get[2]) == (hub_says[0], hub_says[2])
                if answers_as_hub and services_up(users_address, site):
                    ready = True
                    print(f"CampusHub is ready: open {url} (Ctrl-C stops it and every user's server)", flush=True)
                elif answers_as_hub:
                    if time.monotonic() - hub_up_since > SERVICES_WAIT:
                        print(f"campushub: the nightly-notebooks service did not start within {SERVICES_WAIT} s "
                              "(see the hub's messages above); stopping", file=sys.stderr)  # fmt: skip
                        code = 1
                        raise Stop()
                elif users_get or time.monotonic() - hub_up_since > PROXY_WAIT:
                    print(f"campushub: {not_campushub(users_address, users_get)}; stopping", file=sys.stderr)
                    code = 1
                    raise Stop()
            time.sleep(0.5)
    except Stop:
        print("campushub: stopping the hub and every user's server, then the proxy ...", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_child(hub, "hub", site.spawner.start_timeout + 30)
        stop_child(proxy, "proxy", 10)
    print("campushub: stopped", flush=True)
    return code


# --- doctor --------------------------------------------------------------------------------


def cmd_doctor(args) -> int:
    from . import doctor

    site = site_from(args)
    names = None
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in doctor.CHECKS]
        if unknown:
            raise CommandError(f"--only: no check named {', '.join(unknown)}; the checks: {', '.join(doctor.CHECKS)}")
    d = doctor.Doctor(site, user=doctor_user(args.user, site), timeout=args.timeout)
    results = d.check(names)
    print(doctor.report(results, as_json=args.json))
    return doctor.exit_code(results)


def doctor_user(name: str | None, site: Site):
    """The account the doctor acts as: --user, else the admin who ran it through sudo (SUDO_USER), if the hub
    would give that account a server; None otherwise (those checks are skipped, saying how to give one)."""
    import pwd

    given = name is not None
    name = name or os.environ.get("SUDO_USER")
    if not name:
        return None
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        if given:
            raise CommandError(f"--user {name}: no such unix account on this host") from None
        return None
    if not site.users.min_uid <= account.pw_uid <= site.users.max_uid:
        if given:
            raise CommandError(
                f"--user {name}: uid {account.pw_uid} is outside users.min_uid-users.max_uid "
                f"({site.users.min_uid}-{site.users.max_uid}): the hub never gives it a server; name a user's account"
            )
        return None
    return account


# --- day two: the database, backup and restore ----------------------------------------------


def day_two(args, step) -> int:
    """Run a database step (campushub.database) on the site's state; its refusals become one message."""
    from sqlalchemy.exc import SQLAlchemyError

    from .database import DatabaseError

    site = site_from(args)
    check_site(site)
    try:
        step(site, StateDir(site.hub.state_dir))
    except DatabaseError as e:
        raise CommandError(str(e)) from None
    except SQLAlchemyError as e:  # the database cannot be reached, or refuses the login (no password shown)
        raise CommandError(f"the database: {getattr(e, 'orig', None) or e}") from None
    return 0


def cmd_db_upgrade(args) -> int:
    from .database import upgrade

    return day_two(args, upgrade)


def cmd_backup(args) -> int:
    from .database import backup

    return day_two(args, lambda site, state: backup(site, state, Path(args.dest)))


def cmd_restore(args) -> int:
    from .database import restore

    return day_two(args, lambda site, state: restore(site, state, Path(args.src)))


def add_day_two_parsers(commands, site_option) -> None:
    db = commands.add_parser(
        "db", help="the hub database: upgrade its schema after installing a newer CampusHub",
        description="Work with the hub database (hub.db_url: SQLite in the state folder, or PostgreSQL).",
    )  # fmt: skip
    db_commands = db.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    up = db_commands.add_parser(
        "upgrade",
        help="back up the hub database, then migrate it to this JupyterHub's schema (the hub stopped)",
        description="After installing a newer CampusHub: stop the hub, run this, start the hub; users' servers "
        "keep running. It refuses while the hub runs (the hub holds <state_dir>/hub.lock; its API answering "
        "counts too). It first copies the database to <state_dir>/backups/ (SQLite: SQLite's online backup; "
        "PostgreSQL: pg_dump's custom format), then runs JupyterHub's migrations (as `jupyterhub upgrade-db`). "
        "On a database already at the newest schema it changes nothing and says so.",
    )
    site_option(up)
    up.set_defaults(func=cmd_db_upgrade)

    backup = commands.add_parser(
        "backup",
        help="write the hub's state into one archive (the hub may run)",
        description="Write one tar archive (mode 0600) of the hub database, the nightly-notebooks store and the "
        "state folder's files (secrets, course roles, identities, run pages; not users' homes), with a manifest "
        "of sizes and SHA-256 checksums and the CampusHub version. Consistent while the hub runs: SQLite's online "
        "backup, pg_dump for PostgreSQL. Keep the archive as safe as the secrets in it.",
    )
    backup.add_argument("dest", metavar="DEST", help="the archive to write, or a folder (campushub-backup-<time>.tar)")
    site_option(backup)
    backup.set_defaults(func=cmd_backup)

    restore = commands.add_parser(
        "restore",
        help="restore an archive of `campushub backup` into an empty state folder",
        description="Restore the state of an archive made by `campushub backup` into the site's state folder, "
        "which must be empty or absent (and PostgreSQL databases, where the site names them, empty). Every "
        "file's checksum is checked before anything is written; a damaged archive changes nothing. The hub "
        "must be stopped; start it afterwards.",
    )
    restore.add_argument("src", metavar="SRC", help="the archive of `campushub backup`")
    site_option(restore)
    restore.set_defaults(func=cmd_restore)


# --- schedules -------------------------------------------------------------------------------


def cmd_schedule(args) -> int:
    from .scheduler.client import ClientError, run_command

    try:
        print(run_command(args))
    except ClientError as e:
        raise CommandError(str(e)) from None
    return 0


def cmd_course(args) -> int:
    from .courses import CourseError
    from .courses.cli import run_command

    try:
        return run_command(args)
    except CourseError as e:
        if len(e.problems) == 1:
            raise CommandError(e.problems[0]) from None
        raise CommandError("\n  ".join([f"{len(e.problems)} problems; nothing was changed:", *e.problems])) from None


# --- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="campushub",
        description="CampusHub: JupyterHub for AI research campuses. "
        "One site file describes the deployment; without one, embedded demo defaults are used.",
    )
    parser.add_argument("--version", action="version", version=f"campushub {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def site_option(p):
        p.add_argument(
            "-c", "--config", metavar="FILE",
            help="the site file (default: $CAMPUSHUB_CONFIG, else the embedded demo defaults)",
        )  # fmt: skip

    up = commands.add_parser(
        "up",
        help="run CampusHub in the foreground: proxy and hub (Ctrl-C stops all, servers too)",
        description="Start the proxy and the hub in the foreground and print where to log in. "
        "Ctrl-C stops the hub, every user's server and the proxy. Without a site file: the demo "
        "(http://127.0.0.1:8000, servers as local processes, a generated shared password).",
    )
    site_option(up)
    up.set_defaults(func=cmd_up)

    hub = commands.add_parser(
        "hub",
        help="run the hub alone (servers keep running across its restarts)",
        description="Run JupyterHub configured from the site file. Users' servers survive a restart of "
        "the hub; run `campushub proxy` beside it (a service manager runs both).",
    )
    site_option(hub)
    hub.add_argument("--cleanup-servers", action="store_true", help="stop every user's server when the hub stops")
    hub.add_argument("--debug", action="store_true", help="log at debug level")
    hub.set_defaults(func=cmd_hub)

    proxy = commands.add_parser(
        "proxy",
        help="run the proxy alone (configurable-http-proxy or traefik: proxy.kind)",
        description="Run the site's proxy (proxy.kind: configurable-http-proxy, or traefik with its files in "
        "<state_dir>/traefik/) on the site's public address, with the hub as default target, its API on "
        "127.0.0.1:proxy.api_port and its secret from the state folder.",
    )
    site_option(proxy)
    proxy.set_defaults(func=cmd_proxy)

    config = commands.add_parser("config", help="check the site file, print its schema",
                                 description="Work with site files.")  # fmt: skip
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = config_commands.add_parser(
        "check",
        help="validate a site file: OK, or every error with its key",
        description="Validate a site file. Prints OK, or one line per error naming the key and the reason; "
        "exits 2 on error.",
    )
    check.add_argument("file", metavar="FILE", help="the site file (YAML)")
    check.set_defaults(func=cmd_config_check)
    schema = config_commands.add_parser(
        "schema", help="print the JSON Schema of the site file", description="Print the site file's JSON Schema."
    )
    schema.set_defaults(func=cmd_config_schema)

    from .doctor import CHECKS, DEFAULT_TIMEOUT

    doctor = commands.add_parser(
        "doctor",
        help="check what usually breaks a hub (munge, Slurm, sudo, the nodes, GPUs, secrets, disk, TLS)",
        description="Run on the hub host, as the hub's account, with the hub's environment (SLURM_CONF). "
        "Checks munge, the Slurm controller, the sudo rule of spawner.slurm.submit_prefix, the single-user "
        "environment and the hub API from a node (a small srun job as --user), the profiles' GPUs against "
        "Slurm's nodes, the secret files' modes, the state folder's free space and the certificate at "
        "hub.public_url. Prints one line per check (OK, WARN, FAIL or SKIP, what was found, and the fix) "
        "and a summary; exits 1 when a check FAILs, 0 otherwise, 2 on a bad site file. "
        "The checks of Slurm run only with spawner.backend: slurm. See docs/slurm.md.",
    )
    site_option(doctor)
    doctor.add_argument(
        "--user", metavar="NAME",
        help="the user account to act as for the sudo rule and the jobs on a node: one that may run jobs "
        "(default: $SUDO_USER, the admin who ran `sudo campushub doctor`; without either those checks are skipped)",
    )  # fmt: skip
    doctor.add_argument("--json", action="store_true", help="print the results as JSON, for monitoring")
    doctor.add_argument("--only", metavar="CHECK[,CHECK]", help=f"run only these checks, of: {', '.join(CHECKS)}")
    doctor.add_argument(
        "--timeout", metavar="SECONDS", type=float, default=DEFAULT_TIMEOUT,
        help=f"time limit of each command or connection (a job on a node: 3 times as long) [{DEFAULT_TIMEOUT:g}]",
    )  # fmt: skip
    doctor.set_defaults(func=cmd_doctor)

    from .scheduler import client

    client.add_parser(commands, site_option, cmd_schedule)

    from .courses import cli as course_cli

    course_cli.add_parser(commands, site_option, cmd_course)
    add_day_two_parsers(commands, site_option)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return run(argv)
        finally:
            sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        # The reader went away (`campushub config schema | head`): end quietly, as cat does.
        silence_output()
        return 0


def silence_output() -> None:
    """Point stdout and stderr at /dev/null, so that Python's own flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.dup2(devnull, sys.stderr.fileno())


def run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SiteError as e:
        message = "the site file has errors:\n" + "\n".join(f"  {problem}" for problem in e.problems)
    except (CommandError, ProxyNotFound) as e:
        message = str(e)
    try:
        print(f"campushub: {message}", file=sys.stderr)
    except BrokenPipeError:
        silence_output()  # the failure still shows in the exit status
    return 2
