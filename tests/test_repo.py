"What no single notebook owns: README in sync with index.ipynb, the console script (the site: test_site.py)"
import subprocess, sys
from pathlib import Path
import pytest
from ea_nb.cli import readme_text

ROOT = Path(__file__).resolve().parents[1]

def test_readme_in_sync():
    assert (ROOT/'README.md').read_text() == readme_text(ROOT/'nbs'/'index.ipynb'), \
        'README.md differs from nbs/index.ipynb: run `make readme` (ea-nb readme) and commit'

def test_readme_images_exist():
    import re
    for img in re.findall(r'\]\((nbs/images/[^)]+)\)', (ROOT/'README.md').read_text()):
        assert (ROOT/img).exists(), f'README.md shows {img}, which is not in the repo: run `make reproduce`'

def test_cli_help():
    r = subprocess.run([sys.executable, '-m', 'ea_nb.cli', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and 'reproduce' in r.stdout and 'train' in r.stdout
    r = subprocess.run([sys.executable, '-m', 'ea_nb.cli', 'reproduce', '--only', 'no_such_experiment'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "unknown experiment(s) ['no_such_experiment']" in r.stderr
