"tools/gpu_check.py, the prepared GPU check: its CPU self-check at tiny sizes writes one folder and every numerical check holds"
import importlib.util, json, subprocess, sys
from pathlib import Path
import pytest, torch

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT/'tools'/'gpu_check.py'

def _load():
    spec = importlib.util.spec_from_file_location('gpu_check', TOOL)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m

gc = _load()
pytestmark = pytest.mark.xdist_group('gpu_check')   # the self-check runs once, on one worker

@pytest.fixture(scope='module')
def selfcheck(tmp_path_factory):
    "One run of the CPU self-check (the command the docs give), into a fresh folder"
    out = tmp_path_factory.mktemp('gpu')
    r = subprocess.run([sys.executable, str(TOOL), '--device', 'cpu', '--quick', '--out', str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    return out, r

def test_selfcheck_writes_every_section(selfcheck):
    out, r = selfcheck
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in gc.SECTIONS: assert (out/('env.json' if name == 'env' else f'{name}.json')).exists(), name
    for f in ('summary.md', 'summary.json', 'parity.csv', 'bench.csv', 'compile.csv', 'train.csv', 'dryrun.csv'): assert (out/f).stat().st_size > 0, f
    summary = json.loads((out/'summary.json').read_text())['sections']
    assert list(summary) == list(gc.ORDER) and set(gc.ORDER) == set(gc.SECTIONS)
    assert {s['status'] for s in summary.values()} <= {'ok', 'skipped', 'partial'}, summary
    assert len([l for l in r.stdout.splitlines() if l.startswith('[')]) == len(gc.SECTIONS)   # one line per section
    assert not list(out.glob('*.traceback.txt'))

def test_selfcheck_every_numerical_check_passed(selfcheck):
    out, _ = selfcheck
    parity = json.loads((out/'parity.json').read_text())
    assert parity['status'] == 'ok' and parity['checks_total'] >= 40
    assert all(c['ok'] for c in parity['checks'])
    modes = {r['mode'] for r in parity['rows']}
    assert {'float32', 'bfloat16', 'float16', 'autocast_bfloat16', 'autocast_float16'} <= modes
    for name in gc.SECTIONS:
        res = json.loads((out/('env.json' if name == 'env' else f'{name}.json')).read_text())
        assert all(c['ok'] for c in res['checks']), (name, [c for c in res['checks'] if not c['ok']])

def test_selfcheck_env_and_dryrun_say_what_they_did(selfcheck):
    out, _ = selfcheck
    env = json.loads((out/'env.json').read_text())['env']
    assert env['torch'] == torch.__version__ and env['device'] == 'cpu' and len(env['git_commit']) == 40
    dry = json.loads((out/'dryrun.json').read_text())
    assert 'forward + backward' in dry['did'] and 'no data set' in dry['did_not']
    assert dry['rows'] and all('error' not in r for r in dry['rows'])
    assert 'bench.yaml' in dry['not_run']

def test_failing_section_is_recorded_and_the_rest_runs(tmp_path, monkeypatch):
    "A section that raises leaves its traceback and an `error` status; the sections after it still run"
    def boom(ctx): raise RuntimeError('deliberate failure')
    monkeypatch.setitem(gc.SECTIONS, 'boom', (boom, 5, 5))
    rc = gc.main(['--device', 'cpu', '--quick', '--out', str(tmp_path), '--only', 'boom', 'env'])
    assert rc == 1
    s = json.loads((tmp_path/'summary.json').read_text())['sections']
    assert s['boom']['status'] == 'error' and 'deliberate failure' in s['boom']['summary'] and s['env']['status'] == 'ok'
    assert 'deliberate failure' in (tmp_path/'boom.traceback.txt').read_text()

def test_every_full_yaml_has_a_dry_run():
    "A new paper-scale yaml that the dry-run section cannot build fails here, not on the GPU"
    import yaml
    skip = {'bench.yaml', 'manifest.yaml', 'paper.yaml', 'claims.yaml'}   # not experiment configurations
    for f in sorted((ROOT/'experiments').glob('*.yaml')):
        if f.name not in skip: assert gc.dry_builder(yaml.safe_load(f.read_text())) is not None, f.name

def test_gpu_cells_found():
    assert gc.gpu_cells().get('nbs/05_fast.ipynb', 0) >= 1

@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error where there is no CUDA')
def test_cuda_without_cuda_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, str(TOOL), '--device', 'cuda', '--out', str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'CUDA is not available' in r.stderr and '--device cpu' in r.stderr

def test_nbdev_test_runner_runs_the_notebook_it_is_given():
    "The notebooks section's `nbdev-test --flags gpu <nb>` (no console script needed) passes on a notebook that passes"
    r = gc._run([sys.executable, '-c', gc._NBDEV_TEST, 'nbs/index.ipynb', 'gpu'], 300)
    assert r['rc'] == 0 and 'Success.' in r['tail'], r

def test_rerun_with_only_keeps_the_other_sections(tmp_path):
    "A rerun of some sections (--only) into the same folder leaves the others' results in the summary"
    args = ['--device', 'cpu', '--quick', '--out', str(tmp_path), '--only']
    assert gc.main(args + ['env']) == 0 and gc.main(args + ['imports']) == 0
    s = json.loads((tmp_path/'summary.json').read_text())['sections']
    assert list(s) == ['env', 'imports'] and s['env']['status'] == s['imports']['status'] == 'ok'
    assert '| env |' in (tmp_path/'summary.md').read_text()
