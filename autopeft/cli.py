"""The ``autopeft`` command line. Commands are thin: they parse flags and call the package."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autopeft.errors import AutopeftError

app = typer.Typer(add_completion=False, no_args_is_help=False, help="Search PEFT configurations with multi-objective BO.")
study_app = typer.Typer(help="Inspect studies.", no_args_is_help=True)
space_app = typer.Typer(help="Inspect and validate search spaces.", no_args_is_help=True)
app.add_typer(study_app, name="study")
app.add_typer(space_app, name="space")
#: Width of output that goes to a file or pipe (a log, `docker logs`, CI) when $COLUMNS does not say: rich's
#: 80 columns would fold every plan of the Pareto table over several lines.
PIPE_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    import os

    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty()) and not os.environ.get("COLUMNS")
    # No console markup: what the CLI prints holds user text (study names, paths, error messages) in which rich would
    # read "[...]" as a style tag, drop it, or fail on it. Styled lines pass markup=True and escape what they hold.
    return Console(stderr=stderr, width=PIPE_WIDTH if piped else None, markup=False)


console = _console()
err_console = _console(stderr=True)

StorageOpt = typer.Option(None, "--storage", help="SQLAlchemy URL or SQLite file (env AUTOPEFT_STORAGE; default sqlite:///autopeft.db).")

# Fidelity flags, shared by `run` and `retrain` (defaults: the quickstart's in `run`, the preset's in `retrain`).
StepsOpt = typer.Option(None, "--steps", help="Optimizer steps per trial (quickstart: 120).")
BatchSizeOpt = typer.Option(None, "--batch-size", help="Examples per step (quickstart: 16).")
TrainExamplesOpt = typer.Option(None, "--train-examples", help="Training examples drawn (quickstart: 2000).")
SamplerOpt = typer.Option("botorch", "--sampler", help="botorch (autopeft's multi-objective BO, docs/optimizer.md), random, tpe, nsga2, optuna-botorch or optuna-gp.")
PackOpt = typer.Option(1, "--pack", min=1, help="Trials trained together on one shared frozen base model (one batched forward per step).")
EvalExamplesOpt = typer.Option(None, "--eval-examples", help="Validation/test examples scored (quickstart: 600).")
MaxLengthOpt = typer.Option(None, "--max-length", help="Max tokens per example (quickstart: 64).")
LearningRateOpt = typer.Option(None, "--learning-rate", help="Peak learning rate (quickstart: 1e-3).")
SeedOpt = typer.Option(None, "--seed", help="Seed for data, init and sampler (quickstart: 0).")
# Throughput options (fidelity fields too: off by default, as in studies made before they existed).
LengthBucketsOpt = typer.Option(None, "--length-buckets/--no-length-buckets", help="Batch examples of similar length together (less padding); default off.")
FrozenCacheOpt = typer.Option(None, "--frozen-cache/--no-frozen-cache", help="Compute the blocks below each plan's lowest module once per worker (no dropout there); default off.")
FrozenCacheDtypeOpt = typer.Option(None, "--frozen-cache-dtype", help="float32 or bfloat16: what the frozen-layer cache stores (default float32).")
CompileOpt = typer.Option(None, "--compile/--no-compile", help="torch.compile the transformer blocks; default off.")
AutocastOpt = typer.Option(None, "--autocast", help="Mixed precision: off, bf16 (GPU or CPU) or fp16 (GPU); default off.")
CheckpointingOpt = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in the backward pass (less memory); default off.")
CudaGraphsOpt = typer.Option(None, "--cuda-graphs/--no-cuda-graphs", help="Replay each training step as CUDA graphs (batches padded to a multiple of 16 tokens; CUDA only, not with --compile or --gradient-checkpointing); default off.")
PooledOnlyOpt = typer.Option(None, "--pooled-only/--no-pooled-only", help="The last block computes its query, attention output and feed-forward for the token the classifier reads alone, keys and values for every token (BERT-family models); default off.")


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def _note(note: str | None) -> None:
    if note:
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_pareto(study, title: str | None = None) -> None:
    from autopeft.analysis import pareto_rows, state_counts

    rows = pareto_rows(study)
    counts = state_counts(study)
    table = Table(title=title or f"Pareto front of {study.name}", title_justify="left")
    for col, justify in (("trial", "right"), ("score", "right"), ("test", "right"), ("trainable %", "right"),
                         ("params", "right"), ("step s", "right"), ("plan", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(str(r.number), _fmt(r.score, ".4f"), _fmt(r.test_score, ".4f"), _fmt(r.trainable_pct, ".4f"),
                      _fmt(r.trainable_params, ","), _fmt(r.step_time, ".3f"), r.summary)
    console.print(table)
    console.print(
        f"{counts['COMPLETE']} complete, {counts['FAIL']} failed, {counts['RUNNING']} running, "
        f"{counts['WAITING']} waiting · fidelity: {study.fidelity.describe()}",
        highlight=False,
    )


def _fidelity(**values):
    from autopeft.proxy.fidelity import Fidelity

    given = {k: v for k, v in values.items() if v is not None}
    if given.get("objective") == "replay" and given.get("table"):  # the table's fidelity, unless a flag says more
        from autopeft.proxy.replay import load_table

        given = {**load_table(given["table"]).fidelity.model_dump(), **given}
    return Fidelity.build(given)


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    """With no command, run the quickstart study (same as ``autopeft run``)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@app.command()
def run(
    space: str = typer.Option("autopeft", "--space", help="Search-space YAML file or preset name (autopeft, mola, full)."),
    task: Optional[str] = typer.Option(None, "--task", help="rotten_tomatoes (default), bbc_news, a CSV/JSONL file or hf:<dataset>."),
    model: Optional[str] = typer.Option(None, "--model", help="minilm (packaged, default), a hub id or a local path."),
    trials: int = typer.Option(12, "--trials", min=1, help="Total COMPLETE trials the study should hold."),
    workers: int = typer.Option(2, "--workers", min=0, help="Worker processes on this machine; 0 creates (or checks) the study for `autopeft propose` and remote workers, and exits."),
    sampler: str = SamplerOpt,
    storage: Optional[str] = StorageOpt,
    study: Optional[str] = typer.Option(None, "--study", help="Study name \\[default: <space>-<task>-<model>]."),
    steps: Optional[int] = StepsOpt,
    batch_size: Optional[int] = BatchSizeOpt,
    train_examples: Optional[int] = TrainExamplesOpt,
    eval_examples: Optional[int] = EvalExamplesOpt,
    max_length: Optional[int] = MaxLengthOpt,
    learning_rate: Optional[float] = LearningRateOpt,
    seed: Optional[int] = SeedOpt,
    length_buckets: Optional[bool] = LengthBucketsOpt,
    frozen_cache: Optional[bool] = FrozenCacheOpt,
    frozen_cache_dtype: Optional[str] = FrozenCacheDtypeOpt,
    compile: Optional[bool] = CompileOpt,
    autocast: Optional[str] = AutocastOpt,
    gradient_checkpointing: Optional[bool] = CheckpointingOpt,
    pooled_only: Optional[bool] = PooledOnlyOpt,
    cuda_graphs: Optional[bool] = CudaGraphsOpt,
    objective: Optional[str] = typer.Option(None, "--objective", help="proxy (train each plan, default), synthetic (closed-form score, no training: tests the set-up) or replay (scores from --table)."),
    table: Optional[str] = typer.Option(None, "--table", help="Replay objective: table of trained plans (benchmarks/build_table.py)."),
    trial_seconds: Optional[float] = typer.Option(None, "--trial-seconds", help="Synthetic objective: seconds each trial takes \\[0]."),
    startup_trials: int = typer.Option(8, "--startup-trials", min=1, help="Quasi-random trials before the GP proposes."),
    device: str = typer.Option("cpu", "--device", help="Torch device for training, e.g. cpu or cuda:0."),
    pack: int = PackOpt,
    warm_start: Optional[str] = typer.Option(None, "--warm-start", help="Study (same storage, same --space) whose best plans to queue first, mapped to this model by relative layer depth."),
    warm_start_top: int = typer.Option(8, "--warm-start-top", min=1, help="How many plans --warm-start queues."),
    seed_sensitivity: bool = typer.Option(False, "--seed-sensitivity", help="Queue first a few plans on the layers where the frozen model's gradient sensitivity is highest (a zero-cost signal)."),
) -> None:
    """Run (or resume) a search and print its Pareto front. With no options: the quickstart."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from autopeft.proxy.pack import check_pack, pack_note
    from autopeft.study.runner import prepare_study, run_study
    from autopeft.study.storage import redact

    try:
        fid = _fidelity(task=task, model=model, steps=steps, batch_size=batch_size, train_examples=train_examples,
                        eval_examples=eval_examples, max_length=max_length, learning_rate=learning_rate, seed=seed,
                        objective=objective, trial_seconds=trial_seconds, table=table, length_buckets=length_buckets,
                        frozen_cache=frozen_cache, frozen_cache_dtype=frozen_cache_dtype, compile=compile,
                        autocast=autocast, gradient_checkpointing=gradient_checkpointing, pooled_only=pooled_only,
                        cuda_graphs=cuda_graphs)
        if fid.objective == "proxy":
            from autopeft.proxy.train import check_options

            # before any worker starts: e.g. fp16 on a CPU. With --workers 0 nothing trains here, so a study for GPU
            # workers (--autocast fp16, --cuda-graphs) can be created on a machine without one.
            check_options(fid, device if workers else None)
        st, created = prepare_study(space, fid, storage=storage, study_name=study, sampler=sampler)
        check_pack(pack, st.objectives, st.fidelity)
        _note(pack_note(pack, device))
        seeded = _warm_start(st, warm_start, warm_start_top) if warm_start else []
    except AutopeftError as exc:
        _fail(exc)
    verb = "created" if created else "resuming"
    console.print(f"study [bold]{escape(st.name)}[/] ({verb}) in {escape(redact(st.storage.url))}", highlight=False,
                  markup=True)
    if seed_sensitivity:
        from autopeft.sensitivity import seed_study

        ranking, queued = seed_study(st, device=device)
        console.print(f"sensitivity seeds: layers by sensitivity {ranking}; queued {len(queued)} plans", highlight=False)
    if warm_start:
        console.print(f"warm start: queued {len(seeded)} plans of {warm_start} "
                      f"({', '.join(f'{a}->{b}' for a, b in seeded) or 'all already in this study'})", highlight=False)
    console.print(f"space {st.space.spec.name}: {len(st.space.choices)} parameters, "
                  f"{st.space.cardinality():.3g} configurations · {fid.describe()}", highlight=False)
    if workers == 0:
        console.print(f"study ready; serve it with: autopeft propose --study {st.name} and autopeft worker --study {st.name}",
                      highlight=False)
        return
    with Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("trials", total=trials, extra="")

        def on_progress(complete: int, failed: int, running: int) -> None:
            progress.update(bar, completed=min(complete, trials), extra=f"{running} running, {failed} failed")

        try:
            run_study(st, n_trials=trials, workers=workers, sampler=sampler, device=device,
                      n_startup_trials=startup_trials, on_progress=on_progress, pack=pack)
        except KeyboardInterrupt:
            err_console.print("interrupted: running trials were handed back; run the same command to resume")
            raise typer.Exit(130)
        except AutopeftError as exc:
            _fail(exc)
    print_pareto(st)


HeartbeatOpt = typer.Option(10, "--heartbeat-interval", min=1, help="Seconds between a running trial's heartbeats.")
GraceOpt = typer.Option(120, "--grace-period", min=1, help="Seconds without a heartbeat before a trial counts as dead and is re-queued.")
MaxRetryOpt = typer.Option(2, "--max-retry", min=0, help="Re-queues of a trial whose worker died; after that it stays FAIL.")
OutageOpt = typer.Option(600.0, "--outage-deadline", min=1, help="Seconds to wait for an unreachable database before giving up.")


def _install_stop_signals(stop) -> None:
    import signal

    def handler(signum, frame):
        err_console.print(f"{signal.Signals(signum).name}: finishing the current step, then exiting", highlight=False)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _warm_start(st, source: str, top: int) -> list[tuple[int, int]]:
    from autopeft.study.study import load
    from autopeft.transfer import warm_start

    return warm_start(st, load(st.storage, source), top)


@app.command()
def worker(
    study: str = typer.Option(..., "--study", help="Study to work on."),
    storage: Optional[str] = StorageOpt,
    trials: Optional[int] = typer.Option(None, "--trials", help="Stop when the study holds this many COMPLETE trials."),
    max_trials: Optional[int] = typer.Option(None, "--max-trials", min=1, help="Stop after this worker ran this many trials."),
    idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", min=0, help="Stop after waiting this many seconds for a trial."),
    sampler: str = typer.Option("botorch", "--sampler", help="Sampler used when no proposer serves the study and nothing is queued."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda:1."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch CPU threads."),
    heartbeat_interval: int = HeartbeatOpt,
    grace_period: int = GraceOpt,
    max_retry: int = MaxRetryOpt,
    outage_deadline: float = OutageOpt,
    pack: int = PackOpt,
    processes: int = typer.Option(1, "--processes", min=1, help="Worker processes to start, all on --device; on a GPU several keep a small proxy busy (docs/scale_out.md)."),
) -> None:
    """Claim and train trials of an existing study until told to stop: one at a time, or --pack K together;
    --processes N runs N such workers at once.

    SIGTERM or Ctrl-C hands the running trials back to the queue and exits 0.
    """
    from autopeft.study.runner import WorkerSpec, run_workers
    from autopeft.study.storage import storage_url

    try:
        from autopeft.proxy.train import check_device

        check_device(device)
        from autopeft.proxy.pack import pack_note

        _note(pack_note(pack, device))
        spec = WorkerSpec(storage_url(storage), study, sampler=sampler, n_trials=trials, max_trials=max_trials,
                          device=device, threads=threads, idle_timeout=idle_timeout,
                          heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry,
                          outage_deadline=outage_deadline, pack=pack)
        all_stats = run_workers(spec, processes)
    except AutopeftError as exc:
        _fail(exc)
    for stats in all_stats:
        console.print(f"worker finished: {stats.completed} complete, {stats.failed} failed; {stats.exit_reason}",
                      highlight=False)


@app.command()
def propose(
    study: str = typer.Option(..., "--study", help="Study to propose for."),
    storage: Optional[str] = StorageOpt,
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Queue exactly N proposals and exit (instead of serving)."),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Exit when the study holds N COMPLETE trials; never queue past N."),
    queue_depth: Optional[int] = typer.Option(None, "--queue-depth", min=1, help="WAITING trials to keep queued \\[one per live worker plus one]."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Most proposals sampled as one pending-aware batch."),
    poll: float = typer.Option(1.0, "--poll", min=0.05, help="Seconds between queue checks."),
    sampler: str = SamplerOpt,
    startup_trials: int = typer.Option(8, "--startup-trials", min=1, help="Quasi-random trials before the GP proposes."),
    heartbeat_interval: int = HeartbeatOpt,
    grace_period: int = GraceOpt,
    max_retry: int = MaxRetryOpt,
    outage_deadline: float = OutageOpt,
) -> None:
    """Serve a study: keep WAITING trials queued ahead of the live workers (or queue --n once).

    Exits on SIGTERM/SIGINT (after the batch in progress) or when the study holds --trials COMPLETE trials.
    """
    import threading

    from autopeft.optimize.samplers import make_sampler
    from autopeft.study.presence import Presence
    from autopeft.study.proposer import run_proposer
    from autopeft.study.runner import quiet_libraries
    from autopeft.study.storage import open_storage, redact
    from autopeft.study.study import load
    from autopeft.study.worker import propose as do_propose

    try:
        store = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry)
        seed = load(store, study).fidelity.seed  # the study's seed drives its sampler too
        st = load(store, study, sampler=make_sampler(sampler, seed=seed, n_startup_trials=startup_trials))
    except AutopeftError as exc:
        _fail(exc)
    quiet_libraries()
    if n is not None:
        for num in do_propose(st, n):
            trial = next(t for t in st.trials() if t.number == num)
            console.print(f"queued trial {num}: {st.space.decode({k: int(v) for k, v in trial.params.items()}).summary()}",
                          highlight=False)
        return
    stop = threading.Event()
    _install_stop_signals(stop)
    presence = Presence(st, "proposer")
    depth = f"{queue_depth}" if queue_depth else "live workers + 1"
    console.print(f"proposing for {st.name} in {redact(st.storage.url)} · queue depth {depth}"
                  + (f" · until {trials} complete" if trials else ""), highlight=False)
    stats = run_proposer(st, n_trials=trials, queue_depth=queue_depth, max_batch=max_batch, poll_seconds=poll,
                         presence=presence, stop=stop, deadline=outage_deadline)
    console.print(f"proposer finished: {len(stats.proposed)} trials queued in {stats.batches} batches; {stats.exit_reason}",
                  highlight=False)


@study_app.command("list")
def study_list(storage: Optional[str] = StorageOpt) -> None:
    """Studies in the storage with trial counts."""
    import optuna

    from autopeft.study.storage import open_storage

    try:
        store = open_storage(storage)
    except AutopeftError as exc:
        _fail(exc)
    table = Table(title="studies", title_justify="left")
    for col in ("study", "complete", "failed", "running", "waiting", "created"):
        table.add_column(col)
    for s in optuna.get_all_study_summaries(store, include_best_trial=False):
        trials = store.get_all_trials(s._study_id, deepcopy=False)
        count = lambda name: str(sum(t.state.name == name for t in trials))  # noqa: E731
        created = s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else "-"
        table.add_row(s.study_name, count("COMPLETE"), count("FAIL"), count("RUNNING"), count("WAITING"), created)
    console.print(table)


@study_app.command("show")
def study_show(
    name: str = typer.Argument(..., help="Study name."),
    storage: Optional[str] = StorageOpt,
    all_trials: bool = typer.Option(False, "--all", help="List every trial, failures with their reasons."),
) -> None:
    """The study's Pareto table (trial, score, trainable %, step time, plan)."""
    from autopeft.analysis import trial_row
    from autopeft.study.storage import open_storage
    from autopeft.study.study import load

    try:
        st = load(open_storage(storage), name)
    except AutopeftError as exc:
        _fail(exc)
    print_pareto(st)
    if all_trials:
        table = Table(title="all trials", title_justify="left")
        for col in ("trial", "state", "score", "trainable %", "plan / reason"):
            table.add_column(col)
        for t in st.trials():
            r = trial_row(t)
            table.add_row(str(r.number), r.state, _fmt(r.score, ".4f"), _fmt(r.trainable_pct, ".4f"),
                          r.fail_reason if r.state == "FAIL" else r.summary)
        console.print(table)


