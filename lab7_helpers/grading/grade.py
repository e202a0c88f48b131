"""``lab7 grade``: grade a class's notebooks; Checkpoint answers are collected for manual grading.

Each submission's TODO code runs in its own bubblewrap sandbox (``sandbox.py``), where ``worker`` only computes: it
runs the TODO cells, then calls the student's functions on inputs chosen here and returns plain JSON. The judging
happens in this process: the notebook's own self-checks (``checks.TODOS``) run with the student's functions
standing in as ``RemoteFunction``s, on inputs drawn from a seed chosen anew for each grading run, and each check's
points are capped by the rubric. Rows belong to the files handed in (``identity.py``).
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import random
import resource
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import pandas as pd
import torch

from .. import checks
from ..outputs import formula_safe, save_csv, write_atomic
from . import sandbox
from .manual import merge_scores, read_scores
from ..judging import blind_summary, summary_text
from .class_page import render_class
from .page import render_grading
from .submissions import Handin, answer_problems, collect
from .worker import DTYPES, encode

MAX_REPLY_BYTES = 8 * 2**20  # one reply from a worker; more is a flood that costs that submission
MAX_ITEMS = 100_000  # numbers, rows or items in one value the grader decodes (held here, not in the worker)
GRADING_PAIRS = 3  # how many pairs of the bundled sample a grading run gives the TODO cells as train_pairs
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
    """The rubric as a dict: ``checks`` (check id -> ``todo`` cell, ``title``, ``points``: ``checks.TODOS``, with the
    rubric's ``[checks.<id>]`` overriding ``title`` and ``points``) and ``checkpoints`` (id -> ``question``,
    ``points``, ``full_answer``). A clear error names a missing or bad field."""
    path = Path(path)
    try:
        rubric = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{path}: cannot read the rubric: {err}") from err
    for key, item in rubric.get("checkpoints", {}).items():
        missing = [f for f in ("question", "points") if f not in item]
        if missing:
            raise ValueError(f"{path}: [checkpoints.{key}] needs {', '.join(missing)}")
    merged = {}
    for key, item in rubric.get("checks", {}).items():
        if key not in checks.TODOS:
            raise ValueError(f"{path}: [checks.{key}] is not an automatic check (known: {', '.join(checks.TODOS)})")
        extra = sorted(set(item) - {"title", "points"})
        if extra:
            raise ValueError(f"{path}: [checks.{key}] may set only title and points, not {', '.join(extra)}")
    for key, todo in checks.TODOS.items():
        item = {"todo": todo.cell, "title": todo.title, "points": todo.points, **rubric.get("checks", {}).get(key, {})}
        if isinstance(item["points"], bool) or not isinstance(item["points"], (int, float)) or item["points"] < 0:
            raise ValueError(f"{path}: [checks.{key}] points must be a number >= 0")
        merged[key] = item
    return {**rubric, "checks": merged}


@dataclass(frozen=True)
class GradingRun:
    """What one grading run shows every hand-in: a fresh seed for the checks' inputs and the TODO cells'
    ``train_pairs``, so that no hand-in can know them in advance."""

    seed: int = field(default_factory=lambda: secrets.randbelow(2**31))

    @cached_property
    def train_pairs(self) -> list[dict]:
        from ..sources.pair_files import BUNDLED_PAIRS, load_pairs

        return random.Random(self.seed).sample(load_pairs(BUNDLED_PAIRS), GRADING_PAIRS)


def _limit_resources(limits: Limits) -> None:
    memory = int(limits.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.wall_seconds, limits.wall_seconds + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 2**20,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


class WorkerFailed(Exception):
    """The submission's process crashed, hung, flooded its output or broke the protocol (the reason is the
    message; it costs that submission, never the class)."""


class Worker:
    """One submission's sandboxed process, spoken to in JSON lines with a deadline and a size cap on each reply."""

    def __init__(self, limits: Limits, sandboxed: bool):
        self.limits, self.problem = limits, ""
        self.deadline = time.monotonic() + limits.wall_seconds
        self._buffer = bytearray()
        self._stderr = tempfile.TemporaryFile()
        module, env = ["-m", "lab7_helpers.grading.worker"], sandbox.environment()
        self._seccomp = sandbox.seccomp_file() if sandboxed else None
        fds = [self._seccomp.fileno()] if self._seccomp else []
        if sandboxed:
            argv, self._workdir = sandbox.command(module, fds[0] if fds else None), None
        else:
            self._workdir = tempfile.TemporaryDirectory(prefix="lab7_grade_")
            package = Path(sandbox.lab7_helpers.__file__).resolve().parent
            env.update(HOME=self._workdir.name, PYTHONPATH=str(package.parent))
            argv = [sys.executable, "-s", *module]
        self.process = subprocess.Popen(argv, env=env, cwd=self._workdir.name if self._workdir else None,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                        pass_fds=fds, start_new_session=True,
                                        preexec_fn=partial(_limit_resources, limits))

    def request(self, message: dict | None, seconds: float | None = None) -> dict:
        """Send one request (None: just read, for the worker's first line); the reply as a dict, or WorkerFailed
        (also for every request after a failure). ``seconds`` bounds this reply, the wall limit all of them."""
        if self.problem:
            raise WorkerFailed(self.problem)
        deadline = min(self.deadline, time.monotonic() + seconds) if seconds else self.deadline
        try:
            if message is not None:
                self.process.stdin.write(json.dumps(message).encode() + b"\n")
                self.process.stdin.flush()
            reply = json.loads(self._read_line(deadline))
            if not isinstance(reply, dict):
                raise ValueError("not a JSON object")
            return reply
        except TimeoutError:
            self._fail(f"stopped after {self.limits.wall_seconds} s (an endless loop?)" if deadline == self.deadline
                       else f"stopped: it ran longer than {seconds:g} s (an endless loop?)")
        except EOFError:
            self._fail(self._crash_reason())
        except OSError:
            self._fail(self._crash_reason() if self.process.poll() is not None else "it closed its input")
        except ValueError as err:  # json.JSONDecodeError and the size cap
            self._fail(f"its output could not be read ({str(err)[:80]})")
        raise WorkerFailed(self.problem)

    def _read_line(self, deadline: float) -> bytes:
        stdout, searched = self.process.stdout.fileno(), 0
        while (end := self._buffer.find(b"\n", searched)) < 0:
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise ValueError(f"more than {MAX_REPLY_BYTES // 2**20} MB in one reply")
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(stdout, 1 << 16)
            if not chunk:
                raise EOFError
            searched = len(self._buffer)
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return line

    def _fail(self, problem: str) -> None:
        self.problem = problem
        self.close()

    def _crash_reason(self) -> str:
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            return {"SIGXCPU": "used more than its CPU time", "SIGKILL": "was killed (memory limit?)"}.get(
                name, f"was stopped by {name}")
        self._stderr.seek(max(0, self._stderr.seek(0, os.SEEK_END) - 4096))
        stderr = self._stderr.read().decode("utf-8", "replace")
        last = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["no message"]
        if "MemoryError" in last[0] or "Cannot allocate" in stderr:
            return "ran out of memory (limit reached)"
        return f"crashed: {last[0][:200]}"

    def close(self) -> None:
        """Kill the whole process group (in the sandbox, everything in its PID namespace dies with it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for handle in (self.process.stdin, self.process.stdout, self._stderr, self._seccomp):
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
        if self._workdir is not None:
            self._workdir.cleanup()


class TooLarge(ValueError):
    """A value with more than ``MAX_ITEMS`` items: the check that asked for it fails, the others go on."""


class RemoteFunction:
    """A student's function as the checks see it: called on the grader's inputs, computed in the sandbox.

    Returned tensors are rebuilt here. A tensor that needs a gradient comes with its sum's gradient ``g`` for each
    input ``x``, and is rebuilt as ``value + sum((x * g).sum() - (x * g).sum().detach()) / value.numel()``: the
    same value, and ``value.sum().backward()`` gives each input the gradient the student's code produced.
    """

    def __init__(self, worker: Worker, handle: int, name: str = "the function"):
        self.worker, self.handle, self.__name__ = worker, handle, name

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise TypeError(f"{self.__name__}() is called with positional arguments only")
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        reply = self.worker.request({"call": self.handle, "args": [encode(a) for a in args]},
                                    self.worker.limits.todo_seconds + 2)
        return decode_reply(reply, inputs)


class Rows:
    """A student's dataset as data: column names and rows, read-only (what the dataset check looks at)."""

    def __init__(self, columns: list[str], rows: list[dict]):
        self.column_names, self._rows = columns, rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict:
        return self._rows[index]


