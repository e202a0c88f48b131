"""Blind judging: the blinding, the tally and its statistics, the three judges, and ``lab7 judge``."""

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from lab7_helpers.app.cli import main
from lab7_helpers.app.judge import BlindJudging, judge_blind, judge_in_text
from lab7_helpers.judging import blind_pairs, blind_summary, judgement, sign_test
from lab7_helpers.metrics import wilson_interval

GENERATIONS = [{"prompt": f"Question {i}?", "base": f"short {i}", "dpo": f"a much longer answer number {i} here",
                "kl": "other"} for i in range(12)]


def test_the_order_is_random_but_fixed_by_the_seed():
    pairs = blind_pairs(GENERATIONS, seed=3)
    lefts = [p.left_model for p in pairs]
    assert set(lefts) == {"base", "dpo"}  # both sides occur
    assert lefts == [p.left_model for p in blind_pairs(GENERATIONS, seed=3)]
    assert lefts != [p.left_model for p in blind_pairs(GENERATIONS, seed=4)]
    for pair, row in zip(pairs, GENERATIONS):
        assert {pair.left, pair.right} == {row["base"], row["dpo"]}
        assert pair.left == row[pair.left_model]


def test_nothing_shown_while_judging_names_a_model():
    shown = []
    judging = BlindJudging(blind_pairs(GENERATIONS[:3]))
    answers = iter(["a", "b", "t"])
    judge_in_text(judging, read=lambda prompt: next(answers), write=shown.append)
    assert not any(name in line for line in shown for name in ("base", "dpo"))
    assert len(judging.rows) == 3 and all(row["winner"] in ("base", "dpo", "tie") for row in judging.rows)


def test_unblinding_and_the_tally_match_a_hand_count():
    pairs = blind_pairs(GENERATIONS[:6], seed=0)
    choices = ["a", "b", "t", "a", "a", "b"]
    rows = [judgement(pair, choice) for pair, choice in zip(pairs, choices)]
    wins = sum((c == "a" and p.left_model == "dpo") or (c == "b" and p.right_model == "dpo")
               for p, c in zip(pairs, choices))
    losses = 5 - wins
    s = blind_summary(rows)
    assert (s["n"], s["wins"], s["losses"], s["ties"]) == (6, wins, losses, 1)
    assert s["win_rate"] == pytest.approx((wins + 0.5) / 6)
    assert (s["win_rate_low"], s["win_rate_high"]) == pytest.approx(wilson_interval(wins + 0.5, 6))
    assert [r["winner"] for r in rows] == [
        {"a": p.left_model, "b": p.right_model, "t": "tie"}[c] for p, c in zip(pairs, choices)]


def test_identical_answers_are_a_tie_without_asking():
    pair = blind_pairs([{"prompt": "p", "base": "same text", "dpo": "same text "}])[0]
    assert judgement(pair, "a")["winner"] == "tie"
    judging = BlindJudging([pair])
    assert judging.done and judging.rows[0]["choice"] == "t"