@study_app.command("compare")
def study_compare(
    a: str = typer.Argument(..., help="First study."),
    b: str = typer.Argument(..., help="Second study."),
    storage: Optional[str] = StorageOpt,
    reference: Optional[str] = typer.Option(None, "--reference", help="Hypervolume reference point, one value per objective (e.g. 0,100) \\[default: score 0, 100 % trainable]."),
) -> None:
    """Hypervolume, trial counts and both Pareto fronts of two studies, side by side."""
    from autopeft.compare import compare_studies, parse_reference
    from autopeft.study.storage import open_storage
    from autopeft.study.study import load

    try:
        store = open_storage(storage)
        sa, sb = load(store, a), load(store, b)
        ref = parse_reference(reference, sa.objectives) if reference else None
        c = compare_studies(sa, sb, ref)
    except AutopeftError as exc:
        _fail(exc)
    ref_text = ", ".join(f"{o} {v:g}" for o, v in zip(c.objectives, c.reference.values))
    console.print(f"{c.a.name} vs {c.b.name} · hypervolume reference point: {ref_text}", highlight=False)
    summary = Table()
    for col, justify in (("study", "left"), ("space", "left"), ("complete", "right"), ("failed", "right"),
                         ("front", "right"), ("hypervolume", "right"), ("vs first", "right")):
        summary.add_column(col, justify=justify)
    for side in (c.a, c.b):
        ratio = side.hypervolume / c.a.hypervolume if c.a.hypervolume else None
        summary.add_row(side.name, side.space, str(side.counts["COMPLETE"]), str(side.counts["FAIL"]),
                        str(len(side.front)), f"{side.hypervolume:.4f}", _fmt(ratio, ".3f"))
    console.print(summary)
    fronts = Table(title="Pareto fronts, best first", title_justify="left")
    for name in (c.a.name, c.b.name):
        fronts.add_column(f"{name}\ntrial", justify="right")
        for o in c.objectives:
            fronts.add_column(o, justify="right")
        fronts.add_column("plan", justify="left")
    rows = {side.name: side.rows for side in (c.a, c.b)}
    for i in range(max(len(c.a.front), len(c.b.front))):
        cells: list[str] = []
        for side in (c.a, c.b):
            if i < len(side.front):
                t = side.front[i]
                cells += [str(t.number), *(f"{v:.4f}" for v in t.values), rows[side.name][i].summary]
            else:
                cells += [""] * (len(c.objectives) + 2)
        fronts.add_row(*cells)
    console.print(fronts)
    console.print(f"fidelity: {c.fidelity}", highlight=False)


