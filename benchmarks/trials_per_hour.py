"""Trials per hour at the quickstart proxy budget: autopeft against Optuna + peft + a plain PyTorch loop.

    python benchmarks/trials_per_hour.py [--plans 12] [--repeats 5] [--plan-set peft|space] [--threads 2]
                                         [--pack 4] [--noise-seeds 1] [--only baseline plain ...]
                                         [--set steps=5 ...]

The budget is the default :class:`~autopeft.proxy.fidelity.Fidelity` (what ``autopeft run`` trains with: the packaged
MiniLM on rotten_tomatoes, 120 steps x 16, 2,000 training / 600 validation and test examples, 64 tokens).

**Plans.** ``--plans`` distinct plans sampled (seeded) from ``search_spaces/full.yaml`` with the density sampler of
``benchmarks/build_table.py``. ``--plan-set peft`` (default) keeps drawing until it has that many that Hugging Face
peft can express (one method per adapter: LoRA-only, (IA)3-only or uniform prefix plans), so every row trains the
same plans; the script also counts how many of the first ``--plans`` unconditioned draws peft could express.
``--plan-set space`` takes the unconditioned draws; the baseline then trains only those peft can express.

**Rows** (one process, each row a fresh set-up, its set-up time counted; the rows of a repeat run in turn):

* *baseline*: the way a careful user writes it today: an Optuna study with the plans enqueued, an objective that
  builds a ``peft`` model for the trial's plan on a copy of a base model loaded once per process (config from
  the plan, as ``autopeft export --format peft`` writes it), and a plain PyTorch loop: AdamW with linear warm-up
  and decay, the same seeded training subset tokenised once, dynamic padding per batch
  (``DataCollatorWithPadding``), evaluation of the validation and test splits in batches of 64 under ``no_grad``;
* *autopeft unfused*: :class:`ProxyTrainer` with autopeft's BLAS kernels off (``fused_kernels(False)``);
* *autopeft plain*: fused kernels, no length buckets, no cache (what studies made before these options train);
* *+ buckets*: ``length_buckets``; *+ cache*: ``length_buckets`` and ``frozen_cache``;
* *+ pooled*: buckets, cache and ``pooled_only`` (the last block computes keys and values for every token and the
  rest -- queries, attention output, feed-forward -- for the first token alone);
* *+ bf16*: buckets, cache and pooled with ``autocast="bf16"`` (on a CPU with AVX512-BF16 or AMX its matmuls run
  in bf16; the fidelity records it, and scores move by rounding, so compare them against ``--noise-seeds``);
* *+ pack*: :class:`autopeft.proxy.pack.PackedTrainer` with ``--pack`` trials at once, on top of buckets, cache,
  pooled and bf16 (skipped, with the reason printed, when that module is absent);
* *baseline-bf16* (a control, outside the chain): the baseline's loop under ``torch.autocast("cpu", bfloat16)``,
  what a careful user gets from mixed precision alone;
* *pooled-adamw* (a control, outside the chain): the *+ pooled* row with torch's default AdamW (one to ten
  operations per parameter tensor each step) instead of the fused kernel autopeft uses on CPU and CUDA: what the
  fused optimizer saves;
* *pooled-ffn* (a control, outside the chain): the *+ pooled* row with the last block's queries all computed, the
  cut after its attention sub-layer only (``ProxyTrainer.pooled_queries = False``): what cutting the queries saves;
* *pooled-dropout* (a control, outside the chain): the *+ pooled* row with torch's dropout masks instead of
  autopeft's CPU mask (``ProxyTrainer.fast_dropout = False``): what the cheaper mask saves;
* *pooled-between* (a control, outside the chain): the *+ pooled* row whose cache keeps only the states a plan
  asked for, not those of the blocks in between from the same pass (``ProxyTrainer.cache_between = False``): what
  computing each frozen block once saves.

Each row reports trials per hour (plans over the row's wall time, set-up included), the median over
``--repeats``, and the same per CPU-hour of the process (user + system time of all its threads: on cores shared
with other jobs, wall time measures their load as much as ours); its ratio to the baseline and to the row above;
the mean validation score; and the largest per-plan differences of validation score and of final training loss
to *autopeft plain* (plans that stay at the majority class all score alike; their losses still tell rows apart).
Then every plan's score and loss per row. ``--noise-seeds K`` adds *autopeft plain* at seeds 1..K: the
seed-to-seed spread of the same plans, the yardstick for "equal within seeded noise".
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # build_table's sampler

ROWS = ("baseline", "unfused", "plain", "buckets", "cache", "pooled", "bf16", "pack", "baseline-bf16", "pooled-adamw",
        "pooled-ffn", "pooled-compiled", "pooled-dropout", "pooled-between")
#: Rows outside the chain of "x row above" and the shares: controls beside it, not steps of it.
CONTROLS = ("baseline-bf16", "pooled-adamw", "pooled-ffn", "pooled-compiled", "pooled-dropout", "pooled-between")
LABELS = {"baseline": "baseline: Optuna + peft + plain loop", "unfused": "autopeft, kernels unfused",
          "plain": "autopeft plain", "buckets": "+ length buckets", "cache": "+ frozen-layer cache",
          "pooled": "+ pooled token only",
          "pack": "+ pack", "bf16": "+ bf16 autocast",
          "baseline-bf16": "baseline under bf16 autocast (control)",
          "pooled-adamw": "pooled, torch's default AdamW, not fused (control)",
          "pooled-ffn": "pooled, every query of the last block kept (control)",
          "pooled-dropout": "pooled, torch's dropout masks (control)",
          "pooled-between": "pooled, no states between kept from a pass (control)",
          "pooled-compiled": "pooled, blocks compiled (--compile; control)"}


# --------------------------------------------------------------------------- plans
def draw_plans(space, n: int, seed: int, peft_only: bool) -> tuple[list, int]:
    """``n`` distinct plans (peft-expressible ones when ``peft_only``) and how many of the first ``n``
    unconditioned draws peft can express."""
    from build_table import plan_key, sample_params, sampled_plans

    first = [p for _, _, p in sampled_plans(space, n, seed)]
    expressible = sum(peft_can(p) for p in first)
    if not peft_only:
        return first, expressible
    rng, seen, plans = random.Random(seed), set(), []
    while len(plans) < n:
        plan = space.decode(sample_params(space, rng))
        if peft_can(plan) and plan_key(plan) not in seen:
            seen.add(plan_key(plan))
            plans.append(plan)
    return plans, expressible


def peft_can(plan) -> bool:
    from autopeft.peft.export_peft import peft_inexpressible

    return not plan.is_empty and not peft_inexpressible(plan)  # a head-only plan holds no peft adapter


# --------------------------------------------------------------------------- baseline
class PeftBaseline:
    """Optuna + peft + a plain PyTorch loop; model and tokenised data loaded once (per process)."""

    def __init__(self, fidelity, space, bf16: bool = False):
        from transformers import DataCollatorWithPadding

        from autopeft.proxy.models import load_classifier
        from autopeft.proxy.tasks import load_task

        f = self.fidelity = fidelity
        self.space = space
        self.task = load_task(f.task, seed=f.seed)
        self.base, self.tokenizer = load_classifier(f.model, len(self.task.label_names), f.seed)
        train = list(self.task.train)
        random.Random(f.seed).shuffle(train)  # the same training subset as the proxy trainer's
        self.train = self._tokenise(train[: f.train_examples])
        self.eval = self._tokenise(self.task.validation[: f.eval_examples])
        self.test = self._tokenise(self.task.test[: f.eval_examples])
        self.collate = DataCollatorWithPadding(self.tokenizer)
        self.bf16 = bf16

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def _tokenise(self, examples) -> list[dict[str, Any]]:
        pairs = [e.text_pair for e in examples]
        enc = self.tokenizer([e.text for e in examples], pairs if any(p is not None for p in pairs) else None,
                             truncation=True, max_length=self.fidelity.max_length)
        return [{**{k: enc[k][i] for k in enc}, "labels": e.label} for i, e in enumerate(examples)]

    def peft_model(self, plan):
        """The plan as a peft model: the config ``autopeft export --format peft`` writes, built by peft."""
        from peft import get_peft_config, get_peft_model

        from autopeft.peft import apply_plan
        from autopeft.peft.export_peft import peft_adapter

        probe = apply_plan(copy.deepcopy(self.base), plan, seed=0)  # only to read the plan's module names
        config, _ = peft_adapter(probe, plan)
        config = get_peft_config({**config, "inference_mode": False})
        return get_peft_model(copy.deepcopy(self.base), config)

    def train_one(self, plan) -> dict[str, float]:
        from torch.utils.data import DataLoader
        from transformers import get_linear_schedule_with_warmup

        from autopeft.proxy.train import score_predictions

        f = self.fidelity
        torch.manual_seed(f.seed)
        model = self.peft_model(plan)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=f.learning_rate,
                                weight_decay=f.weight_decay)
        warmup = max(1, int(f.warmup_ratio * f.steps))
        sched = get_linear_schedule_with_warmup(opt, warmup, f.steps)
        loader = DataLoader(self.train, batch_size=f.batch_size, shuffle=True, collate_fn=self.collate,
                            generator=torch.Generator().manual_seed(f.seed))
        model.train()
        step, losses = 0, []
        while step < f.steps:
            for batch in loader:
                with self.autocast():
                    loss = model(**batch).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                step += 1
                if step == f.steps:
                    break
        scores = []
        model.eval()
        for data in (self.eval, self.test):
            pred = []
            with torch.no_grad(), self.autocast():
                for batch in DataLoader(data, batch_size=64, collate_fn=self.collate):
                    batch.pop("labels")
                    pred += model(**batch).logits.argmax(-1).tolist()
            scores.append(score_predictions(pred, [d["labels"] for d in data], self.task.metric,
                                            len(self.task.label_names)))
        return {"score": scores[0], "test_score": scores[1], "train_loss": statistics.fmean(losses[-12:])}

    def run(self, plans) -> list[dict[str, float]]:
        """Every plan as an enqueued trial of an Optuna study, as a user drives a search."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        by_number: dict[int, dict[str, float]] = {}
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        for plan in plans:
            study.enqueue_trial(self.space.encode(plan))

        def objective(trial: optuna.Trial) -> float:
            params = {name: trial.suggest_int(name, 0, len(vals) - 1) for name, vals in self.space.choices.items()}
            result = self.train_one(self.space.decode(params))
            by_number[trial.number] = result
            return result["score"]

        study.optimize(objective, n_trials=len(plans))
        return [by_number[i] for i in range(len(plans))]


