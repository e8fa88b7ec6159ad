"""Training-step time and memory of LoRA and LoRA experts: autopeft's fused kernels against peft and the bound.

    python benchmarks/step_time.py [--repeats 5] [--models minilm llama] [--device cpu|cuda] [--dtype float32|bfloat16]
                                  [--threads N] [--only TEXT ...]

Two randomly initialised models (timing needs no pretrained weights):

* **minilm**: the all-MiniLM-L6-v2 shape (BERT, 6 layers, hidden 384, FFN 1536, 12 heads), batch 32 x 128;
* **llama**: a LLaMA-shaped tiny decoder (8 layers, hidden 512, FFN 1408, 8 heads), batch 8 x 256;

both as sequence classifiers (2 labels). Per model, one training step (forward, loss, backward; no optimizer
step) of:

* *frozen forward*: forward only, under ``no_grad``;
* *bound*: the frozen model, forward + backward to its input embeddings: every frozen matmul's input gradient,
  which any adapter inside the model needs as well -- the floor an adapted step cannot beat;
* *peft LoRA* and *autopeft LoRA* (r = 8, alpha = 16) on q,v and on every linear of the blocks (peft's
  ``all-linear``, which on BERT also adapts the pooler); *autopeft ... unfused* is the same with
  ``fused_kernels(False)``; on CUDA, where the default runs LoRA as plain ops, *autopeft ... Triton* is the same
  with ``AUTOPEFT_TRITON=1`` (the Triton kernels);
* *experts*: LoRA experts (8 experts, top-2, r = 8) on q,v, autopeft against the same model whose expert layers
  run :func:`autopeft.kernels.reference.lora_experts_loop` (a Python loop over experts);
* *serial / parallel adapter* (bottleneck 64 on attention and FFN), *IA3* (k, v, down) and *SSF* (every linear):
  autopeft's fused kernels against the same plan with ``fused_kernels(False)`` (autograd over the modules' ops).
  Their trainable vectors and up-projections are moved off their identity start first.

Besides the whole step, the expert layer alone (forward + backward of one ``LoRAExperts`` on the model's tokens x
hidden, from a fixed upstream gradient plus the weighted load-balancing loss) is timed, since in the whole step
the frozen model dilutes it: the loop; tokens gathered by expert into a padded batch (one ``bmm`` per factor,
scatter-add back); autopeft's dense experts node with the routing through autograd (gates given), the same
unfused, and the node with the router inside (the module's default for top-k routing).

Timing: every repeat runs each configuration once, in turn (so load drifts hit all alike); one warm-up round first;
the median of ``--repeats`` is reported with its ratio to the bound and to peft's matching row (or the named
baseline). On CPU each figure is given twice: wall seconds, and the process's CPU seconds, which on a machine shared
with other jobs leave out the time spent waiting for a core (with ``--threads 1`` they are the step's own work;
memory-bandwidth and cache contention from the other jobs still show in both). Memory: the
activations saved for the backward (bytes of distinct tensors kept by autograd, parameters excluded; exact and
repeatable) and the peak (CUDA allocator peak, or on CPU the peak growth of the process RSS as the proxy trainer
measures it -- on CPU that one is noisy because freed memory is reused). Work: the floating-point operations of
one step's matrix products and attention (``torch.utils.flop_counter.FlopCounterMode``; exact, elementwise ops not
counted) and their ratio to the bound's: the time a configuration would take over the bound if its extra products
ran as fast per flop as the frozen ones. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from unittest import mock

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from autopeft import kernels
from autopeft.kernels import fused_kernels, lora_experts, reference
from autopeft.peft import apply_plan, auxiliary_loss, get_arch
from autopeft.peft.methods.base import BLOCK_SITES
from autopeft.peft.modules import LoRAExperts
from autopeft.plan import ModuleSpec, PeftPlan
from autopeft.proxy.graphs import StepGraphs
from autopeft.proxy.train import _PeakMemory

RANK, ALPHA, EXPERTS, TOP_K = 8, 16.0, 8, 2
AUX_WEIGHT = 0.01  # Fidelity.aux_loss_weight's default

MODELS = {
    "minilm": dict(cls=BertForSequenceClassification, batch=(32, 128), peft_qv=["query", "value"],
                   config=BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536, vocab_size=30522, num_labels=2)),
    "llama": dict(cls=LlamaForSequenceClassification, batch=(8, 256), peft_qv=["q_proj", "v_proj"],
                  config=LlamaConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                     num_key_value_heads=8, intermediate_size=1408, vocab_size=32000,
                                     num_labels=2, pad_token_id=0)),
}


@dataclass
class Config:
    label: str
    build: Callable[[], torch.nn.Module]
    kind: str = "train"  # "forward" (no_grad), "bound" (grad to the input embeddings), "train"
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    peer: str | None = None  # the label of the row it is compared with
    graphs: bool = False  # forward and backward replayed as CUDA graphs (autopeft.proxy.graphs.StepGraphs)


#: how a graphed row records its step (None: CUDA graphs); the tests give an eager stand-in to run the rows on CPU
CAPTURE = None
GRAPHED = ", CUDA graphs"


def _base(name: str, device, dtype) -> torch.nn.Module:
    spec = MODELS[name]
    torch.manual_seed(0)
    model = spec["cls"](spec["config"]).to(device=device, dtype=dtype)
    return model.train().requires_grad_(False)  # dropout as in training (BERT 0.1, LLaMA none)


def _ours(name, sites, device, dtype, method="lora", size=RANK, alpha=ALPHA, **kw):
    def build():
        model = _base(name, device, dtype)
        present = [s for s in sites if s in get_arch(model).sites() or s in BLOCK_SITES]  # BERT has no gate
        n = model.config.num_hidden_layers
        plan = PeftPlan.from_modules(n, {i: [ModuleSpec(method, s, size, alpha=alpha, **kw) for s in present]
                                         for i in range(n)})
        model = apply_plan(model, plan, seed=0)
        with torch.no_grad():  # adapters' up-projections and IA3/SSF start at the identity; move them off it so
            for p in model.parameters():  # that no kernel can skip work on zeros or ones
                if p.requires_grad and method != "lora_experts" and method != "lora":
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)).to(p) * 0.01)
        return model
    return build


def _peft(name, targets, device, dtype):
    def build():
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(_base(name, device, dtype), LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                                       target_modules=targets, task_type="SEQ_CLS"))
        return model.train()
    return build


def _looped(build):
    """The same model, its expert layers computing the branch with a Python loop over experts."""
    def looped_build():
        model = build()
        for m in model.modules():
            if type(m) is LoRAExperts:
                m.forward = _loop_forward.__get__(m)
        return model
    return looped_build


def _loop_forward(self: LoRAExperts, x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])  # (N, in)
    gates, probs, chosen = self.route(x2)
    self.aux_loss = self.routing_loss(probs, chosen)
    return reference.lora_experts_loop(x2, gates, self.lora_A, self.lora_B, self.scaling).view(*shape[:-1], -1)


def _gated_forward(self: LoRAExperts, x: torch.Tensor) -> torch.Tensor:
    """The module's routing through autograd, then the experts' fused node with the gates given (the path that
    routing rules other than top-k, such as DynMoLE, take)."""
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    gates, probs, chosen = self.route(x2)
    self.aux_loss = self.routing_loss(probs, chosen)
    y = lora_experts(x2, gates.to(x.dtype), self.lora_A, self.lora_B, self.scaling)  # (N, out)
    return y.view(*x.shape[:-1], -1)


def _gathered_forward(self: LoRAExperts, x: torch.Tensor) -> torch.Tensor:
    """Tokens gathered by expert into a padded (E, C, in) batch, one bmm per factor, weighted scatter-add back."""
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    gates, probs, chosen = self.route(x2)
    self.aux_loss = self.routing_loss(probs, chosen)
    n, k, e = x2.shape[0], self.top_k, self.num_experts
    expert = chosen.reshape(-1)  # (N k,) expert of each (token, slot) route
    order = expert.argsort(stable=True)
    e_sorted, token = expert[order], order // k  # routes grouped by expert
    counts = torch.bincount(expert, minlength=e)
    slot = torch.arange(n * k, device=x.device) - (counts.cumsum(0) - counts)[e_sorted]  # position in its group
    xg = x2.new_zeros(e, int(counts.max()), x2.shape[1]).index_put((e_sorted, slot), x2[token])  # (E, C, in)
    z = torch.bmm(torch.bmm(xg, self.lora_A.transpose(1, 2)), self.lora_B.transpose(1, 2))  # (E, C, out)
    w = gates.gather(-1, chosen).reshape(-1)[order].to(x.dtype) * self.scaling  # (N k,)
    y = x2.new_zeros(n, z.shape[-1]).index_add(0, token, z[e_sorted, slot] * w[:, None])  # (N, out)
    return y.view(*x.shape[:-1], -1)


def _triton_lora():
    """LoRA on CUDA through the Triton kernels (``AUTOPEFT_TRITON=1``) within the block."""
    return mock.patch.dict(os.environ, {kernels.TRITON_ENV: "1"})


def configs(name: str, device, dtype, graphs: bool = False) -> list[Config]:
    all_sites = ["q", "k", "v", "o", "gate", "up", "down"]
    experts = _ours(name, ["q", "v"], device, dtype, method="lora_experts", num_experts=EXPERTS, top_k=TOP_K)
    base = lambda: _base(name, device, dtype)
    # With ``graphs``, the bound and the LoRA and experts rows once more, each step replayed as CUDA graphs (what
    # the fidelity's cuda_graphs does): the host launches two graphs instead of every kernel. peft's rows are
    # recorded the same way, so each graphed autopeft row has a graphed peer.
    graphed = [
        Config("bound" + GRAPHED, base, "bound", graphs=True),
        Config("peft LoRA q,v" + GRAPHED, _peft(name, MODELS[name]["peft_qv"], device, dtype), graphs=True),
        Config("autopeft LoRA q,v" + GRAPHED, _ours(name, ["q", "v"], device, dtype), graphs=True,
               peer="peft LoRA q,v" + GRAPHED),
        Config("peft LoRA all-linear" + GRAPHED, _peft(name, "all-linear", device, dtype), graphs=True),
        Config("autopeft LoRA all-linear" + GRAPHED, _ours(name, all_sites, device, dtype), graphs=True,
               peer="peft LoRA all-linear" + GRAPHED),
        # Triton's kernels fuse LoRA's products into fewer, larger kernels; eagerly their launches cost more than
        # that saves (docs/benchmarks.md, "GPU check"), inside a graph launches cost nothing
        *([Config("autopeft LoRA all-linear, Triton" + GRAPHED, _ours(name, all_sites, device, dtype), graphs=True,
                  context=_triton_lora, peer="peft LoRA all-linear" + GRAPHED)]
          if torch.device(device).type == "cuda" else []),
        Config("experts q,v: autopeft" + GRAPHED, experts, graphs=True, peer="experts q,v: autopeft"),
    ] if graphs else []
    return [
        Config("frozen forward", base, "forward"),
        Config("bound: frozen forward + backward to inputs", base, "bound"),
        Config("peft LoRA q,v", _peft(name, MODELS[name]["peft_qv"], device, dtype)),
        Config("autopeft LoRA q,v", _ours(name, ["q", "v"], device, dtype), peer="peft LoRA q,v"),
        Config("peft LoRA all-linear", _peft(name, "all-linear", device, dtype)),
        Config("autopeft LoRA all-linear", _ours(name, all_sites, device, dtype), peer="peft LoRA all-linear"),
        Config("autopeft LoRA all-linear, unfused", _ours(name, all_sites, device, dtype),
               context=lambda: fused_kernels(False), peer="peft LoRA all-linear"),
        *([Config("autopeft LoRA all-linear, Triton", _ours(name, all_sites, device, dtype), context=_triton_lora,
                  peer="peft LoRA all-linear")] if torch.device(device).type == "cuda" else []),
        Config("experts q,v: loop over experts", _looped(experts)),
        Config("experts q,v: autopeft", experts, peer="experts q,v: loop over experts"),
        *_fused_pairs(name, device, dtype),
        *graphed,
    ]


#: part-3 methods, each as autopeft's fused kernel against the same plan with ``fused_kernels(False)`` (autograd
#: over the modules' plain ops): label, method, sites, size
FUSED_METHODS = [("serial adapter attn+ffn (m = 64)", "serial_adapter", ["attn", "ffn"], 64),
                 ("parallel adapter attn+ffn (m = 64)", "parallel_adapter", ["attn", "ffn"], 64),
                 ("IA3 k,v,down", "ia3", ["k", "v", "down"], 0),
                 ("SSF all linears", "ssf", ["q", "k", "v", "o", "gate", "up", "down"], 0)]


def _fused_pairs(name, device, dtype) -> list[Config]:
    rows = []
    for label, method, sites, size in FUSED_METHODS:
        build = _ours(name, sites, device, dtype, method=method, size=size, alpha=None)
        rows += [Config(f"{label}: unfused", build, context=lambda: fused_kernels(False)),
                 Config(f"{label}: autopeft", build, peer=f"{label}: unfused")]
    return rows


def _batch(name: str, device) -> dict[str, torch.Tensor]:
    b, t = MODELS[name]["batch"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, MODELS[name]["config"].vocab_size, (b, t), generator=g)
    return {"input_ids": ids.to(device), "labels": torch.randint(0, 2, (b,), generator=g).to(device)}


def _loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = model(**batch).loss
    aux = auxiliary_loss(model)  # the experts' load-balancing loss, weighted as the proxy trainer's default
    return loss if aux is None else loss + AUX_WEIGHT * aux


def _step(model, batch, kind: str, graphs: StepGraphs | None = None) -> None:
    """One step of ``kind``; with ``graphs`` (a row's recorded step) its loss's forward and backward replay."""
    if kind == "forward":
        with torch.no_grad():
            model(**batch)
        return
    loss_of = graphs or (lambda b: _loss(model, b))
    if kind == "bound":
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
        loss_of({"inputs_embeds": embeds, "labels": batch["labels"]}).backward()
        return
    model.zero_grad(set_to_none=True)
    loss_of(batch).backward()


def _saved_mib(model, batch, kind) -> float:
    """MiB of distinct tensors autograd keeps for the backward during one forward (parameters excluded)."""
    if kind == "forward":
        return 0.0
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # not t: an op's saved output would then hold its own grad_fn, a cycle that never frees

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if kind == "bound":
            embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
            model(inputs_embeds=embeds, labels=batch["labels"])
        else:
            model(**batch)
    _drop_routing_losses(model)
    return sum(seen.values()) / 2**20


def _drop_routing_losses(model) -> None:
    """Expert layers keep their last routing loss, and with it that forward's graph: drop it."""
    for m in model.modules():
        if isinstance(m, LoRAExperts):
            m.aux_loss = None


def _addmm_inplace_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``C.addmm_(A, B)``: (n, k) @ (k, m). torch's counter knows ``addmm`` and its ``out=`` form but not the
    in-place one, which the fused LoRA kernel uses to add its low-rank products into an output."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _gflop(model, batch, kind) -> float:
    """GFLOP of one step's matrix products and attention (elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_inplace_flop})
    with counter:
        _step(model, batch, kind)
    model.zero_grad(set_to_none=True)
    _drop_routing_losses(model)
    return counter.get_total_flops() / 1e9


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Wall and process-CPU seconds of the block (synchronised on CUDA). On a CPU shared with other jobs the wall
    time includes waiting for a core; the CPU time counts this process's own work (all its threads)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        _sync(self.device)
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0


def _selected(cfgs: list[Config], only: list[str] | None) -> list[Config]:
    """The configurations whose label contains one of ``only`` (all when None), plus the bound and their peers."""
    if not only:
        return cfgs
    keep = {c.label for c in cfgs if c.kind != "train" or any(o in c.label for o in only)}
    keep |= {c.peer for c in cfgs if c.label in keep and c.peer}
    return [c for c in cfgs if c.label in keep]


def bench_model(name: str, repeats: int, device, dtype, only: list[str] | None = None,
                graphs: bool = False) -> list[dict]:
    cfgs = _selected(configs(name, device, dtype, graphs), only)
    models = [c.build() for c in cfgs]
    # recorded in the warm-up round (the first call of each), replayed in the timed ones
    recorded = [StepGraphs(m, partial(_loss, m), capture=CAPTURE) if c.graphs else None for c, m in zip(cfgs, models)]
    batch = _batch(name, device)
    times: list[list[float]] = [[] for _ in cfgs]
    cpus: list[list[float]] = [[] for _ in cfgs]
    peaks: list[list[float]] = [[] for _ in cfgs]
    for rep in range(repeats + 1):  # round 0 warms up
        for i, (cfg, model) in enumerate(zip(cfgs, models)):
            with cfg.context(), _PeakMemory(device) as mem, _Clock(device) as clock:
                _step(model, batch, cfg.kind, recorded[i])
            if rep:
                times[i].append(clock.wall)
                cpus[i].append(clock.cpu)
                peaks[i].append(mem.peak_mb)
    for cfg, graphs in zip(cfgs, recorded):
        if graphs is not None and graphs.fallback:
            print(f"{name}: {cfg.label}: NOT recorded as CUDA graphs ({graphs.fallback}); its time is eager", flush=True)
    rows = []
    for cfg, model, ts, cs, ps in zip(cfgs, models, times, cpus, peaks):
        with cfg.context():
            saved = _saved_mib(model, batch, cfg.kind)
            gflop = _gflop(model, batch, cfg.kind)
        rows.append(dict(model=name, label=cfg.label, peer=cfg.peer, time=statistics.median(ts),
                         cpu=statistics.median(cs), peak=statistics.median(ps), saved=saved, gflop=gflop))
    return rows


def bench_expert_layer(name: str, repeats: int, device, dtype) -> list[dict]:
    """One LoRAExperts layer (hidden -> hidden) on the model's B*T tokens, forward + backward."""
    b, t = MODELS[name]["batch"]
    d = MODELS[name]["config"].hidden_size
    g = torch.Generator().manual_seed(2)
    layer = LoRAExperts(d, d, RANK, EXPERTS, TOP_K, ALPHA / RANK, generator=g)
    with torch.no_grad():
        layer.lora_B.normal_(generator=g)  # B starts at 0; make the branch non-trivial
    layer.to(device=device, dtype=dtype)
    x = torch.randn(b * t, d, generator=g).to(device=device, dtype=dtype).requires_grad_()
    dy = torch.randn(b * t, d, generator=g).to(device=device, dtype=dtype)  # a fixed upstream gradient
    aux_weight = torch.tensor(AUX_WEIGHT, device=device)
    variants = {"loop over experts": (_loop_forward.__get__(layer), contextlib.nullcontext),
                "gathered by expert (padded bmm)": (_gathered_forward.__get__(layer), contextlib.nullcontext),
                "autopeft dense, gates given": (_gated_forward.__get__(layer), contextlib.nullcontext),
                "autopeft dense, unfused": (layer.forward, lambda: fused_kernels(False)),
                "autopeft (router in the node)": (layer.forward, contextlib.nullcontext)}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for rep in range(repeats + 1):
        for label, (fwd, context) in variants.items():
            with context(), _Clock(device) as clock:
                y = fwd(x)  # (N, out); the layer's output and its routing loss, as in a training step
                torch.autograd.backward([y, layer.aux_loss], [dy, aux_weight])
            if rep:
                times[label].append((clock.wall, clock.cpu))
            layer.zero_grad(set_to_none=True)
            x.grad = None
    return [dict(model=name, label=f"expert layer {b * t} x {d}: {k}", time=statistics.median(w for w, _ in v),
                 cpu=statistics.median(c for _, c in v)) for k, v in times.items()]


def bench_fused_layers(name: str, repeats: int, device, dtype) -> list[dict]:
    """One site of each part-3 method on the model's B*T tokens, forward + backward from a fixed upstream gradient:
    the fused kernel against its plain-torch reference (autograd over the same ops the modules run unfused)."""
    b, t = MODELS[name]["batch"]
    d, ffn = MODELS[name]["config"].hidden_size, MODELS[name]["config"].intermediate_size
    g = torch.Generator().manual_seed(4)
    r = lambda *shape, grad=True: (torch.randn(*shape, generator=g) * 0.1).to(device=device, dtype=dtype).requires_grad_(grad)
    n, m = b * t, 64
    x, x_ffn, base = r(n, d), r(n, ffn), r(n, d)
    w, bias, w_down = r(d, d, grad=False), r(d, grad=False), r(d, ffn, grad=False)
    down_w, down_b, up_w, up_b = r(m, d), r(m), r(d, m), r(d)
    vec_d, vec_d2, vec_ffn = r(d), r(d), r(ffn)
    cases = {  # label: (fused, reference, args, which args are differentiated)
        f"serial adapter (m = {m}) on {d}": (kernels.FusedBottleneck.apply, reference.bottleneck,
                                              (x, None, down_w, down_b, up_w, up_b, 1.0)),
        f"parallel adapter (m = {m}) on {d}": (kernels.FusedBottleneck.apply, reference.bottleneck,
                                                (x, base, down_w, down_b, up_w, up_b, 4.0)),
        f"IA3 on a {d} -> {d} output (k, v)": (kernels.ScaleShiftLinear.apply, reference.scale_shift_linear,
                                                (x, w, bias, None, vec_d, None)),
        f"IA3 on a {ffn} -> {d} input (down)": (kernels.ScaleShiftLinear.apply, reference.scale_shift_linear,
                                                 (x_ffn, w_down, bias, vec_ffn, None, None)),
        f"SSF on a {d} -> {d} linear": (kernels.ScaleShiftLinear.apply, reference.scale_shift_linear,
                                         (x, w, bias, None, vec_d, vec_d2)),
    }
    dy = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(label, kind): [] for label in cases
                                                                for kind in ("unfused", "autopeft")}
    for rep in range(repeats + 1):
        for label, (fused, ref, args) in cases.items():
            wanted = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            for kind, fn in (("unfused", ref), ("autopeft", fused)):
                with _Clock(device) as clock:
                    torch.autograd.grad(fn(*args), wanted, dy)
                if rep:
                    times[(label, kind)].append((clock.wall, clock.cpu))
    return [dict(model=name, label=f"{label}: {kind}", time=statistics.median(w for w, _ in v),
                 cpu=statistics.median(c for _, c in v)) for (label, kind), v in times.items()]


