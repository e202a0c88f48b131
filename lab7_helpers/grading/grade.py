"""``lab7 grade``: grade a class's notebooks. Each submission's TODO code runs in its own sandboxed process
(``worker``) with time, CPU and memory limits; Checkpoint answers are collected for manual grading."""

from __future__ import annotations

import html
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
from .submissions import SubmissionError, read_submission

DEFAULT_RUBRIC = Path(__file__).with_name("rubric.toml")


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


def grade_submission(path: Path, rubric: dict, limits: Limits) -> tuple[dict, dict]:
    """One row of grades.csv and one of answers.csv for the file at ``path``."""
    grades: dict = {"student": path.stem, "file": str(path), "status": "graded", "problem": ""}
    answers: dict = {"student": path.stem}
    try:
        work = read_submission(path)
    except SubmissionError as err:
        work, grades["status"], grades["problem"] = {"todos": {}, "answers": {}}, "not graded", str(err)
    results, problem = run_checks(work["todos"], rubric, limits) if work["todos"] else ({}, "")
    if problem:
        grades["status"], grades["problem"] = "incomplete", problem
    elif grades["status"] == "graded" and not work["todos"]:
        grades["status"], grades["problem"] = "not graded", "no TODO cells found in the notebook"
    total = 0.0
    for cid, check in rubric["checks"].items():
        result = results.get(cid)
        if result is None:
            reason = problem or ("TODO cell not found" if check["todo"] not in work["todos"] else "not checked")
            result = {"points": 0, "hint": reason}
        grades[f"{cid} points"] = result["points"]
        grades[f"{cid} hint"] = result["hint"]
        total += result["points"]
    grades["total"] = total
    grades["max"] = sum(c["points"] for c in rubric["checks"].values())
    for key in rubric.get("checkpoints", {}):
        answers[key] = work["answers"].get(key, "")
    return grades, answers


def expand(paths: list[str]) -> list[Path]:
    """Files as given; folders become their ``*.ipynb`` and ``*.json`` files, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(q for q in p.iterdir() if q.suffix in (".ipynb", ".json")) if p.is_dir() else [p]
    return out


def grade(paths: list[str], out: Path, rubric_path: str | Path = DEFAULT_RUBRIC, limits: Limits = Limits(),
          workers: int = 2, progress: bool = True) -> pd.DataFrame:
    """Grade every submission; write ``grades.csv``, ``answers.csv`` and ``grading.html`` into ``out``."""
    from tqdm.auto import tqdm

    rubric = load_rubric(rubric_path)
    files = expand(paths)
    if not files:
        raise ValueError("no submissions found (give .ipynb or .json files, or folders holding them)")
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(tqdm(pool.map(lambda f: grade_submission(f, rubric, limits), files), total=len(files),
                         desc="grading", unit="notebook", disable=not progress))
    grades = pd.DataFrame([g for g, _ in rows]).set_index("student")
    answers = pd.DataFrame([a for _, a in rows]).set_index("student")
    save_csv(grades, out / "grades.csv")
    save_csv(answers, out / "answers.csv")
    write_atomic(out / "grading.html", render_grading(grades, answers, rubric))
    return grades


def render_grading(grades: pd.DataFrame, answers: pd.DataFrame, rubric: dict) -> str:
    """One page: a summary table, then each student's check results and answers next to the rubric."""
    esc = html.escape
    summary = grades[["status", "problem", "total", "max"]].to_html(border=0, classes="table")
    parts = ["<h1>Lab 7 grading</h1>", summary]
    for student, row in grades.iterrows():
        parts.append(f"<h2 id='{esc(str(student))}'>{esc(str(student))}: {row['total']:g} / {row['max']:g} "
                     f"(automatic)</h2>")
        if row["problem"]:
            parts.append(f"<p class='problem'>{esc(row['problem'])}</p>")
        parts.append("<table class='table'><tr><th>check</th><th>points</th><th>hint</th></tr>" + "".join(
            f"<tr><td>{esc(c['title'])}</td><td>{row[f'{cid} points']:g} / {c['points']:g}</td>"
            f"<td>{esc(str(row[f'{cid} hint']))}</td></tr>" for cid, c in rubric["checks"].items()) + "</table>")
        parts.append("<table class='table'><tr><th>Checkpoint</th><th>answer</th><th>a full answer</th>"
                     "<th>points</th></tr>" + "".join(
                         f"<tr><td>{esc(c['question'])}</td><td class='answer'>"
                         f"{esc(str(answers.loc[student, key])) or '<em>(empty)</em>'}</td>"
                         f"<td>{esc(c.get('full_answer', ''))}</td><td>__ / {c['points']:g}</td></tr>"
                         for key, c in rubric.get("checkpoints", {}).items()) + "</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             ".table{border-collapse:collapse;font-size:14px;margin:1em 0}.table td,.table th{border:1px solid #ccc;"
             "padding:4px 8px;vertical-align:top}.answer{white-space:pre-wrap;max-width:420px}"
             ".problem{color:#b00020}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Lab 7 grading</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
