"""A training step replayed as CUDA graphs (the fidelity's ``cuda_graphs``), on tiny BERT and LLaMA classifiers.

On any machine the step runs through :class:`StepGraphs` with an eager stand-in for the recording (the CPU twin):
the padded batch widths, the per-shape bookkeeping and the wrapper's gradients are the same code. With a CUDA device
the same trials are recorded and replayed for real and compared with eager training.
"""

import gc
import weakref

import pytest
import torch

from autopeft.errors import StudyError
from autopeft.plan import ModuleSpec as M
from autopeft.plan import PeftPlan
from autopeft.proxy import train as proxy_train
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.graphs import GRAPH_WIDTH, StepGraphs, padded_width
from autopeft.proxy.pack import PackedTrainer
from autopeft.proxy.train import ProxyTrainer, check_options
from tiny_proxy import save_tiny, sharing

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

#: one plan per kind of module: low-rank, adapters and scales, prefix and experts (routing on the device), none
PLANS = [
    PeftPlan.from_modules(2, {0: [M("lora", "q", 4), M("lora", "v", 4)], 1: [M("lora", "down", 4)]}),
    PeftPlan.from_modules(2, {1: [M("serial_adapter", "ffn", 4), M("ia3", "k")]}),
    PeftPlan.from_modules(2, {0: [M("prefix", "attn", 3)], 1: [M("lora_experts", "q", 2, num_experts=3, top_k=2)]}),
    PeftPlan.from_modules(2, {1: [M("parallel_adapter", "attn", 4), M("ssf", "o")]}),
    PeftPlan(2),
]


def eager(step, args):
    """The CPU twin of a recording: the step itself, run eagerly on every call."""
    return step


def _fidelity(model, task, **options) -> Fidelity:
    # max_length 40: the toy texts run from 6 to 21 tokens, so batches are padded to 16 or 32
    fields = dict(steps=12, batch_size=8, train_examples=96, eval_examples=24, max_length=40, learning_rate=1e-2,
                  length_buckets=True)
    return Fidelity(model=model, task=task, **{**fields, **options})


def _graphed(trainer: ProxyTrainer, capture=eager) -> ProxyTrainer:
    """``trainer`` with ``cuda_graphs`` on (sharing its model and data), its steps recorded by ``capture``; the
    :class:`StepGraphs` it builds are kept in ``.graphs``."""
    other = sharing(trainer, cuda_graphs=True)
    other.graph_capture = capture
    other.graphs = []
    build = other.step_graphs

    def step_graphs(model, loss_fn):
        graphs = build(model, loss_fn)
        other.graphs.append(graphs)
        return graphs

    other.step_graphs = step_graphs
    return other


def _same(a, b, plan):
    """Equal up to float rounding -- except that an experts layer's load-balancing loss counts every token of the
    batch, padding included, so wider batches move it (and the trained weights) a little."""
    assert b.score == a.score and b.test_score == a.test_score
    assert a.adapter_state.keys() == b.adapter_state.keys()
    if any(m.method == "lora_experts" for _, m in plan.modules()):
        assert b.train_loss == pytest.approx(a.train_loss, rel=2e-3)
        return
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-5)
    for name, tensor in a.adapter_state.items():
        torch.testing.assert_close(b.adapter_state[name], tensor, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the CPU twin
def test_padded_widths():
    assert [padded_width(w) for w in (1, 15, 16, 17, 33)] == [16, 16, 16, 32, 48]
    assert GRAPH_WIDTH == 16


def test_collate_pads_to_the_graph_width_with_the_pad_id(models, task):
    trainer = ProxyTrainer(_fidelity(models["bert", 0.0], task))
    data = trainer.train_data
    idx = [3, 7, 11]
    plain = proxy_train._collate(data, idx, torch.device("cpu"))
    wide = proxy_train._collate(data, idx, torch.device("cpu"), lambda w: 64)  # wider than the split itself
    width = plain["input_ids"].shape[1]
    assert data.input_ids.shape[1] < 64 and wide["input_ids"].shape == (3, 64)
    torch.testing.assert_close(wide["input_ids"][:, :width], plain["input_ids"])
    assert (wide["input_ids"][:, width:] == trainer.tokenizer.pad_token_id).all()
    assert wide["attention_mask"][:, width:].sum() == 0 and (wide["token_type_ids"][:, width:] == 0).all()
    model = trainer.build_model(PLANS[0]).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**wide).loss, model(**plain).loss, rtol=1e-5, atol=1e-6)


