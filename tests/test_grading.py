"""A class of submissions built from the solution notebook, graded in sandboxed processes."""

import json
from pathlib import Path

import pandas as pd
import pytest

from lab7_helpers.app.cli import main
from lab7_helpers.checks import TODOS
from lab7_helpers.grading.grade import Limits, grade, load_rubric
from lab7_helpers.grading.submissions import read_submission

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = json.loads((ROOT / "instructor" / "lab7_solution.ipynb").read_text())
FULL_MARKS = sum(todo.points for todo in TODOS.values())  # the one table of TODO checks


def submission(**changes) -> dict:
    """The solution notebook with answers filled in, then ``changes``: todo id -> new code, or checkpoint id
    -> new answer text."""
    notebook = json.loads(json.dumps(SOLUTION))
    for cell in notebook["cells"]:
        meta = cell["metadata"]
        if meta.get("checkpoint"):
            cell["source"] = changes.get(meta["checkpoint"], f"*Your answer:* my thoughts on {meta['checkpoint']}")
        elif meta.get("todo") in changes:
            cell["source"] = changes[meta["todo"]]
    return notebook


NO_GRAD_KL = '''
def my_kl_regularized_loss(policy_logits, ref_logits, labels, beta):
    token_logps, mask = lab.token_logprobs(policy_logits, labels)
    with torch.no_grad():
        kl_per_position = lab.token_kl(policy_logits[:, :-1], ref_logits[:, :-1])
    nll = -token_logps[mask].mean()
    kl = kl_per_position[mask].mean()
    return nll + beta * kl, nll, kl
'''


@pytest.fixture(scope="module")
def graded(tmp_path_factory, sandboxed):
    folder = tmp_path_factory.mktemp("class")
    sibling = folder / "alice.ipynb"
    class_ = {
        "alice": submission(),
        "bob_nograd": submission(**{"kl-loss": NO_GRAD_KL}),
        "carol_loop": submission(**{"refusal-phrases": "while True:\n    pass"}),
        "dave_peeks": submission(**{"dpo-dataset": f"train_ds_dpo = open({str(sibling)!r}).read()"}),
        "erin_deletes": submission(**{"dpo-dataset": f"import os\nos.remove({str(sibling)!r})"}),
        "frank_empty": submission(**{"ties": "*Your answer:*"}),
        "gina_memory": submission(**{"refusal-phrases": "REFUSAL_PHRASES = bytearray(8 * 2**30)"}),
    }
    for name, notebook in class_.items():
        (folder / f"{name}.ipynb").write_text(json.dumps(notebook))
    (folder / "henry_notebook.ipynb").write_text("this is not a notebook")
    grades = grade([str(folder)], folder / "out", limits=Limits(wall_seconds=60, todo_seconds=3), progress=False,
                   sandboxed=sandboxed)
    return folder, grades


def test_correct_and_buggy_submissions_get_the_expected_points(graded):
    folder, grades = graded
    assert grades.loc["alice", "total"] == grades.loc["alice", "max"] == FULL_MARKS
    assert grades.loc["alice", "status"] == "graded"
    bob = grades.loc["bob_nograd"]
    assert bob["kl-loss points"] == 0 and "no gradient" in bob["kl-loss hint"] and bob["total"] == FULL_MARKS - 3


def test_endless_loop_and_memory_bomb_lose_only_their_own_todo(graded):
    _, grades = graded
    for student, words in (("carol_loop", "longer than 3 s"), ("gina_memory", "MemoryError")):
        row = grades.loc[student]
        assert row["refusal-phrases points"] == 0 and words in row["refusal-phrases hint"], row
        assert row["total"] == FULL_MARKS - 1


def test_sandbox_blocks_reading_and_deleting_other_files(graded):
    folder, grades = graded
    for student in ("dave_peeks", "erin_deletes"):
        row = grades.loc[student]
        assert row["dpo-dataset points"] == 0 and "PermissionError" in row["dpo-dataset hint"], row
        assert row["total"] == FULL_MARKS - 2
    assert (folder / "alice.ipynb").exists()
    assert grades.loc["alice", "total"] == FULL_MARKS  # graded as if nothing had happened


