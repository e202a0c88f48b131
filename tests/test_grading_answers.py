"""Every way students hand in (from Colab, Jupyter, VS Code; answers where they type them) loses no answer and no
TODO point. Each hand-in is built from the solution notebook."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from lab7_helpers.grading import submissions
from lab7_helpers.checks import TODOS
from lab7_helpers.grading.grade import Limits, grade, load_rubric
from lab7_helpers.grading.identity import identities
from lab7_helpers.grading.submissions import extract, questions_from_notebook

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = json.loads((ROOT / "instructor" / "lab7_solution.ipynb").read_text())
CHECKPOINTS = list(load_rubric()["checkpoints"])
ANSWERS = {key: f"My answer to {key}: the first line.\nA second line, with *markdown*." for key in CHECKPOINTS}
FULL_MARKS = sum(todo.points for todo in TODOS.values())  # the one table of TODO checks


def solution() -> dict:
    return json.loads(json.dumps(SOLUTION))


def answer_index(cells: list, key: str) -> int:
    return next(i for i, c in enumerate(cells) if c["metadata"].get("checkpoint") == key)


def in_answer_cells(notebook: dict) -> dict:
    for cell in notebook["cells"]:
        if cell["metadata"].get("checkpoint"):
            cell["source"] = f"*Your answer:* {ANSWERS[cell['metadata']['checkpoint']]}"
    return notebook


def in_question_cells(notebook: dict) -> dict:
    """Typed under the question, in the question cell; the answer cell left as it was."""
    cells = notebook["cells"]
    for key in CHECKPOINTS:
        question = cells[answer_index(cells, key) - 1]
        question["source"] = "".join(question["source"]) + "\n\n" + ANSWERS[key]
    return notebook


def in_new_cells(notebook: dict) -> dict:
    """The answer cell deleted, the answer written in a new markdown cell in its place."""
    cells = notebook["cells"]
    for key in CHECKPOINTS:
        cells[answer_index(cells, key)] = {"cell_type": "markdown", "metadata": {}, "source": ANSWERS[key]}
    return notebook


def strip_metadata(notebook: dict) -> dict:
    for cell in notebook["cells"]:
        cell["metadata"] = {}
    return notebook


def as_colab(notebook: dict) -> dict:
    """As Colab saves it: nbformat_minor 0, no cell ids, only an id in each cell's metadata, widget metadata
    without "state" (which nbformat.validate rejects), widget and image outputs."""
    notebook["nbformat_minor"] = 0
    notebook["metadata"] = {"colab": {"provenance": []}, "kernelspec": {"name": "python3", "display_name": "Python 3"},
                            "widgets": {"application/vnd.jupyter.widget-state+json": {
                                "3f2a": {"model_module": "@jupyter-widgets/controls", "model_name": "HBoxModel"}}}}
    for n, cell in enumerate(notebook["cells"]):
        cell.pop("id", None)
        cell["metadata"] = {"id": f"colab{n:04d}"}
        if cell["cell_type"] == "code":
            cell["outputs"] = [{"output_type": "display_data", "metadata": {}, "data": {
                "application/vnd.jupyter.widget-view+json": {"model_id": "3f2a", "version_major": 2},
                "image/png": "iVBORw0KGgo=", "text/plain": ["<Figure>"]}}]
    return notebook


def as_vscode(notebook: dict) -> dict:
    notebook["metadata"]["vscode"] = {"interpreter": {"hash": "0" * 64}}
    for cell in notebook["cells"]:
        cell["metadata"]["vscode"] = {"languageId": cell["cell_type"]}
    return notebook


HAND_INS = {  # name: (notebook, how each answer is found)
    "answer cell": (lambda: in_answer_cells(solution()), "metadata"),
    "metadata stripped": (lambda: strip_metadata(in_answer_cells(solution())), "cell after question"),
    "question cell": (lambda: in_question_cells(solution()), "question cell"),
    "new cell": (lambda: in_new_cells(solution()), "cell after question"),
    "new cell, metadata stripped": (lambda: strip_metadata(in_new_cells(solution())), "cell after question"),
    "Colab, question cell": (lambda: as_colab(in_question_cells(solution())), "question cell"),
    "VS Code, answer cell": (lambda: as_vscode(in_answer_cells(solution())), "metadata"),
}


@pytest.mark.parametrize("kind", HAND_INS)
def test_every_answer_is_found_with_its_text_and_the_todos_are_unchanged(kind):
    make, how = HAND_INS[kind]
    work = extract(make())
    assert work["answers"] == ANSWERS
    assert work["found"] == dict.fromkeys(CHECKPOINTS, how)
    assert work["unplaced"] == [] and work["lab"] == "lab 7"
    assert work["todos"] == extract(solution())["todos"]


def test_small_edits_to_the_question_still_match_and_the_placeholder_never_counts():
    notebook = in_question_cells(solution())
    cells = notebook["cells"]
    question = cells[answer_index(cells, "ties") - 1]
    question["source"] = question["source"].replace("### Checkpoint 1", "**Checkpoint 1**").replace(
        "useless", "usless") + "\n*Your answer:*"
    work = extract(strip_metadata(notebook))
    assert work["answers"]["ties"] == ANSWERS["ties"] and work["found"]["ties"] == "question cell"
    untouched = extract(solution())
    assert untouched["answers"] == dict.fromkeys(CHECKPOINTS, "") and untouched["unplaced"] == []


def test_text_under_no_question_is_reported():
    notebook = solution()
    notebook["cells"].insert(3, {"cell_type": "markdown", "metadata": {}, "source": "Note to self: ask about GPUs"})
    assert extract(notebook)["unplaced"] == ["cell 4: Note to self: ask about GPUs"]


def test_a_todo_grades_with_the_students_own_imports_and_helpers():
    notebook = strip_metadata(solution())
    cells = notebook["cells"]
    todo = next(i for i, c in enumerate(cells) if "def my_dpo_loss" in "".join(c["source"]))
    cells[todo]["source"] = "".join(cells[todo]["source"]).replace(
        "-torch.nn.functional.logsigmoid(beta * (chosen_logratio - rejected_logratio))",
        "-F.logsigmoid(scaled(chosen_logratio - rejected_logratio, beta))")
    assert "scaled(" in "".join(cells[todo]["source"])  # the replacement above found its line
    cells.insert(todo, {"cell_type": "code", "metadata": {}, "source": "import torch.nn.functional as F\n"
                        "policy = lab.trainable_copy(ref_model)  # training code: never run by the grader\n\n"
                        "def scaled(x, beta):\n    return beta * x\n"})
    code = extract(notebook)["todos"]["dpo-by-hand"]
    assert code.startswith("import torch.nn.functional as F\ndef scaled(x, beta):") and "trainable_copy" not in code
    cells[todo]["source"] = cells[todo + 1]["source"]  # the helper cell gone: the notes say what is missing
    del cells[todo + 1]
    notes = extract(notebook)["todo_notes"]["dpo-by-hand"]
    assert notes == ["uses F, which no cell above the TODO defines", "uses scaled, which no cell above the TODO "
                     "defines"]


def test_the_name_typed_in_a_notebook_is_read_and_the_identity_comes_from_the_file(tmp_path):
    notebook = solution()
    notebook["cells"].insert(1, {"cell_type": "code", "metadata": {}, "source": 'STUDENT_NAME = "Fiona \u200b Chen"\n'})
    assert extract(notebook)["student"] == "Fiona Chen"  # cleaned: zero-width space gone, spaces collapsed
    notebook["cells"][1]["source"] = 'STUDENT_NAME = ""  # your name\n'
    assert extract(notebook)["student"] == ""
    names = ["alice (1).ipynb", "Copy of bob.ipynb", "carol_lab7_answers.json", "dave/lab7.ipynb",
             "erin/lab7_answers.json", "erin/lab7.ipynb", "class/Copy of lab7.ipynb", "class/Copy of lab7 (1).ipynb"]
    assert identities([tmp_path / name for name in names]) == [
        "alice", "bob", "carol", "dave", "erin", "erin", "Copy of lab7", "Copy of lab7 (1)"]


def test_questions_json_is_up_to_date_with_the_student_notebook():
    notebook = json.loads((ROOT / "lab7.ipynb").read_text())
    assert questions_from_notebook(notebook) == submissions.lab_questions(), (
        "run: python tools/build_notebooks.py")


def test_the_grader_provides_the_names_submissions_expect():
    from lab7_helpers.grading.worker import grading_namespace

    assert set(grading_namespace(["Dataset.from_list(...)"], [])) - {"__name__"} == submissions.PROVIDED_NAMES


def write(path: Path, notebook: dict, age_seconds: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook))
    os.utime(path, (1_700_000_000 - age_seconds,) * 2)
    return path


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory, sandboxed):
    folder = tmp_path_factory.mktemp("handins")
    flat = folder / "class"
    write(flat / "alice.ipynb", HAND_INS["answer cell"][0]())
    write(flat / "bob.ipynb", HAND_INS["Colab, question cell"][0]())
    write(flat / "carol.ipynb", HAND_INS["new cell, metadata stripped"][0]())
    write(flat / "dave.ipynb", solution(), age_seconds=3600)  # older: set aside
    write(flat / "dave (1).ipynb", in_answer_cells(solution()))
    write(folder / "erin" / "lab7.ipynb", in_question_cells(solution()))
    (folder / "erin" / "lab7_answers.json").write_text(json.dumps({"format": "lab7-answers", "answers": ANSWERS}))
    write(flat / "frank.ipynb", original_lab_hand_in())
    write(flat / "gina.ipynb", {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Lab 6: pairs"}],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 0})
    no_answers = strip_metadata(solution())
    no_answers["cells"].insert(1, {"cell_type": "code", "metadata": {}, "source": 'STUDENT_NAME = "Henry Ito"\n'})
    write(flat / "submission_0815.ipynb", no_answers)
    grades = grade([str(flat), str(folder / "erin")], folder / "out", limits=Limits(wall_seconds=90, todo_seconds=10),
                   progress=False, sandboxed=sandboxed)
    return folder, grades


def test_every_hand_in_gets_every_todo_point_and_one_row_per_student(graded_class):
    folder, grades = graded_class
    assert sorted(grades.index) == ["alice", "bob", "carol", "dave", "erin", "frank", "gina", "submission_0815"]
    assert grades.loc["submission_0815", "names typed in it"] == "Henry Ito"  # a label: the row is the file's
    for student in ("alice", "bob", "carol", "dave", "erin", "submission_0815"):
        assert grades.loc[student, "total"] == FULL_MARKS, grades.loc[student].to_dict()
    for student in ("alice", "bob", "carol", "dave", "erin"):
        assert grades.loc[student, "status"] == "graded", grades.loc[student]
    assert grades.loc["dave", "file"].endswith("dave (1).ipynb") and "dave.ipynb (older)" in grades.loc[
        "dave", "set aside"]
    assert grades.loc["erin", "file"].endswith("lab7.ipynb")
    assert "lab7_answers.json (an answers file; the notebook is graded)" in grades.loc["erin", "set aside"]
    answers = pd.read_csv(folder / "out" / "answers.csv", index_col="student", keep_default_na=False)
    for student, how in (("alice", "metadata"), ("bob", "question cell"), ("carol", "cell after question")):
        assert answers.loc[student, CHECKPOINTS].to_dict() == ANSWERS
        assert set(answers.loc[student, [f"{k} found" for k in CHECKPOINTS]]) == {how}


ORIGINAL_ANSWERS = {f"original {n}": f"Frank's answer {n}: ties carry no preference.\nA second line." for n in
                    range(1, 8) if n != 6}  # Checkpoint 6 left empty


def original_lab_hand_in() -> dict:
    """The original Lab 7 as a student saves it from Colab: answers typed into the question cells, one (5) in a new
    cell after its question, one (6) left empty; Checkpoint 3 shares its cell with the DPO introduction that follows
    it in the original, and the answer sits between the two."""
    original = submissions.original_questions()
    code = lambda source: {"cell_type": "code", "metadata": {"id": "c"}, "source": source, "outputs": [],  # noqa: E731
                           "execution_count": None}
    markdown = lambda source: {"cell_type": "markdown", "metadata": {"id": "m"}, "source": source}  # noqa: E731
    cells = [markdown("# Lab 7\n## Optimizing GPT-2 with KL Regularization + DPO"),
             code("def load_dpo_jsonl(path):\n    return []\n"), code("def kl_tokenwise(p, r):\n    pass\n")]
    dpo_intro = next(t for t in original["lab_text"] if t.startswith("### Direct Preference"))
    for key, question in original["questions"].items():
        answer = ORIGINAL_ANSWERS.get(key, "")
        if key == "original 3":
            cells.append(markdown(f"{question}\n\n{answer}\n\n{dpo_intro}\n\nWe directly optimize the policy so "
                                  "that, for each prompt x:"))
        elif key == "original 5":
            cells += [markdown(question), markdown(answer)]
        else:
            cells.append(markdown(f"{question}\n\n{answer}" if answer else question))
        cells.append(code("print('next step')"))
    return {"cells": cells, "metadata": {"colab": {"provenance": []}}, "nbformat": 4, "nbformat_minor": 0}


def test_an_original_lab_hand_in_keeps_every_typed_answer():
    work = extract(original_lab_hand_in())
    assert work["lab"] == "original lab 7" and work["todos"] == {} and work["unplaced"] == []
    assert {k: v for k, v in work["answers"].items() if v} == ORIGINAL_ANSWERS
    assert work["answers"]["original 6"] == "" and work["found"]["original 5"] == "cell after question"
    assert work["found"]["original 1"] == "question cell"


def test_missing_answers_and_other_notebooks_get_a_status_of_their_own(graded_class):
    folder, grades = graded_class
    answers = pd.read_csv(folder / "out" / "answers.csv", index_col="student", keep_default_na=False)
    assert {k: answers.loc["frank", k] for k in ORIGINAL_ANSWERS} == ORIGINAL_ANSWERS
    assert answers.loc["frank", "original 6"] == "" and answers.loc["alice", "original 1"] == ""
    page = (folder / "out" / "grading.html").read_text()
    assert "Original lab" in page and "Frank&#x27;s answer 7" in page and "Propose one additional automatic" in page
    henry = grades.loc["submission_0815"]
    assert henry["status"] == "answers missing"
    assert f"no Checkpoint answer found (all {len(CHECKPOINTS)} empty)" in henry["problem"]
    frank = grades.loc["frank"]
    assert frank["status"] == "original lab 7" and "grade it by hand" in frank["problem"]
    assert "no answer found for Checkpoint original 6" in frank["problem"] and frank["total"] == 0
    assert frank["token-kl hint"] == "TODO cell not found"
    assert grades.loc["gina", "status"] == "not lab 7" and "another lab" in grades.loc["gina", "problem"]
