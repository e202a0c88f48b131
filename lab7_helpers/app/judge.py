"""Judging blind, three ways: a widget in Colab or Jupyter, lines typed in a terminal (``lab7 judge`` too), or a
scripted judge for tests and dry runs (``LAB7_JUDGE=longer``, ``shorter``, ``left`` or ``right``).

The notebook calls ``judge_blind(generations)``; the widget never blocks "Run all" (it waits for clicks, the next
cell reads what was judged so far), and where no one can answer it says so in one sentence.
"""

from __future__ import annotations

import html
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import pandas as pd

from ..judging import CHOICES, COLUMNS, BlindPair, blind_pairs, blind_summary, judgement, summary_text
from ..outputs import save_csv

SCRIPTED = {"longer": lambda p: "t" if len(p.left.split()) == len(p.right.split()) else
            "a" if len(p.left.split()) > len(p.right.split()) else "b",
            "shorter": lambda p: "t" if len(p.left.split()) == len(p.right.split()) else
            "a" if len(p.left.split()) < len(p.right.split()) else "b",
            "left": lambda p: "a", "right": lambda p: "b"}
ASK_AGAIN = "Type a (A is better), b (B is better) or t (a tie); end the input to stop."


class BlindJudging:
    """The pairs to judge and the choices so far (index -> ``"a"``, ``"b"`` or ``"t"``); identical answers are
    ties from the start."""

    def __init__(self, pairs: list[BlindPair], model: str = "dpo", other: str = "base"):
        self.pairs, self.model, self.other = pairs, model, other
        self.choices = {i: "t" for i, pair in enumerate(pairs) if pair.identical}

    @property
    def done(self) -> bool:
        return len(self.choices) == len(self.pairs)

    @property
    def rows(self) -> list[dict]:
        """The judged pairs, unblinded (``judging.judgement`` rows), in order."""
        return [judgement(self.pairs[i], choice) for i, choice in sorted(self.choices.items())]

    @property
    def summary(self) -> dict:
        return blind_summary(self.rows, self.model, self.other)

    def report(self, **reported) -> dict:
        """Show the result (or one sentence on what is missing) and record it in the notebook's output, with
        ``reported`` (the notebook's own figures), where ``lab7 grade`` reads it."""
        if not self.done:
            print(f"{len(self.pairs) - len(self.choices)} of {len(self.pairs)} pairs are not judged yet: judge them "
                  "above, then run this cell again.")
        else:
            print(summary_text(self.summary))
        record = {"lab7": "report", "judgements": self.rows, **reported}
        try:
            from IPython.display import display
        except ImportError:  # no notebook to record it in
            return record
        display({"text/plain": f"(recorded for your hand-in: {len(self.rows)} judgement(s))",
                 "application/json": record}, raw=True)
        return record


def judge_blind(generations, models: tuple[str, str] = ("base", "dpo"), seed: int = 0,
                judge: str | None = None) -> BlindJudging:
    """Judge ``generations`` (a DataFrame or dicts: ``prompt`` and a text per model) blind, ``models[1]`` against
    ``models[0]``: by ``judge`` or ``LAB7_JUDGE`` when set, else with a widget, else in text."""
    records = generations.to_dict("records") if hasattr(generations, "to_dict") else list(generations)
    judging = BlindJudging(blind_pairs(records, models, seed), model=models[1], other=models[0])
    judge = judge or os.environ.get("LAB7_JUDGE")
    if judge:
        if judge not in SCRIPTED:
            raise ValueError(f"LAB7_JUDGE must be one of {', '.join(SCRIPTED)}, not {judge!r}")
        judging.choices.update({i: SCRIPTED[judge](p) for i, p in enumerate(judging.pairs) if i not in judging.choices})
        print(f"Judged by the scripted judge {judge!r} (LAB7_JUDGE): for tests and dry runs, not your own judgement.")
    elif not _widget(judging):
        judge_in_text(judging)
    return judging


def judge_in_text(judging: BlindJudging, read: Callable[[str], str] = input, write: Callable = print) -> None:
    """Each pair in turn: the prompt, A and B, then one line: a, b or t. Anything else is asked again; the end
    of the input stops and keeps what was judged."""
    for i, pair in enumerate(judging.pairs):
        if i in judging.choices:
            continue
        write(f"\n--- {i + 1} of {len(judging.pairs)} ---\nPrompt: {pair.prompt}\n\n"
              f"A: {pair.left}\n\nB: {pair.right}\n")
        while True:
            try:
                answer = read("Which is better: a, b or t (tie)? ").strip().lower()
            except (EOFError, KeyboardInterrupt):
                write(f"The input ended: kept the {len(judging.choices)} pair(s) judged so far.")
                return
            except NotImplementedError:  # a notebook run with no one to answer (jupyter execute, CI)
                write("No one can answer here (no browser): nothing judged. Judge in Colab or Jupyter, or set "
                      "LAB7_JUDGE=longer for a dry run.")
                return
            if answer in CHOICES:
                judging.choices[i] = answer
                break
            write(ASK_AGAIN)


