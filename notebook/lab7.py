# ---
# The one source of lab7.ipynb (student) and instructor/lab7_solution.ipynb. Edit this file, then run
#     python tools/build_notebooks.py
# Cells start with "# %%". Inside a code cell, lines between "# >>> solution" and "# >>> student" appear only in
# the solution; lines between "# >>> student" and "# <<<" (written as "#| ...") appear only in the student
# version. Tags: colab (does its work only in Colab; the tests run it with a stand-in google.colab), todo (a
# student TODO), check (its self-check), answer (a Checkpoint answer cell, with a checkpoint id).
# ---

# %% [markdown]
# # Lab 7: KL regularization and DPO on GPT-2
#
# In Lab 6 you wrote preference pairs: a prompt, the response you preferred (**chosen**) and the one you did
# not (**rejected**). Today you use them to change a language model, and you watch what optimization does with
# your signal.
#
# 1. **Warm-up:** fine-tune on the chosen responses while a KL penalty keeps the model close to a frozen
#    reference.
# 2. **DPO:** train directly on the pairs with Direct Preference Optimization.
# 3. **Evaluate:** compare the base, KL-only and DPO models on prompts none of them trained on.
# 4. **Reflect:** where did your feedback help, and where did the model learn a shortcut (tone, length,
#    refusals, drift)?
#
# > We are not trying to "fully align" GPT-2. We want to see how optimization amplifies whatever your feedback
# > rewards, whether you meant it or not.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({{COLAB_URL}})
#
# > **First: File > Save a copy in Drive**, and work in that copy. A notebook opened from GitHub (the badge) is
# > saved nowhere: when the runtime disconnects or you close the tab, your work is gone.
#
# **How this notebook works.** Cells marked **TODO** are yours: replace each `...` and run the check cell
# below it, which tells you what is wrong if something is. Tokenization, training loops and metrics live in the
# small, tested `lab7_helpers` package (imported as `lab`); open its source whenever you wonder how something
# works. Answer each **Checkpoint** in the cell under it that says *Your answer*. If a cell needs a TODO you
# have not finished yet, it stops and tells you which one.
#
# Your name or student id goes into the answers file you hand in. Type it once, here:

# %%
STUDENT_NAME = ""  # e.g. "Ada Lovelace" or "al123"

# %% [markdown]
# ## Setup

# %% tags=["colab"]
# Colab only: install the lab's helpers and a TRL version they are tested with (TRL needs a newer `datasets` than
# Colab's). Colab's torch stays as it is. (Elsewhere, install with the README's set-up command.)
import sys

if "google.colab" in sys.modules:
    datasets_loaded = "datasets" in sys.modules
    # %pip install -q "{{INSTALL_REQUIREMENT}}" "trl>=0.29,<2"
    if datasets_loaded:  # only when a cell that loaded datasets ran before this one
        print("datasets was upgraded after it was loaded: restart the session (Runtime > Restart session), then "
              "run the notebook from the top.")

# %%
# %matplotlib inline
import os
import sys

import pandas as pd
import torch

import lab7_helpers as lab
from lab7_helpers import checks

IN_COLAB = "google.colab" in sys.modules
print(lab.describe_runtime())

# %% [markdown]
# All settings live in the next cell. `LAB7_MODEL`, `LAB7_PAIRS` and `LAB7_FAST=1` (a quick run with fewer
# steps, for testing) override them without editing, e.g. to dry-run the lab offline on `smollm2-135m`.

# %% tags=["parameters"]
MODEL_NAME = os.environ.get("LAB7_MODEL", "gpt2")  # offline: "smollm2-135m" (real) or "tiny-gpt2" (random)
PAIRS_PATH = os.environ.get("LAB7_PAIRS", "")  # empty: upload yours (Colab) or use the sample; or a file path
FAST = os.environ.get("LAB7_FAST") == "1"
SEED = 0
KL_BETA, KL_LR, KL_STEPS = 0.05, 5e-5, 5 if FAST else 30
SWEEP_BETAS = [0.0, 1.0] if FAST else [0.0, KL_BETA, 1.0]  # the two ends and the lab's beta; add your own
NO_GRAD_BETAS = [0.0, 5.0]  # the no_grad demo: 0 first, then betas far from it,
NO_GRAD_STEPS, NO_GRAD_PAIRS = 2 if FAST else 4, 4  # a few steps, a few pairs
DPO_BETA, DPO_LR = 0.1, 5e-6
DPO_EPOCHS = None  # None: enough passes over your pairs for 50 steps, at most 4 (see Part 2); the original lab: 1
TRL_CPU_STEPS = 4 if FAST else 8  # without a GPU, TRL's DPOTrainer trains this many steps only
MAX_NEW_TOKENS = 20 if FAST else 80

