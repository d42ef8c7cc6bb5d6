"""CPU-runnable checks of the CUDA fast path's pieces (lorastudio.train.gpu, its memory planning in
lorastudio.train.memory, the shared kernels in lorastudio.train.kernels, distributed)."""

from __future__ import annotations

import pytest

from lorastudio.train.memory import GIB, ModelShape, autofit

QWEN_7B = ModelShape.from_config(type("C", (), dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False))())
QWEN_1_5B = ModelShape.from_config(type("C", (), dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True))())


# --- autofit ------------------------------------------------------------------------------------
def test_shapes_match_the_published_parameter_counts():
    assert abs(QWEN_7B.n_params - 7.615e9) / 7.615e9 < 0.01
    assert abs(QWEN_1_5B.n_params - 1.544e9) / 1.544e9 < 0.01
    # MFU counts the LM head but not the embedding lookup
    assert abs(QWEN_7B.flops_params - 7.07e9) / 7.07e9 < 0.01
    assert QWEN_1_5B.flops_params == QWEN_1_5B.n_params
    assert QWEN_7B.lora_params(16) == 28 * 16 * (2 * 7168 + 2 * 4096 + 3 * 22528)


@pytest.mark.parametrize("gib", [80, 139])
def test_big_card_runs_7b_without_checkpointing(gib):
    plan = autofit(QWEN_7B, pack_tokens=16384, free_bytes=gib * GIB)
    assert not plan.gradient_checkpointing
    assert plan.micro_batch_tokens >= 8192
    assert plan.estimated_peak_bytes <= gib * GIB
    assert "no gradient checkpointing" in plan.reason


def test_7b_fits_a_24gb_card_with_checkpointing():
    plan = autofit(QWEN_7B, pack_tokens=16384, free_bytes=23 * 10**9)
    assert plan.gradient_checkpointing and not plan.quantize_4bit
    assert 1024 <= plan.micro_batch_tokens < 16384
    assert plan.estimated_peak_bytes <= 22 * 10**9
    assert plan.gradient_accumulation * plan.micro_batch_tokens >= 16384
    assert "checkpointing on" in plan.reason


def test_small_pack_is_kept_and_never_exceeded():
    plan = autofit(QWEN_1_5B, pack_tokens=2048, free_bytes=80 * GIB)
    assert plan.micro_batch_tokens == 2048 and plan.gradient_accumulation == 1
    assert not plan.gradient_checkpointing


def test_explicit_checkpointing_choice_is_kept():
    on = autofit(QWEN_1_5B, pack_tokens=4096, free_bytes=80 * GIB, gradient_checkpointing=True)
    assert on.gradient_checkpointing and on.micro_batch_tokens == 4096
    off = autofit(QWEN_7B, pack_tokens=16384, free_bytes=32 * GIB, gradient_checkpointing=False)
    assert not off.gradient_checkpointing and 1024 <= off.micro_batch_tokens < 4096
    assert off.gradient_accumulation * off.micro_batch_tokens >= 16384
    with pytest.raises(MemoryError):  # without recomputation not even one 1024-token example fits
        autofit(QWEN_7B, pack_tokens=16384, free_bytes=23 * 10**9, gradient_checkpointing=False)


def test_too_small_card_needs_qlora_or_says_why():
    with pytest.raises(MemoryError, match="bitsandbytes"):
        autofit(QWEN_7B, pack_tokens=4096, free_bytes=12 * GIB)
    plan = autofit(QWEN_7B, pack_tokens=4096, free_bytes=12 * GIB, bitsandbytes_available=True)
    assert plan.quantize_4bit and "QLoRA" in plan.reason


def test_forced_4bit_plans_a_quantized_base_even_where_bf16_fits():
    roomy = autofit(QWEN_7B, pack_tokens=16384, free_bytes=80 * GIB)
    forced = autofit(QWEN_7B, pack_tokens=16384, free_bytes=80 * GIB, force_4bit=True)
    assert not roomy.quantize_4bit and forced.quantize_4bit
    assert "as asked" in forced.reason and forced.estimated_peak_bytes <= 80 * GIB
    # Calibration: 7B QLoRA, 16,384 tokens, no checkpointing peaked at 138.2 GB allocated on an H200.
    measured = autofit(QWEN_7B, pack_tokens=16384, free_bytes=int(160 * GIB), force_4bit=True)
    assert measured.micro_batch_tokens == 16384 and 125e9 < measured.estimated_peak_bytes < 150e9


