"""grading.html in a real browser (headless Chromium through chromedriver): scores and comments typed in survive a
reload, Export CSV downloads them, and ``lab7 grade --manual`` merges them into grades.csv."""

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from lab7_helpers.app.cli import main
from lab7_helpers.grading.grade import load_rubric

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the dev extras have it)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMEDRIVER is None, reason="needs chromium and chromium-driver (.ci/run installs "
                                "them)")


def answers_only(answer: str) -> dict:
    """The solution notebook without its TODO cells (no sandboxed run needed: this test is about the page)."""
    notebook = json.loads((ROOT / "instructor" / "lab7_solution.ipynb").read_text())
    notebook["cells"] = [c for c in notebook["cells"] if not c["metadata"].get("todo")]
    for cell in notebook["cells"]:
        if cell["metadata"].get("checkpoint"):
            cell["source"] = f"*Your answer:* {answer}"
    return notebook


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def test_scores_persist_export_and_merge_into_grades(tmp_path, browser):
    folder = tmp_path / "class"
    folder.mkdir()
    for student in ("__proto__", "alice", "bob"):  # a name that an object's prototype would swallow comes first
        (folder / f"{student}.ipynb").write_text(json.dumps(answers_only(f"{student} thinks hard")))
    out = tmp_path / "grades"
    assert main(["grade", str(folder), "--out", str(out)]) == 0
    page = (out / "grading.html").resolve().as_uri()
    browser.get(page)
    boxes = browser.find_elements(By.CSS_SELECTOR, "input.points")
    assert len(boxes) == 3 * len(load_rubric()["checkpoints"])
    proto = browser.find_element(By.CSS_SELECTOR, "td[data-student='__proto__'][data-checkpoint='ties'] input")
    proto.send_keys("2")
    assert "alice thinks hard" in browser.page_source and "A tie carries no preference" in browser.page_source

    first = browser.find_element(By.CSS_SELECTOR, "td[data-student='alice'][data-checkpoint='ties'] input")
    first.send_keys("1.5")
    first.send_keys(Keys.TAB)  # Tab: from the points box to its comment box
    browser.switch_to.active_element.send_keys('Good, but "log 2" needs a why, too')
    bob = browser.find_element(By.CSS_SELECTOR, "td[data-student='bob'][data-checkpoint='constitution'] input")
    bob.send_keys("1")
    bob.send_keys(Keys.ENTER)  # Enter: on to the next points box (bob is last: focus stays)
    too_many = browser.find_element(By.CSS_SELECTOR, "td[data-student='bob'][data-checkpoint='ties'] input")
    too_many.send_keys("7")
    assert too_many.get_attribute("aria-invalid") == "true"
    too_many.clear()
    too_many.send_keys(Keys.BACKSPACE)

    browser.refresh()
    restored = browser.find_element(By.CSS_SELECTOR, "td[data-student='alice'][data-checkpoint='ties']")
    assert restored.find_element(By.TAG_NAME, "input").get_attribute("value") == "1.5"
    assert browser.find_element(By.CSS_SELECTOR, "td[data-student='__proto__'][data-checkpoint='ties'] input"
                                ).get_attribute("value") == "2"
    assert restored.find_element(By.TAG_NAME, "textarea").get_attribute("value") == 'Good, but "log 2" needs a why, too'

    browser.find_element(By.ID, "export").click()
    download = tmp_path / "downloads" / "scores.csv"
    for _ in range(100):
        if download.exists():
            break
        time.sleep(0.1)
    exported = download.read_bytes().decode()
    assert exported == browser.execute_script("return window.lab7ScoresCsv()")
    assert exported.splitlines() == ["student,checkpoint,points,comment", "__proto__,ties,2,",
                                     'alice,ties,1.5,"Good, but ""log 2"" needs a why, too"', "bob,constitution,1,"]

    assert main(["grade", str(folder), "--out", str(out), "--manual", str(download)]) == 0
    grades = pd.read_csv(out / "grades.csv", index_col="student")
    assert grades.loc["alice", "ties points"] == 1.5 and grades.loc["alice", "manual"] == 1.5
    assert grades.loc["alice", "ties comment"] == 'Good, but "log 2" needs a why, too'
    assert grades.loc["bob", "total"] == grades.loc["bob", "automatic"] + 1
    assert "ties" in grades.loc["bob", "not graded by hand"] and "constitution" not in grades.loc["bob",
                                                                                               "not graded by hand"]


