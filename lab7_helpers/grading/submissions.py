"""A student's work as data: the code of each TODO cell and the text of each Checkpoint answer.

Read from a submitted notebook (``.ipynb``) or from the answers file a student exported with
``export_answers()`` (``.json``). Cells are found by the ids the notebook gives them (``todo`` and
``checkpoint`` metadata); if a tool stripped the metadata, TODO cells are recognised by what they define.
"""

from __future__ import annotations

import json
from pathlib import Path

ANSWER_PROMPT = "*Your answer:*"
TODO_MARKERS = {  # fallback when metadata is gone: what each TODO cell defines
    "kl-loss": "def my_kl_regularized_loss",
    "dpo-by-hand": "def my_dpo_loss",
    "dpo-dataset": "train_ds_dpo",
    "refusal-phrases": "REFUSAL_PHRASES",
}


class SubmissionError(ValueError):
    """The file is not a Lab 7 notebook or answers file."""


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else str(source or "")


def extract(notebook: dict) -> dict:
    """``{"todos": {todo_id: code}, "answers": {checkpoint_id: text}}`` from a notebook's JSON (as a dict)."""
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise SubmissionError("not a Jupyter notebook (no list of cells)")
    todos, answers = {}, {}
    for cell in notebook["cells"]:
        if not isinstance(cell, dict):
            continue
        meta, source = cell.get("metadata") or {}, _text(cell.get("source"))
        if cell.get("cell_type") == "code":
            todo = meta.get("todo") or next((t for t, marker in TODO_MARKERS.items()
                                             if marker in source and t not in todos), None)
            if todo and "todo" in meta.get("tags", ["todo"]):
                todos[todo] = source
        elif cell.get("cell_type") == "markdown" and meta.get("checkpoint"):
            answers[meta["checkpoint"]] = source.replace(ANSWER_PROMPT, "", 1).strip()
    return {"todos": todos, "answers": answers}


def read_submission(path: str | Path) -> dict:
    """Read a ``.ipynb`` or exported ``.json`` file into ``{"todos": ..., "answers": ...}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SubmissionError(f"not a notebook or answers file: cannot read it as JSON ({err})") from err
    if isinstance(data, dict) and data.get("format") == "lab7-answers":
        return {"todos": dict(data.get("todos", {})), "answers": dict(data.get("answers", {}))}
    return extract(data)


def export_answers(path: str | Path = "lab7_answers.json", notebook_path: str | Path | None = None,
                   student: str = "") -> Path:
    """Save this notebook's TODO code and Checkpoint answers, with the ``student``'s name or id, to ``path`` (and
    download it, in Colab).

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
    path = Path(path)
    path.write_text(json.dumps({"format": "lab7-answers", "student": student, **work}, indent=2, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    empty = [k for k, v in work["answers"].items() if not v]
    print(f"Saved {len(work['answers'])} answers and {len(work['todos'])} TODO cells to {path}."
          + (f" Still empty: {', '.join(empty)}." if empty else ""))
    if files is not None:
        files.download(str(path))
    return path
