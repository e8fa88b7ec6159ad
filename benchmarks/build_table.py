"""Build the tabular benchmark: a fixed, seeded set of plans trained for real at the quickstart fidelity.

Each plan is trained once with :class:`autopeft.proxy.train.ProxyTrainer` (the trainer workers use) and
its metrics go into a JSON-lines table under ``benchmarks/data/``. The replay objective
(``--objective replay --table <file>``, :mod:`autopeft.proxy.replay`) answers trials from the table, so a
whole search runs in seconds and samplers can be compared on real scores (``benchmarks/search_quality.py``).

The plan set, in order:

* the hand-made baselines (:func:`baseline_plans`): head only (every study's anchor), LoRA r=8 on q,v,
  a serial (Pfeiffer) adapter, a parallel adapter, prefix tuning, (IA)3 and MoLA 2-4-6-8;
* ``--plans`` plans sampled from the space (``search_spaces/full.yaml``) with ``--seed``
  (:func:`sampled_plans`), decoded through :class:`autopeft.space.SearchSpace` exactly as trials are.

The file's first line is a header (fidelity, space, model shape, parameter names, code version, plan seed);
each further line is one plan: its Optuna parameters (choice indices, in the header's ``param_names`` order;
the plan itself where the space cannot express it), summary and metrics. A rerun with the same settings skips the plans already in the file, so the build can
be stopped at any time and continued later, also on another machine:

    nice -n 19 python benchmarks/build_table.py --plans 400 --workers 1

``--set steps=30 ...`` changes fidelity fields: the same plans at another fidelity, in a file of its own (``--out``),
for the rank correlation between fidelities (``benchmarks/fidelity_rank.py``).

``--device cuda`` trains on a GPU (``--workers`` processes share it); the header records the device, and a table
is only continued on the same kind of device, since its cost columns (``wall_time``, ``step_time``) are that
device's seconds. ``--kernels reference`` trains through the plain-torch paths instead of the fused kernels.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "data" / "table_rotten_tomatoes_minilm.jsonl"
DEFAULT_SPACE = ROOT / "search_spaces" / "full.yaml"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- the plans
def baseline_plans(num_layers: int) -> dict[str, Any]:
    """The hand-made baselines as plans, by name (sizes as the methods' papers use them at this scale)."""
    from autopeft.plan import ModuleSpec, PeftPlan

    def every_layer(*modules: ModuleSpec) -> PeftPlan:
        return PeftPlan.from_modules(num_layers, {i: modules for i in range(num_layers)})

    # MoLA (Gao et al. 2024) splits the layers into four groups by depth with 2, 4, 6 and 8 experts.
    mola_counts = [(2, 4, 6, 8)[4 * i // num_layers] for i in range(num_layers)]
    mola = PeftPlan.from_modules(num_layers, {
        i: [ModuleSpec("lora_experts", s, 8, num_experts=n, top_k=2) for s in ("q", "v")]
        for i, n in enumerate(mola_counts)})
    return {
        "head only": PeftPlan(num_layers),
        "LoRA r=8 q,v": every_layer(ModuleSpec("lora", "q", 8), ModuleSpec("lora", "v", 8)),
        "serial adapter (Pfeiffer) 48": every_layer(ModuleSpec("serial_adapter", "ffn", 48)),
        "parallel adapter 48": every_layer(ModuleSpec("parallel_adapter", "ffn", 48)),
        "prefix 16": every_layer(ModuleSpec("prefix", "attn", 16)),
        "(IA)3": every_layer(*(ModuleSpec("ia3", s) for s in ("k", "v", "down"))),
        "MoLA 2-4-6-8 r=8 q,v": mola,
    }


def _has_off(values: list[Any]) -> bool:
    """The parameter's first choice is 0: an on/off switch, a size or an expert count where 0 means none."""
    return values[0] == 0


def sample_params(space, rng: random.Random) -> dict[str, int]:
    """One parameter vector: a density ``p ~ U(0.05, 0.95)`` for the plan; every parameter with an off value
    (switches, sizes and expert counts whose first choice is 0) is on with probability ``p`` (then uniform over
    its other choices), every other parameter uniform over its choices.

    Why not uniform over every parameter (``SearchSpace.sample``): with ~60 on/off switches and sizes where 0
    is one choice of many, uniform draws switch on most module types on about half the layers in every plan,
    so every plan lands near the same (large) size and the cheap half of the front would hold no recorded plan.
    """
    p = rng.uniform(0.05, 0.95)
    out = {}
    for name, vals in space.choices.items():
        if _has_off(vals):
            out[name] = 1 + rng.randrange(len(vals) - 1) if rng.random() < p else 0
        else:
            out[name] = rng.randrange(len(vals))
    return out


def sampled_plans(space, n: int, seed: int) -> Iterator[tuple[str, dict[str, int], Any]]:
    """``n`` distinct plans (id, params, plan), always the same ones for the same space, ``n`` prefix and seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    draw = 0
    while len(seen) < n:
        params = sample_params(space, rng)
        plan = space.decode(params)
        key = plan_key(plan)
        draw += 1
        if key in seen:
            continue
        seen.add(key)
        yield f"sample-{seed}-{draw}", params, plan


def plan_key(plan) -> str:
    from autopeft.proxy.replay import plan_key as key

    return key(plan)


# --------------------------------------------------------------------------- the file
def code_version() -> str:
    """``AUTOPEFT_CODE_VERSION`` when set (a copy of the checkout without its git metadata), else the git commit
    (with ``-dirty`` for local changes), else the installed package's version, else ``unknown``."""
    if os.environ.get("AUTOPEFT_CODE_VERSION"):
        return os.environ["AUTOPEFT_CODE_VERSION"]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "autopeft " + version("autopeft")
    except PackageNotFoundError:  # run from a source tree on PYTHONPATH
        return "unknown"


def device_name(device: str) -> str:
    """``cpu``, or ``cuda: <card>``: what the cost columns of a table were measured on."""
    import torch

    dev = torch.device(device)
    return f"cuda: {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else dev.type


def make_header(fidelity, spec_yaml: str, dims, seed: int, param_names: list[str], device: str = "cpu",
                kernels: str = "fused") -> dict[str, Any]:
    return {
        "kind": "header", "format": FORMAT_VERSION, "fidelity": fidelity.model_dump(), "space_yaml": spec_yaml,
        "param_names": param_names,
        "dims": {"num_layers": dims.num_layers, "hidden_size": dims.hidden_size, "sites": list(dims.sites)},
        "plan_seed": seed, "device": device, "kernels": kernels, "code_version": code_version(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python benchmarks/build_table.py " + " ".join(sys.argv[1:]),
    }


def read_existing(path: Path, header: dict[str, Any]) -> set[str]:
    """Ids of the plans already in ``path``; refuses a file made with another fidelity, space or plan seed."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    lines = path.read_text().splitlines()
    from autopeft.proxy.fidelity import Fidelity

    old = json.loads(lines[0])
    # Read the stored fidelity through the model, so fields added since the file was made take their defaults.
    old["fidelity"] = Fidelity(**old["fidelity"]).model_dump()
    old.setdefault("device", "cpu")  # tables made before the header named its device were built on CPU
    old.setdefault("kernels", "fused")
    for key in ("fidelity", "space_yaml", "dims", "plan_seed", "device", "kernels"):
        if old.get(key) != header[key]:
            sys.exit(f"{path}: made with another {key} ({old.get(key)!r} vs {header[key]!r}); "
                     "pass another --out to start a new table")
    done = set()
    for line in lines[1:]:
        try:
            done.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut short by a kill: that plan runs again
    return done


# --------------------------------------------------------------------------- training
_TRAINER = None
_VERSION = ""  # the code version this process loaded (the checkout may move on while it runs)
_FUSED = True


def _init_worker(fidelity_dict: dict[str, Any], threads: int, version: str, device: str = "cpu",
                 fused: bool = True) -> None:
    global _TRAINER, _VERSION, _FUSED
    import torch

    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.train import ProxyTrainer
    from autopeft.study.runner import quiet_libraries

    torch.set_num_threads(threads)
    quiet_libraries()
    _TRAINER = ProxyTrainer(Fidelity(**fidelity_dict), device)
    _VERSION = version
    _FUSED = fused


def _train(job: tuple[str, str, list[int] | None, dict[str, Any]]) -> dict[str, Any]:
    from autopeft.plan import PeftPlan

    plan_id, name, params, plan_dict = job
    plan = PeftPlan.from_dict(plan_dict)
    # The plan is stored only where the parameters cannot give it (a baseline outside the space): the
    # parameters, in the header's param_names order, decode to it, and a row stays a few hundred bytes.
    row: dict[str, Any] = {"id": plan_id, "name": name, "params": params,
                           **({"plan": plan_dict} if params is None else {}), "summary": plan.summary()}
    from autopeft.kernels import fused_kernels

    try:
        with fused_kernels(_FUSED):
            m = _TRAINER.run(plan).to_dict()
        row.update(state="COMPLETE", **{k: m[k] for k in (
            "score", "test_score", "metric", "trainable_params", "module_params", "base_params", "trainable_pct",
            "step_time", "peak_memory", "train_loss", "wall_time")})
    except Exception as exc:  # a diverged plan is a result too (the search sees it fail)
        row.update(state="FAIL", reason=f"{type(exc).__name__}: {exc}"[:500])
    row["code_version"] = _VERSION
    return row


def jobs(space, n: int, seed: int) -> list[tuple[str, str, list[int] | None, dict[str, Any]]]:
    """(id, name, parameters as a list in ``space.choices`` order or None, plan dict) of every plan, in order."""
    from autopeft.errors import SpaceError

    out = []
    for name, plan in baseline_plans(space.dims.num_layers).items():
        try:
            encoded = space.encode(plan)
            params = [encoded[k] for k in space.choices]
        except SpaceError:
            params = None  # not expressible in the space (e.g. 6 experts): recorded, never replayed by params
        out.append(("baseline:" + name, name, params, plan.to_dict()))
    out += [(pid, "", [params[k] for k in space.choices], plan.to_dict())
            for pid, params, plan in sampled_plans(space, n, seed)]
    return out


def report(path: Path) -> str:
    """A markdown summary of a table: plans recorded, failures, training time, and its Pareto front of
    (score up, trainable % down)."""
    from autopeft.plan import PeftPlan
    from autopeft.proxy.replay import ReplayTable

    table = ReplayTable.load(path)
    done = [r for r in table.rows if r.get("state") == "COMPLETE"]
    failed = len(table.rows) - len(done)
    walls = sorted(r["wall_time"] for r in done)
    front = [r for r in done if not any(
        o["score"] >= r["score"] and o["trainable_pct"] <= r["trainable_pct"]
        and (o["score"], o["trainable_pct"]) != (r["score"], r["trainable_pct"]) for o in done)]
    front.sort(key=lambda r: -r["score"])
    front = [r for i, r in enumerate(front)  # a plan recorded twice (a sample equal to a baseline) shows once
             if (r["score"], r["trainable_pct"]) not in {(o["score"], o["trainable_pct"]) for o in front[:i]}]
    h = table.header
    lines = [f"`{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`: {len(table.rows)} plans "
             f"({len(done)} complete, {failed} failed) · {table.fidelity.describe()} · space "
             f"{h.get('space_yaml', '').splitlines()[0].removeprefix('name: ') if h.get('space_yaml') else '?'} · "
             f"plan seed {h.get('plan_seed')} · code {h.get('code_version')}",
             "",
             f"Training wall time per plan: median {walls[len(walls) // 2]:.0f} s, min {walls[0]:.0f} s, "
             f"max {walls[-1]:.0f} s on {h.get('device', 'cpu')}." if walls else "",
             "",
             "| plan | name | score | test | trainable % | params |",
             "|---|---|---:|---:|---:|---:|"]
    for r in front:
        summary = (r.get("summary") or PeftPlan.from_dict(r["plan"]).summary())[:90].replace("|", "\\|")
        lines.append(f"| {summary} | {r.get('name', '')} | {r['score']:.4f} | {r['test_score']:.4f} | "
                     f"{r['trainable_pct']:.4f} | {r['trainable_params']:,} |")
    base = [r for r in table.rows if r["id"].startswith("baseline:")]
    if base:
        lines += ["", "Baselines: " + "; ".join(
            f"{r['name']} {r['score']:.4f} at {r['trainable_pct']:.3f} %" if r.get("state") == "COMPLETE"
            else f"{r['name']} failed" for r in base)]
    return "\n".join(lines)


def _field_value(text: str) -> str:
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE (e.g. steps=30)")
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plans", type=int, default=400, help="sampled plans (the baselines come on top)")
    ap.add_argument("--workers", type=int, default=1, help="training processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sampled plan set")
    ap.add_argument("--space", default=str(DEFAULT_SPACE))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--device", default="cpu", help="where plans train: cpu or cuda (a GPU the workers share)")
    ap.add_argument("--kernels", choices=("fused", "reference"), default="fused",
                    help="fused kernels, or the plain-torch reference paths")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", type=_field_value,
                    help="fidelity fields to change, e.g. steps=30 (a lower-fidelity table of the same plans; "
                    "give it its own --out)")
    ap.add_argument("--report", action="store_true", help="print a markdown summary of the table and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(report(Path(args.out)))
        return

    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.models import load_config, model_dims
    from autopeft.space import SearchSpace, load_space
    from autopeft.study.study import canonical_yaml

    from autopeft.errors import AutopeftError

    overrides = dict(item.split("=", 1) for item in args.set)
    try:  # the quickstart fidelity (what `autopeft run` trains with), with any --set fields changed
        fidelity = Fidelity.build({**Fidelity().model_dump(), **overrides})
    except AutopeftError as exc:
        sys.exit(f"--set: {exc}")
    spec = load_space(args.space)
    dims = model_dims(load_config(fidelity.model))
    space = SearchSpace(spec, dims, source=args.space)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = make_header(fidelity, canonical_yaml(spec), dims, args.seed, list(space.choices),
                         device_name(args.device), args.kernels)
    done = read_existing(out, header)
    todo = [j for j in jobs(space, args.plans, args.seed) if j[0] not in done]
    print(f"{out}: {len(done)} plans recorded, {len(todo)} to train ({fidelity.describe()}, on {header['device']}, "
          f"{args.kernels} kernels)", flush=True)
    if not out.exists() or out.stat().st_size == 0:
        out.write_text(json.dumps(header) + "\n")
    if not todo:
        return
    t0 = time.monotonic()
    ctx = mp.get_context("spawn")
    init = (fidelity.model_dump(), args.threads, header["code_version"], args.device, args.kernels == "fused")
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=init) as pool:
        for k, row in enumerate(pool.imap(_train, todo), 1):
            with out.open("a") as f:  # one line per plan, flushed at once: a kill loses at most the running plans
                f.write(json.dumps(row) + "\n")
            rate = (time.monotonic() - t0) / k
            print(f"[{k}/{len(todo)}] {row['id']} {row['state']} score={row.get('score')} "
                  f"params={row.get('trainable_params')} wall={row.get('wall_time', 0):.1f}s "
                  f"(mean {rate:.1f} s/plan) {row['summary'][:80]}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
