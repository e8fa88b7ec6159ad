import shutil

import torch
from transformers import BertConfig, BertModel

from autopeft.proxy.models import load_classifier, resolve_model_path


def headless_model(path) -> str:
    """A tiny BERT saved without a classification head (as the packaged MiniLM is), with MiniLM's tokenizer."""
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(path)
    tok = resolve_model_path("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(f"{tok}/{name}", path / name)
    return str(path)


def test_a_new_head_depends_on_the_seed_only_and_leaves_the_global_random_state(tmp_path):
    path = headless_model(tmp_path / "bert")
    torch.manual_seed(1)
    first, _ = load_classifier(path, 3)
    torch.rand(1000)  # whatever ran before in the process
    state = torch.random.get_rng_state()
    again, _ = load_classifier(path, 3)
    assert torch.equal(torch.random.get_rng_state(), state)  # loading drew nothing from the global state
    assert torch.equal(first.classifier.weight, again.classifier.weight)
    other, _ = load_classifier(path, 3, seed=1)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)
    assert first.classifier.weight.shape == (3, 32)
