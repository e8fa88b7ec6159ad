"""make_sampler's names, and the canonical form and model inputs of the plans the default sampler works on."""

from __future__ import annotations

import optuna
import pytest
import torch

from autopeft.errors import StudyError
from autopeft.optimize.mobo import MOBOSampler
from autopeft.optimize.samplers import SAMPLERS, PlanInputs, ProjectReference, SpaceCanonical, make_sampler
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, SearchSpace, load_space, parse_space
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load

DIMS = ModelDims(num_layers=2, hidden_size=64)


def test_every_name_makes_a_sampler_and_botorch_is_autopeft_s_own():
    for name in SAMPLERS:
        assert isinstance(make_sampler(name, seed=0), optuna.samplers.BaseSampler)
    assert isinstance(make_sampler("botorch").main.sampler, MOBOSampler)
    with pytest.raises(StudyError, match=r"--sampler: unknown sampler 'sobol'; choose one of botorch, "):
        make_sampler("sobol")


def test_parameters_of_one_plan_have_one_canonical_form(tmp_path, study_name):
    space = SearchSpace(load_space("autopeft"), DIMS)
    off = {name: 0 for name in space.choices}  # every size 0: the head-only plan, whatever the layer switches
    other = {**off, "layer.1": 1 - off["layer.1"]}
    canonical = SpaceCanonical(space)
    study = optuna.create_study(directions=space.directions)
    assert canonical(study, off) == canonical(study, other) == space.encode(space.decode(off))
    assert SpaceCanonical()(study, other) == other  # a plain Optuna study has no space: left as it is

    st, _ = create_or_load(open_storage(f"sqlite:///{tmp_path / 's.db'}"), study_name, load_space("autopeft"), DIMS,
                           Fidelity(objective="synthetic"))
    assert SpaceCanonical()(st.study, other) == canonical(study, off)  # read from the study's recorded space


def test_plan_inputs_come_from_the_space_or_the_study(tmp_path, study_name):
    space = SearchSpace(load_space("autopeft"), DIMS)
    study = optuna.create_study(directions=space.directions)
    inputs = PlanInputs(space)(study, space.distributions())
    assert inputs is not None and len(inputs.plan_cols) == len(space.slot_features())  # every parameter feeds a slot
    z = torch.tensor([[space.encode(space.decode({n: 0 for n in space.choices}))[n] for n in space.choices]])
    assert inputs(z)[:, inputs.plan_cols].abs().sum() == 0  # the head-only plan fills no slot
    assert PlanInputs()(study, space.distributions()) is None  # a plain Optuna study: the plain encoding
    assert PlanInputs(space)(study, {"other": optuna.distributions.IntDistribution(0, 1)}) is None

    st, _ = create_or_load(open_storage(f"sqlite:///{tmp_path / 's.db'}"), study_name, load_space("autopeft"), DIMS,
                           Fidelity(objective="synthetic"))
    recorded = PlanInputs()(st.study, space.distributions())
    assert torch.equal(recorded(z), inputs(z))


def test_the_default_s_reference_is_the_project_s(tmp_path, study_name):
    space = SearchSpace(load_space("autopeft"), DIMS)
    study = optuna.create_study(directions=space.directions)
    assert ProjectReference(space)(study) == (0.0, 100.0)  # score 0, 100 % trainable, as the CLI reports
    assert ProjectReference()(study) is None  # a plain Optuna study: BoTorch's inferred point
    timed = parse_space("name: t\nobjectives: [score, step_time]\nmodules:\n  lora:\n    sizes: [0, 8]\n")
    assert ProjectReference(SearchSpace(timed, DIMS))(study) is None  # step time has no default reference
    main = make_sampler("botorch", space=space).main.sampler
    assert isinstance(main.reference, ProjectReference) and main._reference(study) == [0.0, 100.0]

    st, _ = create_or_load(open_storage(f"sqlite:///{tmp_path / 's.db'}"), study_name, load_space("autopeft"), DIMS,
                           Fidelity(objective="synthetic"))
    assert ProjectReference()(st.study) == (0.0, 100.0)  # read from the study's recorded space
