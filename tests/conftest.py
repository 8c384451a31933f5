"""Test environment: offline hub, no analytics, single-threaded determinism where asked."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread beats two on a shared, loaded CPU (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_families(monkeypatch, one_thread):
    """The test families of tiny_family.py registered (undone after the test), on one thread."""
    import tiny_family

    tiny_family.register(monkeypatch)