def test_fsdp_shards_let_7b_train_where_the_whole_base_does_not_fit():
    from lorastudio.train.memory import bf16_weight_bytes

    assert bf16_weight_bytes(QWEN_7B, 1) == QWEN_7B.n_params * 2
    assert bf16_weight_bytes(QWEN_7B, 8) < bf16_weight_bytes(QWEN_7B, 2) < QWEN_7B.n_params * 2
    with pytest.raises(MemoryError):
        autofit(QWEN_7B, pack_tokens=16384, free_bytes=16 * GIB)
    plan = autofit(QWEN_7B, pack_tokens=16384, free_bytes=16 * GIB, weight_shards=2)
    assert plan.gradient_checkpointing and plan.micro_batch_tokens >= 1024
    assert plan.estimated_peak_bytes <= 16 * GIB


def test_pack_shorter_than_max_length_is_refused():
    with pytest.raises(ValueError):
        autofit(QWEN_1_5B, pack_tokens=512, max_length=1024, free_bytes=80 * GIB)


def test_memory_planning_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, lorastudio.train.memory, lorastudio.train.kernels; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plan_for_settings_plans_for_the_adapted_modules_and_the_users_choices():
    from lorastudio.train.memory import plan_for_settings

    settings = {"lora_r": 16, "target_modules": "all-mlp", "batch_tokens": 16384, "max_length": 1024}
    mlp = plan_for_settings(QWEN_7B, settings, free_bytes=80 * GIB)
    assert mlp == autofit(QWEN_7B, lora_r=16, lora_targets="all-mlp", pack_tokens=16384, free_bytes=80 * GIB)
    linear = plan_for_settings(QWEN_7B, {**settings, "target_modules": "all-linear"}, free_bytes=80 * GIB)
    lora_bytes = 16 * (QWEN_7B.lora_params(16, "all-linear") - QWEN_7B.lora_params(16, "all-mlp"))
    assert linear.estimated_peak_bytes - mlp.estimated_peak_bytes == pytest.approx(lora_bytes, rel=1e-6)
    # the user's fixed choices, as the CUDA hook reads them from a TrainConfig
    assert plan_for_settings(QWEN_1_5B, {**settings, "gradient_checkpointing": True},
                             free_bytes=80 * GIB).gradient_checkpointing
    with pytest.raises(MemoryError):
        plan_for_settings(QWEN_7B, {**settings, "quantize_base": "none", "batch_tokens": 4096},
                          free_bytes=12 * GIB, bitsandbytes_available=True)
    assert plan_for_settings(QWEN_7B, {**settings, "quantize_base": "4bit"}, free_bytes=80 * GIB).quantize_4bit