@study_app.command("status")
def study_status_cmd(
    name: str = typer.Argument(..., help="Study name."),
    storage: Optional[str] = StorageOpt,
    failures: int = typer.Option(10, "--failures", min=0, help="Most recent failures to list."),
) -> None:
    """Live workers and proposers, trials per state, throughput, and failures with their reasons."""
    import time

    from autopeft.study.status import study_status
    from autopeft.study.storage import open_storage, redact
    from autopeft.study.study import load

    try:
        st = load(open_storage(storage), name)
    except AutopeftError as exc:
        _fail(exc)
    s = study_status(st)
    now = time.time()
    c = s.counts
    console.print(f"study [bold]{escape(s.name)}[/] in {escape(redact(st.storage.url))} · fidelity: "
                  f"{escape(st.fidelity.describe())}", highlight=False, markup=True)
    console.print(f"trials: {c['COMPLETE']} complete, {c['RUNNING']} running, {c['WAITING']} waiting, {c['FAIL']} failed",
                  highlight=False)
    rate = f"{s.trials_per_hour:.1f} trials/h over the run" if s.trials_per_hour else "no completed trials yet"
    mean = f", {s.mean_trial_seconds:.1f} s per trial" if s.mean_trial_seconds is not None else ""
    console.print(f"throughput: {s.completed_last_hour} completed in the last hour; {rate}{mean}", highlight=False)
    table = Table(title=f"{len(s.workers)} live worker(s), {len(s.proposers)} proposer(s)", title_justify="left")
    for col in ("role", "id", "device", "state", "trial", "last seen"):
        table.add_column(col)
    for p in s.proposers + s.workers:
        table.add_row(p.role, p.worker_id, p.device, p.state, "-" if p.trial_number is None else str(p.trial_number),
                      f"{p.age(now):.0f} s ago")
    console.print(table)
    if s.gone:
        console.print(f"{len(s.gone)} earlier process(es) stopped or went silent", highlight=False)
    if s.failures and failures:
        ftable = Table(title=f"failures (newest {min(failures, len(s.failures))} of {len(s.failures)})", title_justify="left")
        for col in ("trial", "attempt", "re-queued as", "reason"):
            ftable.add_column(col)
        for f in s.failures[:failures]:
            ftable.add_row(str(f.number), str(f.attempt), "-" if f.requeued_as is None else str(f.requeued_as), f.reason)
        console.print(ftable)