def test_step_graphs_record_one_step_per_shape_and_give_the_eager_gradients(models, task):
    trainer = ProxyTrainer(_fidelity(models["bert", 0.0], task))
    recorded = []

    def recording(step, args):
        recorded.append(tuple(a.shape for a in args))
        return step

    model = trainer.train_mode(trainer.build_model(PLANS[0]))
    graphs = StepGraphs(model, lambda b: trainer.step_loss(model, b), capture=recording)
    batches = [proxy_train._collate(trainer.train_data, idx, torch.device("cpu"), padded_width)
               for idx in ([0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3])]
    widths = {b["input_ids"].shape[1] for b in batches}
    model.eval()  # no dropout: the two ways must agree exactly
    for batch in batches:
        model.zero_grad(set_to_none=True)
        trainer.step_loss(model, batch).backward()
        want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        graphs(batch).backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(p.grad, want[n])
    # the third batch repeats the first one's shape: replayed, not recorded again
    assert graphs.captures == len(recorded) == len(widths)
    assert sorted(shapes[0][1] for shapes in recorded) == sorted(widths)  # attention_mask (4, width) first


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_graphed_trials_equal_eager_trials_without_dropout(kind, models, task):
    trainer = ProxyTrainer(_fidelity(models[kind, 0.0], task))
    graphed = _graphed(trainer)
    for plan in PLANS:
        _same(trainer.run(plan), graphed.run(plan), plan)
    widths = {padded_width(int(trainer.train_data.lengths[idx].max()))
              for idx in trainer._batches(12, 8, trainer.fidelity.seed)}
    assert {g.captures for g in graphed.graphs} == {len(widths)} and len(widths) > 1
    assert not any(g.live for g in graphed.graphs)  # each trial frees its recordings when its training ends


def test_closing_frees_the_recordings_without_the_cycle_collector(models, task):
    def cyclic(step, args):  # as make_graphed_callables leaves a module: a replay forward that refers back to it
        step.forward = lambda *tensors: type(step).forward(step, *tensors)
        return step

    trainer = ProxyTrainer(_fidelity(models["bert", 0.0], task))
    model = trainer.train_mode(trainer.build_model(PLANS[0]))
    graphs = StepGraphs(model, lambda b: trainer.step_loss(model, b), capture=cyclic)
    graphs(next(trainer.train_batches())).backward()
    recorded = weakref.ref(next(iter(graphs._graphs.values())))
    gc.disable()
    try:
        graphs.close()
        assert recorded() is None and graphs.live == 0 and graphs.captures == 1
    finally:
        gc.enable()


@pytest.mark.parametrize("options", [{"frozen_cache": True}, {"pooled_only": True}])
def test_graphed_trials_apply_the_cache_and_the_pooled_cut(options, models, task):
    """The frozen-layer feeder's states are one more input of the recorded step; the pooled cut is recorded as is."""
    inputs = []

    def recording(step, args):
        inputs.append(step.names)
        return step

    trainer = ProxyTrainer(_fidelity(models["bert", 0.0], task, **options))
    graphed = _graphed(trainer, capture=recording)
    for plan in PLANS:
        _same(trainer.run(plan), graphed.run(plan), plan)
    if options.get("frozen_cache"):
        assert trainer.cached_layers(PLANS[1]) == 1  # PLANS[1] trains from cached states entering block 1
        assert any("frozen_hidden" in names for names in inputs)


