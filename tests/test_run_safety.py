"When a run goes wrong (divergence, a second run in its folder, a full disk, a papermill typo): a non-zero exit, one line, nothing lost"
import io, json, os, pickle, socket, subprocess, sys, time
from contextlib import redirect_stderr
from pathlib import Path
import pytest, torch
import ea_nb.train as T
from ea_nb.cli import main, demo_project, _sets
from ea_nb.core import RunError, save_json, load_resnet_weights
from ea_nb.train import train_digits, load_checkpoint, task_config, trainer, LOCK_NAME
from test_data_loaders import write_modelnet

ROOT = Path(__file__).resolve().parents[1]
KW = dict(epochs=3, width=8, progress=False)          # a digits run of a few seconds
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message of a machine without CUDA')


def cli(*argv, cwd=ROOT):
    "(exit status, stderr) of `ea-nb argv`, run in this process from `cwd`"
    err, here = io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd)
        with redirect_stderr(err):
            try: main([str(a) for a in argv]); code = 0
            except SystemExit as e:         # SystemExit('message'): Python prints it and exits with status 1
                code = e.code if isinstance(e.code, int) else 1
                if isinstance(e.code, str): print(e.code, file=sys.stderr)
    finally: os.chdir(here)
    return code, err.getvalue()

def one_line(err:str) -> str:
    "The one error line of `err` (no traceback, nothing else but warnings)"
    lines = [l for l in err.strip().splitlines() if 'warning' not in l]
    assert 'Traceback' not in err and len(lines) == 1, err
    return lines[0]

def strict_json(f):
    "json.loads that refuses a bare NaN / Infinity, as other JSON readers do"
    def bad(c): raise ValueError(f'{f} holds {c}: not valid JSON')
    return json.loads(Path(f).read_text(), parse_constant=bad)

def snapshot(d:Path) -> dict:
    "name -> bytes of every file under `d`"
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob('*')) if p.is_file()}

def consistent_at(d:Path, epoch:int):
    "log.csv, metrics.json, last.pt (and best.pt) of run folder `d` all stop at `epoch`; no temporary file"
    last = load_checkpoint(d/'ckpt'/'last.pt')
    assert last['epoch'] == epoch and len(last['history']) == epoch
    assert len((d/'log.csv').read_text().strip().splitlines()) == epoch + 1            # header + one row per epoch
    assert strict_json(d/'metrics.json')['epoch'] == epoch
    best = load_checkpoint(d/'ckpt'/'best.pt')
    assert best['epoch'] <= epoch and best['best'] == last['best']
    assert not list(d.rglob('*.tmp')) and not (d/LOCK_NAME).exists()


@pytest.fixture(scope='module')
def whole(tmp_path_factory):
    "An uninterrupted digits run: (metrics, its folder)"
    d = tmp_path_factory.mktemp('whole')
    return train_digits(out_dir=str(d), **KW), d


# ---------- 1. divergence: stopped in one line, never saved ----------
def test_divergence_first_epoch_writes_nothing(tmp_path):
    code, err = cli('train', 'digits', '--set', 'lr=1000000.0', 'opt=sgd', 'bs=256', 'epochs=2', f'out_dir={tmp_path}', 'progress=false')
    line = one_line(err)
    assert code == 1 and 'the run diverged' in line and 'at epoch 1, step 6' in line, line
    assert 'running_var' in line and 'lower lr' in line and 'clip_grad' in line, line
    assert not [p for p in tmp_path.rglob('*') if p.is_file()]        # no best.pt, last.pt, log.csv, metrics.json, lock

class Poison:
    "A callback that makes the model non-finite after epoch `after` (its checkpoint is already written)"
    def __init__(self, after:int, what:str): self.after, self.what = after, what
    def __call__(self, t):
        if t.epoch != self.after: return
        with torch.no_grad():
            if self.what == 'weight': t.unwrapped[0].weight.fill_(float('nan'))      # the next loss is NaN
            else: t.unwrapped[1].running_var.fill_(float('inf'))                     # the loss stays finite (batch statistics)

