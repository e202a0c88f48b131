"""Runs one submission's TODO code in a locked-down child process (started by ``lab7 grade``, never by hand).

Protocol: a JSON object on stdin ``{"token", "todos": {todo_id: code}, "checks": {check_id: {"todo", "points"}},
"todo_timeout"}``; one line per check on stdout, ``<token> {"check", "passed", "points", "max_points", "hint"}``.
Only lines that start with the token count, so whatever the student's code prints cannot forge a grade.

What the student's code may do once the sandbox is on: compute, import installed modules, read files of the
Python installation and of this package, and read/write inside the current (temporary) folder. Everything else is
refused through a Python audit hook: other files and folder listings, deleting or renaming, processes,
sockets, ctypes. The parent adds CPU, memory and file-size limits and a wall-clock limit. This keeps honest
mistakes and casual mischief from touching other submissions; it is not a boundary against a determined attacker
(use a container for that).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch
from datasets import Dataset

import lab7_helpers as lab
from lab7_helpers import checks

CHECKS = checks.TODO_CHECKS  # rubric check id -> check(namespace, points); kept beside the checks
DENIED_EVENTS = {
    "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "shutil.move", "os.truncate", "os.chmod", "os.chown",
    "os.kill", "os.killpg", "os.link", "os.symlink", "socket.connect", "socket.bind", "ctypes.dlopen",
    "ctypes.dlsym", "ctypes.addressof", "ctypes.cdata", "os.chdir", "os.chroot", "os.setuid",
}
PATH_EVENTS = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.utime", "glob.glob"}


def grading_namespace() -> dict:
    """What the notebook defines before the TODO cells, with small fixed pairs in place of the student's."""
    train_pairs = [dict(p) for p in checks.GRADING_PAIRS]
    return {"__name__": "__main__", "lab": lab, "torch": torch, "Dataset": Dataset, "os": os, "sys": sys,
            "train_pairs": train_pairs, "test_pairs": train_pairs[:2]}


def install_sandbox(workdir: Path) -> None:
    """Refuse, from now on, everything outside the rules in the module docstring (cannot be undone)."""
    import site

    # The Python installation and this package only: not sys.path, which may hold a checkout with the solutions.
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages()}
    readable = [Path(p).resolve() for p in roots] + [Path(lab.__file__).resolve().parent, Path("/proc"),
                                                      Path("/sys"), Path("/dev")]
    workdir = workdir.resolve()

    def inside(path: Path, roots) -> bool:
        return any(path == root or root in path.parents for root in roots)

    def hook(event: str, args: tuple) -> None:
        if event in DENIED_EVENTS:
            raise PermissionError(f"the grader does not allow {event}")
        if event in PATH_EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = Path(os.fsdecode(args[0]))
            path = (workdir / path if not path.is_absolute() else path).resolve()
            writing = event != "open" or (len(args) > 1 and any(c in str(args[1] or "r") for c in "wax+"))
            if inside(path, [workdir]) or (not writing and inside(path, readable)):
                return
            raise PermissionError(f"the grader does not allow access to {path}")

    sys.addaudithook(hook)


def main() -> None:
    """Read the request, switch the sandbox on, run each TODO cell and its checks, report each result."""
    request = json.loads(sys.stdin.read())
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    token = request["token"]

    def report(result: dict) -> None:
        protocol.write(f"{token} {json.dumps(result)}\n")

    def on_timeout(signum, frame):
        raise TimeoutError(f"the cell ran longer than {request['todo_timeout']} s (an endless loop?)")

    signal.signal(signal.SIGALRM, on_timeout)
    namespace = grading_namespace()
    install_sandbox(Path.cwd())
    for todo, code in request["todos"].items():
        ids = [cid for cid, spec in request["checks"].items() if spec["todo"] == todo]
        failure = None
        signal.alarm(request["todo_timeout"])
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                exec(compile(code, f"<TODO {todo}>", "exec"), namespace)  # noqa: S102 - sandboxed on purpose
        except BaseException as err:  # noqa: BLE001 - SystemExit, TimeoutError, anything the student raised
            failure = f"the TODO cell raised {checks.describe_error(err)}"
        for check_id in ids:
            points = request["checks"][check_id]["points"]
            if failure is None:
                try:
                    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                        result = CHECKS[check_id](namespace, points)
                    report({"check": check_id, "passed": result.passed, "points": result.points,
                            "max_points": points, "hint": result.hint})
                    continue
                except BaseException as err:  # noqa: BLE001
                    failure = f"checking raised {checks.describe_error(err)}"
            report({"check": check_id, "passed": False, "points": 0, "max_points": points, "hint": failure})
        signal.alarm(0)


if __name__ == "__main__":
    main()
