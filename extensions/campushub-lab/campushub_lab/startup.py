"""jupyterhub-singleuser as CampusHub's jobs start it: in this process, with two slow steps of its start
deferred or skipped, none of which changes what the server does.

jupyter_server imports jupyter_events, which imports jsonschema, which registers its "iri" format check
from rfc3987_syntax when that is installed (jsonschema[format-nongpl] installs it). Importing
rfc3987_syntax builds about 40 Lark parsers: more than half the CPU time of a server's start (the
breakdown is in docs/benchmarks.md). No schema the server or the Lab loads uses that format. Here
jsonschema is given a stand-in whose check imports the real module when it is first used, so the check
works as before, only later.

jupyterlab.labapp, on import, reads the Lab's version through jupyterlab.commands, whose options look up
yarn's registry setting by running `node yarn.js config` when Node.js is on PATH: about a second of
waiting. The version does not depend on the registry and the options are dropped at once; the Lab's own
options (builds) look the registry up again when they need it. So while that module is imported, the
lookup answers what it answers when there is no Node.js.

`python -m campushub_lab.startup ARGS` starts the server so, without the port report
(campushub-singleuser runs it with the report).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

DEFERRED = "rfc3987_syntax"


def defer_slow_imports() -> None:
    """Put the stand-in for rfc3987_syntax in place, unless it is imported already or not installed."""
    if DEFERRED in sys.modules or importlib.util.find_spec(DEFERRED) is None:
        return
    stand_in = types.ModuleType(DEFERRED, "Stand-in: imports the real module on first use (campushub_lab.startup)")

    def real() -> types.ModuleType:
        if sys.modules.get(DEFERRED) is stand_in:
            del sys.modules[DEFERRED]
            try:
                importlib.import_module(DEFERRED)
            except BaseException:
                sys.modules[DEFERRED] = stand_in
                raise
        return sys.modules[DEFERRED]

    def is_valid_syntax(term: str, value: str) -> bool:  # what jsonschema imports
        return real().is_valid_syntax(term, value)

    def other(name: str):
        if name.startswith("__"):  # the import system's questions (__path__, ...) are the stand-in's to answer
            raise AttributeError(name)
        return getattr(real(), name)

    stand_in.is_valid_syntax = is_valid_syntax
    stand_in.__getattr__ = other
    sys.modules[DEFERRED] = stand_in


def import_lab_without_yarn_config() -> None:
    """Import jupyterlab.labapp with yarn's configuration answered as with no Node.js (see above)."""
    if "jupyterlab.labapp" in sys.modules or importlib.util.find_spec("jupyterlab") is None:
        return
    from jupyterlab import commands

    lookup = getattr(commands, "_yarn_config", None)
    if lookup is None:  # another JupyterLab: import it as it is
        importlib.import_module("jupyterlab.labapp")
        return
    commands._yarn_config = lambda logger: {"yarn config": {}, "npm config": {}}
    try:
        importlib.import_module("jupyterlab.labapp")
    finally:
        commands._yarn_config = lookup


def run_server(args: list[str]) -> None:
    """jupyterhub-singleuser ARGS in this process; exits with its status."""
    defer_slow_imports()
    import_lab_without_yarn_config()
    from jupyterhub.singleuser import main as singleuser

    sys.argv = ["jupyterhub-singleuser", *args]
    sys.exit(singleuser())


if __name__ == "__main__":
    run_server(sys.argv[1:])
