"""grading.html: one self-contained page (no server, works offline) for grading the Checkpoints by hand.

Per student and Checkpoint: the student's answer (and how the grader found it) next to the rubric's full answer,
a points box bounded by the rubric and a comment box. What the instructor types is kept in the browser's
localStorage (under a key naming the output folder, so a regraded class keeps its scores; in a ``Map`` keyed by
student and Checkpoint, which no name can alias) and "Export CSV" saves ``scores.csv`` for
``lab7 grade ... --manual scores.csv``. Tab goes points -> comment -> next points; Enter in a points box jumps to
the next points box. A very long answer is shown cut at ``MAX_SHOWN`` characters, with its length: answers.csv
keeps all of it.
"""

from __future__ import annotations

from html import escape as esc

import pandas as pd

from .submissions import original_questions

MAX_SHOWN = 20_000  # characters of one answer on the page
BLIND_BESIDE = ("criterion", "shortcut", "blind")  # the Checkpoints the blind judgement is shown beside

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1300px;margin:0 auto;padding:0 1em 4em;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:.6em 0;display:flex;gap:1em;
 align-items:center;z-index:1}
header h1{font-size:1.3em;margin:0;flex:1}
button{font-size:1em;padding:.35em .9em}
.table{border-collapse:collapse;font-size:14px;margin:1em 0;width:100%}
.table td,.table th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
.answer{white-space:pre-wrap;max-width:420px}.full{color:#444;max-width:360px}
.how{display:block;color:#777;font-size:12px;margin-top:4px}
.problem{color:#b00020}.empty{color:#b00020;font-style:italic}
input.points{width:4.5em;font-size:1em}input.points[aria-invalid=true]{outline:2px solid #b00020}
textarea.comment{width:100%;min-width:180px;height:4.2em;font:inherit;font-size:13px;margin-top:4px}
.unplaced{white-space:pre-wrap;background:#fff6e0;padding:.5em}
.identity{background:#fde2e1;border-left:4px solid #b00020;padding:.5em}
"""

SCRIPT = r"""
(function () {
  const key = document.body.dataset.storage;
  const load = () => {
    try { const saved = JSON.parse(localStorage.getItem(key)); return new Map(Array.isArray(saved) ? saved : []); }
    catch (e) { return new Map(); }
  };
  const state = load();  // [student, checkpoint] as JSON -> {points, comment}
  const boxes = Array.from(document.querySelectorAll("input.points"));
  const cell = (el) => el.closest("td");
  const id = (td) => JSON.stringify([td.dataset.student, td.dataset.checkpoint]);
  function valid(input) {
    const text = input.value.trim(), value = Number(text);
    return text === "" || (Number.isFinite(value) && value >= 0 && value <= Number(input.max));
  }
  function save(el) {
    const td = cell(el), points = td.querySelector("input.points"), ok = valid(points);
    points.setAttribute("aria-invalid", String(!ok));
    if (!ok) { status(`${td.dataset.student}, ${td.dataset.checkpoint}: points must be 0 to ${points.max}`); return; }
    state.set(id(td), {points: points.value.trim(), comment: td.querySelector("textarea").value});
    localStorage.setItem(key, JSON.stringify([...state]));
    status("saved in this browser");
  }
  function status(text) {
    const done = boxes.filter((b) => b.value.trim() !== "" && valid(b)).length;
    document.getElementById("status").textContent = `${done} of ${boxes.length} scored; ${text}`;
  }
  for (const box of boxes) {
    const td = cell(box), saved = state.get(id(td));
    if (saved) { box.value = saved.points; td.querySelector("textarea").value = saved.comment; }
    box.addEventListener("keydown", (event) => {
      if (event.key !== "Enter") return;
      event.preventDefault();
      const next = boxes[boxes.indexOf(box) + 1];
      if (next) next.focus();
    });
  }
  for (const el of document.querySelectorAll("input.points, textarea.comment")) {
    el.addEventListener("input", () => save(el));
  }
  const guard = (v) => /^[=+\-@\t\r]/.test(v) ? "'" + v : v;  // no formula when a spreadsheet opens it
  const quote = (v) => /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
  // The CSV that "Export CSV" downloads; also callable from scripts (the tests use it).
  window.lab7ScoresCsv = function () {
    const lines = ["student,checkpoint,points,comment"];
    for (const box of boxes) {
      const td = cell(box), comment = td.querySelector("textarea").value;
      if (box.value.trim() === "" && comment.trim() === "") continue;
      lines.push([guard(td.dataset.student), td.dataset.checkpoint, valid(box) ? box.value.trim() : "",
        guard(comment)].map(quote).join(","));
    }
    return lines.join("\r\n") + "\r\n";
  };
  document.getElementById("export").addEventListener("click", () => {
    const bad = boxes.filter((b) => !valid(b));
    if (bad.length) { bad[0].focus(); status("fix the points outlined in red first"); return; }
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([window.lab7ScoresCsv()], {type: "text/csv"}));
    link.download = "scores.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    status("exported scores.csv (merge it with lab7 grade ... --manual scores.csv)");
  });
  status(state.size ? "restored from this browser" : "nothing entered yet");
})();
"""


def shown(text: str) -> str:
    """``text`` for the page, escaped, cut at ``MAX_SHOWN`` characters with a note of its length."""
    if len(text) <= MAX_SHOWN:
        return esc(text)
    return (esc(text[:MAX_SHOWN]) + f"<span class='how'>... cut here: {len(text):,} characters in all "
            "(answers.csv has the whole text)</span>")


def _answer(answers: pd.Series, key: str) -> str:
    """One answer cell of the page: the text (``shown``) and how it was found, or "(empty)"."""
    text = answers.get(key, "")
    text = "" if pd.isna(text) else str(text)
    if not text:
        return "<span class='empty'>(empty)</span>"
    return f"{shown(text)}<span class='how'>found: {esc(str(answers.get(f'{key} found', '')))}</span>"


def _student_section(student: str, row: pd.Series, answers: pd.Series, rubric: dict) -> str:
    parts = [f"<section><h2 id='{esc(student, quote=True)}'>{esc(student)}: {row['total']:g} / {row['max']:g} "
             f"automatic points <small>({esc(str(row['status']))})</small></h2>"]
    if row["problem"]:
        parts.append(f"<p class='problem'>{esc(str(row['problem']))}</p>")
    if row.get("names typed in it"):
        parts.append(f"<p>Name typed in it: {esc(str(row['names typed in it']))}</p>")
    if row.get("set aside"):
        parts.append(f"<p>Graded {esc(str(row['file']))}; set aside: {esc(str(row['set aside']))}</p>")
    parts.append("<table class='table'><tr><th>check</th><th>points</th><th>hint</th></tr>" + "".join(
        f"<tr><td>{esc(c['title'])}</td><td>{row[f'{cid} points']:g} / {c['points']:g}</td>"
        f"<td>{esc(str(row[f'{cid} hint']))}</td></tr>" for cid, c in rubric["checks"].items()) + "</table>")
    if row["status"] == "original lab 7":
        parts.append("<p><b>Original lab</b>: the answers typed into the original Lab 7's Checkpoints, with its "
                     "questions. They carry no rubric points here: grade them by hand.</p>"
                     "<table class='table'><tr><th>original Checkpoint</th><th>student's answer</th></tr>" + "".join(
                         f"<tr><td>{esc(key)}: {esc(question.removeprefix('### Checkpoint').strip())}</td>"
                         f"<td class='answer'>{_answer(answers, key)}</td></tr>"
                         for key, question in original_questions()["questions"].items()) + "</table>")
    rows = []
    for key, checkpoint in rubric.get("checkpoints", {}).items():
        label = f"{student}, {key}: points out of {checkpoint['points']:g}"
        blind = answers.get("blind result", "")
        beside = (f"<span class='how'>Blind judgement (recomputed from the hand-in): {esc(blind)}</span>"
                  if key in BLIND_BESIDE and isinstance(blind, str) and blind else "")
        rows.append(
            f"<tr><td>{esc(checkpoint['question'])}{beside}</td><td class='answer'>{_answer(answers, key)}</td>"
            f"<td class='full'>{esc(checkpoint.get('full_answer', ''))}</td>"
            f"<td data-student='{esc(student, quote=True)}' data-checkpoint='{esc(key, quote=True)}'>"
            f"<input class='points' type='number' min='0' max='{checkpoint['points']:g}' step='0.5' "
            f"aria-label='{esc(label, quote=True)}'> / {checkpoint['points']:g}"
            f"<textarea class='comment' aria-label='{esc(f'{student}, {key}: comment', quote=True)}' "
            f"placeholder='comment'></textarea></td></tr>")
    parts.append("<table class='table'><tr><th>Checkpoint</th><th>student's answer</th><th>a full answer</th>"
                 "<th>points and comment</th></tr>" + "".join(rows) + "</table>")
    if isinstance(answers.get("unplaced"), str) and answers["unplaced"]:
        parts.append("<p>Text under no Checkpoint question (read it in case it answers one):</p>"
                     f"<div class='unplaced'>{shown(str(answers['unplaced']))}</div>")
    return "".join(parts) + "</section>"


def render_grading(grades: pd.DataFrame, answers: pd.DataFrame, rubric: dict, storage_key: str = "") -> str:
    """The page: a summary table, then per student the automatic results and the Checkpoints to grade.
    ``storage_key`` names where the browser keeps the scores (the output folder: one class, one key)."""
    summary = grades[["status", "problem", "total", "max"]].rename(
        columns={"total": "automatic", "max": "of"}).to_html(border=0, classes="table", index_names=False)
    sections = "".join(_student_section(str(student), row, answers.loc[student], rubric)
                       for student, row in grades.iterrows())
    clashes = [(str(student), str(row["file"])) for student, row in grades.iterrows()
               if str(row["problem"]).startswith("identity:")]
    identity = ("<div class='identity'><b>Names that collide</b> (a name typed in a hand-in is another's, or two "
                "look alike): the rows below say which. Each row belongs to its file; if a file is not whose its "
                "name says, rename it and grade again.<ul>" + "".join(
                    f"<li><a href='#{esc(s, quote=True)}'>{esc(s)}</a> ({esc(f)})</li>" for s, f in clashes)
                + "</ul></div>") if clashes else ""
    storage = esc(f"lab7-grading {storage_key}", quote=True)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Lab 7 grading</title>"
            f"<style>{STYLE}</style></head><body data-storage='{storage}'>"
            "<header><h1>Lab 7 grading</h1><span id='status' role='status'></span>"
            "<button id='export' type='button'>Export CSV</button></header>"
            "<p>Points and comments are kept in this browser as you type. <b>Export CSV</b> saves them as "
            "<code>scores.csv</code>; <code>lab7 grade ... --manual scores.csv</code> adds them to grades.csv.</p>"
            f"{identity}{summary}{sections}<script>{SCRIPT}</script></body></html>")