# %% [markdown]
# ## Your preference pairs
#
# In Colab, the next cell asks for the `dpo_pairs.jsonl` you made in Lab 6. Press **Cancel** to use the
# sample set the course staff wrote instead (121 pairs over 12 kinds of request).
#
# **If the upload button fails** (it needs third-party cookies, which some browsers block): open the **Files**
# pane (the folder icon on the left), drag your file into it, then set `PAIRS_PATH = "/content/<your file>"` in
# the settings cell above and run the notebook from there.

# %% tags=["colab"]
if IN_COLAB and not PAIRS_PATH:
    from google.colab import files

    try:
        uploaded = files.upload()  # {file name: contents}; empty if you press Cancel
    except Exception as err:  # noqa: BLE001 - whatever the browser made the widget raise
        raise checks.Stop("The upload widget failed: drag your file into the Files pane and set PAIRS_PATH "
                          "(see the note above this cell).") from err
    PAIRS_PATH = next(iter(uploaded), "")

# %%
pairs_file = PAIRS_PATH or lab.BUNDLED_PAIRS
try:
    pairs = lab.load_pairs(pairs_file)
except (lab.PairFileError, FileNotFoundError) as err:
    raise checks.Stop(str(err)) from None  # the message names every bad line; a traceback would only hide it
print(f"{len(pairs)} usable pairs in {pairs_file}")
pairs[0]

# %% [markdown]
# The loader is strict on purpose: a row with a missing field, broken JSON or an empty response is an error
# that names the line, never a row silently lost. Here is what it says about a deliberately messy Lab 6 file
# (with `on_error="skip"` it would keep the good rows and tell you how many it skipped):

# %%
try:
    lab.load_pairs(lab.SAMPLE_DATA_DIR / "lab6_style_example.jsonl")
except lab.PairFileError as err:
    print(err)

# %% [markdown]
# ### Checkpoint 1
# Look at one pair from your data. Does it hold exactly one prompt, one chosen and one rejected response?
# The loader drops **ties** (both responses equal, or a pair marked as a tie). Explain briefly why a tie is
# useless, or even harmful, for DPO training.

# %% [markdown] tags=["answer"] checkpoint="ties"
# *Your answer:*

# %% [markdown]
# We hold out 20% of the **prompts** for evaluation. Pairs that share a prompt stay on the same side, so the
# held-out prompts are new to every model.

# %%
train_pairs, test_pairs = lab.split_pairs(pairs, test_fraction=0.2, seed=SEED)
if FAST:
    train_pairs, test_pairs = train_pairs[:16], test_pairs[:6]
print(f"{len(train_pairs)} pairs for training, {len(test_pairs)} held out")

# %% [markdown]
# ### Your data card
# DPO learns whatever separates chosen from rejected in your file, meant or not. Before training, look at what
# that is: if the chosen response is nearly always the longer one, "write more" lowers the loss as well as
# "write better" does. Keep this card in mind for Checkpoints 1 and 7.

# %%
card = lab.data_card(pairs_file)
card.to_frame()

# %% [markdown]
# ## Part 1: KL to a reference (no preferences yet)
#
# Our warm-up is plain imitation of the **chosen** responses, with a leash. A frozen copy of the starting model,
# the **reference** $\pi_{ref}$, stays fixed, and we penalize the trained model $\pi_\theta$ for moving away
# from it:
#
# $$L(\theta) = \underbrace{-\,\mathbb{E}\left[\log \pi_\theta(y \mid x)\right]}_{\text{imitate chosen text}}
# \;+\; \beta\,\underbrace{\mathrm{KL}\left(\pi_\theta \,\|\, \pi_{ref}\right)}_{\text{don't drift too far}}$$
#
# Both terms are **means over the response tokens** (prompt tokens are context, not targets). The KL is exact at
# each position: we compare the two next-token distributions over the whole vocabulary,
# $\sum_v \pi_\theta(v)\,[\log \pi_\theta(v) - \log \pi_{ref}(v)]$, at the positions of the chosen
# responses (on their prefixes), not on text the model would write itself.
#
# The model sees `format_prompt(prompt) + response` everywhere in this lab, in training and in generation:

# %%
print(repr(lab.format_prompt("How do I boil an egg?") + "Put it in boiling water for 8 minutes."))