class Opaque:
    """A value the protocol does not carry (a module, a class instance): any check fails on it with a hint."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def raised(kind: str, message: str) -> Exception:
    """The student's exception, rebuilt under its own type name so that hints read ``TypeError: ...``."""
    name = kind if isinstance(kind, str) and kind.isidentifier() and len(kind) <= 40 else "Exception"
    return type(name, (Exception,), {})(str(message)[:300])


def decode_reply(reply: dict, inputs: list[torch.Tensor] = (), worker: Worker | None = None):
    """The value in a worker's reply; its error re-raised; anything malformed is WorkerFailed."""
    if "error" in reply:
        error = reply["error"]
        if not (isinstance(error, list) and len(error) == 2):
            raise WorkerFailed("its output could not be read (a malformed error)")
        raise raised(*error)
    if "value" not in reply:
        raise WorkerFailed("its output could not be read (no value)")
    try:
        return decode(reply["value"], inputs, worker)
    except TooLarge:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise WorkerFailed(f"its output could not be read ({type(err).__name__})") from None


def decode(item, inputs=(), worker: Worker | None = None, depth: int = 0):
    """Rebuild a value from ``worker.encode``'s form; raises (KeyError, TypeError, ValueError) on anything else."""
    if depth > 10:
        raise ValueError("nested too deeply")
    if item is None or isinstance(item, (bool, int, float, str)):
        return item
    if not isinstance(item, dict):
        raise TypeError("not an encoded value")
    if "tensor" in item:
        tensor = _tensor(item)
        if item["requires_grad"] is True and tensor.is_floating_point():
            pairs = [(x, _tensor(g)) for x, g in zip(inputs, item.get("grads") or []) if g is not None]
            if any(x.shape != g.shape for x, g in pairs):
                raise ValueError("a gradient of the wrong shape")
            links = [(x * g).sum() - (x * g).sum().detach() for x, g in pairs]
            # spread over the elements, so that the sum's gradient (what the checks take) is each input's g
            return tensor + (sum(links) / tensor.numel()).to(tensor.dtype) if links else tensor.requires_grad_(True)
        return tensor
    (kind, value), = item.items()
    if kind == "ellipsis":
        return Ellipsis
    if isinstance(value, list) and len(value) > MAX_ITEMS or kind == "dataset" and len(value["rows"]) > MAX_ITEMS:
        raise TooLarge(f"it holds more than {MAX_ITEMS} items, more than the grader reads")
    if kind in ("list", "tuple"):
        return (list if kind == "list" else tuple)(decode(v, inputs, worker, depth + 1) for v in value)
    if kind == "dict":
        return {decode(k, (), None, depth + 1): decode(v, (), None, depth + 1) for k, v in value}
    if kind == "dataset":
        rows = [decode(r, (), None, depth + 1) for r in value["rows"]]
        if not all(isinstance(r, dict) for r in rows) or not all(isinstance(c, str) for c in value["columns"]):
            raise TypeError("a malformed dataset")
        return Rows(list(value["columns"]), rows)
    if kind == "function" and worker is not None:
        return RemoteFunction(worker, int(value))
    if kind in ("function", "object"):
        return Opaque(str(value)[:40])
    raise TypeError(f"unknown kind {kind[:20]!r}")


