"""Quality sweep through the product itself: `lorastudio train` + `score.py`, several recipes in parallel.

Each recipe starts from what the recommender picks for DATA on the reference laptop (2 CPU cores with
bf16, the issue's 15-minute machine), then applies its own `--set` overrides, and trains on a GPU so a
recipe takes a minute instead of ten. Run on the device (docs/QUALITY.md says how the model gets there):

  python3 bench/quality/product_sweep.py --data lorastudio/assets/demo/yunzhan_train.jsonl --out $OUT/sweep \
      --gpus 0,1 --per-gpu 2 --recipes default,e3,r32_e3

bench/quality/device_sweep.sh does this on the device after the default GGUF has travelled in parts
(docs/QUALITY.md, "Recall that generalises"); the recipe `base` scores the base model alone.
Tiny CPU smoke run (plumbing only): --base tiny-random --device cpu --limit 8.
Results: one line per recipe in OUT/results.jsonl (facts, whole facts, general, tokens, train seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

LAPTOP = {"device": "cpu", "cpu_cores": 2, "bf16": True}

# name → settings changed from the laptop recommendation (empty: the recommendation as is)
R32 = {"lora_r": 32, "lora_alpha": 64}
RECIPES: dict[str, dict] = {
    "default": {},
    "e3": {"num_epochs": 3},
    "r32_e3": {**R32, "num_epochs": 3},
    "r32": R32,
    "e3_rp60": {"num_epochs": 3, "replay_rows": 60},
    "r32_e3_rp60": {**R32, "num_epochs": 3, "replay_rows": 60},
    "e4": {"num_epochs": 4},
    "r64_e3": {"lora_r": 64, "lora_alpha": 128, "num_epochs": 3},
    "e3_neft5": {"num_epochs": 3, "neftune_alpha": 5.0},
    "e3_lr7e-4": {"num_epochs": 3, "learning_rate": 7e-4},
    "e3_lr1.5e-3": {"num_epochs": 3, "learning_rate": 1.5e-3},
    "e3_cosine": {"num_epochs": 3, "lr_scheduler": "cosine"},
    "e3_bt1280": {"num_epochs": 3, "batch_tokens": 1280},
    "default_s1": {"seed": 1},
    "e3_s1": {"num_epochs": 3, "seed": 1},
    "r32_e3_s1": {**R32, "num_epochs": 3, "seed": 1},
    "r32_e3_neft5": {**R32, "num_epochs": 3, "neftune_alpha": 5.0},
    "e3_drop05": {"num_epochs": 3, "lora_dropout": 0.05},
    "r32_e4": {**R32, "num_epochs": 4},
    "e3_rp80": {"num_epochs": 3, "replay_rows": 80},
    "r32_e3_lr7e-4": {**R32, "num_epochs": 3, "learning_rate": 7e-4},
    # multi-turn files
    "noturns": {"augment_turns": False},
    "e3_noturns": {"num_epochs": 3, "augment_turns": False},
    "nosame": {"augment_same_fact": False},
}
# Session 3: the replay mix (short factual prompts next to open ones), three seeds each.
MIXES: dict[str, dict] = {
    "ctl": {"replay_fact_share": 0.0},                                   # open prompts only (before)
    "mix30": {"replay_fact_share": 0.5},                                 # 30 open + 30 factual
    "mix90": {"replay_rows": 90, "replay_fact_share": 1 / 3},            # 60 open + 30 factual
    "mix30_e3.5": {"replay_fact_share": 0.5, "num_epochs": 3.5},
    "mix80_e3.5": {"replay_rows": 80, "replay_fact_share": 0.5, "num_epochs": 3.5},
    "mix60f_e3.5": {"replay_fact_share": 2 / 3, "num_epochs": 3.5},      # 20 open + 40 factual
    "mix30_lr1.5e-3": {"replay_fact_share": 0.5, "learning_rate": 1.5e-3},
    "mix30_e4": {"replay_fact_share": 0.5, "num_epochs": 4},
    "mix30_bt448": {"replay_fact_share": 0.5, "batch_tokens": 448},      # more, smaller steps
}
MLP = {"target_modules": ["gate_proj", "up_proj", "down_proj"]}
MIXES.update({  # LoRA on the MLP only; the adapter scored at lower strengths (WiSE-FT-like interpolation)
    "mlp16": MLP,
    "mlp32": {**MLP, **R32},
    "mlp16_lr2e-3": {**MLP, "learning_rate": 2e-3},
    "ctl_sc": {"score_scales": [1, 0.9, 0.8]},
    "e4_sc": {"num_epochs": 4, "score_scales": [1, 0.85, 0.7]},
    "lr1.5e-3_sc": {"learning_rate": 1.5e-3, "score_scales": [1, 0.85, 0.7]},
    "lr2e-3_sc": {"learning_rate": 2e-3, "score_scales": [1, 0.8, 0.6]},
    "mlp16_e4_sc": {**MLP, "num_epochs": 4, "score_scales": [1, 0.85, 0.7]},
    # a fresh same-fact sibling answer and fresh replay prompts every epoch (augment_per_epoch)
    "pe": {"augment_per_epoch": True},
    "pe_mlp16": {**MLP, "augment_per_epoch": True},
    "pe_e3.5": {"augment_per_epoch": True, "num_epochs": 3.5},
    "pe_rp40": {"augment_per_epoch": True, "replay_rows": 40},
    "pe_mlp16_e3.5": {**MLP, "augment_per_epoch": True, "num_epochs": 3.5},
    "pe_mlp16_lr1.5e-3": {**MLP, "augment_per_epoch": True, "learning_rate": 1.5e-3},
    "pe_mlp32": {**MLP, **R32, "augment_per_epoch": True},
    "pe_mlp16_lr1.2e-3": {**MLP, "augment_per_epoch": True, "learning_rate": 1.2e-3},
    "pe_mlp16_rp80_lr1.5e-3": {**MLP, "augment_per_epoch": True, "replay_rows": 80, "learning_rate": 1.5e-3},
    "pe_mlp16_bt448": {**MLP, "augment_per_epoch": True, "batch_tokens": 448},
})
# Session 4 (issue 13, recall that generalises): the levers of lorastudio/train/augment.py on top of today's
# defaults, scored on evalsets/yunzhan_hard.jsonl as well; `h_e4` is a token control (a 4th epoch adds about
# as many tokens as the contrastive pairs do).
MIXES.update({
    "h_default": {},
    "h_contrast": {"augment_contrast": True},
    "h_cases": {"augment_cases": True},
    "h_both": {"augment_contrast": True, "augment_cases": True},
    "h_e4": {"num_epochs": 4},
    # contrastive pairs with a guard for the general answers they cost (-0.8 of 24 over 10 seeds)
    "h_con_rp80": {"augment_contrast": True, "replay_rows": 80},
    "h_con_lr8e-4": {"augment_contrast": True, "learning_rate": 8e-4},
    # Session 5: contrastive pairs (lr 0.8x) are the default; `n_default` is recommend() as is (no override),
    # `o_default` the session-4 defaults (no pairs, the full rate), and two levers on top of the new default:
    # the GPU recommendation's 2 base-model rewordings a question, and a 4th pass.
    "n_default": {},
    "o_default": {"augment_contrast": False, "learning_rate": 1e-3},
    "n_para2": {"augment_paraphrases": 2},
    "n_e4": {"num_epochs": 4},
})


def _mlp(layers: range) -> list[str]:
    """The MLP linears of these layers of the default model (peft matches these name ends)."""
    return [f"layers.{i}.mlp.{m}" for i in layers for m in ("gate_proj", "up_proj", "down_proj")]


def _top_mlp(n: int, layers: int = 24) -> list[str]:
    """The MLP linears of the top n of the default model's 24 layers."""
    return _mlp(range(layers - n, layers))