# %%
base_model, tokenizer = lab.load_model(MODEL_NAME)
ref_model = lab.freeze(base_model)  # eval mode, no gradients: the reference, and later the "base" row
print(f"{MODEL_NAME}: {sum(p.numel() for p in ref_model.parameters()) / 1e6:.1f}M parameters")

# %% [markdown]
# ### TODO 1: the exact KL, and the KL-regularized loss
# Write the KL yourself, from `torch.log_softmax`: at every position, with $p = \pi_\theta$ and $r = \pi_{ref}$,
# $\mathrm{KL} = \sum_v p(v)\,[\log p(v) - \log r(v)]$, a sum over the whole vocabulary (the last dimension).
# Work in log-probabilities and get $p$ as `exp(log p)`: a softmax of 50,000 logits underflows, its log does not.
#
# **Why it must keep its gradient.** The KL term only pulls the model back if `loss.backward()` can see how the
# KL depends on the policy's logits. Computed under `torch.no_grad()` (or `.detach()`ed), it still *prints*, but
# it adds nothing to the gradient: every $\beta$ trains exactly the same model. The original version of this lab
# had that bug; a cell below shows it.
#
# Then combine it with the NLL. `lab.token_logprobs` gives the log-probability of every next token and a mask
# that is `True` on response tokens (you write that shift, gather and mask yourself in TODO 2).

# %% tags=["todo"] todo="kl-loss"
def my_token_kl(policy_logits, ref_logits):
    """Exact KL(pi_theta || pi_ref) at every position. [B, T, V] each -> [B, T]. Keep the gradient."""
    # >>> solution
    policy_logps = torch.log_softmax(policy_logits, dim=-1)
    ref_logps = torch.log_softmax(ref_logits, dim=-1)
    return (policy_logps.exp() * (policy_logps - ref_logps)).sum(dim=-1)
    # >>> student
    #| policy_logps = ...  # TODO: log-probabilities over the vocabulary (torch.log_softmax, last dimension)
    #| ref_logps = ...  # TODO: the same for the reference
    #| return ...  # TODO: sum over the vocabulary of p * (log p - log r), with p = policy_logps.exp()
    # <<<


def my_kl_regularized_loss(policy_logits, ref_logits, labels, beta):
    """loss = NLL + beta * KL, both means over response tokens.

    policy_logits, ref_logits: [B, T, V]; labels: [B, T] with -100 on prompt and padding.
    Returns (loss, nll, kl), three scalars.
    """
    token_logps, mask = lab.token_logprobs(policy_logits, labels)  # [B, T-1] each
    kl_per_position = my_token_kl(policy_logits[:, :-1], ref_logits[:, :-1])  # [B, T-1], aligned with the mask
    # >>> solution
    nll = -token_logps[mask].mean()
    kl = kl_per_position[mask].mean()
    loss = nll + beta * kl
    # >>> student
    #| nll = ...  # TODO: the mean negative log-prob over response positions (use the mask)
    #| kl = ...  # TODO: the mean KL over the same positions
    #| loss = ...  # TODO: combine them with beta
    # <<<
    return loss, nll, kl


# %% tags=["check"]
display(checks.check_token_kl(my_token_kl))
display(checks.check_kl_loss(my_kl_regularized_loss))

# %% [markdown]
# ### Checkpoint 2
# Before you train: what do you expect if $\beta$ is very small (close to 0)? And if it is very large?

# %% [markdown] tags=["answer"] checkpoint="beta-predict"
# *Your answer:*

# %% [markdown]
# Now train a copy of the base model with **your** loss function, `KL_STEPS` steps of one pair each. The
# reference never changes, so its logits are computed without gradients.

# %%
checks.require(checks.check_kl_loss(my_kl_regularized_loss))  # stops here while TODO 1 still has ... in it
policy_kl = lab.trainable_copy(ref_model)
kl_history = lab.train_kl(policy_kl, ref_model, tokenizer, train_pairs, beta=KL_BETA, lr=KL_LR,
                          steps=KL_STEPS, seed=SEED, loss_fn=my_kl_regularized_loss)
lab.plot_kl_history(kl_history)

# %% [markdown]
# ### One step of `train_kl`, without the speed tricks
# Your loss gets exactly what it asks for, on every device: the `[B, T, V]` logits of both models and the
# `[B, T]` labels of each batch. On a CPU, `train_kl` also runs the linear layers through a faster library, folds
# the gradient clipping into the optimizer step and keeps the frozen reference's logits for the sweep below: same
# numbers, sooner. Here is its first step in plain lines, on a fresh copy: forward both models, the loss, backward,
# clip the gradient norm, one AdamW step. Its loss, NLL and KL equal row 1 of `kl_history` to float32 rounding: the
# fast path adds the same numbers in another order, so on a real model the 6th or 7th digit may differ (the check
# allows 1e-5 of the value; a real mistake moves the loss far more).

