"""Write a smaller sibling of a model: its first ``--layers`` blocks, embeddings and tokenizer, as a local folder.

A search on a smaller model of the same family is cheaper than one on the target, and ``autopeft run
--warm-start`` can carry its best plans over by relative depth. To measure that transfer offline, the benchmark
needs a second model; the only packaged one is MiniLM (6 blocks), so the sibling is MiniLM cut to its lower
blocks, the layer-dropping way smaller students are made from a teacher (the pretrained weights of the kept
blocks, nothing re-initialised but the classification head every proxy model gets anyway):

    python benchmarks/sibling_model.py --layers 4 --out benchmarks/data/models/minilm-l4
    python benchmarks/build_table.py --set model=benchmarks/data/models/minilm-l4 \\
        --out benchmarks/data/table_rotten_tomatoes_minilm_l4.jsonl --plans 80 --workers 2

The folder is written again by the first command on any machine (it is not kept in the repository: about 70 MB).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_sibling(model: str, layers: int, out: Path) -> Path:
    """Save ``model``'s first ``layers`` blocks (with its embeddings and tokenizer) to ``out``."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from autopeft.peft import get_arch
    from autopeft.proxy.models import _offline_kwargs, load_config, load_tokenizer, resolve_model_path

    config = load_config(model)
    total = get_arch(config).num_layers(config)
    if not 1 <= layers < total:
        sys.exit(f"--layers: {layers} is not between 1 and {total - 1} ({model} has {total} blocks)")
    path = resolve_model_path(model)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the weights of the dropped blocks are unused on purpose
    try:
        net = AutoModel.from_pretrained(path, num_hidden_layers=layers, **_offline_kwargs(path))
    finally:
        hf_logging.set_verbosity(verbosity)
    out.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(out)
    load_tokenizer(model).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm", help="the model to cut (default: the packaged MiniLM)")
    ap.add_argument("--layers", type=int, default=4, help="blocks to keep, from the bottom")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "data" / "models" / "minilm-l4"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = write_sibling(args.model, args.layers, Path(args.out))
    print(f"wrote {args.model}'s first {args.layers} blocks to {out}")


if __name__ == "__main__":
    main()