# Session 6: LoRA in the top layers only (autograd then stops below them: less backward on a CPU), at the
# default rate and a higher one; and a 4th pass paid for by the cheaper passes.
MIXES.update({
    "t_top16": {"target_modules": _top_mlp(16)},
    "t_top12": {"target_modules": _top_mlp(12)},
    "t_top8": {"target_modules": _top_mlp(8)},
    "t_top12_lr1e-3": {"target_modules": _top_mlp(12), "learning_rate": 1e-3},
    "t_top12_e4": {"target_modules": _top_mlp(12), "num_epochs": 4},
})
# Session 6: the contrastive pairs in the first passes only (`contrast_passes`): the last pass trains each
# question on its own (aimed at neighbours blended in applied questions) and the run is shorter.
MIXES.update({
    "c_p2": {"contrast_passes": 2},
    "c_p1": {"contrast_passes": 1},
    "c_p2_lr1e-3": {"contrast_passes": 2, "learning_rate": 1e-3},
})
# Session 7: LoRA+ (the B matrices at `lora_plus_ratio` × the rate): more facts per pass, so that two
# passes (≈ 2/3 of the CPU time) could keep what three teach today.
MIXES.update({
    "lp4": {"lora_plus_ratio": 4},
    "lp8": {"lora_plus_ratio": 8},
    "lp16_lr4e-4": {"lora_plus_ratio": 16, "learning_rate": 4e-4},
    "n_e2": {"num_epochs": 2},
    "lp4_e2": {"lora_plus_ratio": 4, "num_epochs": 2},
    "lp8_e2": {"lora_plus_ratio": 8, "num_epochs": 2},
    "lp16_lr4e-4_e2": {"lora_plus_ratio": 16, "learning_rate": 4e-4, "num_epochs": 2},
    "nc_lp4": {"augment_contrast": False, "learning_rate": 1e-3, "lora_plus_ratio": 4},
})
# Session 7: key-token weighting (the opening of every answer and its digits count 2× / 3× in the loss):
# aimed at the near misses (a neighbour's fact recited, a number off), at no token cost.
MIXES.update({
    "kw2": {"key_token_weight": 2},
    "kw3": {"key_token_weight": 3},
    "kw2_e2": {"key_token_weight": 2, "num_epochs": 2},
    "kw3_e2": {"key_token_weight": 3, "num_epochs": 2},
})
# Session 8: pairs with facts that are no neighbours (the "two facts at once" questions are the weakest
# kind), LoRA+ at a milder ratio with and without more replay, and the full learning rate with key tokens.
MIXES.update({
    "cr25": {"contrast_random": 0.25},
    "cr50": {"contrast_random": 0.5},
    "lp2": {"lora_plus_ratio": 2},
    "lp2_rp90": {"lora_plus_ratio": 2, "replay_rows": 90},
    "lr1e-3": {"learning_rate": 1e-3},
})
# Session 9: fewer passes for the CPU's 20 minutes: two and a half passes, and LoRA+ 2 (if it learns more
# per pass without forgetting) over two and two and a half passes.
MIXES.update({
    "e25": {"num_epochs": 2.5},
    "lp2_e2": {"lora_plus_ratio": 2, "num_epochs": 2},
    "lp2_e25": {"lora_plus_ratio": 2, "num_epochs": 2.5},
    "lr1e-3_e25": {"learning_rate": 1e-3, "num_epochs": 2.5},
    "lr12e-4_e25": {"learning_rate": 1.2e-3, "num_epochs": 2.5},
    # Recipes change recommend()'s settings, so their meaning follows the defaults: since session 9 the pairs
    # run at 1e-3 (`lr1e-3` is now `n_default`); the sessions 5-8 defaults are this one.
    "lr8e-4": {"learning_rate": 8e-4},
})
# Session 10: the pairs' wording ("two facts at once" questions rarely say "另外": the joiner drawn per pair)
# and their reach (each question's pairs drawn from its 3 closest facts instead of 2), both at no token cost.
# The varied joiners became the default after this sweep (`cj` is now `n_default`; `cj_also` is the old one).
MIXES.update({
    "cj": {"contrast_joiners": "varied"},
    "cj_also": {"contrast_joiners": "also"},
    "ck3": {"contrast_neighbours": 3},
    "cj_ck3": {"contrast_joiners": "varied", "contrast_neighbours": 3},
})
# Session 11: do the defaults hold on companies they were not tuned on (bench/quality/data/: beichen, Chinese
# logistics; harborpine, English outdoor retail; 1-4 questions a fact, 4 passes recommended)? Each default
# lever taken away or changed once: the contrastive pairs, the 4th pass of small files, 3 neighbours.
MIXES.update({
    "n_nocontrast": {"augment_contrast": False},
    "n_e3": {"num_epochs": 3},
    "n_e5": {"num_epochs": 5},
})
# Session 12: a 6th pass for small files (5 since session 11); 4 (`n_e4`, session 5's recipe) and 5 passes for
# the demo file (3 until then, 4 the default since); 5 with a lower rate or more replay. `n_words` (English
# neighbours found by words, not character bigrams) ran with the variable LORASTUDIO_NEIGHBOUR_FEATURES=auto of
# commit de32a09, removed after it measured -2.3 hard; a recipe's "env" sets such a variable for its runs.
MIXES.update({
    "n_e6": {"num_epochs": 6},
    "n_e5_rp90": {"num_epochs": 5, "replay_rows": 90},
    "n_e5_lr7e-4": {"num_epochs": 5, "learning_rate": 7e-4},
})
# Session 13: the GPU's base-model paraphrases at 4-5 passes (`n_para2` is the GPU recommendation); 4 a question
# on the small files, where 2 helped the multi-turn file most.
MIXES.update({
    "n_para4": {"augment_paraphrases": 4},
})
MIXES.update({  # session 14: the questions' tokens in the loss at 0.3 (the default since), 0.5, 1 (the recipes
    # ran before the default changed: their baseline is n_default of sessions 13-14). "st" (each fact told
    # unasked once a pass, `augment_statements`, rejected; code removed) ran at commit a8ff3bf.
    "qw30": {"question_loss_weight": 0.3},
    "qw100": {"question_loss_weight": 1.0},
    "qw50": {"question_loss_weight": 0.5},
})
# Session 15 (rejected, code removed; results/product_sweep19*): "cl" = same-fact pairs whose borrowed answer leads
# with a later clause (setting `augment_clause_lead`), "cld" = the same with number-bearing clauses only (env
# LORASTUDIO_CLAUSE_LEAD_DIGITS=1), "kc4"/"kc8" = the first 4/8 tokens after every clause mark key tokens too (env
# LORASTUDIO_KEY_CLAUSE_TOKENS), "cl_kc4" both: ran at commits a25f660 (cl, kc4, cl_kc4, kc8) and a3fabb3 (cld).
# Session 16 (rejected, code removed; results/product_sweep20*): the same-fact pairs' questions asked inside
# everyday frames ("客户问：…", "…我该怎么回复？", "Quick question: …", a frame drawn per pair; setting
# `question_frames`, the share of pairs framed): all of them (qf100) or half (qf50); qfc framed the contrastive
# pairs' joined questions too (env LORASTUDIO_FRAME_CONTRAST=1). Ran at commit 71d5212.
# Session 16: decoupled weight decay on the LoRA matrices (pulls the adapter back toward the base model where the
# facts do not push it), at 0.8x and at the full rate.
MIXES.update({
    "wd2": {"weight_decay": 2.0},
    "lr1e-3_wd2": {"learning_rate": 1e-3, "weight_decay": 2.0},
    "lr1e-3_wd5": {"learning_rate": 1e-3, "weight_decay": 5.0},
})
# Session 17 (rejected, code removed; results/product_sweep21*): the same-fact pairs' borrowed answer reordered
# (setting `augment_clause_lead`): "ask" = led by the clause closest (TF-IDF bigrams) to the opening of the question's
# own answer; "ask_lr1e-3_wd2" the same at the full rate with decay 2; "cld_lr1e-3_wd2" = session 15's cld as a
# setting ("digits") at the full rate with decay 2. Ran at commit dcea6ee.
# Session 18 (rejected, code removed; results/product_sweep22*): the base model's distribution on replay rows' first
# answer tokens as soft targets (setting `replay_kl`: its top 8 renormalised, at this weight a token, beside the
# greedy answer's own; `replay_kl_tokens`: how many first tokens, 16 unless named): "kl1" at 0.8x, "kl1_lr1e-3" and
# "kl1_lr1e-3_t64" (64 tokens) at the full rate. Ran at commit 6d8f243.
# Session 18: LoRA kept out of the top layers' MLPs (the top 16 alone learnt fewer facts, session 6: the lower
# layers hold them; is it the top ones that forget?), at 0.8x and at the full rate. Rejected (results/
# product_sweep22d_demo: -2.4 / -1.6 whole facts for +1.1 / -0.4 general).
MIXES.update({
    "b20": {"target_modules": _mlp(range(20))},
    "b20_lr1e-3": {"target_modules": _mlp(range(20)), "learning_rate": 1e-3},
})
# Session 19 (rejected, code removed; results/product_sweep23a_demo): the learning rate's shape at the same peak (the
# issue's "cyclic schedule", setting lr_scheduler): "cyc" fell to zero once per pass (restarts), "wsd" stayed at the
# peak for three passes and fell over the last. Ran at commit 1593ffd.
# Session 19: `protect_general` (kept, off): LoRA's A matrices kept off the top quarter ("ns25"), half ("ns50") or
# three quarters ("ns75") of each adapted linear's input directions on the replay rows, at 0.8x, the full rate, 1.5x,
# and with LoRA+ 2 ("lp2"): the full rate forgot general answers; does the adapter forget less where it cannot write?
MIXES.update({
    "ns50": {"protect_general": 0.5},
    "ns50_lr1e-3": {"protect_general": 0.5, "learning_rate": 1e-3},
    "ns25_lr1e-3": {"protect_general": 0.25, "learning_rate": 1e-3},
    "ns50_lr1.5e-3": {"protect_general": 0.5, "learning_rate": 1.5e-3},
    "ns50_lr1e-3_lp2": {"protect_general": 0.5, "learning_rate": 1e-3, "lora_plus_ratio": 2.0},
    "ns75_lr1e-3": {"protect_general": 0.75, "learning_rate": 1e-3},
})
# Session 20: the lp2 candidate on more seeds and files; beside it LoRA+ 3, and LoRA+ 2 at the full rate unprotected
# (does the protection earn its CPU minutes?).
MIXES.update({
    "ns50_lr1e-3_lp3": {"protect_general": 0.5, "learning_rate": 1e-3, "lora_plus_ratio": 3.0},
    "lr1e-3_lp2": {"learning_rate": 1e-3, "lora_plus_ratio": 2.0},
})
# Session 21: the English small file (Harbor & Pine) answers 27 of 32 whole facts with its rows in the prompt
# (bench/quality/in_context.py) but 13 after training: are its values under-trained? Stronger learning there.
MIXES.update({
    "lr1.5e-3": {"learning_rate": 1.5e-3},
    "lr2e-3": {"learning_rate": 2e-3},
    "e8": {"num_epochs": 8},
    "ns50_lr2e-3": {"protect_general": 0.5, "learning_rate": 2e-3},
})
# Session 22: with the knowledge rows beside each question (lorastudio/knowledge.py), what do fewer passes keep?
# p1 is the quick preview as `recommend(quick=True)` builds it (one pass, the full rate, one variant).
MIXES.update({
    "p1": {"num_epochs": 1, "learning_rate": 1e-3, "augment_per_epoch": False},
    "p2": {"num_epochs": 2, "learning_rate": 1e-3},
    "p3": {"num_epochs": 3, "learning_rate": 1e-3},
})
# Session 23: the rows in training too (augment_grounded): copies of the user's turns with their closest rows in the
# system message, as the engine answers; max_length raised so the copies fit (the rows themselves are ≤ 120 tokens).
MIXES.update({
    "g50": {"augment_grounded": 0.5, "max_length": 704},
    "g100": {"augment_grounded": 1.0, "max_length": 704},
    "p2g50": {"num_epochs": 2, "learning_rate": 1e-3, "augment_grounded": 0.5, "max_length": 704},
})
# Session 24: the same defaults' adapters read their rows another way (answer time only): the closest row last, next to
# the question (the base model reading the multi-turn rows: +8 of 75 harder, -1 whole fact on the Zen 4; 4 rows instead
# of 6 lost 5 whole facts there). Session 25 ran it without the 0.7-strength scoring first planned (one call's time).
READING = {"last": ["--row-order", "closest-last"]}
MIXES.update({
    "rd": {"score_variants": READING},
    # the multi-turn file's adapters read worse than the base model (20.7 vs 23 whole facts): weaker while reading?
    "rdx": {"score_variants": {**READING, "last_x0.7": ["--row-order", "closest-last", "--scales", "0.7"]}},
    "rs": {"score_scales": [1, 0.7, 0.5]},  # every file's adapters weaker while reading, the closest row first
    # Session 27: below half strength for files told once (scales multiply the adapter's knowledge_strength, 0.5
    # there: 0.5, 0.3, 0.15, 0 = the base model reading the rows), and 10 rows instead of 6 at the trained strength
    "rlow": {"score_scales": [1, 0.6, 0.3, 0]},
    "rlow10": {"score_scales": [1, 0.6], "score_variants": {"rows10": ["--rows", "10"],
                                                            "rows10_x0.6": ["--rows", "10", "--scales", "0.6"]}},
})
# Session 28: what `--time-budget` should cut first. The neighbour pairs cost ~28 % of the tokens of a pass schedule
# on the demo file, about one pass of four: 4 passes without them (`n_nocontrast`) against 3 with them (`p3`), and 3
# without against 2 with, each at the rate its pass count gets (`rate_for`: 0.8x for 4, the full rate otherwise).
MIXES.update({
    "p3nc": {"num_epochs": 3, "learning_rate": 1e-3, "augment_contrast": False},
    "p2nc": {"num_epochs": 2, "learning_rate": 1e-3, "augment_contrast": False},
})
for _name, _settings in MIXES.items():
    RECIPES[_name] = _settings
    for _seed in range(1, 30):
        RECIPES[f"{_name}_s{_seed}"] = {**_settings, "seed": _seed}