# --- chunked linear + cross-entropy ---------------------------------------------------------------
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_ce_equals_full_ce_in_loss_and_grads(chunk):
    from lorastudio.train.gpu import chunked_linear_cross_entropy

    gen = torch.Generator().manual_seed(chunk)
    h = torch.randn(37, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(101, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 101, (37,), generator=gen)
    ref = torch.nn.functional.cross_entropy(h @ w.t(), t, reduction="sum")
    ref_gh, ref_gw = torch.autograd.grad(ref * 0.5, (h, w))
    out = chunked_linear_cross_entropy(h, w, t, chunk=chunk)
    gh, gw = torch.autograd.grad(out * 0.5, (h, w))
    torch.testing.assert_close(out, ref.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-5)


def test_chunked_ce_frozen_weight_bf16():
    from lorastudio.train.gpu import chunked_linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    h32 = torch.randn(50, 32, generator=gen)
    w = torch.randn(300, 32, generator=gen).to(torch.bfloat16)
    t = torch.randint(0, 300, (50,), generator=gen)
    h = h32.to(torch.bfloat16).requires_grad_()
    out = chunked_linear_cross_entropy(h, w, t, chunk=16, reduction="mean")
    (gh,) = torch.autograd.grad(out, (h,))
    href = h.detach().float().requires_grad_()
    ref = torch.nn.functional.cross_entropy(href @ w.float().t(), t)
    (ref_gh,) = torch.autograd.grad(ref, (href,))
    assert abs(out.item() - ref.item()) / ref.item() < 1e-2
    cos = torch.nn.functional.cosine_similarity(gh.float().flatten(), ref_gh.flatten(), dim=0)
    assert cos > 0.999


# --- packed batches and the fused LoRA linear ---------------------------------------------------
def test_cuda_batch_shifts_targets_inside_each_example():
    from lorastudio.train.gpu import cuda_batch

    ids = torch.tensor([10, 11, 12, 13, 20, 21, 22])
    pos = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    lab = torch.tensor([-100, -100, 12, 13, -100, 21, 22])
    b = cuda_batch(ids, pos, lab, device="cpu")
    assert b["cu_seq_lens"].tolist() == [0, 4, 7]
    assert b["max_length"] == 4
    # position 1 predicts 12, 2 predicts 13, 3 (end of example 1) nothing, 4 predicts 21, 5 predicts 22
    assert b["target_index"].tolist() == [1, 2, 4, 5]
    assert b["target_ids"].tolist() == [12, 13, 21, 22]


def test_batch_from_device_matches_cuda_batch():
    from lorastudio.train.gpu import batch_from_device, cuda_batch

    ids = torch.tensor([[10, 11, 12, 13, 20, 21, 22]])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    lab = torch.tensor([[-100, -100, 12, 13, -100, 21, 22]])
    a = cuda_batch(ids, pos, lab, device="cpu")
    b = batch_from_device({"input_ids": ids, "position_ids": pos, "labels": lab, "lengths": [4, 3]})
    for key in ("cu_seq_lens", "target_index", "target_ids"):
        assert a[key].tolist() == b[key].tolist(), key
    assert a["max_length"] == b["max_length"] and a["num_targets"] == b["num_targets"] == 4


def test_chunked_ce_applies_the_loss_scale_in_fp32():
    """The stored bf16 gradient times the incoming scale (1/targets) in fp32, cast once: the scale is
    not rounded to bf16 first (as the CPU path always did)."""
    from lorastudio.train.kernels import chunked_linear_cross_entropy

    gen = torch.Generator().manual_seed(5)
    h = torch.randn(40, 32, generator=gen).to(torch.bfloat16).requires_grad_()
    w = torch.randn(97, 32, generator=gen).to(torch.bfloat16)
    t = torch.randint(0, 97, (40,), generator=gen)
    (unit,) = torch.autograd.grad(chunked_linear_cross_entropy(h, w, t, chunk=16), (h,))
    (scaled,) = torch.autograd.grad(chunked_linear_cross_entropy(h, w, t, chunk=16) / 293, (h,))
    assert torch.equal(scaled, (unit.float() * torch.tensor(1 / 293)).to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_ce_kept_cpu_buffers_give_the_same_numbers(monkeypatch, dtype):
    """The CPU's kept (rows × vocab) buffers: bit for bit the loss and gradients of fresh allocations,
    with row weights, over chunks of several sizes and calls that need larger buffers than the last."""
    from lorastudio.train import kernels

    gen = torch.Generator().manual_seed(7)
    w = torch.randn(211, 24, generator=gen).to(dtype).requires_grad_()
    runs = []
    for kept in (False, True, True):
        monkeypatch.setattr(kernels, "CE_WORKSPACE", kept)
        results = []
        for rows, chunk in ((9, 4), (33, 16), (33, 64), (5, 64)):
            g = torch.Generator().manual_seed(rows * chunk)
            h = torch.randn(rows, 24, generator=g).to(dtype).requires_grad_()
            t = torch.randint(0, 211, (rows,), generator=g)
            weights = torch.rand(rows, generator=g) + 0.5
            out = kernels.chunked_linear_cross_entropy(h, w, t, chunk=chunk, row_weights=weights)
            results.append((out.detach(), *torch.autograd.grad(out / rows, (h, w))))
        runs.append(results)
    fresh, kept, kept_again = runs  # the third run starts with the buffers the second one grew
    for other in (kept, kept_again):
        for a, b in zip((x for r in fresh for x in r), (x for r in other for x in r), strict=True):
            assert torch.equal(a, b)
    assert kernels._CE_BUFFERS.buffers  # kept ...
    kernels.release_ce_buffers()
    assert not kernels._CE_BUFFERS.buffers  # ... until the trainer lets them go


def test_batch_without_lengths_finds_the_documents_from_positions():
    from lorastudio.train.gpu import batch_from_device

    ids = torch.tensor([[10, 11, 12, 13, 20, 21, 22]])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    lab = torch.tensor([[-100, -100, 12, 13, -100, 21, 22]])
    b = batch_from_device({"input_ids": ids, "position_ids": pos, "labels": lab})
    assert b["cu_seq_lens"].tolist() == [0, 4, 7] and b["lengths"] == [4, 3] and b["max_length"] == 4


def _tiny_peft_model(r=4, dtype=None):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=211,
                                   max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    model = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                                       target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B so the low-rank path is exercised
            torch.nn.init.normal_(p, std=0.02)
    return model


def test_fused_lora_linear_matches_peft_forward_and_grads():
    from lorastudio.train.gpu import fuse_lora_linears

    model = _tiny_peft_model()
    x = torch.randn(2, 9, 64)
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    ref = layer(x)
    ref.square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    layer.zero_grad()
    assert fuse_lora_linears(model) == 14
    out = layer(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for n, p in layer.named_parameters():
        if n in ref_grads:
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-5)


def test_packed_loss_equals_unpadded_reference_on_cpu():
    from lorastudio.train.gpu import cuda_batch, enable_fast_path, packed_lm_loss

    model = _tiny_peft_model()
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 211, (n,), generator=gen) for n in (5, 12, 3, 9)]
    prompt = [2, 4, 1, 3]
    # reference: each example alone, HF loss convention (labels shifted inside the model)
    total, count = 0.0, 0
    for d, p in zip(docs, prompt, strict=True):
        labels = d.clone()
        labels[:p] = -100
        logits = model(input_ids=d[None]).logits.float()[0]
        tgt = labels[1:]
        keep = tgt != -100
        total += torch.nn.functional.cross_entropy(logits[:-1][keep], tgt[keep], reduction="sum")
        count += int(keep.sum())
    ref = total / count
    ids = torch.cat(docs)
    pos = torch.cat([torch.arange(len(d)) for d in docs])
    lab = torch.cat([torch.where(torch.arange(len(d)) < p, -100, d) for d, p in zip(docs, prompt, strict=True)])
    fp = enable_fast_path(model, attention="sdpa", compile=False)
    assert fp.fused_lora == 14 and fp.elementwise["rms_norm"] == 5
    loss = packed_lm_loss(model, cuda_batch(ids, pos, lab, device="cpu"))
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# --- distributed launch -------------------------------------------------------------------------
def test_torchrun_command_relaunches_the_same_training():
    from lorastudio.train.distributed import torchrun_command

    cmd = torchrun_command(["train", "data.jsonl", "--base", "default", "--gpus", "2", "--output", "o"], 2,
                           python="/usr/bin/python3", port=29512)
    assert cmd[:3] == ["/usr/bin/python3", "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd and "--master_port=29512" in cmd
    tail = cmd[cmd.index("lorastudio"):]
    assert tail == ["lorastudio", "train", "data.jsonl", "--base", "default", "--output", "o"]
    assert "--gpus" not in cmd


def test_launch_problem_names_what_is_missing(monkeypatch):
    import torch

    from lorastudio.train import distributed

    monkeypatch.delenv("LORASTUDIO_DIST_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert distributed.launch_problem(1) is None
    assert "none" in distributed.launch_problem(2) and "--gpus 1" in distributed.launch_problem(2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "has 1 CUDA GPU" in distributed.launch_problem(2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.launch_problem(2) is None
    monkeypatch.setenv("LORASTUDIO_DIST_BACKEND", "gloo")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert distributed.launch_problem(4) is None  # the explicit CPU testing switch
    monkeypatch.setenv("LORASTUDIO_DIST_BACKEND", "mpi")
    assert "LORASTUDIO_DIST_BACKEND" in distributed.launch_problem(2)


def test_micro_batches_are_dealt_round_robin():
    from lorastudio.train.distributed import my_share

    step = [[0, 1], [2], [3, 4], [5]]
    assert my_share(step, 0, 2) == [[0, 1], [3, 4]] and my_share(step, 1, 2) == [[2], [5]]
    assert my_share(step[:1], 1, 2) == []  # a rank with nothing still joins the step's all-reduce


def test_allreduce_step_without_a_group_is_the_identity():
    import torch

    from lorastudio.train.distributed import allreduce_step

    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    assert allreduce_step([p], [1.5, 7, 0]) == [1.5, 7.0, 0.0]
    assert torch.equal(p.grad, torch.full((3,), 2.0))


def test_strategy_by_model_size():
    from lorastudio.train.distributed import choose_strategy

    assert choose_strategy(QWEN_7B, gpu_bytes=80 * GIB) == "ddp"
    assert choose_strategy(QWEN_7B, gpu_bytes=16 * GIB) == "fsdp"
    assert choose_strategy(QWEN_1_5B, gpu_bytes=24 * 10**9) == "ddp"


def test_trainer_hook_customize_gives_the_same_loss_as_the_cpu_loss(monkeypatch, tmp_path):
    """gpu.customize (the trainer's CUDA hook) run on the CPU: auto-fit notes, and a loss_fn that
    matches the trainer's own causal_lm_loss on a packed batch."""
    import lorastudio.models
    from lorastudio.train import gpu
    from lorastudio.train.config import TrainConfig
    from lorastudio.train.trainer import DeviceSetup, causal_lm_loss

    model = _tiny_peft_model()
    model.get_base_model().config.save_pretrained(tmp_path)
    monkeypatch.setattr(lorastudio.models, "resolve_model", lambda _id: str(tmp_path))
    monkeypatch.setattr(gpu, "free_gpu_bytes", lambda device=None: 24 * 10**9)
    monkeypatch.setenv("LORASTUDIO_COMPILE", "0")
    cfg = TrainConfig(base="tiny", batch_tokens=2048, max_length=1024)
    setup = DeviceSetup(device="cuda", dtype=torch.bfloat16, autocast=True, attn_implementation="sdpa",
                        gradient_checkpointing=True, loss_fn=causal_lm_loss)
    setup = gpu.customize(cfg, setup)
    assert setup.autocast is False and setup.gradient_checkpointing is False
    assert any(n.startswith("auto-fit: no gradient checkpointing") for n in setup.notes)
    assert cfg.extra["gpu_plan"]["micro_batch_tokens"] == 2048

    gen = torch.Generator().manual_seed(3)
    docs = [torch.randint(0, 211, (n,), generator=gen) for n in (7, 11, 5)]
    labels = [torch.where(torch.arange(len(d)) < 2, -100, d) for d in docs]
    batch = {"input_ids": torch.cat(docs)[None], "labels": torch.cat(labels)[None],
             "position_ids": torch.cat([torch.arange(len(d)) for d in docs])[None], "lengths": [7, 11, 5]}
    ref_sum, ref_n = causal_lm_loss(model, batch)
    got_sum, got_n = setup.loss_fn(model, batch)
    assert got_n == ref_n == sum(len(d) - 2 for d in docs)
    torch.testing.assert_close(got_sum, ref_sum.float(), rtol=1e-4, atol=1e-4)
    assert model._lorastudio_fast_path.attention == "sdpa"


def test_fused_adamw_keeps_param_groups_and_is_plain_on_cpu():
    from lorastudio.train.gpu import fused_adamw

    w, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    opt = fused_adamw([{"params": [w], "weight_decay": 0.1}, {"params": [b, frozen], "weight_decay": 0.0}],
                      lr=1e-3, eps=1e-6)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[1]["params"] == [b] and opt.defaults["eps"] == 1e-6
    assert not opt.defaults["fused"]  # CPU tensors: the trainer's CPU path keeps plain AdamW
    assert fused_adamw([w, frozen], lr=1e-3).param_groups[0]["params"] == [w]


def test_gpu_memory_budget_from_the_environment(monkeypatch):
    from lorastudio.train.config import ConfigError
    from lorastudio.train.gpu import memory_budget_bytes

    monkeypatch.delenv("LORASTUDIO_GPU_MEMORY_GB", raising=False)
    assert memory_budget_bytes() is None
    monkeypatch.setenv("LORASTUDIO_GPU_MEMORY_GB", "24")
    assert memory_budget_bytes() == 24 * 10**9
    for bad in ("0", "lots"):
        monkeypatch.setenv("LORASTUDIO_GPU_MEMORY_GB", bad)
        with pytest.raises(ConfigError, match="LORASTUDIO_GPU_MEMORY_GB"):
            memory_budget_bytes()


def test_strategy_can_be_forced_from_the_environment(monkeypatch):
    from lorastudio.train.config import ConfigError
    from lorastudio.train.distributed import pick_strategy

    monkeypatch.delenv("LORASTUDIO_DIST_STRATEGY", raising=False)
    assert pick_strategy("tiny-random", "cpu") == "ddp"
    monkeypatch.setenv("LORASTUDIO_DIST_STRATEGY", "FSDP")
    assert pick_strategy("tiny-random", "cpu") == "fsdp"
    monkeypatch.setenv("LORASTUDIO_DIST_STRATEGY", "zero3")
    with pytest.raises(ConfigError, match="ddp.*fsdp"):
        pick_strategy("tiny-random", "cuda")
    monkeypatch.setenv("LORASTUDIO_DIST_STRATEGY", "fsdp")
    monkeypatch.setattr(torch, "__version__", "2.7.1+cu126")
    with pytest.raises(ConfigError, match="torch ≥ 2.10"):
        pick_strategy("tiny-random", "cpu")
