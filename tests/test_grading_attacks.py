"""Submissions that try to cheat, graded in one class beside an honest one (the solution notebook).

Each attacker hands in the blank student notebook with one TODO cell replaced by the attack, so an attacker's
fair grade is 0. Every test asserts: no undue points, the honest grade intact, no file outside the sandbox read,
written or created, and nothing that changes after grading. Needs bubblewrap (CI installs it).
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from lab7_helpers.grading import sandbox
from lab7_helpers.grading.grade import JUDGES, Limits, WorkerFailed, decode_reply, grade, run_checks

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lab7_helpers"
SOLUTION = json.loads((ROOT / "instructor" / "lab7_solution.ipynb").read_text())
BLANK = json.loads((ROOT / "lab7.ipynb").read_text())
FULL_MARKS = 11
SECRET = "grader-secret-7f3a"  # in a file outside the sandbox and in the grader's environment
ALICE_WORK = "alice-own-work-5c1e"  # in the honest notebook: another student must not be able to copy it
MARKER = "lab7-attack-marker"  # a detached process would carry it on its command line

# {secret}, {grades}, {sibling}, {checks_py}, {port} are filled in by the fixture.
ATTACKS = {
    "patch_checks": """
import lab7_helpers, lab7_helpers.checks as c
full = lambda *a, **k: c.CheckResult("x", True, 100.0, 100.0, "")
for name in dir(c):
    if name.startswith("check_"):
        setattr(c, name, full)
        setattr(lab7_helpers, name, full)
""",
    "forged_lines": """
import sys, os, json
frame, seen = sys._getframe(), []
while frame:  # walk up to the worker's locals, looking for anything that could sign a result
    seen += list(frame.f_locals)
    frame = frame.f_back
forged = [{"check": c, "passed": True, "points": p * 100, "max_points": p, "hint": ""}
          for c, p in [("kl-loss", 3), ("sequence-logprobs", 2), ("dpo-loss", 3), ("dpo-dataset", 2)]]
lines = "".join(json.dumps(x) + "\\n" for x in [{"todos": {}}, *forged, {"value": 1100}]).encode()
for fd in range(1, 20):
    try:
        os.write(fd, lines)
    except OSError:
        pass
os._exit(0)
""",
    "dir_fd_read": """
import os
d = os.open("/proc/self", os.O_RDONLY)
text = open("root{secret}", opener=lambda p, f: os.open(p, f, dir_fd=d)).read()
text += open("root{sibling}", opener=lambda p, f: os.open(p, f, dir_fd=d)).read()
raise RuntimeError(text)
""",
    "proc_root_path": """
text = open("/proc/self/root{secret}").read() + open("/proc/self/root/etc/passwd").read()
raise RuntimeError(text)
""",
    "append_to_package": """
import os
fd = os.open({checks_py!r}, os.O_WRONLY | os.O_APPEND)
os.write(fd, b"\\ncheck_kl_loss = lambda *a, **k: None\\n")
""",
    "torch_from_file": """
t = torch.from_file({secret!r}, size=18, dtype=torch.uint8)
raise RuntimeError(bytes(t.tolist()).decode())
""",
    "grader_environ": """
import os
d = os.open("/proc", os.O_RDONLY)
text = ""
for pid in ("1", str(os.getppid())):
    for name in ("environ", "cmdline"):
        try:
            text += open(pid + "/" + name, opener=lambda p, f: os.open(p, f, dir_fd=d)).read()
        except OSError as err:
            text += str(err)
raise RuntimeError(text)
""",
    "fork_exec_detached": """
import _posixsubprocess, os
script = "while true; do echo 0 > {grades}; sleep 0.2; done"
args = [b"/bin/sh", b"-c", script.encode(), b"{marker}"]
r, w = os.pipe()
try:  # Python 3.11-3.12 signature; a detached session that would outlive the grader
    _posixsubprocess.fork_exec(args, [b"/bin/sh"], True, (), None, None, -1, -1, -1, -1, -1, -1, r, w,
                               True, True, -1, None, None, None, -1, None, True)
except TypeError:
    _posixsubprocess.fork_exec(args, [b"/bin/sh"], True, (), None, None, -1, -1, -1, -1, -1, -1, r, w,
                               True, True, -1, None, None, None, -1, None)
""",
    "child_keeps_stdout": """
