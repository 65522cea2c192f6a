import os, socket, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(autouse=True, scope='session')
def _repo_root_and_threads():
    "Tests run from the repo root; with pytest-xdist each worker gets its share of the cores"
    os.chdir(ROOT)
    if os.environ.get('PYTEST_XDIST_WORKER'):
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', 1))))

@pytest.fixture
def no_network(monkeypatch):
    "Any attempt to reach the network fails loudly (the loaders must never download)"
    def boom(*a, **k): raise AssertionError(f"network access attempted: {a[:2]}")
    monkeypatch.setattr(socket.socket, 'connect', boom)
    monkeypatch.setattr(socket, 'create_connection', boom)
    monkeypatch.setattr(urllib.request, 'urlopen', boom)
