"""A course's Slurm account and GPU quota, kept by Slurm's accounting (sacctmgr), not only by the hub.

The course's students run their servers, and any job they submit themselves, under the course's
Slurm account. Slurm holds a job that would pass the course's GPU limit, whoever submitted it:

- per user: a QOS named like the account, with MaxTRESPerUser=gres/gpu=N, that is the account's only
  QOS and its default (a student's job waits with reason QOSMaxGRESPerUser);
- in total: the account's GrpTRES=gres/gpu=N (a job waits with reason AssocGrpGRES).

The course's apply and retire call these functions, as the hub's account (Slurm's operator or admin).
Each runs sacctmgr without a shell (`-i`: no question asked; `-n -P`: parsable answers), only when
something must change, and returns what changed, one line each, for a plan to print. With
`dry_run=True` nothing is changed and the lines say what would be. A failure is a `QuotaError` whose
message is meant for a person.

Slurm must keep accounting with slurmdbd, enforce limits and count GPUs (slurm.conf):
AccountingStorageType=accounting_storage/slurmdbd, AccountingStorageEnforce=associations,limits,qos
and AccountingStorageTRES=gres/gpu. `accounting_available()` checks these.
"""

from __future__ import annotations

import pwd
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from ..slurmenv import command_env

# Slurm lowercases account and QOS names: only lowercase names are taken, so that the name the hub
# passes to sbatch --account is the one sacctmgr stored.
ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
# Descriptions are one word for sacctmgr (no shell), but its own parser splits at quotes and '='.
DESCRIPTION = re.compile(r"^[^\x00-\x1f'\"=|]{1,100}$")
GPU = "gres/gpu"
COMMAND_TIMEOUT = 60
MEMBERS_PER_CALL = 1000  # users named in one sacctmgr call (1,000 in one took 4 s, in five of 200 5.3 s)


class QuotaError(RuntimeError):
    """A course account or GPU limit that could not be read or set; the message says why, for a person."""


@dataclass(frozen=True)
class Accounting:
    """Whether Slurm can enforce a course's GPU quota; if not, `reason` says what is missing."""

    available: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.available


@dataclass(frozen=True)
class AccountState:
    """A course account as Slurm has it."""

    name: str
    description: str
    parent: str
    members: frozenset[str]
    per_user_gpus: int | None  # its QOS's MaxTRESPerUser on gres/gpu
    total_gpus: int | None  # its GrpTRES on gres/gpu
    qos: str  # the account's QOS list, as sacctmgr prints it
    default_qos: str
    qos_found: bool  # whether the QOS named like the account exists


READ = object()  # a function's `state` default: ask Slurm


# --- running sacctmgr -------------------------------------------------------------------------