def test_not_a_notebook_and_empty_answers(graded):
    folder, grades = graded
    henry = grades.loc["henry_notebook"]
    assert henry["status"] == "not graded" and "not a notebook" in henry["problem"] and henry["total"] == 0
    answers = pd.read_csv(folder / "out" / "answers.csv", index_col="student", keep_default_na=False)
    assert answers.loc["frank_empty", "ties"] == ""
    assert answers.loc["alice", "ties"] == "my thoughts on ties"
    assert [c for c in answers.columns if not c.endswith(" found") and c not in ("unplaced", "blind result")] == list(
        load_rubric()["checkpoints"])
    page = (folder / "out" / "grading.html").read_text()
    assert "(empty)" in page and "A tie carries no preference" in page and "bob_nograd" in page


def test_exported_answers_file_is_graded_like_the_notebook(tmp_path, sandboxed):
    from lab7_helpers import export_answers

    notebook = tmp_path / "lab7.ipynb"
    notebook.write_text(json.dumps(submission()))
    exported = export_answers(tmp_path / "alice.json", notebook_path=notebook)
    assert read_submission(exported) == read_submission(notebook)
    sandbox_flag = [] if sandboxed else ["--no-sandbox"]
    assert main(["grade", str(exported), "--out", str(tmp_path / "out"), *sandbox_flag]) == 0
    grades = pd.read_csv(tmp_path / "out" / "grades.csv", index_col="student")
    assert grades.loc["alice", "total"] == FULL_MARKS


def test_stripped_metadata_still_finds_the_todo_cells():
    notebook = submission()
    for cell in notebook["cells"]:
        cell["metadata"] = {}
    todos = read_submission_dict(notebook)["todos"]
    assert set(todos) == {"kl-loss", "dpo-by-hand", "dpo-dataset", "refusal-phrases"}
    assert "def my_kl_regularized_loss" in todos["kl-loss"]


def read_submission_dict(notebook):
    from lab7_helpers.grading.submissions import extract

    return extract(notebook)


@pytest.mark.parametrize("text, message", [
    ('[checks.kl-loss]\ntodo = "x"\n', r"\[checks.kl-loss\] may set only title and points, not todo"),
    ('[checks.kl-los]\npoints = 1\n', r"\[checks.kl-los\] is not an automatic check \(known: token-kl, kl-loss"),
    ('[checks.kl-loss]\npoints = "two"\n', r"\[checks.kl-loss\] points must be a number >= 0"),
    ('[checkpoints.ties]\nquestion = "Why?"\n', r"\[checkpoints.ties\] needs points"),
])
def test_bad_rubric_is_a_clear_error(tmp_path, text, message):
    bad = tmp_path / "rubric.toml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_rubric(bad)


def test_a_rubric_overrides_only_the_points_and_titles_of_the_todo_table(tmp_path):
    from lab7_helpers.checks import TODOS

    mine = tmp_path / "rubric.toml"
    mine.write_text('[checks.dpo-loss]\npoints = 4\n')
    checks = load_rubric(mine)["checks"]
    assert checks["dpo-loss"] == {"todo": "dpo-by-hand", "title": TODOS["dpo-loss"].title, "points": 4}
    assert {key: check["points"] for key, check in load_rubric()["checks"].items()} == {
        key: todo.points for key, todo in TODOS.items()}


def test_grade_without_bubblewrap_refuses_or_warns(tmp_path, monkeypatch, capsys):
    from lab7_helpers.grading import sandbox

    notebook = tmp_path / "alice.ipynb"
    notebook.write_text(json.dumps(submission()))
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    assert main(["grade", str(notebook), "--out", str(tmp_path / "out")]) == 2
    assert "`bwrap` is not installed: install it (`sudo apt install bubblewrap`" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["grade", str(notebook), "--out", str(tmp_path / "out"), "--no-sandbox"]) == 0
    assert "WARNING: --no-sandbox" in capsys.readouterr().err
    grades = pd.read_csv(tmp_path / "out" / "grades.csv", index_col="student")
    assert grades.loc["alice", "total"] == FULL_MARKS
