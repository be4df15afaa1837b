import pytest

from gatelab.data import ByteTokenizer, TokenSplit


@pytest.fixture
def hf_tokenizers():
    """Skips the test unless the optional HF 'tokenizers' package is installed."""
    return pytest.importorskip("tokenizers", reason="HF 'tokenizers' not installed (optional extra: pip install gatelab[hf])")


@pytest.fixture
def byte_tok():
    return ByteTokenizer()


@pytest.fixture
def ramp_split():
    """A split whose token at position i is i % 250, with domain id (i // 10) % 3."""
    import numpy as np

    i = np.arange(1000)
    return TokenSplit((i % 250).astype(np.uint16), ((i // 10) % 3).astype(np.uint8), n_docs=1)