# %%
checks.require(checks.check_kl_loss(my_kl_regularized_loss))
policy = lab.trainable_copy(ref_model)
optimizer = torch.optim.AdamW(policy.parameters(), lr=KL_LR, weight_decay=0.0)  # as train_kl (TRL's defaults)
first = lab.training.batches(len(train_pairs), 1, KL_STEPS, SEED)[0][0]  # the pair train_kl saw first
encoded = lab.encode_pair(tokenizer, train_pairs[first]["prompt"], train_pairs[first]["chosen"])
batch = {k: v.to(policy.device) for k, v in lab.pad_batch([encoded], tokenizer.pad_token_id).items()}
amp, _ = lab.training.autocast(policy.device)  # mixed precision on a GPU, as in train_kl; nothing on a CPU
with amp():
    with torch.no_grad():  # the reference is frozen
        ref_logits = ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    loss, nll, kl = my_kl_regularized_loss(logits, ref_logits, batch["labels"], KL_BETA)
loss.backward()
torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm=1.0)
optimizer.step()
optimizer.zero_grad()

# %%
plain = pd.Series({"loss": loss.item(), "nll": nll.item(), "kl": kl.item()})
print(pd.DataFrame({"plain step": plain, "train_kl, step 1": kl_history.iloc[0]}).to_string(float_format="%.7f"))
assert (plain - kl_history.iloc[0]).abs().max() <= 1e-5 * max(1.0, plain.abs().max())
del policy, optimizer

# %% [markdown]
# One value of $\beta$ tells you little. The sweep below trains a fresh copy for each $\beta$ with your loss
# (for `KL_BETA` it reuses the model trained above: same settings, same numbers), then measures, on the pairs
# its `KL_STEPS` steps trained on, how well it imitates their chosen responses (NLL, lower is closer) and how far
# it drifted from the reference there (KL).

# %%
checks.require(checks.check_kl_loss(my_kl_regularized_loss))
sweep = lab.kl_beta_sweep(ref_model, tokenizer, train_pairs, SWEEP_BETAS, lr=KL_LR, steps=KL_STEPS, seed=SEED,
                          loss_fn=my_kl_regularized_loss, trained={KL_BETA: policy_kl})  # KL_BETA: trained above
display(sweep)
lab.plot_beta_sweep(sweep)

# %% [markdown]
# ### The `no_grad` bug, live
# The same sweep, short and on a few pairs, twice: with your loss, and with your loss after `.detach()` cuts its
# KL off from autograd (what `@torch.no_grad()` on the KL function did in the original lab). The detached KL
# still prints, yet every $\beta$ ends at the same point: its spread across betas is exactly 0. At $\beta = 0$
# the two losses are one loss ($0 \times$ KL adds no gradient, detached or not), so that run serves both columns.

# %%
def kl_loss_detached(policy_logits, ref_logits, labels, beta):
    """Your loss with the KL detached: its value is there, its gradient is not."""
    loss, nll, kl = my_kl_regularized_loss(policy_logits, ref_logits, labels, beta)
    return nll + beta * kl.detach(), nll, kl


# %%
checks.require(checks.check_kl_loss(my_kl_regularized_loss))
short = dict(lr=KL_LR, steps=NO_GRAD_STEPS, seed=SEED, progress=False)
with_gradient = lab.kl_beta_sweep(ref_model, tokenizer, train_pairs[:NO_GRAD_PAIRS], NO_GRAD_BETAS,
                                  loss_fn=my_kl_regularized_loss, **short)
detached = lab.kl_beta_sweep(ref_model, tokenizer, train_pairs[:NO_GRAD_PAIRS], NO_GRAD_BETAS[1:],
                             loss_fn=kl_loss_detached, **short)  # beta = 0: the run above
no_grad_demo = pd.concat({"KL with gradient": with_gradient,
                          "KL detached": pd.concat([with_gradient.loc[[0.0]], detached])}, axis=1)
display(no_grad_demo)
print("spread across betas (max - min):")
print((no_grad_demo.max() - no_grad_demo.min()).unstack().to_string(float_format="%.3g"))

# %% [markdown]
# ### Checkpoint 3
# Try other values of $\beta$ (edit `SWEEP_BETAS`). Was your prediction from Checkpoint 2 right? What does
# the curve say $\beta$ trades off?

# %% [markdown] tags=["answer"] checkpoint="beta-explore"
# *Your answer:*