@pytest.mark.parametrize('what, words', [('weight', 'training loss is nan at epoch 2, step 46'),
                                         ('running_var', 'weight 1.running_var not finite (NaN or inf) at epoch 2, step 90')])
def test_divergence_keeps_the_last_good_epoch(tmp_path, what, words):
    t = trainer('digits', out_dir=str(tmp_path), **KW)
    t.callbacks = [Poison(1, what)]
    with pytest.raises(RunError) as e: t.fit()
    msg = str(e.value)
    assert '\n' not in msg and words in msg and f'{tmp_path} keeps epoch 1' in msg and 'lower lr' in msg, msg
    consistent_at(tmp_path, 1)                                                        # epoch 1 as it was written
    last = load_checkpoint(tmp_path/'ckpt'/'last.pt')
    assert all(torch.isfinite(v).all() for v in last['model'].values() if v.is_floating_point())

def test_best_never_compares_with_nan(tmp_path):
    t = trainer('digits', out_dir=str(tmp_path), **dict(KW, epochs=1))
    t.best = float('nan')                  # as an old checkpoint written before the check could hold
    r = t.fit()
    assert r['best_acc'] == r['acc'] and (tmp_path/'ckpt'/'best.pt').exists()

def test_metrics_json_refuses_nan(tmp_path):
    f = save_json(dict(acc=0.5), tmp_path/'metrics.json')
    with pytest.raises(ValueError, match=r'acc is not a finite number \(NaN or inf\)'): save_json(dict(acc=float('nan')), f)
    assert strict_json(f) == dict(acc=0.5)


# ---------- 2. a run owns its out_dir ----------
def write_lock(d:Path, pid:int, host:str=None):
    d.mkdir(parents=True, exist_ok=True)
    (d/LOCK_NAME).write_text(json.dumps(dict(pid=pid, host=host or socket.gethostname(), start='2026-01-01T00:00:00+00:00')))

def test_second_run_refused(whole):
    _, d = whole
    before = snapshot(d)
    holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    try:
        write_lock(d, holder.pid)
        code, err = cli('train', 'digits', '--set', f'out_dir={d}', 'epochs=1', 'width=8', 'progress=false')
    finally: holder.kill(); holder.wait()
    line = one_line(err)
    assert code == 1 and f'is in use by another run (pid {holder.pid} on {socket.gethostname()}, started 2026-01-01' in line, line
    (d/LOCK_NAME).unlink()
    assert snapshot(d) == before                                                      # nothing replaced

def test_two_processes_one_folder(tmp_path):
    "A real second process while the first trains: refused in one line; the first finishes with its own results"
    first = subprocess.Popen([sys.executable, '-c', f'from ea_nb.train import train_digits; train_digits(out_dir={str(tmp_path)!r}, epochs=30, width=8, progress=False)'],
                             cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (tmp_path/LOCK_NAME).exists() or first.poll() is not None: break
            time.sleep(0.1)
        assert (tmp_path/LOCK_NAME).exists(), first.stderr.read() if first.poll() is not None else 'no lock after 60 s'
        code, err = cli('train', 'digits', '--set', f'out_dir={tmp_path}', 'epochs=1', 'width=8', 'progress=false')
        assert code == 1 and f'(pid {first.pid} on {socket.gethostname()}' in one_line(err), err
    finally: first.wait(timeout=300)
    assert first.returncode == 0
    assert load_checkpoint(tmp_path/'ckpt'/'last.pt')['epoch'] == 30 and strict_json(tmp_path/'metrics.json')['epochs'] == 30
    assert not (tmp_path/LOCK_NAME).exists()

def test_lock_from_another_machine_refused(tmp_path):
    write_lock(tmp_path, 1, host='other-node-of-the-cluster')
    with pytest.raises(RunError, match='in use by another run \\(pid 1 on other-node-of-the-cluster'): train_digits(out_dir=str(tmp_path), **KW)
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]