# --------------------------------------------------------------------------- autopeft rows
def autopeft_row(fidelity, unfused: bool = False, fused_adamw: bool = True, pooled_queries: bool = True,
                 fast_dropout: bool = True, cache_between: bool = True) -> Callable[[list], list[dict[str, float]]]:
    from autopeft.kernels import fused_kernels
    from autopeft.proxy.train import ProxyTrainer

    def run(plans):
        trainer = ProxyTrainer(fidelity)
        trainer.fused_adamw = fused_adamw
        trainer.pooled_queries = pooled_queries
        trainer.fast_dropout = fast_dropout
        trainer.cache_between = cache_between
        ctx = fused_kernels(False) if unfused else contextlib.nullcontext()
        with ctx:
            return [_metrics(trainer.run(plan)) for plan in plans]

    return run


def pack_row(fidelity, k: int) -> Callable[[list], list[dict[str, float]]] | str:
    try:
        from autopeft.proxy.pack import PackedTrainer
    except ImportError as exc:
        return f"autopeft.proxy.pack is not available ({exc})"
    from autopeft.proxy.train import ProxyTrainer

    def run(plans):
        packed = PackedTrainer(ProxyTrainer(fidelity), k)
        results = packed.run_many(plans) if hasattr(packed, "run_many") else packed.run(plans)
        return [_metrics(r) if not isinstance(r, Exception) else {"score": float("nan")} for r in results]

    return run