def _widget(judging: BlindJudging) -> bool:
    """Show the judging widget; False (nothing shown) outside a notebook kernel with ipywidgets."""
    try:
        import ipywidgets as w
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return False
    if get_ipython() is None or not hasattr(get_ipython(), "kernel"):
        return False
    status, result = w.HTML(), w.Output()

    def update() -> None:
        status.value = f"<b>{len(judging.choices)} of {len(judging.pairs)} judged</b>"

    def choose(i: int, change) -> None:
        if change["new"] is not None:
            judging.choices[i] = change["new"]
            update()

    boxes = []
    for i, pair in enumerate(judging.pairs):
        answers = w.HBox([w.HTML(f"<div style='white-space:pre-wrap;border:1px solid #ccc;padding:6px;width:420px'>"
                                 f"<b>{side}</b><br>{html.escape(text)}</div>") for side, text in
                          (("A", pair.left), ("B", pair.right))])
        if pair.identical:
            pick = w.HTML("<i>The two answers are identical: a tie.</i>")
        else:
            pick = w.ToggleButtons(options=[("A is better", "a"), ("B is better", "b"), ("Tie", "t")], value=None)
            pick.observe(partial(choose, i), names="value")
        boxes.append(w.VBox([w.HTML(f"<h4>Prompt {i + 1}: {html.escape(pair.prompt)}</h4>"), answers, pick]))
    finish = w.Button(description="Finish: show which model was which", layout=w.Layout(width="320px"))

    def on_finish(_) -> None:
        with result:
            result.clear_output()
            if not judging.done:
                print(f"{len(judging.pairs) - len(judging.choices)} pair(s) still to judge.")
            else:
                print(summary_text(judging.summary) + "\nNow run the next cell to record this in your notebook.")

    finish.on_click(on_finish)
    update()
    display(w.VBox([*boxes, status, finish, result]))
    return True


def judge_run(run_dir: Path, models: tuple[str, str] = ("base", "dpo"), seed: int = 0, overwrite: bool = False,
              with_sample: bool = False, read: Callable[[str], str] = input, write: Callable = print) -> int:
    """``lab7 judge RUN_DIR``: judge a ``lab7 run`` folder's generations blind in the terminal (``with_sample``:
    those on the bundled sample's prompts too) and write ``judgments.csv`` there. 0 when done (however many were
    judged), 2 (one sentence, nothing written) for a folder without generations, an unknown model or an existing
    ``judgments.csv`` without ``overwrite``."""
    sources = [run_dir / "generations.jsonl"] + ([run_dir / "generations_sample.jsonl"] if with_sample else [])
    out, problem = run_dir / "judgments.csv", ""
    missing = [source.name for source in sources if not source.is_file()]
    if missing:
        problem = (f"{run_dir} holds no {' or '.join(missing)}: give the folder of a finished lab7 run"
                   + (" made with --also-score-sample" if "generations_sample.jsonl" in missing else ""))
    elif out.exists() and not overwrite:
        problem = f"{out} exists already: add --overwrite to judge again and replace it"
    else:
        rows = [json.loads(line) for source in sources
                for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        unknown = [m for m in models if not rows or m not in rows[0]]
        if unknown:
            known = ", ".join(k for k in (rows[0] if rows else {}) if k != "prompt")
            problem = f"no model {', '.join(unknown)} in {sources[0]} (it has {known})"
    if problem:
        print(f"lab7: error: {problem}", file=sys.stderr)
        return 2
    judging = BlindJudging(blind_pairs(rows, models, seed), model=models[1], other=models[0])
    write(f"{len(judging.pairs)} prompts, two answers each (A and B, in a random order). Pick the better one by "
          "your own criterion; the models are named at the end.")
    judge_in_text(judging, read, write)
    save_csv(pd.DataFrame(judging.rows, columns=COLUMNS).set_index("prompt"), out)
    write("\n" + summary_text(judging.summary) + f"\n\nJudgements: {out}")
    return 0