# %% [markdown]
# ## Part 2: Direct Preference Optimization (DPO)
#
# Now we use both halves of each pair. For a prompt $x$, DPO makes the chosen response $y^+$ more likely than
# the rejected one $y^-$, each measured **relative to the reference**. The reference re-weights each pair (a
# response the reference already likes must gain more); it does not hold the model in place: DPO does drift,
# and `kl_to_ref` in Part 3 shows how far.
#
# $$L_{DPO} = -\log \sigma\Big(\beta\,\big[\underbrace{\log \tfrac{\pi_\theta(y^+|x)}{\pi_{ref}(y^+|x)}}_{\text{chosen log-ratio}}
# - \underbrace{\log \tfrac{\pi_\theta(y^-|x)}{\pi_{ref}(y^-|x)}}_{\text{rejected log-ratio}}\big]\Big)$$
#
# $\beta \cdot$ log-ratio is called the **implicit reward** of a response; their difference is the **margin**.
# Here $\log \pi(y|x)$ is the **sum** of the log-probs of the response tokens (not a mean, unlike Part 1).
#
# How DPO differs from RLHF with PPO:
# - no separate reward model: the policy and the reference define the reward implicitly;
# - no sampling during training: no rollouts, only the fixed pairs;
# - one supervised-style loss on likelihood ratios.

# %% [markdown]
# ### Checkpoint 4
# In plain English, what does $\log \sigma\big(\beta\,(\log \pi_\theta(y^+|x) - \log \pi_\theta(y^-|x))\big)$
# encourage? (It is the DPO term with the reference left out.) What happens to the loss, and to its gradient,
# once the chosen response is already much more likely than the rejected one?

# %% [markdown] tags=["answer"] checkpoint="dpo-objective"
# *Your answer:*

# %% [markdown]
# ### TODO 2: DPO by hand
# Write the two pieces of DPO yourself.
#
# 1. `my_sequence_logprobs`: $\log \pi(y|x)$ of each sequence. **Shift by one** (the logits at position $t-1$
#    score the token at position $t$), take `log_softmax` over the vocabulary, **gather** the log-prob of each
#    label token, **mask** the positions whose label is -100 (prompt and padding), and **sum** (not a mean).
# 2. `my_dpo_loss`: the loss of each pair, and the implicit rewards $\beta \cdot$ log-ratio that TRL logs. The
#    rewards are for logging only: **detach** them, so they can never feed a gradient.

# %% tags=["todo"] todo="dpo-by-hand"
def my_sequence_logprobs(logits, labels):
    """log pi(y|x): the SUM of next-token log-probs over response tokens. logits [B, T, V], labels [B, T] -> [B]."""
    # >>> solution
    logits, labels = logits[:, :-1], labels[:, 1:]  # position t-1 scores token t
    mask = labels != -100
    logps = torch.log_softmax(logits, dim=-1)  # [B, T-1, V]
    picked = logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    return (picked * mask).sum(dim=-1)
    # >>> student
    #| logits, labels = ...  # TODO: shift by one: drop the last position of the logits, the first of the labels
    #| mask = ...  # TODO: True where a response token is scored (label is not -100)
    #| logps = ...  # TODO: log-probabilities over the vocabulary
    #| picked = ...  # TODO: the log-prob of each label token: gather (-100 is no index: labels.clamp(min=0))
    #| return ...  # TODO: the SUM over response tokens (use the mask)
    # <<<


def my_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """DPO from summed log-probs (each [B]) -> (losses [B], chosen_rewards [B], rejected_rewards [B])."""
    # >>> solution
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    losses = -torch.nn.functional.logsigmoid(beta * (chosen_logratio - rejected_logratio))
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()
    # >>> student
    #| chosen_logratio = ...  # TODO: log pi(y+|x) - log pi_ref(y+|x)
    #| rejected_logratio = ...  # TODO: the same for y-
    #| losses = ...  # TODO: -log sigmoid(beta * margin); torch.nn.functional.logsigmoid is numerically stable
    #| return losses, ..., ...  # TODO: the implicit rewards beta * log-ratio, detached
    # <<<


# %% tags=["check"]
display(checks.check_sequence_logprobs(my_sequence_logprobs))
display(checks.check_dpo_loss(my_dpo_loss))

# %% [markdown]
# Your functions on the first training pair, before any DPO training (the policy still equals the
# reference). Why is the loss exactly $\log 2 \approx 0.693$, and both rewards 0?