def test_stale_lock_taken_over(tmp_path, capfd, whole):
    dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()        # a pid that is not alive any more
    write_lock(tmp_path, dead.pid)
    r = train_digits(out_dir=str(tmp_path), **KW)
    err = capfd.readouterr().err
    assert f'was locked by a run that is gone (pid {dead.pid}' in err and 'taking it over' in err, err
    assert r['acc'] == whole[0]['acc'] and not (tmp_path/LOCK_NAME).exists()

def test_lock_released_on_error(tmp_path):
    t = trainer('digits', out_dir=str(tmp_path), **KW)
    t.callbacks = [Poison(1, 'weight')]
    with pytest.raises(RunError): t.fit()
    assert not (tmp_path/LOCK_NAME).exists()
    assert train_digits(out_dir=str(tmp_path), resume=True, **KW)['epoch'] == 3          # its own folder resumes


# ---------- 3. checked before training; a write that fails mid-run ----------
@pytest.fixture
def no_training(monkeypatch):
    "Training would fail the test: the checks must come first"
    def boom(*a, **k): raise AssertionError('trained before the checks')
    monkeypatch.setattr(T.Trainer, 'train_epoch', boom)

def test_out_dir_is_a_file(tmp_path, no_training):
    (tmp_path/'f').write_text('a result')
    code, err = cli('train', 'digits', '--set', f'out_dir={tmp_path}/f', 'progress=false')
    assert code == 1 and f'out_dir {tmp_path}/f cannot be a folder: {tmp_path}/f is a file' in one_line(err), err
    code, err = cli('train', 'digits', '--set', f'out_dir={tmp_path}/f/run', 'progress=false')
    assert code == 1 and f'{tmp_path}/f is a file' in one_line(err), err
    assert (tmp_path/'f').read_text() == 'a result'

def test_out_dir_not_writable(tmp_path, no_training, monkeypatch):
    d = tmp_path/'ro'; (d/'ckpt').mkdir(parents=True)
    if os.geteuid() != 0: d.chmod(0o500)
    else:                                   # root writes anywhere: the lock file is refused as a read-only folder refuses it
        real = os.open
        def ro_open(p, *a, **k):
            if str(p).endswith(LOCK_NAME): raise PermissionError(13, 'Permission denied', str(p))
            return real(p, *a, **k)
        monkeypatch.setattr(os, 'open', ro_open)
    try: code, err = cli('train', 'digits', '--set', f'out_dir={d}', 'progress=false')
    finally: d.chmod(0o700)
    assert code == 1 and f'out_dir {d} is not writable (Permission denied)' in one_line(err), err

def test_no_room_for_a_checkpoint(tmp_path, no_training, monkeypatch):
    from collections import namedtuple
    monkeypatch.setattr(T.shutil, 'disk_usage', lambda p: namedtuple('u', 'total used free')(10**9, 10**9 - 1000, 1000))
    code, err = cli('train', 'digits', '--set', f'out_dir={tmp_path}', 'progress=false')
    assert code == 1 and f'out_dir {tmp_path} has 0.0 MiB free, but a new best.pt and last.pt need about' in one_line(err), err

@NO_CUDA
def test_cuda_missing(no_training):
    code, err = cli('evaluate', 'x.pth', '--set', 'device=cuda')
    assert code == 1 and "device='cuda' was asked for but this machine has no CUDA devices" in one_line(err), err

