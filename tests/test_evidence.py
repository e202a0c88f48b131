"""Evidence a student can trust on a small file: intervals, the few-pairs warning, the data card, defaults that
scale, likelihood displacement in the DPO history, and a report and plots that show what was measured."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer

from lab7_helpers import train_dpo, trainable_copy
from lab7_helpers.app import cli
import lab7_helpers.app.run as run_module
from lab7_helpers.app.plots import plot_beta_sweep, plot_dpo_history, plot_metrics
from lab7_helpers.app.report import render_report
from lab7_helpers.app.settings import LabSettings
from lab7_helpers.training import DPO_MAX_EPOCHS, DPO_MIN_STEPS, scaled_dpo_epochs
from lab7_helpers.sources.data_card import data_card
from lab7_helpers.app.tables import few_pairs_note, sample_held_out_pairs, with_intervals
from lab7_helpers.evaluation import METRIC_DESCRIPTIONS, model_metrics
from lab7_helpers.metrics import bootstrap_indices, bootstrap_interval, wilson_interval


def test_wilson_interval_matches_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(4, 4)  # a perfect score on 4 pairs is far from certain
    assert (low, high) == pytest.approx((0.5101, 1.0), abs=1e-4)
    assert wilson_interval(0, 4) == pytest.approx((0.0, 0.4899), abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = torch.tensor([0.0, 1.0] * 20)
    mean = lambda rows: values[rows].mean(-1)  # noqa: E731
    first = bootstrap_interval(mean, bootstrap_indices(len(values), seed=0))
    assert first == bootstrap_interval(mean, bootstrap_indices(len(values), seed=0))
    assert first != bootstrap_interval(mean, bootstrap_indices(len(values), seed=1))
    assert first[0] < 0.5 < first[1] and 0.3 < first[0] and first[1] < 0.7
    constant = torch.full((7,), 2.5)
    assert bootstrap_interval(lambda rows: constant[rows].mean(-1), bootstrap_indices(7)) == (2.5, 2.5)


def fake_scores(chosen, rejected, tokens=5.0):
    n = len(chosen)
    return {"chosen": torch.tensor(chosen), "rejected": torch.tensor(rejected),
            "chosen_tokens": torch.full((n,), tokens), "rejected_tokens": torch.full((n,), tokens),
            "kl": torch.linspace(0.1, 0.5, n)}


def test_model_metrics_give_every_metric_an_interval():
    texts = ["one two three four five six seven eight nine ten ten ten", "I can't help with that.", "short",
             "a b c a b c a b c a b c"]
    ref = fake_scores([-10.0, -12.0, -9.0, -11.0], [-11.0, -10.0, -9.5, -12.0])
    model = fake_scores([-9.0, -13.0, -8.0, -12.0], [-12.0, -11.0, -9.0, -15.0])
    chosen_longer = torch.tensor([True, False, True, False])
    row = model_metrics(texts, model, ref, chosen_longer, beta=0.1)
    assert list(row) == [f"{m}{end}" for m in METRIC_DESCRIPTIONS for end in ("", "_low", "_high")]
    for name in METRIC_DESCRIPTIONS:
        if name.startswith("distinct_"):  # pooled over responses: a resample's copies would read as repetition
            assert np.isnan(row[f"{name}_low"]) and np.isnan(row[f"{name}_high"]), name
            continue
        assert row[f"{name}_low"] <= row[name] + 1e-9 and row[name] <= row[f"{name}_high"] + 1e-9, name
    assert (row["pref_acc_low"], row["pref_acc_high"]) == wilson_interval(3, 4)  # 3 of 4 pairs right
    assert (row["refusal_rate_low"], row["refusal_rate_high"]) == wilson_interval(1, 4)
    assert row["chosen_logp_vs_ref"] == pytest.approx(np.mean([1.0, -1.0, 1.0, -1.0]))
    assert row["rejected_logp_vs_ref"] == pytest.approx(np.mean([-1.0, -1.0, 0.5, -3.0]))
    assert row["repetition"] == pytest.approx((1 - 10 / 12 + 1 - 3 / 12) / 4)  # the original lab's formula
    assert row["trigram_repetition"] == pytest.approx((1 - 3 / 10) / 4)  # only the loop repeats whole phrases
    assert row["reward_margin_high"] > row["reward_margin_low"]

    as_reference = model_metrics(texts, ref, ref, chosen_longer, beta=0.1, is_reference=True)
    for name in ("reward_acc", "reward_margin", "kl_to_ref", "chosen_logp_vs_ref"):
        assert as_reference[f"{name}_low"] == as_reference[f"{name}_high"] == as_reference[name], name


def test_few_pairs_note_and_intervals_for_reading():
    assert "cannot be told apart" in few_pairs_note(4) and "25 points" in few_pairs_note(4)
    assert few_pairs_note(10) == ""
    metrics = pd.DataFrame({"pref_acc": [0.75, float("nan")], "pref_acc_low": [0.3, float("nan")],
                            "pref_acc_high": [0.95, float("nan")], "len_words": [3.0, 4.0]}, index=["a", "b"])
    shown = with_intervals(metrics)
    assert list(shown.columns) == ["pref_acc", "len_words"]
    assert shown.loc["a", "pref_acc"] == "0.750 [0.300, 0.950]" and shown.loc["b", "pref_acc"] == "n/a"
    assert shown.loc["a", "len_words"] == "3.000"
    tiny_negative = pd.DataFrame({"kl_to_ref": [-2e-5], "kl_to_ref_low": [-4e-4], "kl_to_ref_high": [3e-4]})
    assert with_intervals(tiny_negative).iloc[0, 0] == "0.000 [0.000, 0.000]"  # not -0.000
    assert with_intervals(pd.DataFrame({"m": [-0.0004, -0.0006]}))["m"].tolist() == ["0.000", "-0.001"]


def test_sample_held_out_pairs_leave_out_the_prompts_given():
    everything = sample_held_out_pairs([])
    assert 10 <= len(everything) < 121
    trained, held_out = everything[:3], everything[5:6]
    assert sample_held_out_pairs(trained) == everything[3:]
    assert sample_held_out_pairs(trained + held_out) == everything[3:5] + everything[6:]  # compared once


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_data_card_counts_what_the_file_holds(tmp_path):
    rows = [{"prompt": f"Question {i}?", "chosen": "A long and careful answer with several words in it.",
             "rejected": "Short."} for i in range(8)]
    rows += [rows[0],  # a duplicate
             {"prompt": "Question 1?", "chosen": "Short.",  # swapped: contradicts row 1
              "rejected": "A long and careful answer with several words in it."},
             {"prompt": "Tie?", "chosen": "Same.", "rejected": "Same."},
             {"prompt": "Bomb?", "chosen": "I can't help with that. Please ask something else.",
              "rejected": "Sure, here is how."}]
    path = write_pairs(tmp_path / "pairs.jsonl", rows)
    path.write_text(path.read_text() + '{"prompt": "Cut off?", "chosen": "Yes."}\n')  # no "rejected": a bad line
    card = data_card(path)
    assert card["pairs"] == "11" and card["ties left out"] == "1" and card["duplicate pairs"] == "1"
    assert card["bad lines left out"] == "1"
    assert card["contradicting pairs"].startswith("2 ")  # each side of the swap counts
    assert card["repeated prompts"].startswith("2 prompts")
    assert card["chosen is longer"].startswith("in 10 of 11 pairs (91%)")
    assert card["refusal on one side only"] == "1 pair: chosen refuses in 1, rejected in 0"
    assert card["shortcut to watch"].startswith("Length: the chosen response is the longer one in 10 of 11")

    balanced = [{"prompt": f"Q{i}?", "chosen": "yes " * (1 + i % 2 * 5), "rejected": "no " * (1 + (i + 1) % 2 * 5)}
                for i in range(10)]
    assert data_card(write_pairs(tmp_path / "b.jsonl", balanced))["shortcut to watch"].startswith("No single")


def test_data_card_names_the_side_a_one_sided_feature_is_on(tmp_path):
    """Refusals mostly on the rejected side (5 pairs, 1 on the chosen side): the model is punished for them."""
    refusal, answer = "I can't help with that, sorry.", "Here is a clear answer, step by step."
    rows = [{"prompt": f"Q{i}?", "chosen": answer, "rejected": refusal} for i in range(5)]
    rows += [{"prompt": "Q5?", "chosen": refusal, "rejected": answer}]
    rows += [{"prompt": f"R{i}?", "chosen": f"Answer {i}, done.", "rejected": f"Other answer {i}."} for i in range(14)]
    card = data_card(write_pairs(tmp_path / "pairs.jsonl", rows))
    assert card["refusal on one side only"] == "6 pairs: chosen refuses in 1, rejected in 5"
    assert ("refusals: they appear on the rejected side only in 5 pairs (the other side only in 1), so the model "
            "is punished for refusing as such") in card["shortcut to watch"].lower()


def test_dpo_epochs_scale_with_the_data_within_bounds():
    assert scaled_dpo_epochs(14, 1) == math.ceil(DPO_MIN_STEPS / 14)
    assert scaled_dpo_epochs(97, 1) == 1  # the sample: one pass already takes enough steps
    assert scaled_dpo_epochs(2, 1) == DPO_MAX_EPOCHS
    assert scaled_dpo_epochs(100, 4) == math.ceil(DPO_MIN_STEPS / 25)  # steps, not pairs, count


def test_original_settings_are_one_flag_away(monkeypatch, tmp_path):
    seen = []

    def fake_run_lab(settings, out, overwrite=False):
        seen.append(settings)
        return run_module.Run(settings, out, metrics=pd.DataFrame({m: [0.0] for m in METRIC_DESCRIPTIONS},
                                                                  index=["base"]))

    monkeypatch.setattr(run_module, "run_lab", fake_run_lab)  # the command line imports it when it needs it
    monkeypatch.setattr(cli, "quiet_libraries", lambda: None)
    common = ["run", "--model", "tiny-gpt2"]
    assert cli.main(common + ["--out", str(tmp_path / "a")]) == 0
    assert cli.main(common + ["--out", str(tmp_path / "b"), "--original-settings"]) == 0
    assert cli.main(common + ["--out", str(tmp_path / "c"), "--original-settings", "--dpo-epochs", "3"]) == 0
    assert [s.dpo_epochs for s in seen] == [None, 1, 3]  # None: scaled with the data


def test_train_dpo_logs_log_probs_relative_to_the_reference(tiny, tokenizer, pairs):
    ref = tiny[0]
    history = train_dpo(trainable_copy(ref), ref, tokenizer, pairs, beta=0.1, lr=1e-3, epochs=2, progress=False)
    # before the first update the policy is the reference (to float32 rounding: the engine sums differently)
    assert abs(history.loc[1, "logps_vs_ref/chosen"]) < 1e-3
    np.testing.assert_allclose(history["logps_vs_ref/chosen"] * 0.1, history["rewards/chosen"], rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(history["logps_vs_ref/rejected"] * 0.1, history["rewards/rejected"], rtol=1e-5,
                               atol=1e-7)
    assert history["logps_vs_ref/chosen"].iloc[1:].abs().max() > 0
    fig = plot_dpo_history(history)
    assert "log-prob - reference's (summed)" in [ax.get_title() for ax in fig.axes]


def test_displacement_note_says_when_chosen_fell_below_the_reference():
    note = run_module.displacement_note("held-out pairs", -3.2, -9.0)
    assert note.startswith("Likelihood displacement (held-out pairs)")
    assert "less likely" in run_module.displacement_note("x", -0.1, -1.0)
    assert "Likelihood displacement" not in run_module.displacement_note("x", 0.5, -1.0)


def test_plot_metrics_draws_intervals_and_no_bar_for_a_missing_value():
    metrics = pd.DataFrame({"pref_acc": [0.5, float("nan")], "pref_acc_low": [0.2, float("nan")],
                            "pref_acc_high": [0.8, float("nan")]}, index=["base", "dpo"])
    ax = plot_metrics(metrics).axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights[0] == 0.5 and math.isnan(heights[1])  # not drawn as 0
    assert [t.get_text() for t in ax.texts] == ["n/a"]
    error_bars = next(c for c in ax.containers if isinstance(c, ErrorbarContainer))
    (vertical_lines,) = error_bars.lines[2]
    assert vertical_lines.get_segments()[0][:, 1].tolist() == pytest.approx([0.2, 0.8])
    assert sum(a.get_visible() for a in plot_metrics(metrics).axes) == 1  # no panel for interval columns


def test_beta_sweep_labels_stay_apart_and_inside_the_figure_when_two_points_nearly_coincide():
    # the numbers of a real sweep (smollm2-135m, 21 pairs): beta 0 and 0.05 land 0.03 nats of KL apart
    sweep = pd.DataFrame({"nll": [0.7246, 0.7269, 1.2476], "kl": [1.9176, 1.8843, 0.8335]},
                         index=pd.Index([0.0, 0.05, 1.0], name="beta"))
    fig = plot_beta_sweep(sweep)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    boxes = [text.get_window_extent(renderer) for text in fig.axes[0].texts]
    assert [text.get_text() for text in fig.axes[0].texts] == ["beta=0", "beta=0.05", "beta=1"]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1) for box in boxes)


def test_report_shows_data_card_intervals_and_line_breaks(tmp_path):
    rows = [{"prompt": "Q?", "chosen": "Yes, and more words.", "rejected": "No."}] * 2
    run = run_module.Run(LabSettings(model="tiny-gpt2"), tmp_path, planned=["evaluation"], finished=["evaluation"],
                         notes=[few_pairs_note(2)], data_card=data_card(write_pairs(tmp_path / "p.jsonl", rows)),
                         metrics=pd.DataFrame({"pref_acc": [0.5], "pref_acc_low": [0.1], "pref_acc_high": [0.9]},
                                              index=pd.Index(["dpo"], name="model")),
                         generations=pd.DataFrame({"prompt": ["Q?"], "dpo": ["line one\nline <two>"]}))
    page = render_report(run)
    assert "Data card (before training)" in page and "duplicate pairs" in page
    assert "0.500 [0.100, 0.900]" in page and "cannot be told apart" in page
    assert "line one\nline &lt;two&gt;" in page and "\\n" not in page
