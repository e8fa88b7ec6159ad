"""benchmarks/sibling_model.py: a model's lower blocks saved as a model of their own."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sibling_model  # noqa: E402
from tiny_proxy import save_tiny  # noqa: E402

from autopeft.proxy.models import load_classifier, load_config, model_dims


def test_the_sibling_keeps_the_lower_blocks_weights_and_the_tokenizer(tmp_path):
    full = save_tiny("bert", tmp_path / "full", layers=3)
    out = sibling_model.write_sibling(full, 2, tmp_path / "sibling")
    assert model_dims(load_config(str(out))).num_layers == 2
    big, _ = load_classifier(full, 2)
    small, tokenizer = load_classifier(str(out), 2)
    for i in range(2):
        kept, cut = big.bert.encoder.layer[i], small.bert.encoder.layer[i]
        assert torch.equal(kept.output.dense.weight, cut.output.dense.weight)
    assert torch.equal(big.bert.embeddings.word_embeddings.weight, small.bert.embeddings.word_embeddings.weight)
    assert tokenizer("a good film")["input_ids"][0] == tokenizer.cls_token_id


@pytest.mark.parametrize("layers", [0, 3])
def test_a_cut_that_keeps_no_block_or_every_block_is_refused(tmp_path, layers):
    full = save_tiny("bert", tmp_path / "full", layers=3)
    with pytest.raises(SystemExit, match=f"--layers: {layers} is not between 1 and 2"):
        sibling_model.write_sibling(full, layers, tmp_path / "sibling")