@pytest.mark.parametrize('target, nth', [('best.pt', 2), ('last.pt', 2), ('log.csv', 2), ('metrics.json', 3)])
def test_disk_full_mid_run(whole, tmp_path, monkeypatch, target, nth):
    "The n-th write of `target` fails with ENOSPC: one line naming the file; every file still holds the epoch before; resume is exact"
    real, seen = T.atomic_write, []
    def full_disk(path, data):
        seen.append(Path(path).name)
        if Path(path).name == target and seen.count(target) == nth: raise OSError(28, 'No space left on device')
        return real(path, data)
    monkeypatch.setattr(T, 'atomic_write', full_disk)
    code, err = cli('train', 'digits', '--set', f'out_dir={tmp_path}', 'epochs=3', 'width=8', 'progress=false')
    line = one_line(err)
    assert code == 1 and f'could not write {tmp_path}/' in line and f'{target} (No space left on device)' in line, line
    failed = int(line.split('; epoch ')[1].split()[0])
    assert f'keeps epoch {failed - 1}' in line and 'resume' in line, line
    consistent_at(tmp_path, failed - 1)
    monkeypatch.undo()
    r = train_digits(out_dir=str(tmp_path), resume=True, **KW)
    same = ('epoch', 'step', 'train_loss', 'valid_loss', 'acc', 'best_acc')
    assert {k: r[k] for k in same} == {k: whole[0][k] for k in same}
    consistent_at(tmp_path, 3)

def test_resume_from_a_folder(tmp_path):
    (tmp_path/'ckpt'/'last.pt').mkdir(parents=True)
    code, err = cli('train', 'digits', '--set', f'out_dir={tmp_path}', 'resume=true', 'progress=false')
    line = one_line(err)
    assert code == 1 and f'{tmp_path}/ckpt/last.pt is a folder, where the run writes a file; move it away' in line, line
    with pytest.raises(IsADirectoryError, match='last.pt is a folder, not a checkpoint file; move that folder away'): load_checkpoint(tmp_path/'ckpt'/'last.pt')


# ---------- 4. papermill directly: unknown names and bad values refused before any compute ----------
@pytest.mark.parametrize('param, value, words', [
    ('iteration', '3', "ParameterError: unknown parameter(s) ['iteration'] for 31_exp.gan.ipynb (did you mean 'iterations'?)"),
    ('iterations', '-1', "ParameterError: config key 'iterations' of task gan must be > 0, got -1 (from papermill parameters)"),
    ('proxy_width', 'wide', "ParameterError: config key 'proxy_width' of task gan must be int, got 'wide' (str) (from papermill parameters)"),
    ('device', 'tpu', "ParameterError: device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'")])