# %%
checks.require(checks.check_sequence_logprobs(my_sequence_logprobs), checks.check_dpo_loss(my_dpo_loss))
batch = lab.encode_pairs_for_dpo(tokenizer, train_pairs[:1])  # row 0: prompt + chosen, row 1: prompt + rejected
with torch.no_grad():
    logits = ref_model(input_ids=batch["input_ids"].to(ref_model.device),
                       attention_mask=batch["attention_mask"].to(ref_model.device)).logits
    chosen_logp, rejected_logp = my_sequence_logprobs(logits, batch["labels"].to(logits.device))
losses, chosen_reward, rejected_reward = my_dpo_loss(chosen_logp, rejected_logp, chosen_logp, rejected_logp,
                                                     DPO_BETA)
print(f"log pi(chosen|x) = {chosen_logp:.2f}, log pi(rejected|x) = {rejected_logp:.2f}")
print(f"DPO loss at the start: {losses:.4f}; rewards: chosen {chosen_reward:.4f}, rejected {rejected_reward:.4f}")

# %% [markdown]
# ### TODO 3: the DPO datasets
# TRL's `DPOTrainer` reads a dataset with the columns `prompt`, `chosen` and `rejected`, and joins prompt and
# response as plain strings. Build one for the training pairs and one for the held-out pairs, with each prompt
# wrapped in `lab.format_prompt` so TRL sees the same text as everything else in the lab.

# %% tags=["todo"] todo="dpo-dataset"
from datasets import Dataset  # noqa: E402

# >>> solution
train_ds_dpo = Dataset.from_list([{"prompt": lab.format_prompt(p["prompt"]), "chosen": p["chosen"],
                                   "rejected": p["rejected"]} for p in train_pairs])
eval_ds_dpo = Dataset.from_list([{"prompt": lab.format_prompt(p["prompt"]), "chosen": p["chosen"],
                                  "rejected": p["rejected"]} for p in test_pairs])
# >>> student
#| train_ds_dpo = ...  # TODO: Dataset.from_list([...]) with one row per pair in train_pairs
#| eval_ds_dpo = ...  # TODO: the same for test_pairs
# <<<

# %% tags=["check"]
display(checks.check_dpo_dataset(train_ds_dpo, train_pairs))
display(checks.check_dpo_dataset(eval_ds_dpo, test_pairs))

# %% [markdown]
# Train a fresh copy of the base model with DPO, first with the helpers' own loop. It computes the reference
# log-probs once, up front, then runs each pair's chosen and rejected responses through the model together.
# The plot shows the loss and the implicit rewards.
#
# One pass over 15-25 pairs is 15-25 steps at this learning rate, too few for DPO to move the model visibly. So,
# unless you set `DPO_EPOCHS`, the loop makes as many passes as give at least 50 steps, at most 4 passes (more
# would mostly memorize a small file). The sample's training pairs need one pass, as in the original lab.

# %%
dpo_epochs = DPO_EPOCHS or lab.scaled_dpo_epochs(len(train_pairs))
print(f"DPO: {dpo_epochs} pass(es) over {len(train_pairs)} training pairs, {dpo_epochs * len(train_pairs)} steps")
policy_dpo = lab.trainable_copy(ref_model)
dpo_history = lab.train_dpo(policy_dpo, ref_model, tokenizer, train_pairs, beta=DPO_BETA, lr=DPO_LR,
                            epochs=dpo_epochs, seed=SEED)
lab.plot_dpo_history(dpo_history)

# %% [markdown]
# ### Checkpoint 4b
# Look at the last panel: the summed log-probs of the chosen and rejected responses minus the reference's. Did
# the chosen responses become more likely, or less likely, than under the reference? If less, how can the
# loss still fall, and where did the probability go? (This is called *likelihood displacement*.)

# %% [markdown] tags=["answer"] checkpoint="displacement"
# *Your answer:*

# %% [markdown]
# ### DPO with TRL
# Now the same training with TRL's `DPOTrainer`, the library you would use outside this lab, on your datasets.
# Every setting the lab chooses is in the config below; the rest are TRL's defaults. On a GPU it trains as long
# as our loop did, and Part 3 compares it with the other models; on a CPU for the first `TRL_CPU_STEPS` steps
# only, to keep the wait short, and Part 3 leaves it out. Either way it is evaluated on the held-out pairs here. Both loops start at $\log 2$, which only shows that both start from the reference; they see the
# pairs in different orders, so their steps differ (the lab's tests check that the two losses agree to $10^{-5}$
# on the same batch). Compare the two histories, not one number.

# %%
from trl import DPOConfig, DPOTrainer  # noqa: E402

