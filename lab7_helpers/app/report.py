"""Write a run's outputs: CSV/JSONL files, PNG plots and a self-contained HTML report. Every file is written
atomically (to a temporary name, then renamed), so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import io
import json
from html import escape as esc
from pathlib import Path

import pandas as pd

from ..outputs import write_atomic
from .tables import fixed, metric_descriptions, with_intervals


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())


def save_generations(generations: pd.DataFrame, path: Path) -> None:
    """One JSON object per prompt (the prompt and each model's response), atomically."""
    lines = [json.dumps(row, ensure_ascii=False) for row in generations.to_dict(orient="records")]
    write_atomic(path, "".join(line + "\n" for line in lines))


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(float_format=fixed, na_rep="n/a", border=0, classes="table")


def _text_table(frame: pd.DataFrame) -> str:
    """Texts as an HTML table that keeps their line breaks (``DataFrame.to_html`` writes a literal ``\\n``)."""
    head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f'<table class="table gen"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _evaluation(title: str, metrics: pd.DataFrame, figure: str) -> str:
    return (f"<h2>{title}</h2><p>Each figure with its 95% interval in brackets (Wilson for rates, bootstrap over "
            "the held-out pairs for the rest; <code>metrics.csv</code> has them as <code>_low</code>/"
            "<code>_high</code> columns). Models whose intervals overlap cannot be told apart on these pairs.</p>"
            + _table(with_intervals(metrics).T) + figure)


def render_report(run) -> str:
    """An HTML page for ``run`` (``run.Run``): its notes, failures and stages, the settings that ran, the data card,
    and each finished stage's results and figures."""
    parts = [f"<h1>Lab 7 run: {esc(run.settings.model)}</h1>"]
    parts += [f'<p class="note">{esc(note)}</p>' for note in run.notes]
    failures = {failure.stage: failure for failure in run.failures}
    parts += [f'<p class="failed">{esc(stage)} failed: {esc(failure.reason)}</p><details><summary>Details for '
              f'a bug report</summary><pre>{esc(failure.details)}</pre></details>'
              for stage, failure in failures.items()]
    parts.append("<h2>Stages</h2><ul>" + "".join(
        f"<li>{esc(stage)}: "
        f"{'done' if stage in run.finished else 'failed' if stage in failures else 'not run / not finished'}</li>"
        for stage in run.planned) + "</ul>")
    parts.append("<h2>Settings</h2>" + _table(pd.Series(run.shown_settings, name="value").astype(str).to_frame()))
    if run.data_card is not None:
        parts.append("<h2>Data card (before training)</h2><p>What separates chosen from rejected in your file is "
                     "what DPO will learn, meant or not.</p>" + _table(run.data_card.to_frame()))

    def figure(name: str) -> str:
        return f'<img src="{esc(run.figures[name])}" alt="{esc(name)}">' if name in run.figures else ""

    if run.kl_history is not None:
        last = run.kl_history.iloc[-1]
        parts.append(f"<h2>KL-regularized update</h2><p>Last step: loss {last['loss']:.4f}, NLL {last['nll']:.4f}, "
                     f"KL {last['kl']:.4f} (means per response token).</p>" + figure("kl_history"))
    if run.beta_sweep is not None:
        parts.append("<h2>Beta sweep</h2><p>Each beta trains a fresh copy; NLL and KL are measured afterwards on "
                     "the chosen responses of the pairs its steps trained on.</p>" + _table(run.beta_sweep)
                     + figure("beta_sweep"))
    if run.dpo_history is not None:
        parts.append("<h2>DPO (our loop)</h2><p>Right-hand panel: the summed log-probs of the chosen and rejected "
                     "responses minus the reference's. Below 0, the response is less likely than before training "
                     "(likelihood displacement, when it happens to the chosen ones).</p>" + figure("dpo_history"))
    if run.dpo_trl_history is not None:
        parts.append("<h2>DPO (TRL DPOTrainer)</h2>" + figure("dpo_trl_history"))
    if run.parity is not None:
        parts.append("<h2>Our DPO loop vs TRL</h2><p>Both start at log 2 = 0.6931, which only shows that both start "
                     "from the reference. Each shuffles the pairs in its own order, so their steps differ; compare "
                     "the curves and the last pass. Fed the same batches, the two losses agree to 1e-5 "
                     "(<code>tests/test_training.py</code>).</p>" + _table(run.parity) + figure("dpo_vs_trl"))
    if run.metrics is not None:
        parts.append(_evaluation("Evaluation on held-out pairs", run.metrics, figure("metrics"))
                     + "<details><summary>What the metrics mean</summary>" + _table(metric_descriptions())
                     + "</details>")
    if run.generations is not None:
        parts.append("<h2>Generations (same prompts, same seed: one sample each)</h2>"
                     + _text_table(run.generations))
    if run.metrics_sample is not None:
        parts.append(_evaluation("Evaluation on the bundled sample's held-out pairs", run.metrics_sample,
                                 figure("metrics_sample"))
                     + "<h3>Generations on the sample's prompts</h3>" + _text_table(run.generations_sample))
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             ".table{border-collapse:collapse;font-size:14px;display:block;overflow-x:auto}"
             ".table td,.table th{border:1px solid #ccc;"
             "padding:4px 8px;vertical-align:top}.gen td{white-space:pre-wrap;max-width:280px}"
             ".note{background:#fff4d6;padding:8px;border-left:4px solid #e0a800}"
             ".failed{background:#fde2e1;padding:8px;border-left:4px solid #c0392b}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Lab 7 report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