def test_manual_scores_find_students_whose_names_carry_stray_spaces_or_line_ends(tmp_path):
    for student in ("alice", "=bob"):
        (tmp_path / f"{student}.ipynb").write_text(json.dumps(answers_only("an answer")))
    scores = tmp_path / "scores.csv"
    scores.write_bytes(b'student,checkpoint,points,comment\r\n alice ,ties,1,\r\n"\'=bob\r",ties,2,"\'=ok"\r\n')
    assert main(["grade", str(tmp_path), "--out", str(tmp_path / "out"), "--manual", str(scores)]) == 0
    grades = pd.read_csv(tmp_path / "out" / "grades.csv", index_col="student", keep_default_na=False)
    assert grades.loc["alice", "ties points"] == 1 and grades.loc["'=bob", "ties points"] == 2
    assert grades.loc["'=bob", "ties comment"] == "'=ok"  # kept, and still safe to open


@pytest.mark.parametrize("row, message", [
    ("carol,ties,1,", "line 2: unknown student 'carol'"),
    ("alice,tie,1,", "line 2: unknown Checkpoint 'tie'"),
    ("alice,ties,3,", "line 2: 3 points for ties is out of range (0 to 2)"),
    ("alice,ties,two,", "line 2: points 'two' is not a number"),
])
def test_bad_manual_scores_are_clear_errors(tmp_path, capsys, row, message):
    (tmp_path / "alice.ipynb").write_text(json.dumps(answers_only("an answer")))
    scores = tmp_path / "scores.csv"
    scores.write_text(f"student,checkpoint,points,comment\n{row}\n")
    assert main(["grade", str(tmp_path / "alice.ipynb"), "--out", str(tmp_path / "out"), "--manual", str(scores)]) == 2
    assert message in capsys.readouterr().err


def with_report(notebook: dict, judgements: list[dict], **reported) -> dict:
    """``notebook`` with the output the results cell records (``BlindJudging.report``)."""
    notebook["cells"].append({"cell_type": "code", "metadata": {}, "execution_count": 1, "source": "report = ...",
                              "outputs": [{"output_type": "display_data", "metadata": {}, "data": {
                                  "text/plain": "(recorded)", "application/json": {
                                      "lab7": "report", "judgements": judgements, **reported}}}]})
    return notebook


def test_class_page_shows_each_students_blind_result_and_the_class(tmp_path, browser):
    from lab7_helpers.judging import blind_pairs, judgement

    generations = [{"prompt": f"Q{i}?", "base": "short", "dpo": "a longer answer here"} for i in range(6)]
    pairs = blind_pairs(generations, seed=0)
    longer = [judgement(p, "a" if p.left_model == "dpo" else "b") for p in pairs]  # dpo (longer) wins all 6
    mixed = [judgement(p, "t") for p in pairs[:2]] + [judgement(p, "a" if p.left_model == "base" else "b")
                                                      for p in pairs[2:4]]  # 2 ties, 2 base wins
    held_out = {"reward_acc": 0.75, "reward_acc_low": 0.3, "reward_acc_high": 0.95, "kl_to_ref": 0.11,
                "kl_to_ref_low": 0.05, "kl_to_ref_high": 0.2}
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / "alice.ipynb").write_text(json.dumps(with_report(
        answers_only("DPO learned length."), longer, train_pairs=17, shortcut="Length: the chosen is longer.",
        dpo_held_out=held_out)))
    (folder / "bob_answers.json").write_text(json.dumps({
        "format": "lab7-answers", "student": "Bob", "answers": {"shortcut": "Not much changed."},
        "report": {"lab7": "report", "judgements": mixed, "train_pairs": 12, "shortcut": "Tone words: chosen."}}))
    (folder / "carol.ipynb").write_text(json.dumps(answers_only("No idea.")))  # judged nothing
    out = tmp_path / "grades"
    assert main(["grade", str(folder), "--out", str(out)]) == 0
    browser.get((out / "class.html").resolve().as_uri())
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "2 of 3 students recorded a blind judgement" in text
    assert "for 1 of them" in text  # alice's DPO won by her own judgement, bob's did not
    # pooled: 10 prompts, dpo won 6, lost 2, tied 2 -> (6 + 1) / 10
    assert "All judgements pooled (10 prompts): DPO's win rate 0.70" in text
    assert "Shortcuts the data cards named: Length (1), Tone words (1)" in text
    rows = {row.find_elements(By.TAG_NAME, "td")[0].text: [c.text for c in row.find_elements(By.TAG_NAME, "td")]
            for row in browser.find_elements(By.CSS_SELECTOR, "tr") if row.find_elements(By.TAG_NAME, "td")}
    assert rows["alice"][1] == "17" and rows["alice"][3].startswith("1.00 [") and "6 prompts" in rows["alice"][3]
    assert rows["alice"][4] == "0.75 [0.30, 0.95]" and rows["alice"][6] == "DPO learned length."
    assert rows["bob"][3].startswith("0.25 [") and rows["bob"][4] == ""
    assert rows["carol"][1:6] == ["", "", "", "", ""]
    browser.save_screenshot(str(tmp_path / "class.png"))
    grading = (out / "grading.html").read_text()
    assert "Blind judgement (recomputed from the hand-in): dpo against base, judged blind on 6 prompt(s)" in grading