on_gpu = torch.cuda.is_available()
config = DPOConfig(
    output_dir="dpo_out",  # TRL wants a folder; with save_strategy="no" nothing is written to it
    beta=DPO_BETA,  # how strongly the loss ties the policy to the reference (the same beta as above)
    learning_rate=DPO_LR,  # TRL's default is 1e-6; the lab uses 5e-6, as our own loop
    num_train_epochs=dpo_epochs,  # as our loop
    max_steps=-1 if on_gpu else TRL_CPU_STEPS,  # -1: no cap, the epochs decide
    per_device_train_batch_size=1,  # one pair per step, as our own loop
    per_device_eval_batch_size=1,
    max_length=256,  # prompt + response tokens, as everywhere in the lab (max_prompt_length is gone in TRL 0.29)
    seed=SEED,
    logging_steps=1,  # log the loss and the rewards at every step
    save_strategy="no",  # no checkpoints
    report_to="none",  # no experiment trackers
    gradient_checkpointing=False,  # TRL's default recomputes activations to save memory: slower, not needed here
    use_cpu=not on_gpu,
    **lab.precision_flags("cuda" if on_gpu else "cpu"),  # bf16 or fp16 on a GPU; TRL's bf16 fails on CPUs
)

# %%
checks.require(checks.check_dpo_dataset(train_ds_dpo, train_pairs))
policy_trl = lab.trainable_copy(ref_model)
trainer = DPOTrainer(model=policy_trl, ref_model=ref_model, args=config, processing_class=tokenizer,
                     train_dataset=train_ds_dpo, eval_dataset=eval_ds_dpo)
trainer.train()
trl_eval = trainer.evaluate()  # on the held-out pairs
for model in (policy_trl, ref_model):  # TRL swapped in its own forward; the lab goes on with the models' own
    lab.models.remove_forward_patch(model)
trl_first_loss = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
print(f"first-step loss: ours {dpo_history['loss'].iloc[0]:.6f}, TRL {trl_first_loss:.6f}")
trl_history = lab.trl_history(trainer)  # TRL's per-step logs, as a table like dpo_history
display(lab.plot_dpo_history(trl_history, "DPO (TRL DPOTrainer)"))
print(f"TRL on the held-out pairs: loss {trl_eval['eval_loss']:.4f}, "
      f"reward accuracy {trl_eval['eval_rewards/accuracies']:.2f}")

# %% [markdown]
# ## Part 3: Evaluation
#
# Every model answers the same held-out prompts with the same random seed. Each writes one sample per prompt at
# temperature 0.8, so part of any difference in the texts is luck; every figure below comes with a 95% interval
# (in brackets): where two models' intervals overlap, these prompts cannot tell them apart.
#
# ### Checkpoint 5
# Define one concrete criterion you will use to decide whether alignment improved (for example safety, tone,
# humility, or refusing only when it should).

# %% [markdown] tags=["answer"] checkpoint="criterion"
# *Your answer:*

# %% [markdown]
# ### TODO 4: refusal phrases
# The refusal rate counts responses that contain one of your phrases, matched as whole words. A phrase like
# `"unable to"` would also flag "I was unable to sleep": name who refuses and what.

# %% tags=["todo"] todo="refusal-phrases"
# >>> solution
REFUSAL_PHRASES = ["I can't help with", "I cannot help with", "I can't assist", "I cannot assist", "I won't help",
                   "I cannot provide", "I'm not able to help", "I must decline", "as an AI"]
# >>> student
#| REFUSAL_PHRASES = [...]  # TODO: a list of whole phrases that only a refusal would contain
# <<<

# %% tags=["check"]
lab.check_refusal_phrases(REFUSAL_PHRASES)

# %%
checks.require(checks.check_refusal_phrases(REFUSAL_PHRASES))
models = {"base": ref_model, "kl": policy_kl, "dpo": policy_dpo}
if on_gpu:  # on a CPU TRL trained only TRL_CPU_STEPS steps: too few to set beside our DPO
    models["dpo_trl"] = policy_trl
metrics, generations = lab.evaluate_models(models, ref_model, tokenizer, test_pairs, beta=DPO_BETA, seed=SEED,
                                           max_new_tokens=MAX_NEW_TOKENS, refusal_phrases=REFUSAL_PHRASES)
print(f"Every model answered the {len(test_pairs)} held-out prompt(s). Judge them before you look at the numbers.")

