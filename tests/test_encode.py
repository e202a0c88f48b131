import pytest

from lab7_helpers import IGNORE_INDEX, encode_pair, encode_pairs_for_dpo, format_prompt, pad_batch


def test_tokenizer_is_gpt2s(tokenizer):
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.eos_token_id == 50256 and len(tokenizer) == 50257
    assert tokenizer.pad_token == tokenizer.eos_token


def test_prompt_masked_eos_appended_and_text_is_template_plus_response(tokenizer):
    enc = encode_pair(tokenizer, "Give advice.", "Start small.")
    prompt_ids = tokenizer(format_prompt("Give advice."))["input_ids"]
    n = len(prompt_ids)
    assert enc["input_ids"][:n] == prompt_ids  # the template ends on a token boundary
    assert enc["labels"][:n] == [IGNORE_INDEX] * n
    assert enc["labels"][n:] == enc["input_ids"][n:]
    assert enc["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc["input_ids"]) == format_prompt("Give advice.") + "Start small." + tokenizer.eos_token
    assert enc["attention_mask"] == [1] * len(enc["input_ids"])


@pytest.mark.parametrize("max_length", [2, 3, 8, 32])
def test_prompt_longer_than_max_length_never_empties_the_response(tokenizer, max_length):
    enc = encode_pair(tokenizer, "word " * 500, "The answer is short.", max_length=max_length)
    labels = enc["labels"]
    assert len(enc["input_ids"]) == max_length
    assert sum(label != IGNORE_INDEX for label in labels) >= 1
    assert labels[0] == IGNORE_INDEX  # some prompt is kept too
    response_start = labels.index(next(label for label in labels if label != IGNORE_INDEX))
    if max_length >= 8:  # the end of the template stays next to the response
        assert tokenizer.decode(enc["input_ids"][:response_start]).endswith("Answer:\n")


def test_long_response_is_cut_from_the_right_and_keeps_half_the_budget_for_the_prompt(tokenizer):
    enc = encode_pair(tokenizer, "Short prompt?", "word " * 500, max_length=64)
    n_prompt = sum(label == IGNORE_INDEX for label in enc["labels"])
    assert len(enc["input_ids"]) == 64
    assert n_prompt == len(tokenizer(format_prompt("Short prompt?"))["input_ids"])
    assert enc["input_ids"][-1] != tokenizer.eos_token_id  # a cut response has not ended


def test_max_length_too_small(tokenizer):
    with pytest.raises(ValueError, match="at least 2"):
        encode_pair(tokenizer, "p", "r", max_length=1)


def test_pad_batch_masks_padding_even_when_pad_is_eos(tokenizer):
    short = encode_pair(tokenizer, "Hi", "Yo")
    long = encode_pair(tokenizer, "Hello there, how are you?", "Fine, thanks for asking!")
    batch = pad_batch([short, long], tokenizer.pad_token_id)
    n = len(short["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(long["input_ids"]))
    assert batch["input_ids"][0, n:].eq(tokenizer.pad_token_id).all()
    assert batch["attention_mask"][0, n:].eq(0).all() and batch["attention_mask"][0, :n].eq(1).all()
    assert batch["labels"][0, n:].eq(IGNORE_INDEX).all()
    assert batch["labels"][0, n - 1] == tokenizer.eos_token_id  # the real EOS is still a label


def test_dpo_batch_is_chosen_then_rejected(tokenizer, pairs):
    batch = encode_pairs_for_dpo(tokenizer, pairs)
    assert batch["input_ids"].shape[0] == 2 * len(pairs)
    for i, p in enumerate(pairs):
        for row, key in ((i, "chosen"), (i + len(pairs), "rejected")):
            ids = encode_pair(tokenizer, p["prompt"], p[key])["input_ids"]
            assert batch["input_ids"][row, :len(ids)].tolist() == ids
