"""Write a run's outputs: CSV/JSONL files, PNG plots and a self-contained HTML report. Every file is written
atomically (to a temporary name, then renamed), so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import html
import io
import json
import os
from pathlib import Path

import pandas as pd

from ..evaluation import metric_descriptions


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to ``path.tmp``, then rename: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())


def save_csv(frame: pd.DataFrame, path: Path) -> None:
    """A DataFrame as CSV (6 significant digits, ``\\n`` line ends: byte-identical across runs), atomically."""
    write_atomic(path, frame.to_csv(float_format="%.6g", lineterminator="\n"))


def save_generations(generations: pd.DataFrame, path: Path) -> None:
    """One JSON object per prompt (the prompt and each model's response), atomically."""
    lines = [json.dumps(row, ensure_ascii=False) for row in generations.to_dict(orient="records")]
    write_atomic(path, "".join(line + "\n" for line in lines))


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.3f}", na_rep="n/a", border=0, classes="table")


def render_report(run: dict) -> str:
    """An HTML page for ``run``: a dict with ``settings``, ``stages`` (finished stage names), ``notes`` and,
    when present, ``failures`` (dicts: ``stage``, ``reason``, ``details``), ``figures`` (name -> PNG file name),
    ``kl_history``, ``dpo_history``, ``dpo_trl_history``, ``beta_sweep``, ``metrics``, ``generations`` and
    ``parity`` (DataFrames or dicts)."""
    esc = html.escape
    parts = [f"<h1>Lab 7 run: {esc(run['settings']['model'])}</h1>"]
    parts += [f'<p class="note">{esc(note)}</p>' for note in run["notes"]]
    failures = {failure["stage"]: failure for failure in run.get("failures", [])}
    parts += [f'<p class="failed">{esc(stage)} failed: {esc(failure["reason"])}</p><details><summary>Details for '
              f'a bug report</summary><pre>{esc(failure["details"])}</pre></details>'
              for stage, failure in failures.items()]
    parts.append("<h2>Stages</h2><ul>" + "".join(
        f"<li>{esc(stage)}: "
        f"{'done' if stage in run['stages'] else 'failed' if stage in failures else 'not run / not finished'}</li>"
        for stage in run["planned_stages"]) + "</ul>")
    parts.append("<h2>Settings</h2>" + _table(pd.Series(run["settings"], name="value").astype(str).to_frame()))
    figures = run.get("figures", {})

    def figure(name: str) -> str:
        return f'<img src="{esc(figures[name])}" alt="{esc(name)}">' if name in figures else ""

    if "kl_history" in run:
        last = run["kl_history"].iloc[-1]
        parts.append(f"<h2>KL-regularized update</h2><p>Last step: loss {last['loss']:.4f}, NLL {last['nll']:.4f}, "
                     f"KL {last['kl']:.4f} (means per response token).</p>" + figure("kl_history"))
    if "beta_sweep" in run:
        parts.append("<h2>Beta sweep</h2><p>Each beta trains a fresh copy; NLL and KL are measured afterwards on "
                     "the training pairs' chosen responses.</p>" + _table(run["beta_sweep"]) + figure("beta_sweep"))
    if "dpo_history" in run:
        parts.append("<h2>DPO (our loop)</h2>" + figure("dpo_history"))
    if "dpo_trl_history" in run:
        parts.append("<h2>DPO (TRL DPOTrainer)</h2>" + figure("dpo_trl_history"))
    if "parity" in run:
        parts.append("<h2>Our DPO loss vs TRL</h2>" + _table(pd.DataFrame([run["parity"]])))
    if "metrics" in run:
        parts.append("<h2>Evaluation on held-out pairs</h2>" + _table(run["metrics"]) + figure("metrics")
                     + "<details><summary>What the columns mean</summary>" + _table(metric_descriptions())
                     + "</details>")
    if "generations" in run:
        parts.append("<h2>Generations (same prompts, same seed)</h2>"
                     + run["generations"].to_html(border=0, classes="table gen", index=False))
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             ".table{border-collapse:collapse;font-size:14px;display:block;overflow-x:auto}"
             ".table td,.table th{border:1px solid #ccc;"
             "padding:4px 8px;vertical-align:top}.gen td{white-space:pre-wrap;max-width:280px}"
             ".note{background:#fff4d6;padding:8px;border-left:4px solid #e0a800}"
             ".failed{background:#fde2e1;padding:8px;border-left:4px solid #c0392b}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Lab 7 report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