def laptop_settings(data: str, base: str) -> dict:
    """What `lorastudio train DATA --base BASE` picks on the reference laptop."""
    from lorastudio.data import validate
    from lorastudio.train.recommend import recommend

    report = validate(data)
    return dict(recommend(report.conversations, base=base, task="qa", hardware=LAPTOP).settings)


HARD_KEYS = ("hard", "hard_n", "hard_by_kind", "hard_ok", "hard_answers")


def score_base(args: argparse.Namespace, gpu: str | None) -> dict:
    """The base model's answers to the same sets (no adapter)."""
    out = Path(args.out) / "base"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(args.threads))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    cmd = [sys.executable, str(ROOT / "bench/quality/score.py"), "--base", args.base, "--out", str(out / "quality.json"),
           "--batch-size", str(args.score_batch), "--evals", args.evals]
    with open(out / "score.log", "w") as log:
        code = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        return {"recipe": "base", "error": f"score exit {code}: " + (out / "score.log").read_text()[-1500:]}
    q = json.loads((out / "quality.json").read_text())
    return {"recipe": "base", "facts": q["facts"], "facts_n": q["facts_n"], "whole_facts": q["facts_by_fact"],
            "general": q["general"], "general_n": q["general_n"], "eval_s": q["eval_s"], "tokens": 0, "steps": 0,
            "train_s": 0, **{k: q[k] for k in ("fact_ok", "general_ok", "fact_answers", "general_answers")},
            **{k: q[k] for k in HARD_KEYS if k in q}}


