"""Matplotlib figures for the lab: training curves, the beta sweep and the evaluation metrics."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def _curves(history: pd.DataFrame, panels: list[tuple[str, list[str]]], title: str,
            zero_line: tuple[str, ...] = ()) -> Figure:
    fig = Figure(figsize=(4 * len(panels), 3.2), layout="constrained")
    for ax, (label, columns) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        if label in zero_line:
            ax.axhline(0, color="grey", linewidth=0.8, linestyle="--")
        for column in columns:
            ax.plot(history.index, history[column], marker="." if len(history) < 50 else None,
                    label=column.split("/")[-1])
        ax.set_xlabel("step")
        ax.set_title(label)
        if len(columns) > 1:
            ax.legend()
    fig.suptitle(title)
    return fig


def plot_kl_history(history: pd.DataFrame) -> Figure:
    """Loss, NLL and KL per step of ``train_kl``."""
    return _curves(history, [("loss = NLL + beta * KL", ["loss"]), ("NLL (mean per token)", ["nll"]),
                             ("KL to reference (mean per token)", ["kl"])], "KL-regularized update")


def plot_dpo_history(history: pd.DataFrame, title: str = "DPO") -> Figure:
    """DPO loss, implicit rewards and reward accuracy per step (``train_dpo`` or ``train_dpo_trl``), and, where the
    history has them (``train_dpo``), the log-probs of chosen and rejected relative to the reference: a chosen
    curve below the dashed 0 line is likelihood displacement."""
    window = max(1, len(history) // 10)
    smooth = history.rolling(window, min_periods=1).mean()
    panels = [("loss", ["loss"]), ("implicit rewards", ["rewards/chosen", "rewards/rejected", "rewards/margins"]),
              ("reward accuracy", ["rewards/accuracies"])]
    if "logps_vs_ref/chosen" in history:
        panels.append(("log-prob - reference's (summed)", ["logps_vs_ref/chosen", "logps_vs_ref/rejected"]))
    return _curves(smooth, panels, f"{title} (running mean over {window} steps)",
                   zero_line=("implicit rewards", "log-prob - reference's (summed)"))


def plot_dpo_comparison(histories: dict[str, pd.DataFrame]) -> Figure:
    """Loss and implicit reward margin per step of several DPO runs on one set of axes (e.g. our loop and TRL's),
    each as a running mean over a tenth of its steps."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    for ax, column in zip(fig.subplots(1, 2), ["loss", "rewards/margins"]):
        for name, history in histories.items():
            window = max(1, len(history) // 10)
            ax.plot(history.index, history[column].rolling(window, min_periods=1).mean(), label=name)
        ax.set_xlabel("step")
        ax.set_title(column.split("/")[-1])
        ax.legend()
    fig.suptitle("DPO: our loop and TRL's, step by step (running means)")
    return fig


def plot_beta_sweep(sweep: pd.DataFrame) -> Figure:
    """NLL against KL after the KL update, one point per beta: the trade-off beta controls."""
    fig = Figure(figsize=(5, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(sweep["kl"], sweep["nll"], marker="o")
    for i, (beta, row) in enumerate(sweep.iterrows()):
        # neighbouring betas can land nearly on one point (0 and 0.05 often do): their labels alternate between
        # above right and below left (a larger beta has the smaller KL, so it sits to the left)
        ax.annotate(f"beta={beta:g}", (row["kl"], row["nll"]), textcoords="offset points",
                    **(dict(xytext=(6, 6), ha="left") if i % 2 == 0 else dict(xytext=(-6, -14), ha="right")))
    ax.margins(x=0.2, y=0.15)  # room for the labels inside the axes
    ax.locator_params(axis="x", nbins=4)  # a few ticks: KL values can be long numbers (tiny-gpt2's are ~2e-5)
    ax.set_xlabel("KL to reference (nats per token)")
    ax.set_ylabel("NLL of chosen responses")
    ax.set_title("Beta sweep: stay close vs. imitate")
    return fig


def plot_metrics(metrics: pd.DataFrame) -> Figure:
    """One small bar chart per evaluation metric, a bar per model, with its 95% interval as an error bar where
    ``metrics`` has ``<metric>_low`` and ``<metric>_high``. A missing value (NaN) gets no bar and says "n/a"."""
    columns = [c for c in metrics.columns if not c.endswith(("_low", "_high"))]
    n_cols = 4
    n_rows = -(-len(columns) // n_cols)
    fig = Figure(figsize=(3.2 * n_cols, 2.6 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).flatten()
    colors = [f"C{i}" for i in range(len(metrics))]
    for ax, column in zip(axes, columns):
        values = metrics[column]
        errors = None
        if f"{column}_low" in metrics and f"{column}_high" in metrics:
            # clip at 0: an interval that does not contain its value (a bootstrap can do that) draws no error bar
            errors = [(values - metrics[f"{column}_low"]).clip(lower=0).fillna(0),
                      (metrics[f"{column}_high"] - values).clip(lower=0).fillna(0)]
        ax.bar(metrics.index, values, color=colors, yerr=errors, capsize=3)
        for x, value in enumerate(values):
            if pd.isna(value):
                ax.annotate("n/a", (x, 0), ha="center", va="bottom", fontsize=8, color="grey")
        ax.set_title(column, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    fig.suptitle("Evaluation on held-out pairs")
    return fig