def test_the_wilson_interval_and_the_sign_test_against_known_values():
    assert wilson_interval(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert sign_test(8, 2) == pytest.approx(112 / 1024)  # 2 * P(X <= 2), X ~ Binomial(10, 1/2)
    assert sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(6, 0) == pytest.approx(2 / 64)


def test_the_judges_length_habit_and_the_similar_length_split():
    def row(left_words, right_words, choice, left_model="dpo"):
        right_model = "base" if left_model == "dpo" else "dpo"
        winner = {"a": left_model, "b": right_model, "t": "tie"}[choice]
        return {"prompt": "p", "left_model": left_model, "right_model": right_model, "choice": choice,
                "winner": winner, "left_words": left_words, "right_words": right_words}

    rows = [row(30, 10, "a"), row(30, 10, "a", "base"), row(10, 30, "b"), row(10, 11, "a"), row(20, 20, "a"),
            row(12, 10, "t")]
    s = blind_summary(rows)
    # 4 picks where one side is longer (20/20 has none; the tie picks nothing): the longer one 3 times
    assert (s["picked_longer"]["rate"], s["picked_longer"]["n"]) == (pytest.approx(3 / 4), 4)
    similar = s["similar_length"]  # within 20% in words: 10/11 (dpo won), 20/20 (dpo won), 12/10 (tie)
    assert similar["n"] == 3 and similar["rate"] == pytest.approx(2.5 / 3)


@pytest.mark.parametrize("judge, expected", [("longer", "dpo"), ("shorter", "base"), ("left", None),
                                              ("right", None)])
def test_scripted_judges(judge, expected, capsys):
    judging = judge_blind(pd.DataFrame(GENERATIONS), seed=1, judge=judge)
    assert judging.done and "scripted judge" in capsys.readouterr().out
    winners = {row["winner"] for row in judging.rows}
    if expected:
        assert winners == {expected}
    else:
        side = "left_model" if judge == "left" else "right_model"
        assert [r["winner"] for r in judging.rows] == [r[side] for r in judging.rows]
    with pytest.raises(ValueError, match="LAB7_JUDGE must be one of"):
        judge_blind(GENERATIONS, judge="loudest")


def test_the_report_is_recorded_for_the_hand_in(capsys):
    judging = judge_blind(GENERATIONS[:4], judge="longer")
    record = judging.report(train_pairs=17)
    assert record["lab7"] == "report" and record["train_pairs"] == 17 and len(record["judgements"]) == 4
    assert "won 4, lost 0, tied 0" in capsys.readouterr().out
    unfinished = BlindJudging(blind_pairs(GENERATIONS[:4]))
    unfinished.report()
    assert capsys.readouterr().out.startswith("4 of 4 pairs are not judged yet: judge them above")


def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "generations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in GENERATIONS[:4]))
    return folder


def test_lab7_judge_reads_lines_asks_again_and_stops_at_the_end_of_input(tmp_path, monkeypatch, capsys):
    folder = run_dir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("a\nmaybe\n\nB\nt\n"))  # 3 judged, then the input ends
    assert main(["judge", str(folder), "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("Type a (A is better), b (B is better) or t (a tie)") == 2
    before_summary = out.split("dpo against base, judged blind")[0]
    assert "dpo" not in before_summary and "base" not in before_summary  # the names come only at the end
    written = pd.read_csv(folder / "judgments.csv")
    assert list(written.columns[:5]) == ["prompt", "left_model", "right_model", "choice", "winner"]
    assert list(written["choice"]) == ["a", "b", "t"] and len(written) == 3
    pairs = blind_pairs(GENERATIONS[:4], seed=2)
    assert list(written["left_model"]) == [p.left_model for p in pairs[:3]]
    assert "judged blind on 3 prompt(s)" in out and "95% interval" in out


@pytest.mark.parametrize("setup, args, sentence", [
    (lambda f: (f / "generations.jsonl").unlink(), [], "holds no generations.jsonl"),
    (lambda f: None, ["--models", "base,dpo_trl"], "no model dpo_trl in"),
    (lambda f: (f / "judgments.csv").write_text("mine"), [], "exists already: add --overwrite"),
])
def test_lab7_judge_refuses_in_one_sentence_and_writes_nothing(tmp_path, capsys, setup, args, sentence):
    folder = run_dir(tmp_path)
    setup(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["judge", str(folder), *args]) == 2
    err = capsys.readouterr().err
    assert sentence in err and err.count("\n") == 1 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_few_prompts_say_so():
    rows = [judgement(p, "a") for p in blind_pairs(GENERATIONS[:3])]
    from lab7_helpers.judging import summary_text

    assert "cannot tell the two models apart" in summary_text(blind_summary(rows))
    assert math.isnan(blind_summary([])["win_rate"])


def test_with_no_one_to_answer_the_notebook_says_so_in_one_sentence_and_moves_on():
    def no_frontend(prompt):
        raise NotImplementedError("raw_input was called, but this frontend does not support input requests.")

    shown = []
    judging = BlindJudging(blind_pairs(GENERATIONS[:3]))
    judge_in_text(judging, read=no_frontend, write=shown.append)
    assert shown[-1].startswith("No one can answer here (no browser): nothing judged.") and not judging.choices
