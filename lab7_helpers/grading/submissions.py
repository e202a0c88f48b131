"""A student's work as data: the code of each TODO cell and the text of each Checkpoint answer.

Read from a submitted notebook (``.ipynb``, as Colab, Jupyter or VS Code save it; the JSON is read directly, so a
file that ``nbformat.validate`` rejects still counts) or from the answers file a student exported with
``export_answers()`` (``.json``).

- **TODO cells**: the cell with ``todo`` metadata; without it, the last code cell that defines what the TODO
  defines (``TODO_DEFINES``). Names the TODO uses that the student defined in cells of their own (an extra import,
  a helper function) come along, so the TODO grades as it runs in the notebook: only statements that just define
  (imports, ``def``, ``class``, assignments without calls), never code that trains or computes.
- **Checkpoint answers**: the answer cell's ``checkpoint`` metadata first; when it is missing or empty, by
  position: the text the student added under the question (``questions.json`` holds the notebook's questions),
  in the question cell itself or in the markdown cells after it, up to the next question, heading, code cell or
  text of the lab's own. Questions are matched word by word, so small edits still match. The placeholder
  (``ANSWER_PROMPT``) never counts. Each answer records how it was found; student text that belongs to no question
  is kept in ``unplaced``.
"""

from __future__ import annotations

import ast
import builtins
import json
import re
import time
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from functools import cache
from pathlib import Path

from ..checks import TODOS
from .identity import clean_name, conflicts, identities

ANSWER_PROMPT = "*Your answer:*"
PROMPTS = (ANSWER_PROMPT, "Your answer:", "*Your answer*")  # the placeholder, also as students half-delete it
# What the grader's worker defines before it runs the TODO cells (worker.grading_namespace; a test keeps them equal)
PROVIDED_NAMES = frozenset({"lab", "torch", "Dataset", "os", "sys", "train_pairs", "test_pairs"})
TODO_DEFINES: dict[str, tuple[str, ...]] = {}  # TODO cell -> what it defines: recognises it without metadata
for _todo in TODOS.values():
    TODO_DEFINES[_todo.cell] = (*TODO_DEFINES.get(_todo.cell, ()), *(n for n in _todo.names if n not in PROVIDED_NAMES))
# Bounds on what reading one hand-in may cost the grader (a Colab notebook of this lab: about 90 cells, 1-5 MB)
MAX_FILE_MB, MAX_CELLS, READ_SECONDS = 50, 5000, 20.0
QUESTION_WINDOW = 4000  # characters at the start of a cell in which a Checkpoint question is looked for
# Only the original Lab 7 notebook (before this course's version) has these
ORIGINAL_LAB7_MARKERS = ("def kl_tokenwise", "def load_dpo_jsonl", "## Optimizing GPT-2 with KL Regularization")
QUESTIONS_FILE = Path(__file__).with_name("questions.json")
MATCH = 0.8  # word-level similarity for "the same question" (and 0.9 for "the lab's own text")
LAB_TEXT_MATCH = 0.9
NAME_PLACEHOLDERS = {"", "...", "your name", "your name here", "first last", "firstname lastname"}
WORD = re.compile(r"[\w$\\^{}]+")  # a word of a question or of the lab's text (LaTeX's $, \, ^ and braces kept)


class SubmissionError(ValueError):
    """The file is not a Lab 7 notebook or answers file."""


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else str(source or "")


def _words(text: str) -> list[str]:
    """Lower-case words without punctuation or markdown, so that ``**Checkpoint 1**`` and ``Checkpoint 1`` match."""
    return WORD.findall(text.lower())


def _without_prompt(text: str) -> str:
    for prompt in PROMPTS:  # wherever it is: students type above it as often as after it
        text = text.replace(prompt, "")
    return text.strip()


@cache
def lab_questions() -> dict:
    """``{"questions": {checkpoint: question cell text}, "lab_text": [markdown of the lab's own cells]}``."""
    return json.loads(QUESTIONS_FILE.read_text(encoding="utf-8"))


