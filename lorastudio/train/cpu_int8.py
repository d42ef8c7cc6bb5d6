"""int8 frozen-base GEMMs for fp32 CPU training (issue 13; on by default for models with a hidden size
≥ 512, `cpu.INT8_DEFAULT`; `LORASTUDIO_CPU_INT8=0` off, `=1` on for any size).

A LoRA run never trains the base weights W, so W can be quantized once and its products in a training
step run as int8 GEMMs (fbgemm, `quantized::linear_dynamic`). The bare kernel is about 2× faster than
the fp32 GEMM on a 2-core AVX2 CPU, but with what keeps the gradients right (per-token scales, outlier
channels in fp32, below) the MLP products gained only 1.07–1.25× and the attention projections' became
1.6–4× slower (`bench/cpu_speed.py kernels`). A whole default run of the demo file on 2 AVX2 cores:
79 vs 63.8 tok/s (1.24×) over the same steps, the same recall as the exact fp32 run from the same seed
(hard set 49 vs 47 of 75, general 20 vs 19 of 24); its 30-step loss curve within 1 % of fp32's; on an
AVX-512 Xeon with VNNI 170 vs 137.5 tok/s (docs/BENCHMARKS.md, "fp32 CPU training levers").
Which products:

- the **input gradient** `g W` of every frozen linear of the decoder layers (`BACKWARD`): Wᵀ packed
  per input channel; the LoRA gradient stays a cosine ≥ 0.995 from fp32 and the loss is untouched;
- the **forward** `x Wᵀ` only of the linears in `FORWARD` (gate_proj/up_proj: inputs fresh out of an
  RMSNorm, 58 % of a layer's forward work). With every forward product in int8 the errors of 7 GEMMs
  per layer compound over 24 layers and the LoRA gradient's cosine to fp32 fell to 0.98–0.99.

Numerics of one int8 product `a ↦ a Mᵀ` (a = x or g, M = W or Wᵀ):
- M quantized per output channel, symmetric int8, packed once (the fp32 W stays for everything else);
- the `OUTLIERS` input channels of `a` with the largest |value| (found in this very `a`) go through a
  thin fp32 GEMM instead (Qwen2's residual stream has a few channels ~40× the others);
- every row (token) of the rest is divided by its max |value|, quantized by the kernel (uint8 over
  the tensor; 7 bits on a CPU without VNNI, `reduce_range`, where 8 bits overflow the int16 pair sums
  of AVX2's `vpmaddubsw`), and the product's row multiplied back: per-token quantization through the
  per-tensor kernel (a row's scale commutes with the GEMM). Gradients differ by orders of magnitude
  between tokens; per-tensor quantization made the loss 25 % wrong.
Nothing is calibrated on a first batch: a product is a function of (W, a) alone, so a resumed run or
another rank computes the same numbers.

The LoRA branch stays fp32 and exact (`y = x Wᵀ + b + s·(x Aᵀ) Bᵀ`, A/B gradients from the fp32 x and
g), as do attention, norms, the LM head + cross-entropy (`HEAD`) and the optimizer. The packs live on
the modules (`_lorastudio_int8`, not in the state dict) and are rebuilt if W or b change.

Switch: `LORASTUDIO_CPU_INT8=1` on (fp32 base weights, a CPU that fbgemm runs on), `=0` off, unset: the
default (`cpu.choose_levers`). `tests/test_cpu_speed.py`: parity with the fp32 path within int8 noise, and
the switch really changes the path.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any

from lorastudio.hardware import cpu_flags
from lorastudio.train import kernels
from lorastudio.train.lora_patch import ORIGINAL_FORWARD

ENV = "LORASTUDIO_CPU_INT8"
FORWARD: frozenset[str] | None = frozenset({"gate_proj", "up_proj", "w1", "w3"})
"""Linears (by attribute name) whose forward product runs in int8; None: all; empty: none."""
BACKWARD: frozenset[str] | None = None
"""Linears whose input-gradient product runs in int8; None: all; empty: none."""
OUTLIERS = 16
"""Input channels per product computed in fp32 (the largest |value| of the activation, per call)."""
PLAIN_LINEARS = True
"""Also the frozen linears without LoRA (the attention projections under `all-mlp`)."""
REDUCE_RANGE: bool | None = None
"""7-bit activations (True), 8-bit (False), or by the CPU (None: `reduce_range()`)."""
HEAD = {"forward": False, "backward": False}
"""The LM head's two frozen GEMMs in int8 too (`packed_loss`); off: the cross-entropy's logits and the
hidden-state gradient stay fp32 (measured: docs/BENCHMARKS.md, "The LM head and the allocator": the forward half
+3.5 %, the gradient half inaccurate)."""
MARK = "_lorastudio_int8"


def available() -> bool:
    """fbgemm is in this torch build and the CPU has AVX2 (its int8 kernels' minimum)."""
    import torch

    engines = getattr(torch.backends.quantized, "supported_engines", [])
    if "fbgemm" not in engines and "x86" not in engines:
        return False
    flags = cpu_flags()
    return not flags or "avx2" in flags  # no /proc/cpuinfo (not Linux): trust the build


def reduce_range() -> bool:
    """7-bit activations unless the CPU has VNNI (int32 accumulation, no int16 pair overflow)."""
    if REDUCE_RANGE is not None:
        return REDUCE_RANGE
    return not ({"avx512_vnni", "avx_vnni"} & cpu_flags())


def _chosen(names: frozenset[str] | None, name: str) -> bool:
    return names is None or name in names


# ------------------------------------------------------------------------------------------------
# Packed int8 weights and prepared activations
# ------------------------------------------------------------------------------------------------
@dataclass
class Packs:
    """One linear's int8 packs, and its frozen products for `kernels.LoraLinearFn` (as `kernels.FloatBase`)."""

    key: tuple
    name: str = ""         # the linear's attribute name (q_proj, gate_proj, …)
    forward: Any = None    # W (n × k), per output channel: x ↦ x Wᵀ
    backward: Any = None   # Wᵀ (k × n), per input channel: g ↦ g W

    def product(self, x: Any, x2: Any, weight: Any, bias: Any) -> Any:
        return _forward_product(self, x, x2, weight, bias)

    def input_grad(self, g: Any, weight: Any) -> Any:
        return _input_grad(self, g.contiguous(), weight)


def _prepack(w: Any) -> Any:
    """fbgemm's packed int8 form of `w` (n × k, fp32), per row symmetric."""
    import torch

    w = w.detach().float().contiguous()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    engine = torch.backends.quantized.engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensor creation is deprecated (still there in 2.13)
        try:
            if engine not in ("x86", "fbgemm"):
                torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines \
                    else "fbgemm"
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            return torch.ops.quantized.linear_prepack(qw, None)
        finally:
            torch.backends.quantized.engine = engine


def packs(module: Any, weight: Any, bias: Any) -> Packs:
    """The module's int8 packs of its weight, made on first use and whenever W or b changed."""
    key = (weight.data_ptr(), weight._version, tuple(weight.shape),
           None if bias is None else (bias.data_ptr(), bias._version))
    p = module.__dict__.get(MARK)
    if not isinstance(p, Packs) or p.key != key:
        p = Packs(key, module.__dict__.get(MARK + "_name", ""))
        module.__dict__[MARK] = p
    return p


@dataclass
class Prepared:
    """An activation ready for the int8 GEMM: rows scaled to max |value| 1 with the outlier channels
    zeroed (`scaled`), the row scales `r`, the outlier channels `idx` and their values `outliers`."""

    scaled: Any
    r: Any
    idx: Any
    outliers: Any


_LAST: tuple[Any, tuple, Prepared] | None = None
"""The last prepared activation (gate_proj and up_proj get the same x: prepared once)."""


def prepare(a: Any, a2: Any) -> Prepared:
    """`a2` (= a as m × k) prepared for `qmm`; reused when the same `a` (same object, unchanged) comes
    again right away."""
    global _LAST
    key = (a._version, a.data_ptr(), tuple(a.shape), OUTLIERS)
    last = _LAST  # one read: another thread may replace it meanwhile
    if last is not None and last[0]() is a and last[1] == key:
        return last[2]
    mag = a2.abs()
    idx = None
    outliers = None
    if 0 < OUTLIERS < a2.shape[1]:
        idx = mag.amax(dim=0).topk(OUTLIERS).indices
        outliers = a2.index_select(1, idx)
        mag.index_fill_(1, idx, 0.0)
    r = mag.amax(dim=1, keepdim=True).clamp_min_(1e-30)
    del mag
    scaled = a2 * r.reciprocal()
    if idx is not None:
        scaled.index_fill_(1, idx, 0.0)
    prep = Prepared(scaled, r, idx, outliers)
    _LAST = (weakref.ref(a), key, prep)
    return prep


def _linear_dynamic(a2: Any, packed: Any, reduce: bool) -> Any:
    import torch

    return torch.ops.quantized.linear_dynamic(a2, packed, reduce)


def qmm(prep: Prepared, packed: Any, columns: Any) -> Any:
    """The prepared activation times the packed matrix M (n × k): (m × n) fp32; `columns(idx)` gives
    M[:, idx] in fp32 for the outlier channels."""
    y = _linear_dynamic(prep.scaled, packed, reduce_range()).mul_(prep.r)
    if prep.idx is not None:
        y.addmm_(prep.outliers, columns(prep.idx).t())
    return y


def _forward_product(p: Packs, x: Any, x2: Any, weight: Any, bias: Any, head: bool = False) -> Any:
    """x2 Wᵀ + b: int8 if chosen for this linear, else fp32."""
    import torch

    if not (HEAD["forward"] if head else _chosen(FORWARD, p.name)):
        return torch.nn.functional.linear(x2, weight, bias)
    if p.forward is None:
        p.forward = _prepack(weight)
    y = qmm(prepare(x, x2), p.forward, lambda idx: weight.index_select(1, idx))
    return y.add_(bias) if bias is not None else y


def _input_grad(p: Packs, g: Any, weight: Any, head: bool = False) -> Any:
    """g W: int8 if chosen for this linear, else fp32."""
    if not (HEAD["backward"] if head else _chosen(BACKWARD, p.name)):
        return g @ weight
    if p.backward is None:
        p.backward = _prepack(weight.detach().t())
    return qmm(prepare(g, g), p.backward, lambda idx: weight.index_select(0, idx).t())


# ------------------------------------------------------------------------------------------------
# Autograd functions
# ------------------------------------------------------------------------------------------------
def _functions() -> tuple[type, type]:
    import torch

    class Int8LinearFn(torch.autograd.Function):
        """y = x Wᵀ + b with W, b frozen; saves nothing but the packs (W for an fp32 input gradient)."""

        @staticmethod
        def forward(ctx, x, weight, bias, p):
            x2 = x.reshape(-1, x.shape[-1])
            y = _forward_product(p, x, x2, weight, bias)
            ctx.p, ctx.weight = p, weight
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx, grad_out):
            g = grad_out.reshape(-1, grad_out.shape[-1]).contiguous()
            grad_x = _input_grad(ctx.p, g, ctx.weight)
            return grad_x.view(*grad_out.shape[:-1], -1), None, None, None

    class Int8LinearCrossEntropy(torch.autograd.Function):
        """`kernels.ChunkedLinearCrossEntropy` (sum over rows of CE(h Wᵀ, target), chunked, gradient
        computed in the forward) with the frozen head's GEMMs as `HEAD` says. Log-softmax in fp32."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk, p, row_weights):
            rows = hidden.shape[0]
            grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, rows, chunk):
                h = hidden[start:start + chunk]
                t = targets[start:start + chunk]
                w = None if row_weights is None else row_weights[start:start + chunk]
                logp = torch.log_softmax(_forward_product(p, h, h, weight, None, head=True), dim=-1)
                total -= kernels.chunk_log_likelihood(logp, t, w)
                if grad_h is None:
                    continue
                grad_h[start:start + chunk] = _input_grad(p, kernels.chunk_logit_grad(logp, t, w), weight, head=True)
            ctx.save_for_backward(grad_h)
            return total

        @staticmethod
        def backward(ctx, grad_total):
            (grad_h,) = ctx.saved_tensors
            return (None if grad_h is None else grad_h * grad_total), None, None, None, None, None

    return Int8LinearFn, Int8LinearCrossEntropy


_FNS: tuple[type, type] | None = None


def _fns() -> tuple[type, type]:
    global _FNS
    if _FNS is None:
        _FNS = _functions()
    return _FNS


def _frozen(weight: Any, bias: Any) -> bool:
    import torch

    return (not weight.requires_grad and weight.dtype == torch.float32 and weight.device.type == "cpu"
            and (bias is None or not bias.requires_grad))


def int8_linear_forward(self: Any, x: Any) -> Any:
    """Replacement `forward` of a frozen fp32 `nn.Linear`."""
    import torch

    if not _frozen(self.weight, self.bias) or x.dtype != torch.float32:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    return _fns()[0].apply(x, self.weight, self.bias, packs(self, self.weight, self.bias))


def int8_lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Replacement `forward` of a PEFT `lora.Linear` over a frozen fp32 base: one plain adapter active →
    `kernels.LoraLinearFn` with this linear's `Packs` as its frozen products; anything else → PEFT's own
    forward (as `kernels.fused_lora_forward`)."""
    import torch

    name = kernels.one_plain_adapter(self, args, kwargs)
    base = self.base_layer
    if name is None or not _frozen(base.weight, base.bias) or x.dtype != torch.float32:
        return getattr(self, ORIGINAL_FORWARD)(x, *args, **kwargs)
    return kernels.lora_module_call(self, name, x, packs(base, base.weight, base.bias))


