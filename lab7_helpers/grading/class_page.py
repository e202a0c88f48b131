"""class.html: the class's blind judgements on one page, for the discussion after the lab. It grades nothing.

A row per student: the pairs trained on, the data card's shortcut, DPO's blind win rate against base (recomputed
here from the judgements the hand-in recorded), held-out reward accuracy and KL as the notebook reported them,
and the Checkpoint 7 answer. On top, the class: how many students' DPO won by their own judgement, the pooled win
rate, how often the class picked the longer answer, and the shortcuts the data cards named.
"""

from __future__ import annotations

from html import escape as esc
from collections import Counter

import pandas as pd

from ..judging import blind_summary

STYLE = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
.table{border-collapse:collapse;font-size:14px;margin:1em 0;width:100%}
.table td,.table th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
.answer{white-space:pre-wrap;max-width:380px}.reported{color:#555}.note{background:#f3f3f3;padding:8px}"""


def _interval(rate: float, low: float, high: float) -> str:
    return f"{rate:.2f} [{low:.2f}, {high:.2f}]"


def _blind(report: dict | None) -> tuple[str, dict | None]:
    if not report or not report.get("judgements"):
        return "", None
    s = blind_summary(report["judgements"])
    if not s["n"]:
        return "", None
    return (f"{_interval(s['win_rate'], s['win_rate_low'], s['win_rate_high'])}, {s['n']} prompts "
            f"({s['wins']} won, {s['losses']} lost, {s['ties']} tied)"), s


def _reported(report: dict | None, key: str) -> str:
    held_out = (report or {}).get("dpo_held_out")
    if not isinstance(held_out, dict) or not all(isinstance(held_out.get(f"{key}{end}"), (int, float))
                                                  for end in ("", "_low", "_high")):
        return ""
    return _interval(held_out[key], held_out[f"{key}_low"], held_out[f"{key}_high"])


def render_class(reports: dict[str, dict | None], answers: pd.DataFrame) -> str:
    """The page for ``reports`` (student -> the report their notebook recorded, or None) and answers.csv."""
    rows, summaries, everyone, shortcuts = [], [], [], Counter()
    for student, report in reports.items():
        blind, summary = _blind(report)
        if summary:
            summaries.append(summary)
            everyone += report["judgements"]
        shortcut = str((report or {}).get("shortcut") or "")
        if shortcut:
            shortcuts[shortcut.split(":")[0].strip()] += 1
        answer = answers.loc[student].get("shortcut", "") if student in answers.index else ""
        pairs = (report or {}).get("train_pairs")
        rows.append(f"<tr><td>{esc(student)}</td><td class='reported'>{esc(str(pairs)) if pairs else ''}</td>"
                    f"<td class='reported'>{esc(shortcut)}</td><td>{esc(blind)}</td>"
                    f"<td class='reported'>{esc(_reported(report, 'reward_acc'))}</td>"
                    f"<td class='reported'>{esc(_reported(report, 'kl_to_ref'))}</td>"
                    f"<td class='answer'>{esc('' if pd.isna(answer) else str(answer))}</td></tr>")
    pooled = blind_summary(everyone) if everyone else None
    won = sum(s["win_rate"] > 0.5 for s in summaries)
    top = [f"<p>{len(summaries)} of {len(reports)} students recorded a blind judgement. DPO beat base by its "
           f"student's own judgement (win rate above 0.5) for {won} of them.</p>"]
    if pooled:
        longer = pooled["picked_longer"]
        top.append(f"<p>All judgements pooled ({pooled['n']} prompts): DPO's win rate "
                   f"{_interval(pooled['win_rate'], pooled['win_rate_low'], pooled['win_rate_high'])}, sign test "
                   f"p = {pooled['sign_test_p']:.2f}. The class picked the longer answer in "
                   + (f"{_interval(longer['rate'], longer['low'], longer['high'])} of {longer['n']} choices"
                      if longer["n"] else "none of its choices") + ".</p>")
    if shortcuts:
        top.append("<p>Shortcuts the data cards named: " + ", ".join(
            f"{esc(name)} ({count})" for name, count in shortcuts.most_common()) + ".</p>")
    head = ("<tr><th>student</th><th>pairs trained on*</th><th>data card: shortcut to watch*</th><th>DPO vs base, "
            "judged blind (95% interval)</th><th>held-out reward accuracy*</th><th>KL to reference*</th>"
            "<th>Checkpoint 7: intent or shortcut?</th></tr>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Lab 7: the class</title>"
            f"<style>{STYLE}</style></head><body><h1>Lab 7: what the class's DPO learned, by its own judgement</h1>"
            + "".join(top) + "<p class='note'>* as reported by the notebook: a student can edit outputs, so read "
            "them as the student's record, not as measured here. The blind win rate is recomputed from the "
            "judgements the hand-in recorded. This page grades nothing.</p>"
            f"<table class='table'>{head}{''.join(rows)}</table></body></html>")
