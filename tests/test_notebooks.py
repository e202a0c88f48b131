"""The committed notebooks match their source; both run in a simulated Colab (a stand-in ``google.colab`` in
tests/fake_colab: the upload returns a Lab 6 file, downloads are recorded, the notebook-reading call returns the
notebook), on tiny-gpt2 in fast mode. Only the ``%pip install`` cell is left out. The wheel installs from a
repository laid out like the course's."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import lab7_helpers
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from lab7_helpers import checks
from lab7_helpers.grading.worker import grading_namespace

ROOT = Path(__file__).resolve().parents[1]
FAKE_COLAB = Path(__file__).resolve().parent / "fake_colab"
SAMPLE = ROOT / "data" / "dpo_pairs.jsonl"
LAB6_FILES = sorted(p for p in (ROOT / "data").iterdir()  # dpo_pairs.jsonl: the student run uploads it
                    if p.suffix in (".jsonl", ".json", ".csv", ".tsv") and p != SAMPLE)
spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
build_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_notebooks)
STUDENT_NAME = "Ada Lovelace"
TODO_NAMES = ["my_token_kl", "my_kl_regularized_loss", "my_sequence_logprobs", "my_dpo_loss", "train_ds_dpo",
              "eval_ds_dpo", "REFUSAL_PHRASES"]


def tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def test_committed_notebooks_badge_and_project_url_are_up_to_date():
    for path, text in build_notebooks.rendered().items():
        assert path.read_text() == text, f"{path.name} is out of date: run python tools/build_notebooks.py"


def test_badge_and_install_cell_point_at_the_course_repository_folder():
    student = build_notebooks.build("student")
    install = next(c.source for c in student.cells if "%pip install" in c.source)
    assert ('"lab7_helpers @ git+https://github.com/duke-trust-lab/intro_modern_rl.git#subdirectory=lab7"'
            in install)
    assert "torch" not in install.replace("Colab's torch", "")
    badge = "https://colab.research.google.com/github/duke-trust-lab/intro_modern_rl/blob/main/lab7/lab7.ipynb"
    assert badge in student.cells[0].source and badge in (ROOT / "README.md").read_text()


def test_student_and_solution_differ_only_in_todo_cells():
    student, solution = build_notebooks.build("student"), build_notebooks.build("solution")
    assert len(student.cells) == len(solution.cells)
    differ = [i for i, (a, b) in enumerate(zip(student.cells, solution.cells)) if a.source != b.source]
    todo = [i for i, cell in enumerate(student.cells) if "todo" in tags(cell)]
    assert differ == todo and len(todo) == 4
    for i in todo:
        assert "..." in student.cells[i].source and "TODO" in student.cells[i].source
        assert "TODO" not in solution.cells[i].source and "#|" not in student.cells[i].source
    answers = [c.metadata["checkpoint"] for c in student.cells if "answer" in tags(c)]
    assert len(answers) == len(set(answers)) == 11


def todo_namespace(variant: str) -> dict:
    """What the TODO cells of ``variant`` define, run as the grader runs them."""
    cells = [cell.source for cell in build_notebooks.build(variant).cells if "todo" in tags(cell)]
    namespace = grading_namespace(cells, train_pairs=lab7_helpers.load_pairs(lab7_helpers.BUNDLED_PAIRS)[:3])
    for source in cells:
        exec(source, namespace)  # noqa: S102 - our own notebook's cells
    return namespace


def test_every_cell_that_uses_a_todo_stops_with_one_sentence_naming_it():
    """Each cell that uses what a TODO defines starts with a ``checks.require`` line; on the student's untouched
    TODOs that line stops with the TODO's name, on the solution's it lets the cell run."""
    student, solution = todo_namespace("student"), todo_namespace("solution")
    todo_titles = {"my_token_kl": "TODO 1", "my_kl_regularized_loss": "TODO 1", "my_sequence_logprobs": "TODO 2",
                   "my_dpo_loss": "TODO 2", "train_ds_dpo": "TODO 3", "REFUSAL_PHRASES": "TODO 4"}
    guarded = 0
    for cell in build_notebooks.build("student").cells:
        uses = [name for name in TODO_NAMES if name in cell.source]
        if cell.cell_type != "code" or not uses or {"todo", "check"} & set(tags(cell)):
            continue
        if cell.source.startswith("def "):  # defines a function that a guarded cell calls
            continue
        require = cell.source.splitlines()[0]
        assert require.startswith("checks.require("), f"no checks.require line first in:\n{cell.source}"
        with pytest.raises(checks.Stop) as stopped:
            exec(require, {**student, "checks": checks})  # noqa: S102
        message = str(stopped.value)
        assert message.startswith(todo_titles[uses[0]] + " (") and "\n" not in message, message
        assert stopped.value._render_traceback_() == [message]
        exec(require, {**solution, "checks": checks})  # noqa: S102
        guarded += 1
    assert guarded >= 7


def test_the_notebook_the_todo_table_and_the_rubric_agree():
    """Each TODO's facts live in ``checks.TODOS``: the notebook has its cells (by id) and names it by its label,
    each cell defines what its checks take, and the bundled rubric adds nothing to the table."""
    from lab7_helpers.grading.grade import load_rubric
    from lab7_helpers.grading.submissions import PROVIDED_NAMES, _defines

    student, solution = build_notebooks.build("student"), build_notebooks.build("solution")
    cells = {cell.metadata["todo"]: cell.source for cell in solution.cells if "todo" in tags(cell)}
    assert set(cells) == {todo.cell for todo in checks.TODOS.values()}
    headings = "\n".join(cell.source for cell in student.cells if cell.cell_type == "markdown")
    for check_id, todo in checks.TODOS.items():
        assert f"### {todo.label}:" in headings, todo.label
        for name in set(todo.names) - PROVIDED_NAMES:
            assert _defines(cells[todo.cell], name), (check_id, name)
    rubric = load_rubric()["checks"]
    assert {key: (item["todo"], item["title"], item["points"]) for key, item in rubric.items()} == {
        key: (todo.cell, todo.title, todo.points) for key, todo in checks.TODOS.items()}


def test_todo_checks_follow_the_rubric_and_grade_the_solution_fully():
    from lab7_helpers.grading.grade import load_rubric

    rubric = load_rubric()["checks"]
    assert set(rubric) == set(checks.TODOS)
    solution, student = todo_namespace("solution"), todo_namespace("student")
    for check_id, run in checks.TODOS.items():
        result = run(solution, rubric[check_id]["points"])
        assert result.passed and result.points == rubric[check_id]["points"], (check_id, result)
        assert run(student, 1).unfinished, check_id


def colab_notebook(variant: str, tmp_path: Path):
    """``variant`` as a student runs it in Colab: google.colab imported, name and answers typed, no pip cell."""
    notebook = build_notebooks.build(variant)
    for cell in notebook.cells:
        if cell.source.startswith('STUDENT_NAME = ""'):
            cell.source = cell.source.replace('STUDENT_NAME = ""', f"STUDENT_NAME = {STUDENT_NAME!r}", 1)
        if "answer" in tags(cell):
            cell.source = f"*Your answer:* my thoughts on {cell.metadata['checkpoint']}"
    notebook.cells = [c for c in notebook.cells if "%pip install" not in c.source]
    assert sum("colab" in tags(c) for c in notebook.cells) == 2  # the upload and the hand-in
    (tmp_path / "browser_copy.ipynb").write_text(json.dumps(notebook))  # what get_ipynb answers
    notebook.cells.insert(0, build_notebooks.nbformat.v4.new_code_cell("import google.colab  # as in Colab"))
    return notebook


def execute(notebook, monkeypatch, tmp_path, upload: Path | str, stop_after: int | None = None, judge: str = ""):
    """Run ``notebook`` in a fresh kernel in ``tmp_path`` until its end, its first error, or cell ``stop_after``.
    Returns the failing cell, or None."""
    for name, value in {"LAB7_MODEL": "tiny-gpt2", "LAB7_FAST": "1", "HF_HUB_OFFLINE": "1",
                        "MPLBACKEND": "module://matplotlib_inline.backend_inline", "LAB7_FAKE_UPLOAD": str(upload),
                        "LAB7_FAKE_DOWNLOADS": str(tmp_path / "downloads.txt"),
                        "LAB7_FAKE_NOTEBOOK": str(tmp_path / "browser_copy.ipynb"),
                        "PYTHONPATH": os.pathsep.join([str(ROOT), str(FAKE_COLAB)]), "LAB7_JUDGE": judge}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LAB7_PAIRS", raising=False)
    if stop_after is not None:
        notebook.cells = notebook.cells[:stop_after + 1]
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    except CellExecutionError:
        return next(c for c in notebook.cells if any(o.output_type == "error" for o in c.get("outputs", [])))
    return None


def outputs_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts += [str(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
        parts += output.get("traceback", [])
    return "\n".join(parts)


def error_lines(cell) -> list[str]:
    return next(o.traceback for o in cell.outputs if o.output_type == "error")


def test_solution_notebook_runs_end_to_end_in_simulated_colab(monkeypatch, tmp_path):
    notebook = colab_notebook("solution", tmp_path)
    assert execute(notebook, monkeypatch, tmp_path, upload=SAMPLE, judge="longer") is None
    results = [o.data["text/plain"] for c in notebook.cells if "check" in tags(c) for o in c.outputs if "data" in o]
    assert len(results) == 7 and all(r.startswith("PASSED") for r in results), results
    everything = "\n".join(outputs_text(c) for c in notebook.cells)
    assert "Traceback" not in everything
    assert "121 usable pairs in dpo_pairs.jsonl" in everything  # the uploaded copy, not the bundled file
    assert "first-step loss: ours 0.693147, TRL 0.693147" in everything
    assert re.search(r"TRL on the held-out pairs: loss 0\.69\d\d, reward accuracy [01]\.\d\d", everything)
    spread = next(outputs_text(c) for c in notebook.cells if "spread across betas" in outputs_text(c))
    assert spread.splitlines()[-1].split() == ["KL", "detached", "0", "0"], spread
    images = sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
    assert images >= 4  # KL curves, beta sweep, DPO curves, metrics
    assert "pref_acc" in everything and "dpo_trl" not in everything  # TRL's short CPU run is not compared
    downloads = (tmp_path / "downloads.txt").read_text().split()
    assert downloads == [str((tmp_path / "lab7_answers.json").resolve())]
    answers = json.loads(Path(downloads[0]).read_text())
    assert answers["student"] == STUDENT_NAME and len(answers["todos"]) == 4
    assert answers["answers"]["ties"] == "my thoughts on ties" and len(answers["answers"]) == 11
    assert "Judged by the scripted judge 'longer'" in everything and "judged blind on 6 prompt(s)" in everything
    report = answers["report"]  # the blind judgement travels with the hand-in
    assert report["train_pairs"] == 16 and len(report["judgements"]) == 6 and "reward_acc" in report["dpo_held_out"]


def test_student_notebook_stops_at_its_first_unfinished_todo_with_one_sentence(monkeypatch, tmp_path):
    notebook = colab_notebook("student", tmp_path)
    stopped = execute(notebook, monkeypatch, tmp_path, upload=SAMPLE)
    assert stopped is not None and "lab.train_kl(" in stopped.source
    assert error_lines(stopped) == ["TODO 1 (KL-regularized loss) is not finished yet: replace its ... "
                                    "placeholders, run its check, then run this cell again."]
    check = next(c for c in notebook.cells if "check" in tags(c))
    assert "NOT YET token KL: 0/2. Replace the ... placeholders" in outputs_text(check)
    assert "Traceback" not in "\n".join(outputs_text(c) for c in notebook.cells)


@pytest.mark.parametrize("lab6_file", LAB6_FILES, ids=[p.name for p in LAB6_FILES])
def test_an_uploaded_lab6_file_loads_or_is_named_without_a_traceback(lab6_file, monkeypatch, tmp_path):
    notebook = colab_notebook("student", tmp_path)
    load = next(i for i, c in enumerate(notebook.cells) if "lab.load_pairs(pairs_file)" in c.source)
    stopped = execute(notebook, monkeypatch, tmp_path, upload=lab6_file, stop_after=load)
    if stopped is None:
        assert f"usable pairs in {lab6_file.name}" in outputs_text(notebook.cells[load])
    else:
        assert stopped is notebook.cells[load]
        lines = "\n".join(error_lines(stopped))
        assert f"{lab6_file.name}:" in lines and "Traceback" not in lines and 'File "' not in lines


def upload_cell() -> str:
    return next(c.source for c in build_notebooks.build("student").cells if "files.upload()" in c.source)


@pytest.fixture
def fake_colab_here(monkeypatch):
    """The stand-in google.colab importable in this process, and forgotten afterwards (the grading tests must not
    see a Colab)."""
    had_google = "google" in sys.modules
    monkeypatch.syspath_prepend(str(FAKE_COLAB))
    yield
    for name in [n for n in sys.modules if n.startswith("google.colab") or (n == "google" and not had_google)]:
        del sys.modules[name]


def test_a_failed_upload_widget_says_what_to_do_and_cancel_uses_the_sample(fake_colab_here, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAB7_FAKE_UPLOAD", "fail")
    with pytest.raises(checks.Stop, match="drag your file into the Files pane and set PAIRS_PATH"):
        exec(upload_cell(), {"IN_COLAB": True, "PAIRS_PATH": "", "checks": checks})  # noqa: S102
    monkeypatch.setenv("LAB7_FAKE_UPLOAD", "")
    namespace = {"IN_COLAB": True, "PAIRS_PATH": "", "checks": checks}
    exec(upload_cell(), namespace)  # noqa: S102
    assert namespace["PAIRS_PATH"] == ""  # the load cell then uses the sample pairs


def test_wheel_built_from_the_course_repository_layout_carries_its_data(tmp_path):
    """``pip wheel`` with the notebook's requirement, pointed at a local copy of the course repository."""
    spec = importlib.util.spec_from_file_location("colab_stack", ROOT / "tools" / "colab_stack.py")
    colab_stack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab_stack)
    requirement = colab_stack.install_cell_arguments(colab_stack.make_course_repository(tmp_path))[1]
    assert requirement.startswith("lab7_helpers @ git+file://")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", requirement,
                    "-w", str(tmp_path / "out")], check=True)
    wheel = next((tmp_path / "out").glob("lab7_helpers-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for carried in ("lab7_helpers/assets/gpt2_tokenizer/tokenizer.json", "lab7_helpers/sample_data/dpo_pairs.jsonl",
                    "lab7_helpers/grading/rubric.toml", "lab7_helpers/checks/__init__.py"):
        assert carried in names, carried