def _run(program: str, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [program, *args], capture_output=True, text=True, env=command_env(), timeout=COMMAND_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise QuotaError(f"{program} is not installed on the hub host: Slurm's client commands are needed") from None
    except subprocess.TimeoutExpired:
        raise QuotaError(f"{program} {' '.join(args[:3])} gave no answer within {COMMAND_TIMEOUT} s") from None


def _sacctmgr_error(args: tuple[str, ...], proc: subprocess.CompletedProcess) -> QuotaError:
    said = " ".join((proc.stderr.strip() + " " + proc.stdout.strip()).split()) or f"exit status {proc.returncode}"
    return QuotaError(f"sacctmgr {' '.join(args)} failed: {said}")


def _query(*args: str) -> list[list[str]]:
    """sacctmgr show ...: its rows, split at '|'."""
    proc = _run("sacctmgr", "-n", "-P", *args)
    if proc.returncode != 0:
        raise _sacctmgr_error(args, proc)
    return [line.split("|") for line in proc.stdout.splitlines() if line.strip()]


def _change(*args: str) -> None:
    """sacctmgr -i add/modify/delete ...; only called when something must change."""
    proc = _run("sacctmgr", "-i", *args)
    if proc.returncode != 0:
        raise _sacctmgr_error(args, proc)


def _check_account(name: str) -> None:
    if not isinstance(name, str) or not ACCOUNT_NAME.fullmatch(name):
        raise QuotaError(
            f"{name!r} is not a Slurm account name CampusHub uses: 1-64 characters of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or digit"
        )


def _check_users(users: Iterable[str]) -> list[str]:
    users = sorted(set(users))
    bad = [u for u in users if not isinstance(u, str) or not USER_NAME.fullmatch(u)]
    if bad:
        raise QuotaError(f"not unix user names: {', '.join(map(repr, bad))}")
    return users


def _check_limit(what: str, value: int | None) -> None:
    if value is not None and (type(value) is not int or value < 0):
        raise QuotaError(f"{what} must be a whole number of GPUs, 0 or more, or None for no limit: {value!r}")


def _gpus(tres: str) -> int | None:
    """The gres/gpu count in a TRES string such as 'cpu=4,gres/gpu=2'; None when it has none."""
    for item in tres.split(","):
        key, _, value = item.partition("=")
        if key == GPU and value.isdigit():
            return int(value)
    return None


def _tres(value: int | None) -> str:
    return f"{GPU}={-1 if value is None else value}"  # -1 clears a limit


def _limit_text(value: int | None) -> str:
    return "no limit" if value is None else f"{value} GPU{'s' if value != 1 else ''}"


# --- reading ------------------------------------------------------------------------------------


def slurm_config() -> dict[str, str]:
    """slurmctld's running configuration (scontrol show config), key to value."""
    proc = _run("scontrol", "show", "config")
    if proc.returncode != 0:
        said = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
        raise QuotaError(f"Slurm's controller did not answer (scontrol show config): {said}")
    config = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def accounting_available() -> Accounting:
    """Whether Slurm keeps accounting with slurmdbd, enforces limits and counts GPUs; if not, why not."""
    try:
        config = slurm_config()
    except QuotaError as e:
        return Accounting(False, str(e))
    storage = config.get("AccountingStorageType", "")
    if storage != "accounting_storage/slurmdbd":
        return Accounting(
            False,
            f"Slurm keeps no accounting database (AccountingStorageType={storage or 'none'}): course GPU quotas "
            "need slurmdbd and AccountingStorageType=accounting_storage/slurmdbd in slurm.conf",
        )
    enforce = {e.strip() for e in config.get("AccountingStorageEnforce", "").lower().split(",")}
    missing = [e for e in ("associations", "limits", "qos") if e not in enforce]
    if missing:
        return Accounting(
            False,
            f"Slurm does not enforce {', '.join(missing)} (AccountingStorageEnforce="
            f"{config.get('AccountingStorageEnforce', 'none')}): set AccountingStorageEnforce=associations,limits,qos "
            "in slurm.conf, or a course's GPU limit is not held",
        )
    tres = config.get("AccountingStorageTRES", "").split(",")
    if not any(t.strip() == GPU or t.strip().startswith(GPU + ":") for t in tres):
        return Accounting(
            False,
            f"Slurm does not count GPUs (AccountingStorageTRES={config.get('AccountingStorageTRES', 'none')}): "
            "add gres/gpu to AccountingStorageTRES in slurm.conf",
        )
    try:
        _query("show", "cluster", "format=cluster")
    except QuotaError as e:
        return Accounting(False, f"slurmdbd does not answer: {e}")
    return Accounting(True)


def account_state(name: str) -> AccountState | None:
    """The account as Slurm has it on this cluster, or None if there is none."""
    _check_account(name)
    # two sacctmgr calls: the account with its associations (its own, then one a member), and its QOS
    rows = _query(
        "show", "account", "where", f"name={name}", "withassoc",
        "format=account,description,user,parentname,grptres,qos,defaultqos",
    )  # fmt: skip
    if not rows:
        return None
    description = rows[0][1] if len(rows[0]) > 1 else ""
    parent, total, qos, default_qos, members = "", None, "", "", set()
    for row in rows:
        row = row + [""] * (7 - len(row))
        if row[2]:
            members.add(row[2])
        else:
            parent, total, qos, default_qos = row[3], _gpus(row[4]), row[5], row[6]
    qos_rows = _query("show", "qos", "where", f"name={name}", "format=name,maxtrespu")
    per_user = _gpus(qos_rows[0][1]) if qos_rows and len(qos_rows[0]) > 1 else None
    return AccountState(
        name, description, parent, frozenset(members), per_user, total, qos, default_qos, bool(qos_rows)
    )


def _qos_exists(name: str) -> bool:
    return bool(_query("show", "qos", "where", f"name={name}", "format=name"))


# --- changing -------------------------------------------------------------------------------------


def ensure_account(
    name: str,
    description: str,
    parent: str = "root",
    organization: str = "campushub",
    dry_run: bool = False,
    state=READ,
) -> list[str]:
    """The account exists, under `parent`, with this description. (`state`: account_state's, if just read.)"""
    _check_account(name)
    _check_account(parent)
    if not isinstance(description, str) or not DESCRIPTION.fullmatch(description):
        raise QuotaError(
            f"the description of Slurm account {name} must be 1-100 characters without quotes, '=', '|' "
            f"or control characters: {description!r}"
        )
    state = account_state(name) if state is READ else state
    if state is None:
        if not dry_run:
            _change(
                "add", "account", name, f"description={description}", f"organization={organization}", f"parent={parent}"
            )
        return [f"add Slurm account {name} under {parent}"]
    changes = []
    if state.parent != parent:
        if not dry_run:
            _change("modify", "account", "where", f"name={name}", "set", f"parent={parent}")
        changes.append(f"move Slurm account {name} from {state.parent or '(none)'} to {parent}")
    if state.description != description.lower() and state.description != description:
        if not dry_run:
            _change("modify", "account", "where", f"name={name}", "set", f"description={description}")
        changes.append(f"change the description of Slurm account {name}")
    return changes


def set_gpu_limit(
    account: str, per_user: int | None, total: int | None, dry_run: bool = False, state=READ
) -> list[str]:
    """The account's GPU limits: `per_user` GPUs at a time for each member (None: none), `total` GPUs at a
    time for all its jobs together (None: none). The account must exist.

    The per-user limit is the QOS named like the account (MaxTRESPerUser=gres/gpu=N), made the account's
    only and default QOS: its members' jobs cannot choose another QOS to escape it."""
    _check_account(account)
    _check_limit("per_user", per_user)
    _check_limit("total", total)
    state = account_state(account) if state is READ else state
    if state is None:
        if dry_run:  # a plan for an account that ensure_account would add
            state = AccountState(account, "", "", frozenset(), None, None, "", "", _qos_exists(account))
        else:
            raise QuotaError(f"there is no Slurm account {account}: ensure_account first")
    changes = []
    if state.total_gpus != total:
        if not dry_run:
            _change("modify", "account", "where", f"name={account}", "set", f"GrpTRES={_tres(total)}")
        changes.append(
            f"set the GPU limit of Slurm account {account}, all jobs together, from "
            f"{_limit_text(state.total_gpus)} to {_limit_text(total)}"
        )
    qos_exists = state.qos_found
    if per_user is not None and not qos_exists:
        if not dry_run:
            _change("add", "qos", account, f"description=GPU limit per user of account {account}")
        changes.append(f"add Slurm QOS {account} for the per-user GPU limit")
    if state.per_user_gpus != per_user and (qos_exists or per_user is not None):
        if not dry_run:
            _change("modify", "qos", "where", f"name={account}", "set", f"MaxTRESPerUser={_tres(per_user)}")
        changes.append(
            f"set the GPU limit of each user of Slurm account {account} from {_limit_text(state.per_user_gpus)} "
            f"to {_limit_text(per_user)}"
        )
    if per_user is not None and (state.qos != account or state.default_qos != account):
        if not dry_run:
            _change("modify", "account", "where", f"name={account}", "set", f"qos={account}", f"defaultqos={account}")
        changes.append(f"make QOS {account} the only and default QOS of Slurm account {account}")
    return changes


def _unix_uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _controller_uids(account: str, users: list[str]) -> dict[str, int]:
    """The uid slurmctld holds for each user's association with the account (scontrol show assoc_mgr);
    empty when it cannot be asked: then nothing is renewed."""
    if not users:
        return {}
    proc = _run("scontrol", "show", "assoc_mgr", f"accounts={account}", f"users={','.join(users)}", "flags=assoc")
    if proc.returncode != 0:
        return {}
    found = re.finditer(rf"\bAccount={re.escape(account)} UserName=([^\s(]+)\((\d+)\)", proc.stdout)
    return {m.group(1): int(m.group(2)) for m in found}


def _leave_default_account(account: str, users: list[str], dry_run: bool) -> list[str]:
    """Users whose default account is this one, and who have another, get that other one as their default:
    Slurm refuses to remove a user's default account while the user has others."""
    if not users:
        return []
    defaults = {
        row[0]: row[1]
        for row in _query("show", "user", "where", f"name={','.join(users)}", "format=user,defaultaccount")
        if len(row) > 1
    }
    leaving = [u for u in users if defaults.get(u) == account]
    if not leaving:
        return []
    others: dict[str, set[str]] = {}
    for row in _query("show", "association", "where", f"user={','.join(leaving)}", "format=user,account"):
        if len(row) > 1 and row[1] != account:
            others.setdefault(row[0], set()).add(row[1])
    changes = []
    for user in leaving:
        if user in others:
            new = sorted(others[user])[0]
            if not dry_run:
                _change("modify", "user", "where", f"name={user}", "set", f"defaultaccount={new}")
            changes.append(f"make {new} the default Slurm account of {user} instead of {account}")
    return changes


def set_members(account: str, users: Iterable[str], dry_run: bool = False, state=READ) -> list[str]:
    """Exactly these users have an association with the account: missing ones are added, others removed.
    A user being removed must have no job running or pending under the account (Slurm refuses).

    slurmctld learns a user's uid when the association is added: one added before the user's unix
    account existed (a roster applied before the first login that creates it), or before the account
    was made again with another uid, takes no job. Those are renewed (deleted and added again): run the
    apply again once students have logged in for the first time."""
    _check_account(account)
    wanted = set(_check_users(users))
    state = account_state(account) if state is READ else state
    if state is None and not dry_run:
        raise QuotaError(f"there is no Slurm account {account}: ensure_account first")
    current = state.members if state else frozenset()
    add, remove = sorted(wanted - current), sorted(current - wanted)
    kept = sorted(wanted & current)
    unix = {u: _unix_uid(u) for u in kept}
    held = _controller_uids(account, [u for u in kept if unix[u] is not None])
    renew = [u for u in kept if unix[u] is not None and u in held and held[u] != unix[u]]
    changes = []
    for i in range(0, len(renew), MEMBERS_PER_CALL):
        chunk = renew[i : i + MEMBERS_PER_CALL]
        if not dry_run:
            _change("delete", "user", "where", f"name={','.join(chunk)}", f"account={account}")
            _change("add", "user", f"name={','.join(chunk)}", f"account={account}")
    if renew:
        changes.append(
            f"renew the association of {len(renew)} user{'s' if len(renew) != 1 else ''} with Slurm account "
            f"{account}, made before their unix account: {', '.join(renew)}"
        )
    for i in range(0, len(add), MEMBERS_PER_CALL):
        chunk = add[i : i + MEMBERS_PER_CALL]
        if not dry_run:
            _change("add", "user", f"name={','.join(chunk)}", f"account={account}")
    if add:
        changes.append(
            f"add {len(add)} user{'s' if len(add) != 1 else ''} to Slurm account {account}: {', '.join(add)}"
        )
        later = [u for u in add if _unix_uid(u) is None]
        if later:
            changes.append(
                f"  {len(later)} of them without a unix account yet: apply again after their first login "
                f"({', '.join(later)})"
            )
    changes += _leave_default_account(account, remove, dry_run)
    for i in range(0, len(remove), MEMBERS_PER_CALL):
        chunk = remove[i : i + MEMBERS_PER_CALL]
        if not dry_run:
            _change("delete", "user", "where", f"name={','.join(chunk)}", f"account={account}")
    if remove:
        changes.append(
            f"remove {len(remove)} user{'s' if len(remove) != 1 else ''} from Slurm account {account}: "
            f"{', '.join(remove)}"
        )
    return changes


def remove_account(name: str, dry_run: bool = False) -> list[str]:
    """The account, its members' associations with it, and its QOS are gone. Slurm refuses while jobs of
    the account are running or pending: stop the course's servers first."""
    _check_account(name)
    changes = []
    state = account_state(name)
    if state is not None:
        changes += _leave_default_account(name, sorted(state.members), dry_run)
        if not dry_run:
            _change("delete", "account", "where", f"name={name}")
        changes.append(f"remove Slurm account {name} and its users' associations with it")
    if _qos_exists(name):
        if not dry_run:
            _change("delete", "qos", "where", f"name={name}")
        changes.append(f"remove Slurm QOS {name}")
    return changes
