"""``lab7 grade``: grade a class's notebooks. Each submission's TODO code runs in its own sandboxed process
(``worker``) with time, CPU and memory limits; Checkpoint answers are collected for manual grading."""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..app.report import save_csv, write_atomic
from .manual import merge_scores, read_scores
from .page import render_grading
from .submissions import Handin, answer_problems, collect

DEFAULT_RUBRIC = Path(__file__).with_name("rubric.toml")
LAB_PROBLEMS = {  # the status of a file that is not this course's Lab 7, and what the instructor can do
    "original lab 7": "this is the original Lab 7 notebook, whose TODOs and Checkpoints differ from this course's: "
                      "grade it by hand, or ask the student to redo it in the course's notebook",
    "not lab 7": "no Lab 7 TODO cell or Checkpoint question in this notebook (another lab's notebook?)",
}


@dataclass
class Limits:
    """What one submission may use."""

    wall_seconds: int = 120  # the whole submission, torch import included
    todo_seconds: int = 20  # one TODO cell and its checks
    memory_gb: float = 4.0  # address space (torch alone maps about 2.2 GB)
    file_mb: int = 20  # largest file the code may write in its temporary folder


def load_rubric(path: str | Path = DEFAULT_RUBRIC) -> dict:
    """The rubric as a dict with ``checks`` and ``checkpoints``; a clear error names a missing or bad field."""
    path = Path(path)
    try:
        rubric = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{path}: cannot read the rubric: {err}") from err
    for section, fields in (("checks", ("todo", "title", "points")), ("checkpoints", ("question", "points"))):
        for key, item in rubric.get(section, {}).items():
            missing = [f for f in fields if f not in item]
            if missing:
                raise ValueError(f"{path}: [{section}.{key}] needs {', '.join(missing)}")
    if not rubric.get("checks"):
        raise ValueError(f"{path}: the rubric has no [checks.*] sections")
    return rubric


def _limit_resources(limits: Limits):
    def apply() -> None:
        memory = int(limits.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.wall_seconds, limits.wall_seconds + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 2**20,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_checks(todos: dict[str, str], rubric: dict, limits: Limits) -> tuple[dict[str, dict], str]:
    """Run ``todos`` in a fresh sandboxed worker. Returns (results by check id, problem or "")."""
    token = secrets.token_hex(16)
    checks = {cid: {"todo": c["todo"], "points": c["points"]} for cid, c in rubric["checks"].items()}
    request = {"token": token, "todos": {t: todos[t] for t in dict.fromkeys(c["todo"] for c in checks.values())
                                         if t in todos}, "checks": checks, "todo_timeout": limits.todo_seconds}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    with tempfile.TemporaryDirectory(prefix="lab7_grade_") as workdir:
        env["HOME"] = workdir
        process = subprocess.Popen([sys.executable, "-m", "lab7_helpers.grading.worker"], cwd=workdir, env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True, preexec_fn=_limit_resources(limits))
        try:
            stdout, stderr = process.communicate(json.dumps(request), timeout=limits.wall_seconds)
            problem = "" if process.returncode == 0 else _crash_reason(process.returncode, stderr)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, _ = process.communicate()
            problem = f"stopped after {limits.wall_seconds} s (an endless loop?)"
    results = {}
    for line in stdout.splitlines():
        if line.startswith(token + " "):
            result = json.loads(line[len(token) + 1:])
            results[result["check"]] = result
    return results, problem


def _crash_reason(code: int, stderr: str) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        return {"SIGXCPU": "used more than its CPU time", "SIGKILL": "was killed (memory limit?)"}.get(
            name, f"was stopped by {name}")
    last = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["no message"]
    if "MemoryError" in last[0] or "Cannot allocate" in stderr:
        return "ran out of memory (limit reached)"
    return f"crashed: {last[0][:200]}"


def grade_submission(handin: Handin, rubric: dict, limits: Limits) -> tuple[dict, dict]:
    """One row of grades.csv and one of answers.csv for one student's hand-in."""
    grades: dict = {"student": handin.student, "file": str(handin.path), "status": "graded", "problem": "",
                    "set aside": "; ".join(handin.set_aside)}
    answers: dict = {"student": handin.student}
    work = handin.work or {"lab": "not graded", "todos": {}, "todo_notes": {}, "answers": {}, "found": {},
                           "unplaced": []}
    if handin.work is None or work["lab"] != "lab 7":
        grades["status"], grades["problem"] = work["lab"], handin.problem or LAB_PROBLEMS[work["lab"]]
        work["todos"] = {}
    results, problem = run_checks(work["todos"], rubric, limits) if work["todos"] else ({}, "")
    if problem:
        grades["status"], grades["problem"] = "incomplete", problem
    elif grades["status"] == "graded" and not work["todos"]:
        grades["status"], grades["problem"] = "not graded", "no TODO cells found in the notebook"
    missing, unplaced = answer_problems(work, rubric)
    if grades["status"] == "graded" and missing:
        grades["status"] = "answers missing"
    grades["problem"] = "; ".join(p for p in (grades["problem"], missing, unplaced) if p)
    total = 0.0
    for cid, check in rubric["checks"].items():
        result = results.get(cid)
        if result is None:
            reason = problem or ("TODO cell not found" if check["todo"] not in work["todos"] else "not checked")
            result = {"points": 0, "hint": reason}
        notes = work["todo_notes"].get(check["todo"], []) if result["points"] < check["points"] else []
        grades[f"{cid} points"] = result["points"]
        grades[f"{cid} hint"] = " ".join([result["hint"], *(f"(The TODO {n}.)" for n in notes)]).strip()
        total += result["points"]
    grades["total"] = total
    grades["max"] = sum(c["points"] for c in rubric["checks"].values())
    for key in rubric.get("checkpoints", {}):
        answers[key] = work["answers"].get(key, "")
        answers[f"{key} found"] = work["found"].get(key, "")
    answers["unplaced"] = "\n\n".join(work["unplaced"])
    return grades, answers


def expand(paths: list[str]) -> list[Path]:
    """Files as given; folders become their ``*.ipynb`` and ``*.json`` files, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(q for q in p.iterdir() if q.suffix in (".ipynb", ".json")) if p.is_dir() else [p]
    return out


def grade(paths: list[str], out: Path, rubric_path: str | Path = DEFAULT_RUBRIC, limits: Limits = Limits(),
          workers: int = 2, progress: bool = True, manual: str | Path | None = None) -> pd.DataFrame:
    """Grade every student (one row each); write ``grades.csv``, ``answers.csv`` and ``grading.html`` into
    ``out``. ``manual``: a ``scores.csv`` exported from grading.html, merged into grades.csv."""
    from tqdm.auto import tqdm

    rubric = load_rubric(rubric_path)
    scores = read_scores(manual, rubric) if manual else None  # a bad file fails before the long grading run
    handins = collect(expand(paths), list(rubric.get("checkpoints", {})))
    if not handins:
        raise ValueError("no submissions found (give .ipynb or .json files, or folders holding them)")
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(tqdm(pool.map(lambda h: grade_submission(h, rubric, limits), handins), total=len(handins),
                         desc="grading", unit="student", disable=not progress))
    grades = pd.DataFrame([g for g, _ in rows]).set_index("student")
    answers = pd.DataFrame([a for _, a in rows]).set_index("student")
    if scores is not None:
        grades = merge_scores(grades, scores, rubric, manual)
    save_csv(grades, out / "grades.csv")
    save_csv(answers, out / "answers.csv")
    write_atomic(out / "grading.html", render_grading(grades, answers, rubric, storage_key=str(out.resolve())))
    return grades
