"""Fixtures of the pretrained-model tests."""
import pytest
import torch

pytest.importorskip("transformers")


@pytest.fixture
def tokens():
    return torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