def _metrics(m) -> dict[str, float]:
    return {"score": m.score, "test_score": m.test_score, "train_loss": m.train_loss}


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plans", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the plan draw")
    ap.add_argument("--plan-set", choices=("peft", "space"), default="peft")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pack", type=int, default=4, help="trials per pack in the + pack row")
    ap.add_argument("--noise-seeds", type=int, default=0, help="also run autopeft plain at fidelity seeds 1..K")
    ap.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--pick", nargs="+", type=int, default=None, metavar="I",
                    help="train only these plans of the drawn set (0-based), e.g. to split a run over processes")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="fidelity overrides for a quick smoke run (figures use the quickstart budget)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.models import load_config, model_dims
    from autopeft.space import SearchSpace, load_space
    from autopeft.study.runner import quiet_libraries

    quiet_libraries()
    base = Fidelity.build(dict(kv.split("=", 1) for kv in args.set))
    space = SearchSpace(load_space(str(ROOT / "search_spaces" / "full.yaml")), model_dims(load_config(base.model)),
                        source="full")
    plans, expressible = draw_plans(space, args.plans, args.seed, args.plan_set == "peft")
    if args.pick is not None:
        plans = [plans[i] for i in args.pick]
    peft_plans = [p for p in plans if peft_can(p)]
    print(f"{base.describe()} · {len(plans)} plans ({args.plan_set} set, seed {args.seed}); of the first "
          f"{args.plans} plans drawn from full.yaml, peft can express {expressible}", flush=True)
    for p in plans:
        print(f"  {p.summary()}", flush=True)

    rows: dict[str, Callable[[list], list[dict[str, float]]]] = {}
    fast = {"length_buckets": True, "frozen_cache": True, "pooled_only": True}  # the float32 options, all on
    skipped: dict[str, str] = {}
    for name in args.only:
        if name == "baseline":
            rows[name] = lambda ps: PeftBaseline(base, space).run([p for p in ps if peft_can(p)])
        elif name == "baseline-bf16":
            rows[name] = lambda ps: PeftBaseline(base, space, bf16=True).run([p for p in ps if peft_can(p)])
        elif name == "bf16":
            rows[name] = autopeft_row(base.model_copy(update={**fast, "autocast": "bf16"}))
        elif name == "unfused":
            rows[name] = autopeft_row(base, unfused=True)
        elif name == "plain":
            rows[name] = autopeft_row(base)
        elif name == "buckets":
            rows[name] = autopeft_row(base.model_copy(update={"length_buckets": True}))
        elif name == "cache":
            rows[name] = autopeft_row(base.model_copy(update={"length_buckets": True, "frozen_cache": True}))
        elif name == "pooled":
            rows[name] = autopeft_row(base.model_copy(update=fast))
        elif name == "pooled-adamw":
            rows[name] = autopeft_row(base.model_copy(update=fast), fused_adamw=False)
        elif name == "pooled-ffn":
            rows[name] = autopeft_row(base.model_copy(update=fast), pooled_queries=False)
        elif name == "pooled-dropout":
            rows[name] = autopeft_row(base.model_copy(update=fast), fast_dropout=False)
        elif name == "pooled-between":
            rows[name] = autopeft_row(base.model_copy(update=fast), cache_between=False)
        elif name == "pooled-compiled":  # compiled forms carry over from repeat to repeat, as from trial to trial
            rows[name] = autopeft_row(base.model_copy(update={**fast, "compile": True}))
        elif name == "pack":
            row = pack_row(base.model_copy(update={**fast, "autocast": "bf16"}), args.pack)
            if isinstance(row, str):
                skipped[name] = row
                print(f"+ pack row skipped: {row}", flush=True)
            else:
                rows[name] = row
    for s in range(1, args.noise_seeds + 1):
        rows[f"seed {s}"] = autopeft_row(base.model_copy(update={"seed": s}))

    rates: dict[str, list[float]] = {name: [] for name in rows}
    cpu_rates: dict[str, list[float]] = {name: [] for name in rows}
    scores: dict[str, list[dict[str, float]]] = {}
    for rep in range(args.repeats):
        for name, run in rows.items():
            n = len(peft_plans) if name.startswith("baseline") else len(plans)
            t0, c0 = time.perf_counter(), time.process_time()
            results = run(plans)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rates[name].append(3600 * n / wall)
            cpu_rates[name].append(3600 * n / cpu)
            scores[name] = results
            print(f"repeat {rep + 1} {name}: {n} trials in {wall:.0f} s wall, {cpu:.0f} s CPU "
                  f"({3600 * n / wall:.1f} trials/h, {3600 * n / cpu:.1f} per CPU-hour)", flush=True)

    print(report(args, rows, rates, scores, plans, peft_plans, skipped))
    print("\nthe same in trials per CPU-hour of this process (robust to other jobs on shared cores):")
    print(report(args, rows, cpu_rates, scores, plans, peft_plans, skipped))
    print(plan_table(rows, scores, plans))