def test_papermill_refuses(tmp_path, param, value, words):
    import nbformat
    out = tmp_path/'out.ipynb'
    r = subprocess.run([sys.executable, '-m', 'papermill', str(ROOT/'nbs'/'31_exp.gan.ipynb'), str(out), '--cwd', str(ROOT/'nbs'),
                        '-p', param, value, '-p', 'out_dir', str(tmp_path/'run')], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and words in r.stderr, r.stderr[-2000:]
    nb = nbformat.read(str(out), as_version=4)
    code = [c for c in nb.cells if c.cell_type == 'code']
    failing = next(i for i, c in enumerate(code) if any(o.get('output_type') == 'error' for o in c.outputs))
    assert 'check_notebook(' in code[failing].source                               # the check cell failed ...
    assert not any(c.get('execution_count') for c in code[failing + 1:])            # ... and nothing after it ran
    err = next(o for o in code[failing].outputs if o.get('output_type') == 'error')
    assert len(err['traceback']) == 1 and words in err['traceback'][0]              # one line, no traceback
    assert not (tmp_path/'run').exists()

def test_reproduce_refuses_before_the_kernel(tmp_path):
    code, err = cli('reproduce', '--scale', 'tiny', '--only', 'gan', '--runs-dir', tmp_path, '--set', 'iterations=-1')
    assert code == 1 and "gan: config key 'iterations' of task gan must be > 0, got -1 (from the manifest's tiny parameters and --set)" in one_line(err), err
    assert not list(tmp_path.rglob('output.ipynb'))                               # refused before any kernel started


# ---------- 5. the remaining tracebacks ----------
def test_train_config_notebook_fails_in_one_line(tmp_path):
    "`ea-nb train TASK --config FILE` runs the experiment's notebook: its failure is one line, and the last run's metrics stay"
    import yaml
    root = demo_project()
    man = yaml.safe_load((root/'experiments'/'manifest.yaml').read_text()); man['demo']['task'] = 'digits'
    (root/'experiments'/'manifest.yaml').write_text(yaml.safe_dump(man))
    run = root/'runs'/'demo_full'; run.mkdir(parents=True); (run/'metrics.json').write_text('{"sq": 100}')
    (root/'experiments'/'demo_full.yaml').write_text('n: 13\n')                         # the demo notebook's "unlucky n"
    code, err = cli('train', 'digits', '--config', root/'experiments'/'demo_full.yaml', cwd=root)
    line = one_line(err)
    assert code == 1 and "experiment 'demo' (full) failed in cell" in line and 'AssertionError: unlucky n' in line, line
    assert json.loads((run/'metrics.json').read_text()) == {'sq': 100}

def test_threads_negative():
    code, err = cli('reproduce', '--scale', 'tiny', '--only', 'gan', '--threads', '-1')
    assert code == 2 and '--threads (CPU threads of every notebook) must be a whole number >= 0' in one_line(err), err

class Payload:
    def __init__(self, f): self.f = f
    def __reduce__(self): return (Path.touch, (self.f,))

def test_weights_file_errors(tmp_path):
    from torchvision.models import resnet18
    f = tmp_path/'resnet18.pth'; torch.save(resnet18().state_dict(), f)
    cut = tmp_path/'cut.pth'; cut.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 3])
    with pytest.raises(ValueError) as e: load_resnet_weights(resnet18(), cut)
    assert f'{cut} is truncated or not a torch weights file' in str(e.value) and '\n' not in str(e.value)
    bad, ran = tmp_path/'payload.pth', tmp_path/'payload_ran'
    torch.save({'conv1.weight': Payload(ran)}, bad)
    with pytest.raises(ValueError) as e: load_resnet_weights(resnet18(), bad)
    msg = str(e.value)
    assert f'{bad} holds pickled Python objects besides tensors and was not loaded (nothing in it ran)' in msg, msg
    assert 'weights_only=False' not in msg and '\n' not in msg and not ran.exists()


# ---------- 6. settings: numbers as Python reads them, the file's device honoured ----------
def test_set_number_like_python():
    assert _sets(['lr=1e4', 'bs=32', 'name=1e4x', 'x=nan']) == dict(lr=1e4, bs=32, name='1e4x', x='nan')
    own, run = task_config('digits', _sets(['lr=1e4']))
    assert run.lr == 1e4

@NO_CUDA
def test_gan_config_device_honoured(no_training):
    code, err = cli('train', 'gan', '--config', 'experiments/eagan_cifar10.yaml', '--set', 'mixer=ea')
    assert code == 1 and "device='cuda' was asked for but this machine has no CUDA devices" in one_line(err), err


# ---------- 7. the point-cloud classifier has one output per class folder ----------
def test_pointcloud_sized_by_class_list(tmp_path):
    r = tmp_path/'ModelNet40'; write_modelnet(r, classes=('airplane', 'bed', 'chair', 'desk'))
    for s in ('train', 'test'):
        for f in (r/'raw'/'desk'/s).iterdir(): f.unlink()                               # the last class has no clouds
    t = trainer('pointcloud', dataset='modelnet40', root=str(r), num_points=32, S=4, embed_dim=8, dims=[16, 16], n_samples=[16, 8],
                k=4, fuse_dim=32, head_dims=[16, 16], epochs=1, bs=2, device='cpu', out_dir=None, progress=False)
    ds = t.train_dl.dataset
    assert (ds.num_classes, len(ds.classes)) == (3, 4)                              # PyG: highest label + 1
    assert (t.task.num_classes, t.unwrapped.head[-1].out_features) == (4, 4)
