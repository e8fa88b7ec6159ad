"""Training-step time and memory of LoRA and LoRA experts: autopeft's fused kernels against peft and the bound.

    python benchmarks/step_time.py [--repeats 5] [--models minilm llama] [--device cpu|cuda] [--dtype float32|bfloat16]
                                  [--threads N]

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
  ``fused_kernels(False)``;
* *experts*: LoRA experts (8 experts, top-2, r = 8) on q,v, autopeft against the same model whose expert layers
  run :func:`autopeft.kernels.reference.lora_experts_loop` (a Python loop over experts).

Besides the whole step, the expert layer alone (forward + backward of one ``LoRAExperts`` on the model's tokens x
hidden, from a fixed upstream gradient plus the weighted load-balancing loss) is timed, since in the whole step
the frozen model dilutes it: the loop; tokens gathered by expert into a padded batch (one ``bmm`` per factor,
scatter-add back); autopeft's dense experts node with the routing through autograd (gates given), the same
unfused, and the node with the router inside (the module's default for top-k routing).

Timing: every repeat runs each configuration once, in turn (so load drifts hit all alike); one warm-up round first;
the median of ``--repeats`` is reported with its ratio to the bound and to peft's matching row. Memory: the
activations saved for the backward (bytes of distinct tensors kept by autograd, parameters excluded; exact and
repeatable) and the peak (CUDA allocator peak, or on CPU the peak growth of the process RSS as the proxy trainer
measures it -- on CPU that one is noisy because freed memory is reused). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from autopeft.kernels import fused_kernels, lora_experts, reference
from autopeft.peft import apply_plan, auxiliary_loss, get_arch
from autopeft.peft.modules import LoRAExperts
from autopeft.plan import ModuleSpec, PeftPlan
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


def _base(name: str, device, dtype) -> torch.nn.Module:
    spec = MODELS[name]
    torch.manual_seed(0)
    model = spec["cls"](spec["config"]).to(device=device, dtype=dtype)
    return model.train().requires_grad_(False)  # dropout as in training (BERT 0.1, LLaMA none)


def _ours(name, sites, device, dtype, method="lora", **kw):
    def build():
        model = _base(name, device, dtype)
        present = [s for s in sites if s in get_arch(model).sites()]  # BERT has no gate
        n = model.config.num_hidden_layers
        plan = PeftPlan.from_modules(n, {i: [ModuleSpec(method, s, RANK, alpha=ALPHA, **kw) for s in present]
                                         for i in range(n)})
        return apply_plan(model, plan, seed=0)
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


def configs(name: str, device, dtype) -> list[Config]:
    all_sites = ["q", "k", "v", "o", "gate", "up", "down"]
    experts = _ours(name, ["q", "v"], device, dtype, method="lora_experts", num_experts=EXPERTS, top_k=TOP_K)
    base = lambda: _base(name, device, dtype)
    return [
        Config("frozen forward", base, "forward"),
        Config("bound: frozen forward + backward to inputs", base, "bound"),
        Config("peft LoRA q,v", _peft(name, MODELS[name]["peft_qv"], device, dtype)),
        Config("autopeft LoRA q,v", _ours(name, ["q", "v"], device, dtype), peer="peft LoRA q,v"),
        Config("peft LoRA all-linear", _peft(name, "all-linear", device, dtype)),
        Config("autopeft LoRA all-linear", _ours(name, all_sites, device, dtype), peer="peft LoRA all-linear"),
        Config("autopeft LoRA all-linear, unfused", _ours(name, all_sites, device, dtype),
               context=lambda: fused_kernels(False), peer="peft LoRA all-linear"),
        Config("experts q,v: loop over experts", _looped(experts)),
        Config("experts q,v: autopeft", experts, peer="experts q,v: loop over experts"),
    ]


def _batch(name: str, device) -> dict[str, torch.Tensor]:
    b, t = MODELS[name]["batch"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, MODELS[name]["config"].vocab_size, (b, t), generator=g)
    return {"input_ids": ids.to(device), "labels": torch.randint(0, 2, (b,), generator=g).to(device)}


def _step(model, batch, kind: str) -> None:
    if kind == "forward":
        with torch.no_grad():
            model(**batch)
        return
    if kind == "bound":
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
        model(inputs_embeds=embeds, labels=batch["labels"]).loss.backward()
        return
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    aux = auxiliary_loss(model)  # the experts' load-balancing loss, weighted as the proxy trainer's default
    (loss if aux is None else loss + AUX_WEIGHT * aux).backward()


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
    for m in model.modules():  # expert layers keep their last routing loss, and with it this forward's graph
        if isinstance(m, LoRAExperts):
            m.aux_loss = None
    return sum(seen.values()) / 2**20


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(name: str, repeats: int, device, dtype) -> list[dict]:
    cfgs = configs(name, device, dtype)
    models = [c.build() for c in cfgs]
    batch = _batch(name, device)
    times: list[list[float]] = [[] for _ in cfgs]
    peaks: list[list[float]] = [[] for _ in cfgs]
    for rep in range(repeats + 1):  # round 0 warms up
        for i, (cfg, model) in enumerate(zip(cfgs, models)):
            with cfg.context(), _PeakMemory(device) as mem:
                _sync(device)
                t0 = time.perf_counter()
                _step(model, batch, cfg.kind)
                _sync(device)
                elapsed = time.perf_counter() - t0
            if rep:
                times[i].append(elapsed)
                peaks[i].append(mem.peak_mb)
    rows = []
    for cfg, model, ts, ps in zip(cfgs, models, times, peaks):
        with cfg.context():
            saved = _saved_mib(model, batch, cfg.kind)
        rows.append(dict(model=name, label=cfg.label, peer=cfg.peer, time=statistics.median(ts),
                         peak=statistics.median(ps), saved=saved))
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
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(repeats + 1):
        for label, (fwd, context) in variants.items():
            with context():
                _sync(device)
                t0 = time.perf_counter()
                y = fwd(x)  # (N, out); the layer's output and its routing loss, as in a training step
                torch.autograd.backward([y, layer.aux_loss], [dy, aux_weight])
                _sync(device)
            if rep:
                times[label].append(time.perf_counter() - t0)
            layer.zero_grad(set_to_none=True)
            x.grad = None
    return [dict(model=name, label=f"expert layer {b * t} x {d}: {k}", time=statistics.median(v))
            for k, v in times.items()]


def table(rows: list[dict], layer_rows: list[dict]) -> str:
    out = ["| model | configuration | step s (median) | / bound | / peer | saved activations MiB | peak MiB |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        by_label = {r["label"]: r for r in mine}
        bound = by_label["bound: frozen forward + backward to inputs"]["time"]
        for r in mine:
            peer = f"{r['time'] / by_label[r['peer']]['time']:.2f}x" if r["peer"] else ""
            out.append(f"| {name} | {r['label']} | {r['time']:.3f} | {r['time'] / bound:.2f}x | {peer} | "
                       f"{r['saved']:.0f} | {r['peak']:.0f} |")
    out += ["", "| model | expert layer, forward + backward | s (median) | loop / this |", "|---|---|---:|---:|"]
    for name in dict.fromkeys(r["model"] for r in layer_rows):
        mine = [r for r in layer_rows if r["model"] == name]
        for r in mine:
            out.append(f"| {name} | {r['label']} | {r['time']:.4f} | {mine[0]['time'] / r['time']:.2f}x |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({card}), dtype {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats", flush=True)
    rows, layer_rows = [], []
    for name in args.models:
        t0 = time.perf_counter()
        model_rows = bench_model(name, args.repeats, device, dtype)
        model_layer_rows = bench_expert_layer(name, args.repeats, device, dtype)
        print(f"{name}: {time.perf_counter() - t0:.0f} s\n{table(model_rows, model_layer_rows)}\n", flush=True)
        rows, layer_rows = rows + model_rows, layer_rows + model_layer_rows
    if len(args.models) > 1:
        print(table(rows, layer_rows))


if __name__ == "__main__":
    main()