def report(args, rows, rates, scores, plans, peft_plans, skipped) -> str:
    def plan_values(name: str, key: str = "score") -> list[float]:
        return per_plan(scores, name, key, plans)

    def max_diff(name: str, key: str) -> str:
        if "plain" not in scores or name == "plain":
            return "-"
        d = [abs(a - b) for a, b in zip(plan_values(name, key), plan_values("plain", key)) if not math.isnan(a)]
        return f"{max(d):.4f}" if d else "-"

    lines = [f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
             f"{torch.__version__}, {args.threads} threads; medians of {args.repeats} repeat(s)\n",
             "| row | trials | trials/h | x baseline | x row above | mean score | max abs score diff to plain "
             "| max abs train-loss diff to plain |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base_rate = statistics.median(rates["baseline"]) if rates.get("baseline") else None
    prev = None
    for name in rows:
        rate = statistics.median(rates[name])
        sc = [s for s in plan_values(name) if not math.isnan(s)]
        n = len(peft_plans) if name.startswith("baseline") else len(plans)
        control = name.startswith("seed") or name in CONTROLS
        above = f"{rate / prev:.2f}" if prev and not control else "-"
        ratio = f"{rate / base_rate:.2f}" if base_rate else "-"
        lines.append(f"| {LABELS.get(name, 'autopeft plain, ' + name)} | {n} | {rate:.1f} | {ratio} | {above} | "
                     f"{statistics.fmean(sc):.4f} | {max_diff(name, 'score')} | {max_diff(name, 'train_loss')} |")
        if not control:
            prev = rate
    for name, why in skipped.items():
        lines.append(f"| {LABELS[name]} | - | skipped: {why} | | | | |")
    # Share of the time per trial saved from the baseline to the last row that each step contributes.
    chain = [n for n in ROWS if n in rows and n not in CONTROLS]
    if len(chain) > 1:
        secs = {n: 3600 / statistics.median(rates[n]) for n in chain}
        total = secs[chain[0]] - secs[chain[-1]]
        parts = [f"{LABELS[b]}: {100 * (secs[a] - secs[b]) / total:.0f} %" for a, b in zip(chain, chain[1:])]
        lines.append(f"\nshare of the seconds per trial saved from {LABELS[chain[0]]} to {LABELS[chain[-1]]} "
                     f"({secs[chain[0]]:.1f} -> {secs[chain[-1]]:.1f} s): " + "; ".join(parts))
    return "\n".join(lines)


def per_plan(scores, name: str, key: str, plans) -> list[float]:
    """Row ``name``'s ``key`` for every plan (nan where the row did not train it: the baseline skips the plans
    peft cannot express)."""
    res = scores[name]
    if name.startswith("baseline"):  # only the peft plans: align with the full list
        it = iter(res)
        return [next(it)[key] if peft_can(p) else float("nan") for p in plans]
    return [r.get(key, float("nan")) for r in res]


def plan_table(rows, scores, plans) -> str:
    """Every plan's validation score / mean training loss of the last 12 steps, per row (the last repeat's)."""
    cols = {n: list(zip(per_plan(scores, n, "score", plans), per_plan(scores, n, "train_loss", plans))) for n in rows}
    lines = ["\nper plan, validation score / final training loss:\n", "| plan | " + " | ".join(rows) + " |",
             "|---|" + "---:|" * len(rows)]
    for i, plan in enumerate(plans):
        cells = [f"{cols[n][i][0]:.4f} / {cols[n][i][1]:.4f}" if not math.isnan(cols[n][i][0]) else "-" for n in rows]
        lines.append(f"| {plan.summary()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