# ------------------------------------------------------------------------------------------------
# Installing
# ------------------------------------------------------------------------------------------------
def _decoder_layers(model: Any) -> list[Any]:
    """The modules holding the decoder layers' linears (all of the model but its head and embeddings)."""
    backbone, _ = kernels.causal_lm_parts(model)
    layers = getattr(backbone, "layers", None) or getattr(backbone, "h", None)
    return list(layers) if layers is not None else [backbone]


def _patch(module: Any, forward: Any) -> None:
    import types

    if MARK + "_previous" not in module.__dict__:
        module.__dict__[MARK + "_previous"] = module.__dict__.get("forward")  # None: the class's forward
    module.forward = types.MethodType(forward, module)


def enable(model: Any) -> dict[str, int]:
    """Route every frozen fp32 linear of the decoder layers through the int8 functions (idempotent).
    Returns how many: {"lora": LoRA-wrapped linears, "linear": plain ones}."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear

    counts = {"lora": 0, "linear": 0}
    lora_parts = set()
    for layer in _decoder_layers(model):
        for qualified, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear):
                parts = [x for x in qualified.split(".") if x != "base_layer"]
                module.__dict__[MARK + "_name"] = parts[-1] if parts else ""
        for module in layer.modules():
            if not isinstance(module, LoraLinear):
                continue
            lora_parts.update(id(m) for m in module.modules())  # its base and its own A/B linears
            if type(module.base_layer) is not torch.nn.Linear or getattr(module, "fan_in_fan_out", False):
                continue
            if getattr(module, "lora_variant", None) and any(module.lora_variant.values()):
                continue
            if not hasattr(module, ORIGINAL_FORWARD):  # PEFT's own, the fallback (as the fused path keeps it)
                setattr(module, ORIGINAL_FORWARD, module.forward)
            _patch(module, int8_lora_forward)
            counts["lora"] += 1
        for module in layer.modules():
            if PLAIN_LINEARS and type(module) is torch.nn.Linear and id(module) not in lora_parts:
                _patch(module, int8_linear_forward)
                counts["linear"] += 1
    model.__dict__[MARK] = counts
    return counts


def enabled_on(model: Any) -> dict[str, int] | None:
    """What `enable` patched on this model (through PEFT's wrappers), or None."""
    for m in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        if m is not None and isinstance(m.__dict__.get(MARK), dict):
            return m.__dict__[MARK]
    return None


def disable(model: Any, *, keep_packs: bool = False) -> None:
    """Back to the forwards that were there before `enable` (the fp32 paths); drops the packs unless
    `keep_packs` (a benchmark switching back and forth)."""
    global _LAST
    _LAST = None
    for module in model.modules():
        if MARK + "_previous" in module.__dict__:
            previous = module.__dict__.pop(MARK + "_previous")
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        if not keep_packs or not isinstance(module.__dict__.get(MARK), Packs):
            module.__dict__.pop(MARK, None)


def packed_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, float]:
    """`kernels.packed_loss` with the LM head + cross-entropy through `Int8LinearCrossEntropy` when
    `HEAD` asks for it (a frozen fp32 bias-free head), else exactly `kernels.packed_loss`."""
    import torch

    if not (HEAD["forward"] or HEAD["backward"]):
        return kernels.packed_loss(model, batch)
    head = kernels.causal_lm(model).get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or not _frozen(head.weight, None):
        return kernels.packed_loss(model, batch)
    batch, hidden = kernels.target_hidden(model, batch)
    fp = getattr(model, "_lorastudio_fast_path", None)
    chunk = fp.ce_chunk if fp else 1024
    total = _fns()[1].apply(hidden, head.weight, batch["target_ids"], int(chunk), packs(head, head.weight, None),
                            batch.get("target_weights"))
    return total, batch["num_targets"]