import _posixsubprocess, os
r, w = os.pipe()
try:  # the child inherits fd 1 and sleeps: the grader must not wait for the pipe to close
    _posixsubprocess.fork_exec([b"/bin/sleep", b"300", b"{marker}"], [b"/bin/sleep"], False, (), None, None,
                               -1, -1, -1, 1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, True)
except TypeError:
    _posixsubprocess.fork_exec([b"/bin/sleep", b"300", b"{marker}"], [b"/bin/sleep"], False, (), None, None,
                               -1, -1, -1, 1, -1, -1, r, w, True, False, -1, None, None, None, -1, None)
""",
    "os_system": """
import os
os.system("echo 0 > {grades}; touch /tmp/{marker}")
""",
    "udp_socket": """
import socket
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"{marker}", ("127.0.0.1", {port}))
""",
    "output_flood": """
import os
for fd in range(1, 20):
    try:
        os.write(fd, b"y" * 20_000_000)
    except OSError:
        pass
""",
    "signals": """
import os, signal
os.kill(os.getppid(), signal.SIGKILL)
""",
    "ignores_alarm": """
import signal
signal.signal(signal.SIGALRM, signal.SIG_IGN)
while True:
    pass
""",
}


def notebook(base: dict, todo: str | None = None, code: str = "") -> dict:
    copy = json.loads(json.dumps(base))
    for cell in copy["cells"]:
        if todo and cell["metadata"].get("todo") == todo:
            cell["source"] = code
    return copy


def package_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def marked_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if MARKER.encode() in cmdline and entry.name != str(os.getpid()):
            found.append(entry.name)
    return found


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    outside = tmp_path_factory.mktemp("outside")
    secret_file = outside / "secret.txt"
    secret_file.write_text(SECRET)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    out = folder / "out"
    fill = {"secret": str(secret_file), "grades": str(out / "grades.csv"), "sibling": str(folder / "alice.ipynb"),
            "checks_py": str(PACKAGE / "checks.py"), "port": listener.getsockname()[1], "marker": MARKER}
    honest = notebook(SOLUTION)
    cell = next(c for c in honest["cells"] if c["metadata"].get("todo") == "kl-loss")
    cell["source"] = "".join(cell["source"]) + f"\n# {ALICE_WORK}\n"
    (folder / "alice.ipynb").write_text(json.dumps(honest))
    for name, code in ATTACKS.items():
        for key, value in fill.items():
            code = code.replace("{" + key + "}", str(value)).replace("{" + key + "!r}", repr(str(value)))
        (folder / f"{name}.ipynb").write_text(json.dumps(notebook(BLANK, "kl-loss", code)))
    odd = notebook(BLANK)
    next(c for c in odd["cells"] if c["metadata"].get("todo") == "kl-loss")["metadata"]["todo"] = ["kl-loss"]
    (folder / "odd_todo_list.ipynb").write_text(json.dumps(odd))
    (folder / "odd_answers.json").write_text(json.dumps({"format": "lab7-answers", "todos": "abc", "answers": {}}))
    before = package_digest()
    os.environ["LAB7_TEST_SECRET"] = SECRET
    try:
        grades = grade([str(folder)], out, limits=Limits(wall_seconds=60, todo_seconds=2), progress=False)
    finally:
        del os.environ["LAB7_TEST_SECRET"]
    written = (out / "grades.csv").read_bytes()
    time.sleep(1.0)  # a process that outlived grading would act now
    try:
        datagram = listener.recv(100)
    except BlockingIOError:
        datagram = b""
    listener.close()
    return {"folder": folder, "grades": grades, "written": written, "before": before, "datagram": datagram,
            "outside": outside}


def test_honest_student_keeps_full_marks(attacked):
    alice = attacked["grades"].loc["alice"]
    # full TODO marks; the honest copy types no Checkpoint answer, which its status says
    assert alice["status"] == "answers missing" and alice["total"] == FULL_MARKS, alice


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_earns_nothing(attacked, attack):
    row = attacked["grades"].loc[attack]
    assert row["total"] == 0, row
    assert all(row[f"{cid} points"] == 0 for cid in JUDGES), row


def test_nothing_outside_is_read_written_or_left_running(attacked):
    grades, folder = attacked["grades"], attacked["folder"]
    assert package_digest() == attacked["before"]  # the package was not rewritten
    assert (folder / "out" / "grades.csv").read_bytes() == attacked["written"]  # nothing changed after grading
    assert attacked["datagram"] == b""
    assert not Path(f"/tmp/{MARKER}").exists()
    assert marked_processes() == []
    assert sorted(p.name for p in attacked["outside"].iterdir()) == ["secret.txt"]
    published = "".join((folder / "out" / name).read_text() for name in ("grades.csv", "answers.csv",
                                                                         "grading.html"))
    for leak in (SECRET, "root:x:0:0", ALICE_WORK, "LAB7_TEST_SECRET"):
        assert leak not in published, leak
    assert set(grades.index) == {"alice", *ATTACKS, "odd_todo_list", "odd"}  # odd_answers.json is odd's


def test_a_hang_or_a_flood_costs_one_row_with_a_reason(attacked):
    grades = attacked["grades"]
    assert grades.loc["ignores_alarm", "status"] == "incomplete"
    # 4 TODO cells x 2 s (+ 2 s), not the 60 s wall limit
    assert "longer than 10 s" in grades.loc["ignores_alarm", "problem"]
    # a reply of more than 8 MB, or (when the TODO's 2 s ran out mid-write) junk before the reply
    assert "its output could not be read" in grades.loc["output_flood", "problem"]
    for attack in ("child_keeps_stdout", "fork_exec_detached"):  # no process was created, so none to wait for
        assert "endless loop" not in grades.loc[attack, "problem"], grades.loc[attack]


def test_odd_files_cost_one_row_each(attacked):
    grades = attacked["grades"]
    for student in ("odd_todo_list", "odd"):
        row = grades.loc[student]
        assert row["status"] != "graded" and row["total"] == 0, row
        assert row["problem"] and "\n" not in row["problem"] and "Traceback" not in row["problem"], row
    rows = pd.read_csv(attacked["folder"] / "out" / "grades.csv", index_col="student")
    assert len(rows) == len(ATTACKS) + 3


def test_the_sandbox_holds_without_the_audit_hook(tmp_path):
    """The bubblewrap layer alone (no worker, no audit hook): what the kernel lets the code reach."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    code = f"""
