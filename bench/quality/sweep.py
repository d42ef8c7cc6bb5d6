"""Quality sweep on the real default model: which recipe makes facts stick without forgetting?

Self-contained (transformers + peft only): trains each recipe as a LoRA on the base model with the
chat template and assistant-only loss, then scores greedy answers on
  evalsets/yunzhan_paraphrase.jsonl  (reworded questions; an answer counts if it has all key strings)
  evalsets/general.jsonl             (general knowledge; forgetting check)
and counts trained tokens, so recipes can be ranked within the CPU budget (≈ 60k tokens = 10 min).

On the GPU device (see docs/QUALITY.md for the transfer of the model):
  python3 bench/quality/sweep.py --model /tmp/q/bf16 --train .mdl/q4/data/yunzhan_train.jsonl \
      --out $OUT --recipes base,r16_lr5e-4_e4
Tiny CPU smoke run (checks the plumbing, learns nothing):
  python bench/quality/sweep.py --model tiny --train ../shared/data/yunzhan_train.jsonl --out /tmp/sw \
      --recipes r16 --limit 8
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# --------------------------------------------------------------------------------------------------
# recipes: name → settings (missing keys take DEFAULTS)
DEFAULTS = dict(r=16, alpha=32, lr=5e-4, epochs=4, bs=8, para=0, tmpl=0, cross=False, replay=0,
                kl=0.0, neftune=0.0, targets="all-linear", dropout=0.0, sched="linear", warmup=0.05,
                orig=True)

RECIPES: dict[str, dict] = {
    # ≈ 60k trained tokens fits the 15-minute CPU budget (100 tok/s); names say what changes.
    "A_rp40_lr1e-3_e3": dict(lr=1e-3, epochs=3, replay=40),
    "B_p1_rp40_lr1e-3_e2": dict(lr=1e-3, epochs=2, replay=40, para=1),
    "C_p2_rp40_lr1e-3_e2": dict(lr=1e-3, epochs=2, replay=40, para=2),
    "D_t1_rp40_lr1e-3_e2": dict(lr=1e-3, epochs=2, replay=40, tmpl=1),
    "E_x_rp40_lr1e-3_e2": dict(lr=1e-3, epochs=2, replay=40, cross=True),
    "F_p1_rp40_lr2e-3_e2": dict(lr=2e-3, epochs=2, replay=40, para=1),
    "G_p1_rp40_r32_lr1e-3_e2": dict(r=32, alpha=64, lr=1e-3, epochs=2, replay=40, para=1),
    "H_p1_rp20_lr1e-3_e2": dict(lr=1e-3, epochs=2, replay=20, para=1),
    "I_p1_rp40_kl_lr1e-3_e2": dict(lr=1e-3, epochs=2, replay=40, para=1, kl=1.0),
    "J_p1_rp40_neft5_lr1e-3_e2": dict(lr=1e-3, epochs=2, replay=40, para=1, neftune=5.0),
    "K_rp40_lr2e-3_e3": dict(lr=2e-3, epochs=3, replay=40),
    "L_p2_rp40_lr1e-3_e4_big": dict(lr=1e-3, epochs=4, replay=40, para=2),
    "M_p1_rp40_lr1e-3_e3": dict(lr=1e-3, epochs=3, replay=40, para=1),
    "N_p1_rp40_r64_lr1e-3_e2": dict(r=64, alpha=128, lr=1e-3, epochs=2, replay=40, para=1),
    "O_p1_rp40_lr5e-4_e3": dict(lr=5e-4, epochs=3, replay=40, para=1),
}

# --------------------------------------------------------------------------------------------------
QUESTION_WORDS = re.compile(r"(吗|呢|什么|多少|几|怎么|怎样|如何|哪|谁|是否|能否|可以|有没有|要不要|多久|多长|为何|为什么"
                            r"|\?|？|^(what|how|why|when|where|which|who|is|are|can|does|do|should)\b)", re.I)


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_train(path: str) -> list[list[dict]]:
    """Instruction/response rows (or messages) → message lists."""
    convs = []
    for row in read_jsonl(path):
        if "messages" in row:
            convs.append(row["messages"])
        elif "conversation" in row:
            msgs = []
            for turn in row["conversation"]:
                if turn.get("system"):
                    msgs.append({"role": "system", "content": turn["system"]})
                msgs += [{"role": "user", "content": turn["input"]}, {"role": "assistant", "content": turn["output"]}]
            convs.append(msgs)
        else:
            convs.append([{"role": "user", "content": row["instruction"]},
                          {"role": "assistant", "content": row["response"]}])
    return convs


# --------------------------------------------------------------------------------------------------
def tokenize_conversation(tok, messages: list[dict], max_length: int = 1024):
    """input_ids and labels with loss on assistant turns only (incl. their end token)."""
    ids: list[int] = []
    labels: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tok(full, add_special_tokens=False)["input_ids"]
        # Qwen's template appends "\n" after <|im_end|>; train the end token, not the newline.
        if f_ids and tok.decode(f_ids[-1:]) == "\n":
            f_ids = f_ids[:-1]
        assert f_ids[: len(p_ids)] == p_ids, "chat template is not prefix-stable"
        new_prompt = p_ids[len(ids):]
        labels += [-100] * len(new_prompt) + f_ids[len(p_ids):]
        ids = f_ids
        labels = labels[: len(ids)]
    return ids[:max_length], labels[:max_length]


@torch.no_grad()
def generate(model, tok, prompts: list[list[dict]], max_new_tokens: int, bs: int = 64,
             sample: bool = False) -> list[str]:
    tok.padding_side = "left"
    out: list[str] = []
    order = sorted(range(len(prompts)), key=lambda i: -len(str(prompts[i])))
    texts = [tok.apply_chat_template(prompts[i], tokenize=False, add_generation_prompt=True) for i in order]
    results: dict[int, str] = {}
    for start in range(0, len(texts), bs):
        batch = tok(texts[start:start + bs], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sample,
                             temperature=0.8 if sample else None, top_p=0.95 if sample else None, top_k=None,
                             pad_token_id=tok.pad_token_id)
        for j, seq in enumerate(gen[:, batch["input_ids"].shape[1]:]):
            results[order[start + j]] = tok.decode(seq, skip_special_tokens=True).strip()
    out = [results[i] for i in range(len(prompts))]
    return out


def score(answers: list[str], items: list[dict]) -> tuple[int, list[bool]]:
    ok = []
    for a, item in zip(answers, items, strict=True):
        good = True
        for key in item["must_contain"]:
            alts = key if isinstance(key, list) else [key]
            if not any(alt in a for alt in alts):
                good = False
        ok.append(good)
    return sum(ok), ok


def fact_score(ok: list[bool], items: list[dict]) -> int:
    facts: dict = {}
    for good, item in zip(ok, items, strict=True):
        facts.setdefault(item.get("fact"), []).append(good)
    return sum(all(v) for v in facts.values())


# --------------------------------------------------------------------------------------------------
# augmentation
PARA_PROMPT_ZH = ("请把下面这个问题换成{n}种不同的问法，意思必须完全相同，保留其中的专有名词和数字，不要回答问题。"
                  "每行写一个问题，不要编号，不要其他内容。\n问题：{q}")
PARA_PROMPT_EN = ("Rewrite the following question in {n} different ways with exactly the same meaning. Keep names "
                  "and numbers. Do not answer it. One question per line, no numbering, nothing else.\n"
                  "Question: {q}")


def is_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def clean_line(line: str) -> str:
    line = re.sub(r"^\s*(\d+[.、)）]|[-*•]|问题\s*\d*[:：]|Question\s*\d*[:：])\s*", "", line.strip())
    return line.strip().strip('"“”「」')


def good_paraphrase(candidate: str, original: str, seen: set[str]) -> bool:
    if not candidate or candidate in seen:
        return False
    if not QUESTION_WORDS.search(candidate) and not (is_cjk(original) and "？" in candidate):
        return False
    ratio = len(candidate) / max(1, len(original))
    if ratio < 0.5 or ratio > 2.5 or len(candidate) < 4:
        return False
    if difflib.SequenceMatcher(None, candidate, original).ratio() > 0.9:
        return False  # a copy
    if is_cjk(original) != is_cjk(candidate):
        return False  # switched language
    return True


def base_paraphrases(model, tok, questions: list[str], n: int = 4) -> tuple[list[list[str]], int, int]:
    prompts = [[{"role": "user", "content": (PARA_PROMPT_ZH if is_cjk(q) else PARA_PROMPT_EN).format(n=n, q=q)}]
               for q in questions]
    outs = generate(model, tok, prompts, max_new_tokens=24 * n, bs=128)
    gen_tokens = sum(len(tok(o)["input_ids"]) for o in outs)
    result, raw = [], 0
    for q, o in zip(questions, outs, strict=True):
        seen = {q}
        keep = []
        for line in o.splitlines():
            raw += 1
            c = clean_line(line)
            if good_paraphrase(c, q, seen):
                keep.append(c)
                seen.add(c)
        result.append(keep)
    return result, gen_tokens, raw


TEMPLATES_ZH = ["请问，{q}", "我想了解一下：{q}", "{q}麻烦告诉我一下。", "问一下，{q}", "{q}具体是怎么规定的？",
                "同事问我：{q}"]
TEMPLATES_EN = ["Quick question: {q}", "Could you tell me: {q}", "{q} Please explain.", "I'd like to know: {q}"]


def template_paraphrases(question: str, k: int, rng: random.Random) -> list[str]:
    pool = TEMPLATES_ZH if is_cjk(question) else TEMPLATES_EN
    return [t.format(q=question) for t in rng.sample(pool, min(k, len(pool)))]


def fact_groups(convs: list[list[dict]], tau: float = 0.3) -> list[int]:
    """Group rows whose answers are near-duplicates (the same fact asked another way): TF-IDF cosine of
    character bigrams ≥ tau, single link. On the demo data: 44 groups for its 40 facts."""
    from collections import Counter

    answers = [c[-1]["content"] for c in convs]
    grams = [Counter(a[i:i + 2] for i in range(len(a) - 1)) for a in answers]
    df = Counter(g for x in grams for g in x)
    n = len(answers)
    vecs = [{g: v * math.log(n / df[g]) for g, v in x.items()} for x in grams]
    norms = [math.sqrt(sum(v * v for v in x.values())) or 1.0 for x in vecs]
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            dot = sum(v * vecs[j].get(k, 0.0) for k, v in vecs[i].items())
            if dot / (norms[i] * norms[j]) >= tau:
                parent[find(i)] = find(j)
    return [find(i) for i in range(n)]


# --------------------------------------------------------------------------------------------------
def build_rows(recipe: dict, convs, paras, replay_rows, rng) -> list[tuple[list[dict], bool]]:
    """(messages, is_replay) for one recipe."""
    rows: list[tuple[list[dict], bool]] = []
    if recipe["orig"]:
        rows += [(c, False) for c in convs]
    for c, ps in zip(convs, paras, strict=True):
        if len(c) != 2:
            continue
        for p in ps[: recipe["para"]]:
            rows.append(([{"role": "user", "content": p}, c[1]], False))
        for p in template_paraphrases(c[0]["content"], recipe["tmpl"], rng) if recipe["tmpl"] else []:
            rows.append(([{"role": "user", "content": p}, c[1]], False))
    if recipe["cross"]:
        groups = fact_groups(convs)
        for i, c in enumerate(convs):
            others = [j for j in range(len(convs)) if j != i and groups[j] == groups[i] and len(convs[j]) == 2]
            if others and len(c) == 2:
                j = rng.choice(others)
                rows.append(([c[0], convs[j][1]], False))
    rows += [(r, True) for r in replay_rows[: recipe["replay"]]]
    return rows


def train_recipe(model, tok, recipe: dict, rows, log) -> tuple[object, int, float]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    rng = random.Random(0)
    cfg = LoraConfig(r=recipe["r"], lora_alpha=recipe["alpha"], lora_dropout=recipe["dropout"],
                     target_modules=recipe["targets"], task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    data = [(*tokenize_conversation(tok, m), rep) for m, rep in rows]
    tokens_per_epoch = sum(len(ids) for ids, _, _ in data)
    bs = recipe["bs"]
    steps_per_epoch = math.ceil(len(data) / bs)
    total = steps_per_epoch * recipe["epochs"]
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=recipe["lr"], weight_decay=0.0)
    warm = max(1, int(total * recipe["warmup"]))

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        if recipe["sched"] == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    hook = None
    if recipe["neftune"]:
        emb = pm.get_input_embeddings()

        def neft(module, inputs, output):
            if module.training:
                dims = output.shape[1] * output.shape[2]
                mag = recipe["neftune"] / math.sqrt(dims)
                return output + torch.zeros_like(output).uniform_(-mag, mag)
            return output

        hook = emb.register_forward_hook(neft)
    pm.train()
    t0 = time.time()
    step = 0
    pad = tok.pad_token_id
    for epoch in range(recipe["epochs"]):
        rng.shuffle(data)
        for s in range(0, len(data), bs):
            batch = data[s:s + bs]
            width = max(len(ids) for ids, _, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            lab = torch.full((len(batch), width), -100, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (i_, l_, _) in enumerate(batch):
                ids[b, : len(i_)] = torch.tensor(i_)
                lab[b, : len(l_)] = torch.tensor(l_)
                att[b, : len(i_)] = 1
            ids, lab, att = ids.to(pm.device), lab.to(pm.device), att.to(pm.device)
            out = pm(input_ids=ids, attention_mask=att)
            logits = out.logits[:, :-1].float()
            tgt = lab[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1),
                                                     ignore_index=-100)
            if recipe["kl"] and any(rep for _, _, rep in batch):
                rep_mask = torch.tensor([rep for _, _, rep in batch], device=pm.device)[:, None] & (tgt != -100)
                with torch.no_grad(), pm.disable_adapter():
                    base_logits = pm(input_ids=ids, attention_mask=att).logits[:, :-1].float()
                kl = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(base_logits, -1),
                                                log_target=True, reduction="none").sum(-1)
                loss = loss + recipe["kl"] * (kl * rep_mask).sum() / rep_mask.sum().clamp(min=1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(pm.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
        log(f"    epoch {epoch + 1}: loss {loss.item():.3f}")
    if hook:
        hook.remove()
    pm.eval()
    return pm, tokens_per_epoch * recipe["epochs"], time.time() - t0


# --------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF directory (bf16 copy of the default model), or 'tiny'")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--train", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipes", default="all")
    ap.add_argument("--extra", default="", help='JSON dict of extra recipes: {"name": {settings}}')
    ap.add_argument("--limit", type=int, default=0, help="first N rows/questions only (smoke runs)")
    ap.add_argument("--cache", default=None, help="folder for generated paraphrases/replay (reused)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache or out)
    cache.mkdir(parents=True, exist_ok=True)
    logf = open(out / "sweep.log", "a", encoding="utf-8")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.model == "tiny":
        from transformers import Qwen2Config
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)
        model = AutoModelForCausalLM.from_config(cfg).to(device)
    else:
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(device)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()

    convs = load_train(args.train)
    facts = read_jsonl(ROOT / "evalsets/yunzhan_paraphrase.jsonl")
    general = read_jsonl(ROOT / "evalsets/general.jsonl")
    prompts = read_jsonl(ROOT / "lorastudio/assets/general_prompts.jsonl")
    if args.limit:
        convs, facts, general, prompts = convs[: args.limit], facts[: args.limit], general[: args.limit], \
            prompts[: args.limit]
    fact_q = [[{"role": "user", "content": f["question"]}] for f in facts]
    gen_q = [[{"role": "user", "content": g["question"]}] for g in general]

    def evaluate(m) -> dict:
        t0 = time.time()
        fa = generate(m, tok, fact_q, max_new_tokens=128)
        ga = generate(m, tok, gen_q, max_new_tokens=160)
        fs, fok = score(fa, facts)
        gs, gok = score(ga, general)
        return {"facts": fs, "facts_n": len(facts), "facts_by_fact": fact_score(fok, facts),
                "facts_a": sum(fok[0::2]), "facts_b": sum(fok[1::2]), "general": gs, "general_n": len(general),
                "eval_s": round(time.time() - t0, 1), "fact_answers": fa, "general_answers": ga,
                "fact_ok": fok, "general_ok": gok}

    # --- generated once: replay answers and base-model paraphrases --------------------------------
    replay_path = cache / "replay.jsonl"
    if replay_path.exists():
        replay_rows = [r["messages"] for r in read_jsonl(replay_path)]
        replay_meta = {"cached": True}
    else:
        t0 = time.time()
        p_msgs = [[{"role": "user", "content": p["prompt"]}] for p in prompts]
        answers = generate(model, tok, p_msgs, max_new_tokens=192, bs=256)
        replay_rows = []
        with open(replay_path, "w", encoding="utf-8") as f:
            for p, a in zip(p_msgs, answers, strict=True):
                row = p + [{"role": "assistant", "content": a}]
                replay_rows.append(row)
                f.write(json.dumps({"messages": row}, ensure_ascii=False) + "\n")
        replay_meta = {"gen_s": round(time.time() - t0, 1),
                       "tokens": sum(len(tok(a)["input_ids"]) for a in answers)}
    random.Random(1).shuffle(replay_rows)
    log(f"replay rows: {len(replay_rows)} {replay_meta}")

    para_path = cache / "paraphrases.json"
    if para_path.exists():
        para_data = json.loads(para_path.read_text(encoding="utf-8"))
    else:
        t0 = time.time()
        questions = [c[0]["content"] if c[0]["role"] == "user" else c[1]["content"] for c in convs]
        paras, gen_tokens, raw = base_paraphrases(model, tok, questions, n=4)
        para_data = {"paras": paras, "gen_tokens": gen_tokens, "raw_lines": raw, "gen_s": round(time.time() - t0, 1)}
        para_path.write_text(json.dumps(para_data, ensure_ascii=False, indent=1), encoding="utf-8")
    paras = para_data["paras"]
    log(f"paraphrases: kept {sum(map(len, paras))} of {para_data['raw_lines']} lines, "
        f"{para_data['gen_tokens']} generated tokens, {para_data['gen_s']} s; "
        f"rows with ≥1: {sum(1 for p in paras if p)}, ≥2: {sum(1 for p in paras if len(p) >= 2)}")
    for q, ps in list(zip(convs, paras, strict=True))[:8]:
        log(f"  {q[0]['content']} → {ps}")

    recipes = dict(RECIPES)
    if args.extra:
        recipes.update(json.loads(args.extra))
    names = list(recipes) if args.recipes == "all" else [n for n in args.recipes.split(",") if n]
    results = []
    results_path = out / "results.json"
    if results_path.exists():
        results = json.loads(results_path.read_text(encoding="utf-8"))

    for name in names:
        t_all = time.time()
        if name == "base":
            res = evaluate(model)
            res.update(name="base", tokens=0, train_s=0.0)
        else:
            recipe = {**DEFAULTS, **recipes[name]}
            rows = build_rows(recipe, convs, paras, replay_rows, random.Random(0))
            log(f"== {name}: {len(rows)} rows {recipes[name]}")
            pm, tokens, train_s = train_recipe(model, tok, recipe, rows, log)
            res = evaluate(pm)
            model = pm.unload()
            res.update(name=name, recipe=recipe, rows=len(rows), tokens=tokens, train_s=round(train_s, 1))
        # CPU estimate: 100 tok/s training; paraphrase generation ≈ its generated tokens at 40 tok/s batched
        para_gen = para_data["gen_tokens"] * min(1.0, res.get("recipe", {}).get("para", 0) / 4)
        res["cpu_est_min"] = round((res["tokens"] / 100 + para_gen / 40) / 60, 1)
        res["wall_s"] = round(time.time() - t_all, 1)
        results = [r for r in results if r["name"] != name] + [res]
        results_path.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
        log(f"-> {name}: facts {res['facts']}/{res['facts_n']} (A {res['facts_a']}, B {res['facts_b']}, "
            f"whole facts {res['facts_by_fact']}), general {res['general']}/{res['general_n']}, "
            f"tokens {res['tokens']}, cpu≈{res['cpu_est_min']} min, train {res['train_s']} s")

    log("\n| recipe | facts (80) | A/B | whole facts (40) | general (24) | tokens | CPU est min | GPU train s |")
    log("|---|---|---|---|---|---|---|---|")
    for r in results:
        log(f"| {r['name']} | {r['facts']} | {r['facts_a']}/{r['facts_b']} | {r['facts_by_fact']} | {r['general']} | "
            f"{r['tokens']} | {r['cpu_est_min']} | {r['train_s']} |")


if __name__ == "__main__":
    main()
