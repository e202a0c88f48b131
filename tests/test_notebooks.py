"""The committed notebooks match their source, the solution runs end to end and the student version up to its
first TODO, on tiny-gpt2 in fast mode. Colab-only cells are skipped by their tag."""

import importlib.util
from pathlib import Path

from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
build_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_notebooks)


def tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def test_committed_notebooks_and_badge_are_up_to_date():
    for path, text in build_notebooks.rendered().items():
        assert path.read_text() == text, f"{path.name} is out of date: run python tools/build_notebooks.py"


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
    assert len(answers) == len(set(answers)) == 10
    install = next(c.source for c in student.cells if "%pip install" in c.source)
    assert build_notebooks.repo_url() in install and "torch" not in install.replace("Colab's torch", "")


def execute(notebook, monkeypatch, tmp_path):
    monkeypatch.setenv("LAB7_MODEL", "tiny-gpt2")
    monkeypatch.setenv("LAB7_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook.cells = [c for c in notebook.cells if "colab" not in tags(c)]
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return notebook


def outputs_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts += [str(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


def test_solution_notebook_runs_end_to_end(monkeypatch, tmp_path):
    notebook = execute(build_notebooks.build("solution"), monkeypatch, tmp_path)
    checks = [outputs_text(c) for c in notebook.cells if "check" in tags(c)]
    assert len(checks) == 4 and all("PASSED" in text and "NOT YET" not in text for text in checks), checks
    everything = "\n".join(outputs_text(c) for c in notebook.cells)
    assert "Traceback" not in everything
    assert "first-step loss: ours 0.693147, TRL 0.693147" in everything
    images = sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
    assert images >= 4  # KL curves, beta sweep, DPO curves, metrics
    assert "pref_acc" in everything and "dpo_trl" in everything


def test_student_notebook_runs_to_its_first_todo_and_the_check_gives_a_hint(monkeypatch, tmp_path):
    notebook = build_notebooks.build("student")
    first_todo = next(i for i, c in enumerate(notebook.cells) if "todo" in tags(c))
    assert "check" in tags(notebook.cells[first_todo + 1])
    notebook.cells = notebook.cells[:first_todo + 2]  # everything before the TODO, the TODO, its check
    executed = execute(notebook, monkeypatch, tmp_path)
    check_output = outputs_text(executed.cells[-1])
    assert "NOT YET KL-regularized loss: 0/3. Replace the ... placeholders" in check_output
    assert "Traceback" not in check_output
