import pytest
from open_clip.tokenizer import SimpleTokenizer

from hf_masked_vl.models.pipeline_zero_shot import tokenize_texts
from hf_masked_vl.tokenization import build_clip_tokenizer

TEXTS = [
    "a photo of a red circle.",
    "naïve café — 3 apples",
    "rock'n'roll isn't dead!!",
    "  Multiple   SPACES and UPPER case ",
    "emoji 🙂 and numbers 12345",
]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_open_clip(text):
    ours = build_clip_tokenizer(77)(text)["input_ids"]
    reference = SimpleTokenizer()
    expected = [reference.encoder["<start_of_text>"]] + reference.encode(text) + [reference.encoder["<end_of_text>"]]
    assert ours == expected


def test_truncation_keeps_end_of_text(tokenizer):
    long = "a " + "very " * 40 + "long caption"
    batch = tokenize_texts(tokenizer, [long, "short"], context_length=16)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][0, -1] == tokenizer.eos_token_id
    assert batch["attention_mask"][1].sum() < 16
    assert tokenizer.eos_token_id in batch["input_ids"][1].tolist()