@app.command()
def export(
    name: str = typer.Argument(..., help="Study name."),
    output: Path = typer.Option(..., "-o", "--output", help="YAML file to write (--format peft: a folder)."),
    trial: Optional[int] = typer.Option(None, "--trial", help="Trial number to export."),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="Best score within this trainable budget, e.g. 1%."),
    storage: Optional[str] = StorageOpt,
    fmt: str = typer.Option("yaml", "--format", help="yaml (plan + weights beside it) or peft (adapter_config.json + adapter_model.safetensors)."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="Folder of stored trial weights \\[env AUTOPEFT_ARTIFACTS; default beside a SQLite file]."),
) -> None:
    """Write a trial's plan (with its study, fidelity and metrics) as YAML, or in Hugging Face peft's format."""
    from autopeft.analysis import parse_budget, select_trial
    from autopeft.export import export_trial
    from autopeft.study.storage import open_storage
    from autopeft.study.study import load

    try:
        if trial is not None and max_params is not None:
            raise AutopeftError("--trial / --max-params: give one of them, not both")
        budget = parse_budget(max_params) if max_params is not None else None
        st = load(open_storage(storage), name)
        chosen = select_trial(st, trial=trial, max_params_pct=budget)
        result = export_trial(st, chosen, output, fmt, artifacts=artifacts)
    except AutopeftError as exc:
        _fail(exc)
    for note in result.notes:
        _note(note)
    m = chosen.user_attrs.get("metrics", {})
    console.print(f"wrote {', '.join(map(str, result.paths))} ({result.format}): trial {chosen.number}, "
                  f"score {m.get('score', float('nan')):.4f}, "
                  f"{m.get('trainable_pct', float('nan')):.4f}% trainable · {chosen.user_attrs.get('plan_summary', '')}",
                  highlight=False)