def table(rows: list[dict], layer_rows: list[dict], cpu_clock: bool = True) -> str:
    """Markdown tables; ``cpu_clock`` adds the process-CPU columns (meaningless on CUDA, where kernels run async)."""
    cpu_head, cpu_rule = (" CPU s | CPU / bound | CPU / peer |", "---:|---:|---:|") if cpu_clock else ("", "")
    out = [f"| model | configuration | step s (median) | / bound | / peer |{cpu_head} saved activations MiB | peak MiB "
           "| GFLOP | GFLOP / bound |",
           f"|---|---|---:|---:|---:|{cpu_rule}---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        by_label = {r["label"]: r for r in mine}
        bound = by_label["bound: frozen forward + backward to inputs"]
        for r in mine:
            peer = by_label[r["peer"]] if r["peer"] else None
            cells = [f"{r['time']:.4f}", f"{r['time'] / bound['time']:.2f}x",
                     f"{r['time'] / peer['time']:.2f}x" if peer else ""]
            if cpu_clock:
                cells += [f"{r['cpu']:.3f}", f"{r['cpu'] / bound['cpu']:.2f}x",
                          f"{r['cpu'] / peer['cpu']:.2f}x" if peer else ""]
            out.append(f"| {name} | {r['label']} | {' | '.join(cells)} | {r['saved']:.0f} | {r['peak']:.0f} | "
                       f"{r['gflop']:.1f} | {r['gflop'] / bound['gflop']:.3f}x |")
    cpu_head, cpu_rule = (" CPU s | CPU: {} |", "---:|---:|") if cpu_clock else ("", "")
    for title, ratio, pick, base_of in (
            ("expert layer, forward + backward", "loop / this", lambda r: r["label"].startswith("expert layer"),
             lambda mine, r: mine[0]),
            ("one site, forward + backward", "unfused / this", lambda r: not r["label"].startswith("expert layer"),
             lambda mine, r: next(m for m in mine if m["label"] == r["label"].rsplit(": ", 1)[0] + ": unfused"))):
        if not any(pick(r) for r in layer_rows):
            continue
        out += ["", f"| model | {title} | s (median) | {ratio} |{cpu_head.format(ratio)}",
                f"|---|---|---:|---:|{cpu_rule}"]
        for name in dict.fromkeys(r["model"] for r in layer_rows):
            mine = [r for r in layer_rows if r["model"] == name and pick(r)]
            for r in mine:
                ref = base_of(mine, r)
                cells = [f"{r['time']:.4f}", f"{ref['time'] / r['time']:.2f}x"]
                if cpu_clock:
                    cells += [f"{r['cpu']:.4f}", f"{ref['cpu'] / r['cpu']:.2f}x"]
                out.append(f"| {name} | {r['label']} | {' | '.join(cells)} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the bound and the LoRA and experts rows with each step replayed as CUDA graphs "
                         "(default: on CUDA)")
    ap.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                    help="whole-step rows whose label contains TEXT (the frozen rows and each row's peer are kept); "
                         "skips the layer tables. Default: every row and table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    graphs = device.type == "cuda" if args.graphs is None else args.graphs
    if graphs and device.type != "cuda":
        ap.error("--graphs: CUDA graphs need --device cuda")
    cpu_clock = device.type == "cpu"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({card}), dtype {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats", flush=True)
    rows, layer_rows = [], []
    for name in args.models:
        t0 = time.perf_counter()
        model_rows = bench_model(name, args.repeats, device, dtype, args.only, graphs)
        model_layer_rows = [] if args.only else (bench_expert_layer(name, args.repeats, device, dtype) +
                                                 bench_fused_layers(name, args.repeats, device, dtype))
        print(f"{name}: {time.perf_counter() - t0:.0f} s\n{table(model_rows, model_layer_rows, cpu_clock)}\n", flush=True)
        rows, layer_rows = rows + model_rows, layer_rows + model_layer_rows
    if len(args.models) > 1:
        print(table(rows, layer_rows, cpu_clock))


if __name__ == "__main__":
    main()
