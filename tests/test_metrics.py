import pytest
import torch

from lab7_helpers.metrics import implicit_reward_margins, trigram_repetition
from lab7_helpers.scoring import pair_logprobs
from lab7_helpers import distinct_n, encode_pair, refusal_flag, repetition_score, sequence_logprobs
from lab7_helpers.evaluation import held_out_scores, model_metrics


def test_repetition_score_is_the_original_labs_formula():
    assert repetition_score("") == 0.0
    assert repetition_score("a a a a a a a a a") == 0.0  # under 10 words
    # 13 words, 10 distinct ("the" three times, "on" twice): ordinary prose scores above 0
    assert repetition_score("The cat sat on the mat and the dog lay on a rug.") == pytest.approx(1 - 10 / 13)
    assert repetition_score("I am here. " * 10) == pytest.approx(1 - 3 / 30)


def test_trigram_repetition():
    assert trigram_repetition("") == 0.0
    assert trigram_repetition("the cat sat") == 0.0
    assert trigram_repetition("The cat sat on the mat and the dog lay on the rug.") == 0.0
    loop = "I am here. " * 10  # 30 words, 28 trigrams, 3 distinct
    assert trigram_repetition(loop) == pytest.approx(1 - 3 / 28)
    assert trigram_repetition("a b c a b c") == pytest.approx(1 - 3 / 4)


@pytest.mark.parametrize("text, flagged", [
    ("I can't help with that request.", True),
    ("I can\u2019t help with that request.", True),
    ("Sorry, I CANNOT ASSIST with this.", True),
    ("As an AI, I have no body.", True),
    ("I was unable to sleep last night.", False),   # the original lab's "unable to" flagged this
    ("Dogs can't help wagging their tails.", False),
    ("Here is how to bake bread.", False),
    ("", False),
])
def test_refusal_flag_default_phrases(text, flagged):
    assert refusal_flag(text) is flagged


def test_refusal_flag_matches_whole_words_only():
    assert refusal_flag("I refuse.", ["refuse"]) is True
    assert refusal_flag("Take out the refuse bin.", ["refuse bin"]) is True
    assert refusal_flag("That was refused.", ["refuse"]) is False
    assert refusal_flag("No way  Jose", ["no way jose"]) is True


def test_distinct_n():
    texts = ["a b c", "a b d"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_pair_logprobs_match_separate_forwards(tiny, tokenizer, pairs):
    model = tiny[0]
    scores = pair_logprobs(model, tokenizer, pairs, batch_size=2)
    for i, p in enumerate(pairs):
        for key in ("chosen", "rejected"):
            enc = encode_pair(tokenizer, p["prompt"], p[key])
            ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor([enc["labels"]])
            expected = sequence_logprobs(model(input_ids=ids).logits, labels).item()
            assert scores[key][i].item() == pytest.approx(expected, abs=1e-4)
            assert scores[f"{key}_tokens"][i].item() == sum(label != -100 for label in enc["labels"])


def metrics_row(model, ref, tokenizer, pairs):
    """The evaluation's metrics for ``model`` on ``pairs`` (empty texts: only the pair metrics count here)."""
    scores, ref_scores = held_out_scores({"model": model}, ref, tokenizer, pairs)
    chosen_longer = torch.tensor([len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs])
    return model_metrics([""] * len(pairs), scores["model"], ref_scores, chosen_longer, beta=0.1,
                         is_reference=model is ref)


def test_pref_acc_uses_mean_per_token_logprobs(tiny, tokenizer, pairs):
    scores = pair_logprobs(tiny[0], tokenizer, pairs)
    means = (scores["chosen"] / scores["chosen_tokens"] > scores["rejected"] / scores["rejected_tokens"]).float()
    sums = (scores["chosen"] > scores["rejected"]).float()
    assert not torch.equal(means, sums)  # the pairs are chosen so that mean and sum disagree
    assert metrics_row(tiny[0], tiny[0], tokenizer, pairs)["pref_acc"] == pytest.approx(means.mean().item())


def test_reward_acc_counts_positive_implicit_reward_margins(tiny, policy, tokenizer, pairs):
    ref = tiny[0]
    assert metrics_row(ref, ref, tokenizer, pairs)["reward_acc"] == 0.0  # every margin is exactly 0
    margins = implicit_reward_margins(pair_logprobs(policy, tokenizer, pairs), pair_logprobs(ref, tokenizer, pairs),
                                      0.1)
    assert margins.abs().min() > 0 and 0 < (margins > 0).float().mean() < 1
    assert metrics_row(policy, ref, tokenizer, pairs)["reward_acc"] == pytest.approx((margins > 0).float().mean().item())


def test_held_out_scores_match_pair_logprobs_and_response_kl(tiny, tokenizer, pairs, policy):
    from lab7_helpers import nll_and_kl
    from lab7_helpers.evaluation import held_out_scores
    from lab7_helpers.losses import kl_regularized_loss

    ref = tiny[0]
    scores, ref_scores = held_out_scores({"base": ref, "policy": policy}, ref, tokenizer, pairs, batch_size=2)
    for name, model in (("base", ref), ("policy", policy)):
        expected = pair_logprobs(model, tokenizer, pairs)
        for key, value in expected.items():
            assert torch.allclose(scores[name][key].to(value.dtype), value, atol=1e-4), (name, key)
    assert ref_scores["chosen"].tolist() == scores["base"]["chosen"].tolist() and scores["base"]["kl"].eq(0).all()
    kl_per_token = (scores["policy"]["kl"].sum() / scores["policy"]["chosen_tokens"].sum()).item()
    nll, kl = nll_and_kl(policy, ref, tokenizer, pairs)
    assert kl_per_token == pytest.approx(kl, rel=1e-4) and kl > 0
    # nll_and_kl (LM head on response positions only) against full-vocabulary logits everywhere
    encoded = [encode_pair(tokenizer, p["prompt"], p["chosen"]) for p in pairs]
    from lab7_helpers import pad_batch
    batch = pad_batch(encoded, tokenizer.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        _, full_nll, full_kl = kl_regularized_loss(policy(**inputs).logits, ref(**inputs).logits, batch["labels"], 0.0)
    assert nll == pytest.approx(full_nll.item(), rel=1e-5) and kl == pytest.approx(full_kl.item(), rel=1e-4)