@app.command()
def apply(
    plan_file: Path = typer.Argument(..., help="Plan YAML written by `autopeft export`."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model \\[the plan's fidelity model]."),
    train: bool = typer.Option(False, "--train", help="Retrain the plan at its recorded fidelity and print the metrics."),
) -> None:
    """Load an exported plan onto its base model (and optionally retrain it)."""
    from autopeft.export import read_plan
    from autopeft.peft import count_parameters
    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.models import load_classifier

    try:
        plan, doc = read_plan(plan_file)
        fid = Fidelity.build({**(doc.get("fidelity") or {}), **({"model": model} if model else {})})
        if train:
            from autopeft.proxy.train import ProxyTrainer

            metrics = ProxyTrainer(fid).run(plan)
            console.print(metrics.to_dict())
            return
        from autopeft.proxy.tasks import load_task

        net, _ = load_classifier(fid.model, len(load_task(fid.task, seed=fid.seed).label_names), fid.seed)
        from autopeft.export import apply_plan_file

        apply_plan_file(net, plan_file, seed=fid.seed)  # with the trained weights when exported beside the plan
    except AutopeftError as exc:
        _fail(exc)
    trainable, total = count_parameters(net)
    console.print(f"applied {plan.summary()} to {fid.model}: {trainable:,} trainable of {total:,} parameters", highlight=False)


@space_app.command("validate")
def space_validate(
    path: str = typer.Argument(..., help="Search-space YAML file or preset name."),
    model: str = typer.Option("minilm", "--model", help="Model whose shape the space is bound to."),
) -> None:
    """Check a space file; print its size, or every error with its YAML path."""
    from autopeft.errors import SpaceError
    from autopeft.proxy.models import load_config, model_dims
    from autopeft.space import SearchSpace, load_space

    try:
        spec = load_space(path)
        dims = model_dims(load_config(model))
        space = SearchSpace(spec, dims, source=path)
    except SpaceError as exc:
        err_console.print(f"[bold red]invalid:[/] {escape(str(exc.source))}", highlight=False, markup=True)
        for where, msg in exc.errors:
            err_console.print(f"  {where}: {msg}", highlight=False, markup=False)
        raise typer.Exit(2)
    except AutopeftError as exc:
        _fail(exc)
    console.print(f"{path}: valid · space {spec.name!r} on {model} ({dims.num_layers} layers, hidden {dims.hidden_size})", highlight=False)
    console.print(f"{len(space.choices)} parameters, {space.cardinality():,} configurations; objectives: {', '.join(space.objectives)}"
                  + (f"; budget <= {spec.budget.max_trainable_pct}% trainable" if spec.budget else ""), highlight=False)


@space_app.command("list")
def space_list() -> None:
    """Packaged presets."""
    from autopeft.space import load_space, presets

    for name, path in presets().items():
        console.print(f"{name:10s} {load_space(path).description}", highlight=False)


artifacts_app = typer.Typer(help="Stored trial weights: disk use and pruning.", no_args_is_help=True)
app.add_typer(artifacts_app, name="artifacts")
ArtifactsOpt = typer.Option(None, "--artifacts", help="Folder of stored trial weights \\[env AUTOPEFT_ARTIFACTS; default beside a SQLite file].")


@artifacts_app.command("du")
def artifacts_du(name: str = typer.Argument(..., help="Study name."), storage: Optional[str] = StorageOpt,
                 artifacts: Optional[Path] = ArtifactsOpt) -> None:
    """Disk use of the stored weights, per trial."""
    from autopeft.artifacts import artifact_dir, artifact_usage
    from autopeft.study.storage import open_storage
    from autopeft.study.study import load

    try:
        st = load(open_storage(storage), name)
        rows = artifact_usage(st, artifacts)
    except AutopeftError as exc:
        _fail(exc)
    table = Table(title=f"stored weights of {name} in {artifact_dir(st.storage.url, artifacts)}", title_justify="left")
    for col, justify in (("trial", "right"), ("bytes", "right"), ("stored", "left"), ("pareto", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(str(r.trial), f"{r.bytes:,}", "yes" if r.present else "pruned", "yes" if r.pareto else "")
    console.print(table)
    kept = [r for r in rows if r.present]
    console.print(f"{len(kept)} trials stored, {sum(r.bytes for r in kept):,} bytes", highlight=False)


@artifacts_app.command("prune")
def artifacts_prune(name: str = typer.Argument(..., help="Study name."), storage: Optional[str] = StorageOpt,
                    keep: str = typer.Option("pareto", "--keep", help="pareto (keep the front's weights) or none."),
                    artifacts: Optional[Path] = ArtifactsOpt) -> None:
    """Delete stored weights of trials off the Pareto front."""
    from autopeft.artifacts import prune_artifacts
    from autopeft.study.storage import open_storage
    from autopeft.study.study import load

    try:
        removed, freed = prune_artifacts(load(open_storage(storage), name), keep, artifacts)
    except AutopeftError as exc:
        _fail(exc)
    console.print(f"removed {removed} stored weight files, {freed:,} bytes freed (kept: {keep})", highlight=False)


@app.command()
def dashboard(
    storage: Optional[str] = StorageOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on; 0.0.0.0 lets other machines in (no login: the page is read-only)."),
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port to serve on."),
) -> None:
    """Open the read-only Streamlit dashboard (Pareto front, progress, trials, plans, export) on a study database."""
    import importlib.util
    import os
    import subprocess

    from autopeft.study.storage import STORAGE_ENV, redact, storage_url

    missing = [m for m in ("streamlit", "plotly", "pandas") if importlib.util.find_spec(m) is None]
    if missing:
        _fail(AutopeftError(f"dashboard: {', '.join(missing)} not installed; pip install 'autopeft[dashboard]'"))
    app_path = Path(__file__).parent / "dashboard" / "app.py"  # the page ships inside the package
    url = storage_url(storage)
    command = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", host,
               "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    console.print(f"dashboard on http://{host}:{port} · {redact(url)} (read-only) · Ctrl-C stops it", highlight=False)
    # The URL travels in the environment, not on the command line, so a password never shows in `ps`.
    env = {**os.environ, STORAGE_ENV: url}
    if os.name == "posix":
        # Streamlit takes this process's place, so a signal sent to it (`kill`, `docker stop`, a supervisor)
        # reaches the server itself. A child started with subprocess would outlive this process on SIGTERM and
        # keep serving the port.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, command, env)
    try:
        code = subprocess.call(command, env=env)
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


@app.command()
def promote(
    name: str = typer.Argument(..., help="Study whose most promising trials to promote."),
    to: str = typer.Option("default", "--to", help="Fidelity preset to train them at: quick, default or full."),
    top: Optional[int] = typer.Option(None, "--top", help="Promote this many trials (by Pareto front, then score)."),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="Promote this share of the completed trials, e.g. 0.33."),
    train: bool = typer.Option(False, "--train", help="Train the promoted trials here now (else any worker of <study>@<preset> does)."),
    storage: Optional[str] = StorageOpt,
    device: str = typer.Option("cpu", "--device", help="Torch device for --train."),
) -> None:
    """Successive halving: queue a study's most promising trials at a higher fidelity in <study>@<preset>.

    Prints how well the two fidelities agree (Kendall's tau of the linked trials' scores) once both have results.
    """
    from autopeft.promote import fidelity_agreement
    from autopeft.promote import promote as do_promote
    from autopeft.study.storage import open_storage
    from autopeft.study.study import load

    try:
        if train:
            from autopeft.proxy.train import check_device

            check_device(device)  # before anything is queued
        st = open_storage(storage)
        result = do_promote(st, name, to, top=top, fraction=fraction)
    except AutopeftError as exc:
        _fail(exc)
    comp = result.companion
    console.print(f"queued {len(result.queued)} of {result.candidates} completed trials of {name} in {comp.name} "
                  f"({comp.fidelity.describe()}): " + (", ".join(f"{s}->{c}" for s, c in result.queued) or "none new"),
                  highlight=False)
    if train and result.queued:
        from autopeft.proxy.synthetic import make_evaluator
        from autopeft.study.runner import quiet_libraries
        from autopeft.study.worker import run_worker

        quiet_libraries()
        try:
            run_worker(comp, make_evaluator(comp.fidelity, device), self_propose=False, idle_timeout=0)
        except KeyboardInterrupt:
            err_console.print(f"interrupted: the running trial was handed back to {comp.name}'s queue")
            raise typer.Exit(130)
    elif result.queued:
        console.print(f"train them with: autopeft worker --study {comp.name}", highlight=False)
    agreement = fidelity_agreement(load(st, name), comp)
    if agreement.pairs:
        tau = "n/a (fewer than 2 pairs)" if agreement.tau is None else f"{agreement.tau:.3f}"
        console.print(f"fidelity agreement over {len(agreement.pairs)} promoted trials: Kendall tau {tau}",
                      highlight=False)


@app.command()
def retrain(
    name: str = typer.Argument(..., help="Study whose trial to retrain."),
    trial: int = typer.Option(..., "--trial", help="Number of the COMPLETE trial to retrain."),
    fidelity: str = typer.Option("full", "--fidelity", help="Fidelity preset: quick, default or full (docs/tasks.md); the flags below override it."),
    steps: Optional[int] = StepsOpt,
    batch_size: Optional[int] = BatchSizeOpt,
    train_examples: Optional[int] = TrainExamplesOpt,
    eval_examples: Optional[int] = EvalExamplesOpt,
    max_length: Optional[int] = MaxLengthOpt,
    learning_rate: Optional[float] = LearningRateOpt,
    seed: Optional[int] = SeedOpt,
    length_buckets: Optional[bool] = LengthBucketsOpt,
    frozen_cache: Optional[bool] = FrozenCacheOpt,
    frozen_cache_dtype: Optional[str] = FrozenCacheDtypeOpt,
    compile: Optional[bool] = CompileOpt,
    autocast: Optional[str] = AutocastOpt,
    gradient_checkpointing: Optional[bool] = CheckpointingOpt,
    pooled_only: Optional[bool] = PooledOnlyOpt,
    cuda_graphs: Optional[bool] = CudaGraphsOpt,
    storage: Optional[str] = StorageOpt,
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda:0."),
    again: bool = typer.Option(False, "--again", help="Retrain even when the trial was already retrained at this fidelity."),
) -> None:
    """Retrain a trial's plan at a higher (or other) fidelity, as a linked trial of the study <study>@<preset>.

    Prints the source and retrained metrics side by side. Weights are stored as a worker stores them, so
    `autopeft export <study>@<preset> --trial M` needs no further training. Ctrl-C hands the trial back;
    running the same command again resumes it.
    """
    from autopeft.retrain import prepare_retrain
    from autopeft.retrain import retrain as do_retrain
    from autopeft.study.runner import quiet_libraries
    from autopeft.study.storage import open_storage

    overrides = dict(steps=steps, batch_size=batch_size, train_examples=train_examples, eval_examples=eval_examples,
                     max_length=max_length, learning_rate=learning_rate, seed=seed, length_buckets=length_buckets,
                     frozen_cache=frozen_cache, frozen_cache_dtype=frozen_cache_dtype, compile=compile,
                     autocast=autocast, gradient_checkpointing=gradient_checkpointing, pooled_only=pooled_only,
                     cuda_graphs=cuda_graphs)
    try:
        request = prepare_retrain(open_storage(storage), name, trial, fidelity, overrides, again=again)
        from autopeft.proxy.train import check_options

        check_options(request.fidelity, device)
    except AutopeftError as exc:
        _fail(exc)
    quiet_libraries()
    resumed = ""
    if request.resume is not None:
        resumed = (f" (resuming handed-back trial {request.resume.number})" if request.resume.state.name == "WAITING"
                   else f" (trial {request.resume.number} was left running without a heartbeat: failed, trained anew)")
    console.print(f"retraining trial {trial} of {name} ({request.trial.user_attrs.get('plan_summary', '')}) into "
                  f"{request.companion}{resumed} · {request.fidelity.describe()}", highlight=False)
    try:
        result = do_retrain(request, device)
    except KeyboardInterrupt:
        err_console.print(f"interrupted: the trial was handed back to {request.companion}'s queue; "
                          "run the same command to resume it")
        raise typer.Exit(130)
    except AutopeftError as exc:
        _fail(exc)
    src = request.trial.user_attrs.get("metrics", {})
    new = result.trial.user_attrs.get("metrics", {})
    table = Table(title=f"trial {trial} of {name} retrained at {fidelity}", title_justify="left")
    table.add_column("")
    table.add_column(f"{name} #{trial}", justify="right")
    table.add_column(f"{result.study.name} #{result.trial.number}", justify="right")
    for label, key, spec in (("score", "score", ".4f"), ("test score", "test_score", ".4f"),
                             ("trainable %", "trainable_pct", ".4f"), ("step s", "step_time", ".3f")):
        table.add_row(label, _fmt(src.get(key), spec), _fmt(new.get(key), spec))
    console.print(table)
    console.print(f"{name} #{trial}: {request.source.fidelity.describe()}\n"
                  f"{result.study.name} #{result.trial.number}: {request.fidelity.describe()}", highlight=False)
    verb = "created" if result.created else "added to"
    console.print(f"{verb} study {result.study.name}: trial {result.trial.number}; export it with "
                  f"`autopeft export {result.study.name} --trial {result.trial.number} --format peft -o DIR`",
                  highlight=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