def _tensor(item: dict) -> torch.Tensor:
    shape = [int(n) for n in item["shape"]]
    values = item["tensor"]
    if isinstance(values, list) and len(values) > MAX_ITEMS:
        raise TooLarge(f"a tensor of more than {MAX_ITEMS} values, more than the grader reads")
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values) or \
            len(values) != math.prod(shape):
        raise ValueError("a malformed tensor")
    return torch.tensor(values, dtype=DTYPES[item["dtype"]]).reshape(shape)


def _judge(check_id: str, check: dict, worker: Worker, run: GradingRun) -> dict:
    """Run the grader's own check on the student's values; points capped by the rubric."""
    todo = checks.TODOS[check_id]
    values = {"train_pairs": run.train_pairs}  # the grader's own, not what a TODO cell may have changed
    for name in todo.names:
        if name in values:
            continue
        try:
            values[name] = decode_reply(worker.request({"get": name}, worker.limits.todo_seconds + 2), (), worker)
        except WorkerFailed:
            raise
        except TooLarge as err:
            return {"points": 0.0, "hint": f"{name}: {err}"}
        except Exception as err:  # noqa: BLE001 - e.g. the TODO cell did not define the name
            return {"points": 0.0, "hint": f"your code raised {checks.describe_error(err)}"}
        if isinstance(values[name], RemoteFunction):
            values[name].__name__ = name
    result = todo(values, check["points"], run.seed)  # a check never raises: errors become its hint
    if worker.problem:
        raise WorkerFailed(worker.problem)
    points = min(float(result.points), float(check["points"])) if result.passed is True else 0.0
    return {"points": max(points, 0.0), "hint": " ".join(str(result.hint).split())[:300]}