@cache
def original_questions() -> dict:
    """The same for the original Lab 7 notebook (``original_questions.json``, written once from its text): its
    Checkpoints as ``original 1`` to ``original 7``, and the paragraphs of its own text."""
    return json.loads(QUESTIONS_FILE.with_name("original_questions.json").read_text(encoding="utf-8"))


def questions_from_notebook(notebook: dict) -> dict:
    """What ``questions.json`` holds, from the student notebook: each answer cell's preceding markdown cell is its
    question; every markdown cell but the answer cells is the lab's own text."""
    questions, lab_text = {}, []
    cells = notebook["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        checkpoint = cell["metadata"].get("checkpoint")
        if checkpoint:
            questions[checkpoint] = _text(cells[i - 1]["source"])
        else:
            lab_text.append(_text(cell["source"]))
    return {"questions": questions, "lab_text": lab_text}


def _question_end(question: list[str], text: str) -> tuple[float, int, int] | None:
    """Where ``question`` (its words) sits in ``text``: (similarity, start, end character), or None if not there.
    Only the start of ``text`` (``QUESTION_WINDOW``) is searched: a question opens its cell."""
    text = text[:QUESTION_WINDOW]
    spans = list(WORD.finditer(text.lower()))
    words = [m[0] for m in spans]
    blocks = [b for b in SequenceMatcher(None, question, words, autojunk=False).get_matching_blocks() if b.size]
    matched = sum(b.size for b in blocks)
    if not blocks or matched < MATCH * len(question):
        return None
    first, last = blocks[0].b, blocks[-1].b + blocks[-1].size
    similarity = 2 * matched / (len(question) + last - first)
    if similarity < MATCH:
        return None
    start, end = spans[first].start(), spans[last - 1].end()
    line_start = text.rfind("\n", 0, start) + 1
    if not re.search(r"\w", text[line_start:start]):  # "### " or "**" before the question's first word
        start = line_start
    end += len(re.match(r"[^\w\s]*", text[end:])[0])  # the question's closing "?", "." or "**"
    return similarity, start, end


def _is_lab_text(text: str, lab_text: dict[str, list[str]]) -> bool:
    key = " ".join(_words(text))
    if key in lab_text:
        return True
    words = key.split()
    return any(SequenceMatcher(None, words, other, autojunk=False).ratio() >= LAB_TEXT_MATCH
               for other in lab_text.values() if abs(len(other) - len(words)) <= 0.2 * len(other) + 2)


def _own_text(text: str, lab_text: dict[str, list[str]]) -> tuple[bool, str]:
    """(whether ``text`` opens with the lab's own text, its paragraphs that are not the lab's own)."""
    if _is_lab_text(text, lab_text):
        return True, ""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n|\n(?=#)", text) if p.strip()]  # a heading starts one too
    own = [p for p in paragraphs if not _is_lab_text(p, lab_text)]
    return bool(paragraphs) and paragraphs[0] not in own, "\n\n".join(own)


def find_answers(cells: list[dict], questions: dict[str, str], lab_text: list[str]) -> tuple[dict, dict, list[str]]:
    """(answers {checkpoint: text}, how each was found {checkpoint: how}, unplaced texts) from a notebook's cells,
    for the notebook's ``questions`` (id -> question cell text) and ``lab_text`` (its own markdown).

    ``how`` is "metadata", "question cell", "cell after question" or both of the last joined by " + ".
    SubmissionError if it takes longer than ``READ_SECONDS``.
    """
    deadline = time.monotonic() + READ_SECONDS
    questions = {k: _words(q) for k, q in questions.items()}
    lab_text = {" ".join(_words(t)): _words(t) for t in lab_text}
    by_metadata, by_position, unplaced = {}, {}, []  # by_position: checkpoint -> [(text, how it was found)]
    current = None  # the question whose answer region we are in
    for index, cell in enumerate(cells):
        if time.monotonic() > deadline:
            raise SubmissionError(f"finding its answers took longer than {READ_SECONDS:g} s")
        kind, meta, text = cell.get("cell_type"), cell.get("metadata") or {}, _text(cell.get("source"))
        if kind != "markdown":
            current = None
            continue
        if meta.get("checkpoint"):
            by_metadata[str(meta["checkpoint"])] = _without_prompt(text)
            if meta["checkpoint"] != current:
                current = None
            continue
        found = [(hit, key) for key, words in questions.items() if (hit := _question_end(words, text))]
        if found:
            (_, start, end), key = max(found)
            before, after = _own_text(text[:start], lab_text)[1], _without_prompt(_own_text(text[end:], lab_text)[1])
            if before:
                unplaced.append(f"cell {index + 1}, above the question of Checkpoint {key}: {before}")
            current, by_position[key] = key, [(after, "question cell")] if after else []
            continue
        opens_with_lab_text, own = _own_text(text, lab_text)
        if opens_with_lab_text:
            current = None
        answer = _without_prompt(own)
        if not answer:
            continue
        if current is None:
            unplaced.append(f"cell {index + 1}: {answer}")
        else:
            by_position[current].append((answer, "cell after question"))
    answers, how = {}, {}
    for key in [*questions, *(k for k in by_metadata if k not in questions)]:
        if by_metadata.get(key):
            answers[key], how[key] = by_metadata[key], "metadata"
        elif by_position.get(key):
            answers[key] = "\n\n".join(text for text, _ in by_position[key])
            how[key] = " + ".join(dict.fromkeys(way for _, way in by_position[key]))
        else:
            answers[key], how[key] = "", ""
    return answers, how, unplaced


def _code(source: str) -> str:
    """Cell code without IPython magics and shell lines, which are not Python."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _defines(source: str, name: str) -> bool:
    return re.search(rf"^(def\s+{name}\b|{name}\s*(:[^=\n]*)?=(?!=))", source, re.M) is not None


def _bound_and_used(tree: ast.AST) -> tuple[set[str], set[str]]:
    bound, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound, used


def _only_defines(statement: ast.stmt) -> bool:
    """An import, def, class, or an assignment that calls nothing (``F = torch.nn.functional``, a constant)."""
    if isinstance(statement, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
        return not any(isinstance(n, ast.Call) for n in ast.walk(statement.value) if not isinstance(n, ast.Lambda))
    return False


def _statements(source: str) -> list[tuple[ast.stmt, str]]:
    try:
        code = _code(source)
        return [(s, ast.get_source_segment(code, s) or "") for s in ast.parse(code).body]
    except SyntaxError:
        return []


def _with_own_definitions(todo: str, index: int, cells: list[dict], todo_names: set[str]) -> tuple[str, list[str]]:
    """The TODO's code, preceded by the student's own definitions above it that it needs, and notes on names that
    no cell above defines (or defines only by running code)."""
    code = _text(cells[index]["source"])
    try:
        bound, used = _bound_and_used(ast.parse(_code(code)))
    except SyntaxError:
        return code, []  # running it reports the syntax error
    known = PROVIDED_NAMES | todo_names | set(dir(builtins))  # never taken from the student's cells
    needed = (used | set(TODO_DEFINES.get(todo, ()))) - bound - known
    above = [(i, s, src) for i in range(index) if cells[i].get("cell_type") == "code"
             for s, src in _statements(_text(cells[i].get("source")))]
    taken: set[int] = set()  # positions in ``above`` of the definitions to run first
    notes, seen = [], set()
    while needed - seen:
        name = min(needed - seen)
        seen.add(name)
        defining = [(n, i, s, src) for n, (i, s, src) in enumerate(above) if name in _bound_and_used(s)[0]
                    and not isinstance(s, (ast.Expr, ast.For, ast.While, ast.If, ast.With))]
        runnable = [d for d in defining if _only_defines(d[2])]
        if runnable:
            n, _, statement, _ = runnable[-1]
            taken.add(n)
            needed |= _bound_and_used(statement)[1] - known
        elif defining:
            notes.append(f"uses {name}, which cell {defining[-1][1] + 1} defines by running code the grader does "
                         f"not run: define it in the TODO cell")
        else:
            notes.append(f"uses {name}, which no cell above the TODO defines")
    own = "\n".join(above[n][2] for n in sorted(taken))
    return (f"{own}\n\n{code}" if own else code), notes


def find_todos(cells: list[dict]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(code of each TODO, notes on names it uses that the notebook does not define before it)."""
    where: dict[str, int] = {}
    for index, cell in enumerate(cells):
        meta = cell.get("metadata") or {}
        if cell.get("cell_type") == "code" and meta.get("todo") and "todo" in meta.get("tags", ["todo"]):
            where[str(meta["todo"])] = index
    for todo, names in TODO_DEFINES.items():
        defining = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"
                    and any(_defines(_text(c.get("source")), n) for n in names)]
        if todo not in where and defining:
            where[todo] = defining[-1]  # the last definition is the one the notebook ends with
    todo_names = {n for names in TODO_DEFINES.values() for n in names}
    todos, notes = {}, {}
    for todo, index in sorted(where.items(), key=lambda item: item[1]):
        todos[todo], found = _with_own_definitions(todo, index, cells, todo_names)
        if found:
            notes[todo] = found
    return todos, notes


def student_name(cells: list[dict]) -> str:
    """The ``STUDENT_NAME = "..."`` the student filled in, or "" when it is missing or still the placeholder."""
    for cell in cells:
        if cell.get("cell_type") == "code":
            match = re.search(r"^STUDENT_NAME\s*=\s*(['\"])(.*?)\1", _text(cell.get("source")), re.M)
            if match and clean_name(match[2]).lower() not in NAME_PLACEHOLDERS:
                return clean_name(match[2])
    return ""


def extract(notebook: dict, checkpoints: list[str] | None = None) -> dict:
    """A notebook's JSON (as a dict) as ``{"lab", "student", "todos", "todo_notes", "answers", "found", "report",
    "unplaced"}``. ``lab`` is "lab 7", "original lab 7" or "not lab 7"."""
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise SubmissionError("not a Jupyter notebook (no list of cells)")
    if len(notebook["cells"]) > MAX_CELLS:
        raise SubmissionError(f"it has {len(notebook['cells'])} cells, more than the {MAX_CELLS} the grader reads")
    cells = [c for c in notebook["cells"] if isinstance(c, dict)]
    work = {"lab": "lab 7", "student": student_name(cells), "todos": {}, "todo_notes": {}, "answers": {},
            "found": {}, "unplaced": [], "report": None}
    if any(marker in _text(c.get("source")) for c in cells for marker in ORIGINAL_LAB7_MARKERS):
        original = original_questions()  # its TODOs are not this lab's; its answers are kept, by its questions
        work["answers"], work["found"], work["unplaced"] = find_answers(cells, original["questions"],
                                                                        original["lab_text"])
        return {**work, "lab": "original lab 7"}
    work["todos"], work["todo_notes"] = find_todos(cells)
    work["report"] = notebook_report(cells)
    ours = lab_questions()
    work["answers"], work["found"], work["unplaced"] = find_answers(
        cells, {k: q for k, q in ours["questions"].items() if checkpoints is None or k in checkpoints},
        ours["lab_text"])
    if not work["todos"] and not any(work["found"].values()) and not any(
            (c.get("metadata") or {}).get("checkpoint") or _question_end(_words(q), _text(c.get("source")))
            for c in cells for q in ours["questions"].values()):
        work["lab"] = "not lab 7"
    return work


ANSWERS_FILE_FIELDS = {  # field of an exported answers file -> (what it must be, its default)
    "student": ("text", ""), "todos": ("texts by name", {}), "todo_notes": ("lists of texts by name", {}),
    "answers": ("texts by name", {}), "found": ("texts by name", {}), "unplaced": ("a list of texts", []),
    "report": ("a report", None),
}
JUDGEMENT_FIELDS = {"prompt": str, "left_model": str, "right_model": str, "choice": str, "winner": str,
                    "left_words": int, "right_words": int}
MAX_JUDGEMENTS = 1000


def checked_report(report) -> dict | None:
    """The notebook's recorded report (``app.judge.BlindJudging.report``) with its judgements checked field by
    field, or None when there is none. SubmissionError names what is wrong."""
    if report is None:
        return None
    judgements = report.get("judgements") if isinstance(report, dict) else None
    if not isinstance(judgements, list) or len(judgements) > MAX_JUDGEMENTS:
        raise SubmissionError(f"its recorded blind judgement is not a list of at most {MAX_JUDGEMENTS} judgements")
    for row in judgements:
        if not (isinstance(row, dict) and all(isinstance(row.get(k), t) and not isinstance(row.get(k), bool)
                                              for k, t in JUDGEMENT_FIELDS.items()) and row["choice"] in "abt"):
            raise SubmissionError("a judgement in its recorded blind judgement is malformed")
    return report


def notebook_report(cells: list[dict]) -> dict | None:
    """The last report the notebook recorded: an output holding JSON with ``"lab7": "report"``."""
    for cell in reversed(cells):
        for output in reversed(cell.get("outputs") or []):
            value = ((output.get("data") or {}) if isinstance(output, dict) else {}).get("application/json")
            if isinstance(value, dict) and value.get("lab7") == "report":
                return checked_report(value)
    return None


def _is(kind: str, value) -> bool:
    texts = lambda items: all(isinstance(v, str) for v in items)  # noqa: E731
    if kind == "text":
        return isinstance(value, str)
    if kind == "a list of texts":
        return isinstance(value, list) and texts(value)
    if kind == "a report":
        return value is None or isinstance(value, dict)
    by_name = isinstance(value, dict) and texts(value)
    if kind == "texts by name":
        return by_name and texts(value.values())
    return by_name and all(isinstance(v, list) and texts(v) for v in value.values())


def answers_file(data: dict) -> dict:
    """An exported answers file as ``extract`` returns a notebook, each field checked first: SubmissionError names
    the first field of the wrong type."""
    work = {"lab": "lab 7"}
    for name, (kind, default) in ANSWERS_FILE_FIELDS.items():
        value = data.get(name, default)
        if not _is(kind, value):
            raise SubmissionError(f"its field {name!r} is not {kind} (a changed answers file?)")
        work[name] = value
    work["student"] = clean_name(work["student"])
    work["found"] = work["found"] or {k: "answers file" for k, v in work["answers"].items() if v}
    work["report"] = checked_report(work["report"])
    return work


def read_submission(path: str | Path, checkpoints: list[str] | None = None) -> dict:
    """Read a ``.ipynb`` or exported ``.json`` file into what ``extract`` returns."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_MB * 2**20:
            raise SubmissionError(f"the file is larger than {MAX_FILE_MB} MB (a notebook of this lab is a few MB)")
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise SubmissionError(f"not a notebook or answers file: cannot read it as JSON "
                              f"({str(err)[:200] or type(err).__name__})") from err
    if isinstance(data, dict) and data.get("format") == "lab7-answers":
        return answers_file(data)
    return extract(data, checkpoints)


def export_answers(path: str | Path = "lab7_answers.json", notebook_path: str | Path | None = None,
                   student: str = "", report: dict | None = None) -> Path:
    """Save this notebook's TODO code and Checkpoint answers, with the ``student``'s name or id and the blind
    judgement's ``report`` (else the one recorded in the notebook's outputs), to ``path`` (and download it, in
    Colab).

    In Colab the notebook is read from the running session; elsewhere pass ``notebook_path`` (save the notebook
    first: answers typed since the last save are not in the file).
    """
    try:
        from google.colab import _message, files  # type: ignore[import-not-found]
    except ImportError:
        _message = files = None
    if notebook_path is None and _message is not None:
        notebook = _message.blocking_request("get_ipynb", timeout_sec=30)["ipynb"]
    else:
        notebook = json.loads(Path(notebook_path or "lab7.ipynb").read_text(encoding="utf-8"))
    work = extract(notebook)
    work["report"] = checked_report(report) or work["report"]
    path = Path(path)
    text = json.dumps({"format": "lab7-answers", "student": student, **work}, indent=2, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
    empty = [k for k, v in work["answers"].items() if not v]
    print(f"Saved {len(work['answers'])} answers and {len(work['todos'])} TODO cells to {path}."
          + (f" Still empty: {', '.join(empty)}." if empty else ""))
    if files is not None:
        files.download(str(path))
    return path


@dataclass
class Handin:
    """What one student handed in: the file that is graded, what it holds, and the other files set aside."""

    student: str  # the identity, from the file's name (identity.identities)
    path: Path
    work: dict | None  # None: the file could not be read (``problem`` says why)
    problem: str = ""
    set_aside: list[str] = field(default_factory=list)  # "file (why it is not the one graded)"
    typed_names: list[str] = field(default_factory=list)  # the names typed inside its files: labels only
    conflicts: list[str] = field(default_factory=list)  # sentences naming the other hand-ins its names collide with


def collect(files: list[Path], checkpoints: list[str] | None = None) -> list[Handin]:
    """One ``Handin`` per identity (``identity.identities``), in file order: files of one identity are one
    student's attempts, and one is graded: a notebook over an answers file (it holds everything the answers file
    does), then the latest modification time, then the first in order. Names typed inside are compared with the
    other hand-ins' (``identity.conflicts``), never used to merge."""
    groups: dict[str, list[Handin]] = {}
    for path, identity in zip(files, identities(files)):
        try:
            handin = Handin(identity, path, read_submission(path, checkpoints))
        except SubmissionError as err:
            handin = Handin(identity, path, None, str(err))
        except Exception as err:  # noqa: BLE001 - odd metadata or fields of the wrong type cost this file alone
            reason = f"cannot read its TODO cells or answers ({type(err).__name__}: {err})"
            handin = Handin(identity, path, None, " ".join(reason.split())[:300])
        groups.setdefault(identity.casefold(), []).append(handin)
    out = []
    for handins in groups.values():
        # the graded file: readable, then a notebook, then the newest; max keeps the first of equals
        winner = max(handins, key=lambda h: (h.work is not None, h.path.suffix == ".ipynb", h.path.stat().st_mtime))
        for other in handins:
            if other is winner:
                continue
            why = ("could not be read" if other.work is None else "an answers file; the notebook is graded"
                   if other.path.suffix != ".ipynb" and winner.path.suffix == ".ipynb" else "older"
                   if other.path.stat().st_mtime < winner.path.stat().st_mtime else "as new; the first file is graded")
            extra = [k for k, v in (other.work or {}).get("answers", {}).items()
                     if v and not (winner.work or {}).get("answers", {}).get(k)]
            if extra:
                why += f"; it has answers the graded file lacks: {', '.join(extra)}"
            winner.set_aside.append(f"{other.path.name} ({why})")
        winner.typed_names = [h.work["student"] for h in handins if h.work and h.work["student"]]
        if len({clean_name(h.path.name) == h.path.name for h in handins}) > 1:  # some names hold odd characters
            winner.conflicts.append("its files' names differ in invisible or odd characters (" + ", ".join(
                repr(h.path.name) for h in handins) + "): check that they are one student's")
        out.append(winner)
    for handin, found in zip(out, conflicts([h.student for h in out], [h.typed_names for h in out],
                                            [h.path.name for h in out])):
        handin.conflicts += found
    return out


def answer_problems(work: dict, rubric: dict) -> tuple[str, str]:
    """(which Checkpoints have no answer: the rubric's, or the original lab's for its notebook; how much text could
    not be placed), "" when none."""
    keys = list(original_questions()["questions"] if work["lab"] == "original lab 7" else
                rubric.get("checkpoints", {}) if work["lab"] == "lab 7" else [])
    missing = [k for k in keys if not work["answers"].get(k)]
    if not missing:
        text = ""
    elif len(missing) == len(keys):
        text = f"no Checkpoint answer found (all {len(keys)} empty)"
    else:
        text = f"no answer found for Checkpoint {', '.join(missing)}"
    count = len(work["unplaced"])
    unplaced = (f"{count} text{'s' * (count != 1)} under no Checkpoint question (answers.csv, column unplaced)"
                if count else "")
    return text, unplaced
