import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # so recipes can name helpers.CrashAt
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers (pyproject's addopts): one thread each, for torch here and for the fits
    # they start, since two threads per worker on a 2-core box oversubscribe and crawl.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # recipes/ paths in the README are relative to the repository root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One token cache per test session: BPE on PTB takes a second or two, once."""
    return tmp_path_factory.mktemp("cache")