def run_checks(todos: dict[str, str], rubric: dict, limits: Limits, sandboxed: bool = True,
               run: GradingRun | None = None) -> tuple[dict, str]:
    """Run ``todos`` in a fresh sandboxed worker and judge them here. Returns (results by check id, problem)."""
    run = run or GradingRun()
    wanted = {c["todo"] for c in rubric["checks"].values()}
    worker = Worker(limits, sandboxed)
    results: dict[str, dict] = {}
    try:
        worker.request(None)  # "ready": the imports are done
        sent = {t: code for t, code in todos.items() if t in wanted}
        reply = worker.request({"todos": sent, "todo_timeout": limits.todo_seconds, "train_pairs": run.train_pairs},
                               limits.todo_seconds * len(sent) + 2)
        errors = reply.get("todos")
        if not isinstance(errors, dict):
            raise WorkerFailed("its output could not be read (no TODO results)")
        for cid, check in rubric["checks"].items():
            if check["todo"] not in todos:
                results[cid] = {"points": 0.0, "hint": "TODO cell not found"}
            elif errors.get(check["todo"]):
                results[cid] = {"points": 0.0, "hint": str(errors[check["todo"]])[:300]}
            else:
                results[cid] = _judge(cid, check, worker, run)
    except WorkerFailed as err:
        return results, str(err)
    finally:
        worker.close()
    return results, ""


def lab_answers_used(code: str, todo_cell: str) -> list[str]:
    """The lab's own functions that answer the checks of ``todo_cell`` (``Todo.answered_by``) and that ``code``
    calls (``lab.dpo_loss(...)``, or imported from ``lab7_helpers``): the checks cannot tell that from honest work."""
    answers = {name for todo in checks.TODOS.values() if todo.cell == todo_cell for name in todo.answered_by}
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("lab7_helpers") for alias in node.names}
    return sorted(answers & used)


def grade_submission(handin: Handin, rubric: dict, limits: Limits, sandboxed: bool = True,
                     run: GradingRun | None = None) -> tuple[dict, dict]:
    """One row of grades.csv and one of answers.csv for one student's hand-in; never raises: whatever goes wrong
    with this hand-in becomes its status and a one-line reason."""
    grades: dict = {"student": handin.student, "file": str(handin.path), "status": "graded", "problem": "",
                    "names typed in it": "; ".join(dict.fromkeys(handin.typed_names)),
                    "set aside": "; ".join(handin.set_aside)}
    answers: dict = {"student": handin.student}
    try:
        _grade(handin, rubric, limits, sandboxed, run or GradingRun(), grades, answers)
    except Exception as err:  # noqa: BLE001 - a grader-side failure on this file must not stop the class
        problem = " ".join(f"could not be graded ({checks.describe_error(err)})".split())[:300]
        grades.update(status="not graded", problem=problem)
        grades.update({f"{cid} {column}": value for cid in rubric["checks"]
                       for column, value in (("points", 0.0), ("hint", "not graded"))})
        grades.update(total=0.0, max=sum(c["points"] for c in rubric["checks"].values()))
    if handin.conflicts:  # who is whose: shown on every row it concerns, never resolved by the grader
        grades["problem"] = "; ".join(p for p in (f"identity: {'; '.join(handin.conflicts)}", grades["problem"]) if p)
    return grades, answers