def test_graphed_packs_equal_eager_trials_without_dropout(models, task):
    trainer = ProxyTrainer(_fidelity(models["bert", 0.0], task))
    graphed = _graphed(trainer)
    alone = [trainer.run(p) for p in PLANS]
    for a, b, plan in zip(alone, PackedTrainer(graphed, 3).run_many(PLANS), PLANS):
        _same(a, b, plan)
    assert len(graphed.graphs) == 2 and not any(g.live for g in graphed.graphs)  # one per pack, freed after it


def test_a_step_that_cannot_be_recorded_trains_eagerly_with_a_warning(models, task):
    def refuse(step, args):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    trainer = ProxyTrainer(_fidelity(models["bert", 0.0], task))
    graphed, refused = _graphed(trainer), _graphed(trainer, capture=refuse)
    with pytest.warns(UserWarning, match=r"--cuda-graphs: .*could not be recorded.*\(RuntimeError: operation not "
                                         r"permitted when stream is capturing\); it trains without graphs"):
        got = refused.run(PLANS[0])
    _same(graphed.run(PLANS[0]), got, PLANS[0])
    assert refused.graphs[0].fallback and refused.graphs[0].captures == 0


def test_graphs_widths_stay_within_max_length(models, task):
    trainer = _graphed(ProxyTrainer(_fidelity(models["bert", 0.0], task, max_length=20)))
    widths = {b["input_ids"].shape[1] for b in trainer.train_batches()}
    assert widths and max(widths) <= 20 and widths <= {16, 20}


def test_cuda_graphs_need_a_cuda_device(models, task):
    with pytest.raises(StudyError, match=r"--cuda-graphs: CUDA graphs need a CUDA device.*'cpu'.*--device cuda"):
        check_options(_fidelity(models["bert", 0.0], task, cuda_graphs=True), "cpu")


# --------------------------------------------------------------------------- recorded on a GPU
@cuda
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_recorded_trials_equal_eager_trials_on_cuda(kind, models, task):
    trainer = ProxyTrainer(_fidelity(models[kind, 0.0], task), "cuda")
    graphed = _graphed(trainer, capture=None)  # the real recording
    for plan in PLANS:
        a, b = trainer.run(plan), graphed.run(plan)
        # other kernels (and summation orders) on a replay: equal up to float rounding (an experts plan's
        # load-balancing loss also counts the padding, as in _same)
        experts = any(m.method == "lora_experts" for _, m in plan.modules())
        assert b.train_loss == pytest.approx(a.train_loss, rel=2e-3 if experts else 1e-4)
        assert abs(b.score - a.score) <= 1 / 24  # at most one of 24 validation examples flips
    assert all(g.captures >= 1 and g.fallback is None for g in graphed.graphs)


@cuda
def test_recorded_packs_and_bf16_on_cuda(models, task):
    trainer = ProxyTrainer(_fidelity(models["bert", 0.0], task, autocast="bf16"), "cuda")
    graphed = _graphed(trainer, capture=None)
    alone = [trainer.run(p) for p in PLANS]
    for a, b in zip(alone, PackedTrainer(graphed, 3).run_many(PLANS)):
        assert b.train_loss == pytest.approx(a.train_loss, rel=3e-2)  # bf16 rounding differs with the shapes
    assert all(g.captures >= 1 and g.fallback is None for g in graphed.graphs)


@cuda
def test_recorded_dropout_draws_fresh_masks_every_replay(tmp_path, task):
    trainer = ProxyTrainer(_fidelity(save_tiny("bert", tmp_path / "bert", dropout=0.3), task), "cuda")
    model = trainer.train_mode(trainer.build_model(PLANS[0]))
    graphs = StepGraphs(model, lambda b: trainer.step_loss(model, b))
    batch = next(trainer.train_batches())
    first, second = graphs(batch).item(), graphs(batch).item()  # the same batch and weights, replayed twice
    assert graphs.captures == 1 and graphs.fallback is None and first != second  # other masks each replay
