import inspect, json, os, re, socket, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
# A line that asserts on a trained quantity: a comparison (<, >) and a metric name (acc, loss, fid, miou, map, ...)
# together. Tests whose code holds one get the `trains` marker; `make test` runs them again at a second thread count.
# Validity ranges (`0 <= acc <= 1`), subset tests (`{...} <= set(r)`) and `.map(` calls are not such comparisons.
TRAINED_ASSERT = re.compile(r'^(?=.*\b(assert|test_eq|test_ne|test_close)\b)(?=.*[<>])(?=.*(?<!\.)\b(\w*acc\w*|loss\w*|\w*fid\w*|\w*miou\w*|\w*map\w*)\b)')
NOT_A_BOUND = re.compile(r'\b0\.?\s*<=[^<>]*<=\s*1\.?\b|<=\s*set\(')

def test_threads() -> int:
    "Torch threads per test process: EA_NB_TEST_THREADS if set, else the cores shared out among the pytest-xdist workers"
    if os.environ.get('EA_NB_TEST_THREADS'): return int(os.environ['EA_NB_TEST_THREADS'])
    return max(1, (os.cpu_count() or 2) // int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', 1)))
test_threads.__test__ = False   # a helper, not a test

def asserts_on_training(source:str) -> bool:
    "True if `source` asserts on a trained quantity (see TRAINED_ASSERT)"
    return any(TRAINED_ASSERT.search(NOT_A_BOUND.sub('', l)) for l in source.splitlines())

def _source(item) -> str:
    "The code a test runs: a notebook's code cells for the notebook tests, else the test function's source"
    nb = getattr(item, 'callspec', None) and item.callspec.params.get('nb')
    if nb: return '\n'.join(''.join(c['source']) for c in json.loads(Path(nb).read_text())['cells'] if c['cell_type'] == 'code')
    src = inspect.getsource(item.function) if hasattr(item, 'function') else ''
    return src[src.find('def '):]                      # the body, not the decorators (their parameters are not bounds)

def pytest_collection_modifyitems(items):
    for item in items:
        if asserts_on_training(_source(item)): item.add_marker(pytest.mark.trains)

@pytest.fixture(autouse=True, scope='session')
def _repo_root_and_threads():
    "Tests run from the repo root, at `test_threads()` torch threads"
    os.chdir(ROOT)
    import torch
    torch.set_num_threads(test_threads())

@pytest.fixture
def no_network(monkeypatch):
    "Any attempt to reach the network fails loudly (the loaders must never download)"
    def boom(*a, **k): raise AssertionError(f"network access attempted: {a[:2]}")
    monkeypatch.setattr(socket.socket, 'connect', boom)
    monkeypatch.setattr(socket, 'create_connection', boom)
    monkeypatch.setattr(urllib.request, 'urlopen', boom)