def _grade(handin: Handin, rubric: dict, limits: Limits, sandboxed: bool, run: GradingRun, grades: dict,
           answers: dict) -> None:
    """Fill in ``grades`` and ``answers`` (``grade_submission``'s rows) for ``handin``."""
    work = handin.work or {"lab": "not graded", "todos": {}, "todo_notes": {}, "answers": {}, "found": {},
                           "unplaced": [], "report": None}
    if work["lab"] != "lab 7":
        grades["status"], grades["problem"] = work["lab"], handin.problem or LAB_PROBLEMS[work["lab"]]
        work["todos"] = {}
    try:
        results, problem = run_checks(work["todos"], rubric, limits, sandboxed, run) if work["todos"] else ({}, "")
    except Exception as err:  # noqa: BLE001 - a grader-side failure on this file must not stop the class
        results, problem = {}, f"could not be graded ({checks.describe_error(err)[:200]})"
    if problem:
        grades["status"], grades["problem"] = "incomplete", problem
    elif grades["status"] == "graded" and not work["todos"]:
        grades["status"], grades["problem"] = "not graded", "no TODO cells found in the notebook"
    missing, unplaced = answer_problems(work, rubric)
    if grades["status"] == "graded" and missing:
        grades["status"] = "answers missing"
    called = [f"the {cell} TODO calls the lab's own {', '.join(names)}: read that cell"
              for cell, code in work["todos"].items() if (names := lab_answers_used(code, cell))]
    grades["problem"] = "; ".join(p for p in (grades["problem"], missing, unplaced, *called) if p)
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
    for key in dict.fromkeys([*rubric.get("checkpoints", {}), *work["answers"]]):
        answers[key] = work["answers"].get(key, "")  # the rubric's Checkpoints, then an original lab's own
        answers[f"{key} found"] = work["found"].get(key, "")
    answers["unplaced"] = "\n\n".join(work["unplaced"])
    judgements = (work.get("report") or {}).get("judgements")
    answers["blind result"] = summary_text(blind_summary(judgements)) if judgements else ""


def expand(paths: list[str]) -> list[Path]:
    """Files as given; folders become their ``*.ipynb`` and ``*.json`` files, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(q for q in p.iterdir() if q.suffix in (".ipynb", ".json")) if p.is_dir() else [p]
    return out


def grade(paths: list[str], out: Path, rubric_path: str | Path = DEFAULT_RUBRIC, limits: Limits = Limits(),
          workers: int = 2, progress: bool = True, sandboxed: bool = True,
          manual: str | Path | None = None) -> pd.DataFrame:
    """Grade every student (one row each); write ``grades.csv``, ``answers.csv``, ``grading.html`` and
    ``class.html`` (the class's blind judgements, for the discussion) into ``out``. ``manual``: a ``scores.csv``
    exported from grading.html, merged into grades.csv.

    ``sandboxed=False`` runs the students' code without bubblewrap (only the audit hook and the limits): for a
    class you trust. ValueError (one sentence) when bubblewrap is needed but missing, or for a bad rubric.
    """
    from tqdm.auto import tqdm

    rubric = load_rubric(rubric_path)
    scores = read_scores(manual, rubric) if manual else None  # a bad file fails before the long grading run
    handins = collect(expand(paths), list(rubric.get("checkpoints", {})))
    if not handins:
        raise ValueError("no submissions found (give .ipynb or .json files, or folders holding them)")
    if sandboxed:
        sandbox.check_available()
    out.mkdir(parents=True, exist_ok=True)
    run = GradingRun()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(tqdm(pool.map(lambda h: grade_submission(h, rubric, limits, sandboxed, run), handins),
                         total=len(handins), desc="grading", unit="student", disable=not progress))
    grades = pd.DataFrame([g for g, _ in rows]).set_index("student")
    answers = pd.DataFrame([a for _, a in rows]).set_index("student")
    reports = {h.student: (h.work or {}).get("report") for h in handins}
    if scores is not None:
        grades = merge_scores(grades, scores, rubric, manual)
    save_csv(formula_safe(grades), out / "grades.csv")
    save_csv(formula_safe(answers), out / "answers.csv")
    write_atomic(out / "grading.html", render_grading(grades, answers, rubric, storage_key=str(out.resolve())))
    write_atomic(out / "class.html", render_class(reports, answers))
    return grades