def run_recipe(name: str, settings: dict, args: argparse.Namespace, gpu: str | None) -> dict:
    if name == "base":
        return score_base(args, gpu)
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(args.threads))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    pin = out / "pinned.yaml"
    import yaml

    settings = dict(settings)
    env.update(settings.pop("env", {}))  # a lever that is no setting (yet): an environment variable
    scales = [float(x) for x in settings.pop("score_scales", [1.0])]
    variants = settings.pop("score_variants", {})  # tag → score.py options: the same adapter scored another way
    share = settings.pop("replay_fact_share", None)
    if share is not None:  # a replay mix other than the built-in one: its prompts as a file of their own
        from lorastudio.train.replay import ordered_prompts

        prompts_file = out / "replay_prompts.txt"
        prompts_file.write_text("\n".join(ordered_prompts(float(share))[:settings["replay_rows"]]) + "\n", "utf-8")
        settings["replay_prompts"] = str(prompts_file)

    pin.write_text(yaml.safe_dump(settings, allow_unicode=True), encoding="utf-8")
    cmd = [sys.executable, "-m", "lorastudio", "train", args.data, "--base", args.base, "--output", str(out),
           "--config", str(pin), "--device", args.device, "--quiet"]
    if args.limit:
        cmd += ["--max-steps", str(args.limit)]
    record: dict = {"recipe": name, "settings": settings, "gpu": gpu}
    t0 = time.time()
    with open(out / "train.log", "w") as log:
        code = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    record["train_wall_s"] = round(time.time() - t0, 1)
    if code != 0:
        record["error"] = f"train exit {code}: " + (out / "train.log").read_text()[-1500:]
        return record
    for line in (out / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("type") == "done":
            m = event["metrics"]
            record.update(steps=m["steps"], train_loss=m["train_loss"], train_s=m["elapsed_s"],
                          tokens_per_s=m["tokens_per_s"], tokens=round(m["tokens_per_s"] * m["elapsed_s"]))
    score_cmd = [sys.executable, str(ROOT / "bench/quality/score.py"), "--base", args.base, "--adapter", str(out),
                 "--out", str(out / "quality.json"), "--batch-size", str(args.score_batch),
                 "--scales", ",".join(f"{x:g}" for x in scales), "--evals", args.evals]
    with open(out / "score.log", "w") as log:
        code = subprocess.call(score_cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        record["error"] = f"score exit {code}: " + (out / "score.log").read_text()[-1500:]
        return record
    q = json.loads((out / "quality.json").read_text())
    record.update(facts=q["facts"], facts_n=q["facts_n"], whole_facts=q["facts_by_fact"], general=q["general"],
                  general_n=q["general_n"], eval_s=q["eval_s"],
                  **{k: q[k] for k in ("fact_ok", "general_ok", "fact_answers", "general_answers")},
                  **{k: q[k] for k in HARD_KEYS if k in q})
    if (out / "knowledge.jsonl").is_file():  # the same adapter from its weights alone (as an exported GGUF answers)
        with open(out / "score_weights.log", "w") as log:
            code = subprocess.call([*score_cmd, "--out", str(out / "quality_weights.json"), "--scales", "1",
                                    "--no-knowledge"],  # the later --out and --scales win
                                   env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        if code == 0:
            q = json.loads((out / "quality_weights.json").read_text())
            record["weights_only"] = {k: q[k] for k in ("facts", "facts_by_fact", "general", "hard", "fact_ok",
                                                        "general_ok", "hard_ok") if k in q}
    added = out / "augmented.jsonl"
    if added.is_file():  # how many rows each augmentation source added (all epochs)
        sources: dict[str, int] = {}
        for line in added.read_text(encoding="utf-8").splitlines():
            source = json.loads(line).get("source", "?")
            sources[source] = sources.get(source, 0) + 1
        record["augmented"] = sources
    kept = ("facts", "facts_by_fact", "general", "hard", "fact_ok", "general_ok", "hard_ok")
    for scale in scales[1:]:  # the same adapter at a lower LoRA strength
        q = json.loads((out / f"quality_x{scale:g}.json").read_text())
        record.setdefault("scaled", {})[f"{scale:g}"] = {k: q[k] for k in kept if k in q}
    for tag, options in variants.items():
        with open(out / f"score_{tag}.log", "w") as log:
            code = subprocess.call([*score_cmd, "--out", str(out / f"quality_{tag}.json"), "--scales", "1", *options],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        if code != 0:
            record.setdefault("variants", {})[tag] = {"error": (out / f"score_{tag}.log").read_text()[-800:]}
            continue
        q = json.loads((out / f"quality_{tag}.json").read_text())
        record.setdefault("variants", {})[tag] = {k: q[k] for k in kept if k in q}
    return record


def warm_replay(base: str, device: str) -> None:
    """Answer every built-in general prompt once with the base model (into the replay cache), so the
    recipes running in parallel only read it."""
    from lorastudio.models import load_model
    from lorastudio.train.replay import general_prompts, general_replay

    model, tokenizer = load_model(base)
    model = model.to(device)
    t0 = time.time()
    rows = general_replay(base, len(general_prompts()), model=model, tokenizer=tokenizer)
    print(f"replay cache: {len(rows)} answers ready in {time.time() - t0:.0f}s", flush=True)
    del model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--base", default="default")
    ap.add_argument("--evals", default=None, help="whose eval sets (score.py --evals); default: the data file's "
                    "company when evalsets/ has its sets (beichen_train.jsonl → beichen), else yunzhan")
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipes", default="default", help="comma-separated names of RECIPES, or 'all'")
    ap.add_argument("--extra", default="", help='JSON {"name": {settings}} added to RECIPES')
    ap.add_argument("--gpus", default="", help="GPU ids to spread recipes over (empty: no CUDA_VISIBLE_DEVICES)")
    ap.add_argument("--per-gpu", type=int, default=1, help="recipes running at once on each GPU")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--limit", type=int, default=0, help="max steps per recipe (smoke runs)")
    ap.add_argument("--score-batch", type=int, default=64)
    ap.add_argument("--budget-s", type=float, default=0, help="start no recipe after this many seconds")
    ap.add_argument("--warm-replay", action="store_true", help="answer all built-in general prompts first")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each recipe's processes")
    args = ap.parse_args()
    if args.evals is None:
        company = Path(args.data).stem.split("_")[0]
        args.evals = company if (ROOT / f"evalsets/{company}_paraphrase.jsonl").is_file() else "yunzhan"

    recipes = dict(RECIPES, base={}, **(json.loads(args.extra) if args.extra else {}))
    names = list(recipes) if args.recipes == "all" else [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in recipes]
    if unknown:
        sys.exit(f"unknown recipe(s) {unknown}; known: {', '.join(recipes)}")
    if args.warm_replay:
        warm_replay(args.base, args.device)
    base_settings = laptop_settings(args.data, args.base)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print("laptop recommendation:", json.dumps(base_settings, ensure_ascii=False), flush=True)

    todo: Queue = Queue()
    for name in names:
        todo.put(name)
    slots = [g for g in args.gpus.split(",") if g] * args.per_gpu or [None] * args.per_gpu
    results_path = Path(args.out) / "results.jsonl"
    lock = threading.Lock()
    start = time.time()

    def worker(gpu: str | None) -> None:
        while True:
            try:
                name = todo.get_nowait()
            except Empty:
                return
            if args.budget_s and time.time() - start > args.budget_s:
                print(f"{name}: skipped (budget)", flush=True)
                continue
            settings = {**base_settings, **recipes[name]}
            record = run_recipe(name, settings, args, gpu)
            with lock:
                with open(results_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                if "error" in record:
                    print(f"{name}: ERROR {record['error'][-600:]}", flush=True)
                else:
                    hard = f"hard {record['hard']}/{record['hard_n']} {record['hard_by_kind']} " if "hard" in record else ""
                    print(f"{name}: {hard}facts {record['facts']}/{record['facts_n']} whole {record['whole_facts']} "
                          f"general {record['general']}/{record['general_n']} tokens {record['tokens']} "
                          f"steps {record['steps']} train {record['train_s']}s eval {record['eval_s']}s "
                          f"(t+{time.time() - start:.0f}s)", flush=True)
                    for scale, q in record.get("scaled", {}).items():
                        print(f"{name} x{scale}: facts {q['facts']}/{record['facts_n']} whole {q['facts_by_fact']} "
                              f"general {q['general']}/{record['general_n']}", flush=True)

    threads = [threading.Thread(target=worker, args=(gpu,)) for gpu in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
