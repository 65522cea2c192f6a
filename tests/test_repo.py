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

# ---- the files an nbdev or timm user looks for first: CI workflows, CITATION.cff

def _readme_commands():
    "The shell commands of README.md's ```sh blocks, comments dropped"
    import re
    blocks = re.findall(r'```sh\n(.*?)```', (ROOT/'README.md').read_text(), flags=re.S)
    return [l.split('#')[0].strip() for b in blocks for l in b.splitlines() if l.split('#')[0].strip()]

def _workflow(name):
    import yaml
    f = ROOT/'.github'/'workflows'/name
    assert f.exists(), f'{f} is missing'
    w = yaml.safe_load(f.read_text())
    assert isinstance(w, dict) and w.get('jobs'), f'{name}: not a workflow (no jobs)'
    on = w.get('on', w.get(True))                     # YAML 1.1 reads a bare `on` as True
    assert on, f'{name}: no `on:` trigger'
    steps = [s for j in w['jobs'].values() for s in j['steps']]
    assert all(isinstance(s, dict) and ('run' in s or 'uses' in s) for s in steps), f'{name}: a step neither runs nor uses'
    return on, steps, ' \n'.join(s.get('run', '') for s in steps), [s.get('uses', '') for s in steps]

def test_test_workflow_runs_the_readme_test_command():
    cmds = [c for c in _readme_commands() if c.split()[:2] == ['make', 'test']]
    assert cmds, 'README.md names no `make test` command'
    on, steps, runs, uses = _workflow('test.yaml')
    assert {'push', 'pull_request'} <= set(on), on
    assert any(u.startswith('actions/setup-python') for u in uses)
    for c in cmds: assert c in runs, f'test.yaml does not run the README test command {c!r}: {runs}'

def test_deploy_workflow_builds_with_quarto_and_publishes():
    on, steps, runs, uses = _workflow('deploy.yaml')
    assert any(u.startswith('actions/setup-python') for u in uses) and any('quarto' in u for u in uses), uses
    assert 'make install' in runs and 'nbdev-docs' in runs, runs
    pub = [s for s in steps if s.get('uses', '').startswith('peaceiris/actions-gh-pages')]
    assert pub and pub[0]['with']['publish_dir'].strip('./') == '_docs', 'deploy.yaml must publish nbdev-docs output, _docs'
    assert '\ninstall:' in (ROOT/'Makefile').read_text(), 'deploy.yaml runs `make install`: the Makefile must have it'

def test_citation_cff():
    import yaml, ea_nb
    c = yaml.safe_load((ROOT/'CITATION.cff').read_text())
    missing = {'cff-version', 'message', 'title', 'authors'} - set(c)
    assert not missing, f'CITATION.cff lacks the required keys {missing}'
    assert c['cff-version'] == '1.2.0' and c['version'] == ea_nb.__version__, (c['cff-version'], c.get('version'))
    p = c['preferred-citation']
    assert {'type', 'title', 'authors'} <= set(p) and p['doi'] == '10.1109/TPAMI.2022.3211006'
    assert [a['family-names'] for a in p['authors']] == ['Guo', 'Liu', 'Mu', 'Hu']
    assert all({'type', 'title', 'authors'} <= set(r) for r in c.get('references', []))

def test_ea_nb_data(tmp_path):
    "`ea-nb data --root`: a set whose real layout is there is present (and loads), the others say what is missing"
    from test_data_loaders import write_cifar, write_modelnet
    from ea_nb.data import build
    write_cifar(tmp_path/'cifar10'); write_modelnet(tmp_path/'ModelNet40')
    r = subprocess.run([sys.executable, '-m', 'ea_nb.cli', 'data', '--root', str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = {l.split()[0]: l for l in r.stdout.splitlines() if l and not l.startswith(' ')}
    assert lines['cifar10'].split()[1:3] == ['present', '(train,'] and lines['modelnet40'].split()[1] == 'present', r.stdout
    assert len(build('cifar10', 'test', root=tmp_path/'cifar10')) == 2      # present means the loader reads it
    for name in ('imagenet', 'voc', 'ade20k', 'cityscapes', 'coco', 'shapenet_part', 'tiny_imagenet'):
        assert name in lines and 'missing' in lines[name] and 'does not exist' in lines[name], lines.get(name)
    assert 'VOCdevkit/VOC2012/JPEGImages' in lines['voc'] and 'get it from http://host.robots.ox.ac.uk' in r.stdout

def test_data_readme_covers_every_data_set():
    "data/README.md names every real data set's folder, and every experiment file that needs one"
    import yaml
    from ea_nb.data import REGISTRY
    text = (ROOT/'data'/'README.md').read_text()
    for n, e in REGISTRY.items():
        if not e['embedded']: assert f"`{e['folder']}/`" in text and f'`{n}`' in text, f'data/README.md lacks {n} ({e["folder"]}/)'
    for f in sorted((ROOT/'experiments').glob('*.yaml')):
        cfg = yaml.safe_load(f.read_text())
        if isinstance(cfg, dict) and cfg.get('dataset') in REGISTRY and not REGISTRY[cfg['dataset']]['embedded']:
            assert f'`{f.name}`' in text, f'data/README.md does not say that {f.name} uses {cfg["dataset"]}'

def test_contributing_names_real_commands():
    "CONTRIBUTING.md's make targets exist, and the notebook it uses as the example is the manifest's"
    import re, yaml
    text, make = (ROOT/'CONTRIBUTING.md').read_text(), (ROOT/'Makefile').read_text()
    targets = set(re.findall(r'`make ([a-z-]+)', text))
    assert targets >= {'install', 'test', 'sync-check', 'readme'} and all(f'\n{t}:' in make for t in targets), targets
    entry = yaml.safe_load((ROOT/'experiments'/'manifest.yaml').read_text())['pointcloud']
    assert f"notebook: {entry['notebook']}" in text and f"full: {entry['full']}" in text
