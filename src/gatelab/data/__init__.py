"""gatelab.data: corpora, tokenizers, pre-tokenized memmaps and batch samplers.

    from gatelab.data import DataConfig, build_data

    data = build_data(DataConfig())              # the synthetic default, ~0.2 s
    sampler = data.train_sampler()               # random windows, resumable
    batch = sampler.next()                       # Batch(x (B,T), y (B,T), domains (B,T))
    val = data.eval_batches(n_batches=8)         # fixed validation windows

Importing this package registers the built-in corpora (``synthetic``, ``text``,
``shakespeare``, ``tinystories``, ``tokens``) and tokenizers (``byte``, ``bpe``).
"""
from . import memmap, synthetic, text  # noqa: F401  (register corpora)
from .batches import Batch, RandomWindowSampler, TokenSplit, eval_batches
from .config import DataConfig
from .corpus import Corpus, DataBundle, Documents, TextCorpus, build_data, encode_documents
from .memmap import prepare, write_prepared
from .synthetic import DOMAINS
from .tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "Batch", "RandomWindowSampler", "TokenSplit", "eval_batches",
    "DataConfig", "Corpus", "DataBundle", "Documents", "TextCorpus", "build_data", "encode_documents",
    "prepare", "write_prepared", "DOMAINS",
    "BPETokenizer", "ByteTokenizer", "Tokenizer", "build_tokenizer", "load_tokenizer",
]