# %% [markdown]
# ### Judge blind: did DPO learn *your* preference?
# Every number in this lab is a proxy. You are the one who wrote the preferences, so you can judge what DPO
# learned. For each held-out prompt you see two answers, one from the base model and one from DPO, as **A** and
# **B** in a random order, with no names. Pick the better one by **your criterion from Checkpoint 5** (or a tie).
# You can change a choice until you press **Finish**, which shows which model was which. Then run the cell after
# it, which records the result in your notebook.
#
# A handful of prompts cannot tell two models apart. To judge more, set `JUDGE_SAMPLE_TOO = True`: the models
# then also answer the bundled sample's held-out prompts (about a minute on a GPU, a few on a CPU).

# %%
JUDGE_SAMPLE_TOO = False  # True: also judge the sample's held-out prompts (more prompts, a narrower interval)
to_judge = generations[["prompt", "base", "dpo"]]
if JUDGE_SAMPLE_TOO:
    prompts = [pair["prompt"] for pair in lab.sample_held_out_pairs(train_pairs + test_pairs)]  # each prompt once
    answers = {name: lab.generate(models[name], tokenizer, prompts, MAX_NEW_TOKENS, seed=SEED)
               for name in ("base", "dpo")}
    to_judge = pd.concat([to_judge, pd.DataFrame({"prompt": prompts, **answers})], ignore_index=True)
judging = lab.judge_blind(to_judge, models=("base", "dpo"), seed=SEED)

# %%
report = judging.report(train_pairs=len(train_pairs), shortcut=card["shortcut to watch"],
                        dpo_held_out=metrics.loc["dpo", ["reward_acc", "reward_acc_low", "reward_acc_high",
                                                         "kl_to_ref", "kl_to_ref_low", "kl_to_ref_high"]].to_dict())

# %% [markdown]
# Now the numbers, each with its 95% interval:

# %%
display(lab.with_intervals(metrics))
if lab.few_pairs_note(len(test_pairs)):
    print(lab.few_pairs_note(len(test_pairs)), "To compare on more prompts, score the bundled sample's held-out "
          "pairs too: lab.evaluate_models(models, ref_model, tokenizer, lab.sample_held_out_pairs(train_pairs))")
lab.plot_metrics(metrics)

# %% [markdown]
# What the columns mean. `pref_acc` needs no reference, so it is the fair comparison with the base model;
# `pref_acc_chosen_longer` vs `pref_acc_chosen_shorter` shows whether a model simply prefers longer answers.

# %%
lab.metric_descriptions()

# %% [markdown]
# The generations side by side (the same prompts and seed for every model):

# %%
generations.style.set_properties(**{"white-space": "pre-wrap", "text-align": "left"}).hide(axis="index")

# %% [markdown]
# ### Checkpoint 6
# Propose one more automatic signal you wish you could measure here. Why would it help, and why is it hard?

# %% [markdown] tags=["answer"] checkpoint="extra-signal"
# *Your answer:*

# %% [markdown]
# ## Part 4: Reflection
#
# ### Checkpoint 7
# 1. Did your DPO model learn your **intent**, or a shortcut (tone, length, a refusal pattern)? Point to the
#    numbers or generations that tell you.

# %% [markdown] tags=["answer"] checkpoint="shortcut"
# *Your answer:*

# %% [markdown]
# 2. Your blind judgement: what does it say that the metrics did not? Did you prefer DPO, or longer answers
#    (your length habit, and your choices on pairs of similar length)?

# %% [markdown] tags=["answer"] checkpoint="blind"
# *Your answer:*

# %% [markdown]
# 3. Where did the KL penalty help? Where did it hold back an improvement?

# %% [markdown] tags=["answer"] checkpoint="kl-tradeoff"
# *Your answer:*

# %% [markdown]
# 4. If you wrote a short "constitution" of rules for good responses, which three rules would you add?

# %% [markdown] tags=["answer"] checkpoint="constitution"
# *Your answer:*

# %% [markdown]
# ## Hand in
# 1. **Download this notebook**: **File > Download > Download .ipynb**. That file, with your code, outputs and
#    answers, is what you hand in. (Your copy in Drive keeps your work; the downloaded file is what is graded.)
# 2. If your course also collects answers separately, the next cell saves your TODO code, your Checkpoint
#    answers and your `STUDENT_NAME` to `lab7_answers.json` and downloads it. Outside Colab, save the notebook
#    first (answers typed since the last save are not in the file).

# %% tags=["colab"]
if not IN_COLAB:
    print('Save this notebook, then run: lab.export_answers(notebook_path="lab7.ipynb", student=STUDENT_NAME, '
          'report=report)')
elif not STUDENT_NAME.strip():
    raise checks.Stop("Type your name or student id into STUDENT_NAME near the top, run that cell, then run this "
                      "one again.")
else:
    lab.export_answers(student=STUDENT_NAME, report=report)