import os, socket
def attempt(what, action):
    try:
        action()
        print(what, "ALLOWED")
    except OSError as err:
        print(what, "refused", type(err).__name__)
attempt("read", lambda: open({str(secret)!r}).read())
attempt("passwd", lambda: open("/etc/passwd").read())
attempt("write-package", lambda: open({str(PACKAGE / 'checks.py')!r}, "a"))
attempt("write-root", lambda: open("/usr/lab7-x", "w"))
attempt("fork", os.fork)
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)))
attempt("home", lambda: open("notes.txt", "w").write("mine"))
print("pids", sorted(p for p in os.listdir("/proc") if p.isdigit()))
print("environ", open("/proc/1/environ").read())
"""
    seccomp = sandbox.seccomp_file()
    result = subprocess.run(sandbox.command(["-c", code], seccomp.fileno()), env=sandbox.environment(),
                            pass_fds=[seccomp.fileno()], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    for what in ("read", "passwd", "write-package", "write-root", "fork", "udp"):
        assert lines[what].startswith("refused"), (what, lines[what])
    assert lines["home"] == "ALLOWED"
    assert len(eval(lines["pids"])) <= 3  # its own PID namespace: bwrap's init, python
    assert SECRET not in result.stdout


def test_points_are_capped_by_the_rubric(monkeypatch):
    from lab7_helpers.checks import CheckResult
    from lab7_helpers.grading.grade import load_rubric

    generous = (lambda fn, points: CheckResult("x", True, points * 100, points * 100, ""),
                ("my_sequence_logprobs",))
    monkeypatch.setitem(JUDGES, "sequence-logprobs", generous)
    code = "def my_sequence_logprobs(logits, labels):\n    return logits.sum(-1).sum(-1)\n"
    results, problem = run_checks({"dpo-by-hand": code}, load_rubric(), Limits(wall_seconds=60, todo_seconds=5))
    assert problem == "" and results["sequence-logprobs"]["points"] == 2


def test_malformed_replies_are_refused():
    for reply in ({"nothing": 1}, {"error": "x"}, {"value": {"tensor": [1, 2], "dtype": "torch.float32",
                                                            "shape": [3], "requires_grad": False}},
                  {"value": {"bogus": 1}}, {"value": {"tensor": ["1"], "dtype": "torch.float32", "shape": [1],
                                                      "requires_grad": False}}):
        with pytest.raises(WorkerFailed):
            decode_reply(reply)
