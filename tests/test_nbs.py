"Every library notebook runs, as nbdev-test runs it; experiment notebooks (skip_exec) run in test_experiments.py"
import pytest
from pathlib import Path
from nbdev.test import test_nb as run_nb          # aliased: pytest would collect a bare `test_nb`

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.stem)
def test_notebook(nb):
    ok, secs = run_nb(nb, skip_flags=['notest', 'gpu', 'slow'])
    assert ok, f'{nb.name} failed (the traceback is above); run `nbdev-test {nb}` to reproduce'
