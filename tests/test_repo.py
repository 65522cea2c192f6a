"What no single notebook owns: README in sync with index.ipynb, the built site, the console script"
import subprocess, sys
from pathlib import Path
import pytest
from ea_nb.cli import readme_text

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT/'_proc'/'_docs'

def test_readme_in_sync():
    assert (ROOT/'README.md').read_text() == readme_text(ROOT/'nbs'/'index.ipynb'), \
        'README.md differs from nbs/index.ipynb: run `make readme` (ea-nb readme) and commit'

def test_readme_images_exist():
    import re
    for img in re.findall(r'\]\((nbs/images/[^)]+)\)', (ROOT/'README.md').read_text()):
        assert (ROOT/img).exists(), f'README.md shows {img}, which is not in the repo: run `make reproduce`'

def _pages(nb):
    return [SITE/f'{nb.stem}.html', SITE/f"{nb.stem.split('_', 1)[-1]}.html"]

@pytest.mark.parametrize('nb', sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_')), ids=lambda p: p.stem)
def test_docs_page(nb):
    assert SITE.is_dir(), f'{SITE} is missing: build the site with `make docs` (make test does it first)'
    page = next((p for p in _pages(nb) if p.exists()), None)
    assert page is not None, f'no page for {nb.name} in {SITE}'
    assert '<h1' in page.read_text(), f'{page} has no title'

def test_cli_help():
    r = subprocess.run([sys.executable, '-m', 'ea_nb.cli', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and 'reproduce' in r.stdout and 'train' in r.stdout
    r = subprocess.run([sys.executable, '-m', 'ea_nb.cli', 'reproduce', '--only', 'no_such_experiment'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "unknown experiment(s) ['no_such_experiment']" in r.stderr
