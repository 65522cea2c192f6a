"Tests of ea_nb.train: exact resume, atomic and weights_only checkpoints, config checks, recipes, digits accuracy"
import csv, math, os
from pathlib import Path
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
import fastcore.test as ft
from ea_nb.train import (Trainer, ClassificationTask, train_digits, validate_config, load_checkpoint, build_sgd,
                         build_adamw, poly_schedule, cosine_schedule, plot_log)

EPOCHS, STOP = 4, 2
KW = dict(epochs=EPOCHS, lr=1e-2, progress=False)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "One uninterrupted digits run, and one stopped after epoch STOP then resumed"
    d = tmp_path_factory.mktemp('digits')
    a = train_digits(out_dir=str(d/'a'), **KW)
    train_digits(out_dir=str(d/'b'), stop_after_epoch=STOP, **KW)
    mid = load_checkpoint(d/'b'/'ckpt'/'last.pt')['epoch']
    b = train_digits(out_dir=str(d/'b'), resume=True, **KW)
    return d, a, b, mid


def _rows(f):
    "log.csv rows without the wall-clock column"
    return [{k: v for k, v in r.items() if k != 'time'} for r in csv.DictReader(open(f))]


def test_digits_accuracy(runs):
    d, a, _, _ = runs
    assert a['acc'] >= 0.9, a
    assert a['epochs'] == EPOCHS and a['sec_per_epoch'] > 0
    ft.test_eq(sorted(p.name for p in (d/'a').iterdir()), ['ckpt', 'curves.png', 'log.csv', 'metrics.json'])


def test_resume_is_bit_identical(runs):
    d, a, b, mid = runs
    ft.test_eq(mid, STOP)  # the second run really stopped half-way
    same = ('epoch', 'step', 'lr', 'train_loss', 'valid_loss', 'acc', 'top5', 'best_acc')
    ft.test_eq({k: a[k] for k in same}, {k: b[k] for k in same})  # floats compared exactly
    ft.test_eq(_rows(d/'a'/'log.csv'), _rows(d/'b'/'log.csv'))    # every epoch, no duplicated rows
    ft.test_eq(len(_rows(d/'b'/'log.csv')), EPOCHS)
    wa, wb = (load_checkpoint(d/r/'ckpt'/'last.pt')['model'] for r in 'ab')
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_weights_only_round_trip(runs):
    d = runs[0]
    ck = torch.load(d/'a'/'ckpt'/'last.pt', weights_only=True)
    for k in ('model', 'opt', 'sched', 'ema', 'scaler', 'rng', 'sampler', 'epoch', 'step', 'history', 'best'): assert k in ck
    ft.test_eq(ck['epoch'], EPOCHS)
    ft.test_eq(set(ck['rng'][0]), {'python', 'numpy', 'torch'} | ({'cuda'} if torch.cuda.is_available() else set()))
    ft.test_eq((ck['sampler']['seed'], ck['sampler']['epoch']), (0, EPOCHS))  # accelerate's seedable sampler
    assert isinstance(ck['sampler']['generators']['sampler'], torch.Tensor)
    assert (d/'a'/'ckpt'/'best.pt').is_file()


def _tiny(out_dir, n=40, bs=8, seed=0, **kw):
    "A Trainer of a tiny conv net on 40 random 8x8 images (5 batches per epoch)"
    torch.manual_seed(seed)
    ds = TensorDataset(torch.randn(n, 3, 8, 8), torch.randint(0, 4, (n,)))
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4*6*6, 4))
    return Trainer(m, ClassificationTask(4), DataLoader(ds, bs, shuffle=True), DataLoader(ds, bs), out_dir=out_dir,
                   sched=poly_schedule, progress=False, **kw)


def test_round_trip_with_ema(tmp_path):
    t = _tiny(tmp_path, ema_decay=0.9); t.fit()
    ck = torch.load(tmp_path/'ckpt'/'last.pt', weights_only=True)
    u = _tiny(tmp_path/'other', ema_decay=0.9, seed=1)
    u.load_state_dict(ck)
    for x, y in ((t.unwrapped, u.unwrapped), (t.ema, u.ema)):
        sx, sy = x.state_dict(), y.state_dict()
        assert all(torch.equal(sx[k], sy[k]) for k in sx)
    so, su = t.opt.state_dict()['state'], u.opt.state_dict()['state']
    assert so.keys() == su.keys() and all(torch.equal(so[i][k], su[i][k]) for i in so for k in so[i])
    ft.test_eq((u.epoch, u.step, u.sched.state_dict()), (t.epoch, t.step, t.sched.state_dict()))


def test_atomic_checkpoint_write(tmp_path, monkeypatch):
    t = _tiny(tmp_path); t.fit()
    last = tmp_path/'ckpt'/'last.pt'
    before = last.read_bytes()
    real_save = torch.save
    def broken_save(obj, f, *a, **k):  # writes part of a checkpoint, then the "disk fills up"
        real_save(obj, f, *a, **k)
        if hasattr(f, 'truncate'): f.seek(100); f.truncate()
        else: Path(f).write_bytes(Path(f).read_bytes()[:100])
        raise OSError('No space left on device')
    monkeypatch.setattr(torch, 'save', broken_save)
    t.epoch += 1
    ft.test_fail(lambda: t.save_checkpoint(), contains='No space left')
    monkeypatch.undo()
    ft.test_eq(last.read_bytes(), before)
    ft.test_eq(sorted(p.name for p in last.parent.iterdir()), ['best.pt', 'last.pt'])  # no temp files left
    ft.test_eq(load_checkpoint(last)['epoch'], 1)
    def broken_fsync(fd): raise OSError('I/O error')  # fails after the temporary file was written
    monkeypatch.setattr(os, 'fsync', broken_fsync)
    ft.test_fail(lambda: t.save_checkpoint(), contains='I/O error')
    monkeypatch.undo()
    ft.test_eq(last.read_bytes(), before)
    ft.test_eq(sorted(p.name for p in last.parent.iterdir()), ['best.pt', 'last.pt'])


def test_corrupt_checkpoint_clear_error(tmp_path):
    t = _tiny(tmp_path, epochs=2); t.stop_after_epoch = 1; t.fit()
    last = tmp_path/'ckpt'/'last.pt'
    last.write_bytes(last.read_bytes()[:len(last.read_bytes()) // 2])  # truncated
    with pytest.raises(ValueError, match=r'last\.pt is corrupt or truncated'): _tiny(tmp_path, epochs=2).fit(resume=True)
    last.write_bytes(b'not a checkpoint at all')
    with pytest.raises(ValueError, match=r'last\.pt is corrupt or truncated'): load_checkpoint(last)
    with pytest.raises(FileNotFoundError, match='nothere.pt'): load_checkpoint(tmp_path/'nothere.pt')


def test_validate_config():
    ok = dict(mixer='ea', epochs=3, lr=1, out_dir='x', resume=True, mixed_precision='fp16')
    ft.test_eq(validate_config(train_digits, ok), ok)
    with pytest.raises(ValueError, match=r"unknown config key 'epoch' for train_digits; allowed keys: mixer, opt, "):
        validate_config(train_digits, dict(epoch=3))
    with pytest.raises(ValueError, match=r"'mixer' of train_digits must be one of 'none', 'ea', got 'vit'"):
        validate_config(train_digits, dict(mixer='vit'))
    with pytest.raises(ValueError, match=r"'epochs' of train_digits must be int, got '3'"):
        validate_config(train_digits, dict(epochs='3'))
    with pytest.raises(ValueError, match=r"'resume' .* must be bool"): validate_config(train_digits, dict(resume=1))


def test_poly_reaches_zero():
    m = nn.Linear(4, 4)
    opt = build_sgd(m, lr=0.1)
    s = poly_schedule(opt, total_steps=50)
    for t in range(1, 51): s.step_update(t)
    ft.test_eq([g['lr'] for g in opt.param_groups], [0., 0.])
    opt = build_sgd(m, lr=0.1); s = poly_schedule(opt, total_steps=50, steps_per_epoch=10, per_step=False)
    s.step(2); ft.test_close(opt.param_groups[0]['lr'], 0.1 * (1 - 2/5) ** 0.9)
    s.step(5); ft.test_eq(opt.param_groups[0]['lr'], 0.)


def test_cosine_warmup():
    opt = build_adamw(nn.Linear(4, 4), lr=1e-3)
    s = cosine_schedule(opt, total_steps=100, steps_per_epoch=10, warmup_epochs=1, warmup_lr=1e-6, min_lr=1e-5)
    ft.test_eq([g['lr'] for g in opt.param_groups], [1e-6, 1e-6])  # starts at the warm-up lr
    s.step_update(5); ft.test_close(opt.param_groups[0]['lr'], 1e-6 + 5 * (1e-3 - 1e-6) / 10, eps=1e-12)
    s.step_update(100); ft.test_close(opt.param_groups[0]['lr'], 1e-5, eps=1e-12)
    ft.test_eq([g['weight_decay'] for g in opt.param_groups], [0., 0.03])  # bias: no decay (timm's rule)


def test_sgd_groups():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2), nn.LayerNorm(2))
    g = {x['name']: x for x in build_sgd(m, lr=0.01, weight_decay=1e-4).param_groups}
    ids = lambda ps: {id(p) for p in ps}
    ft.test_eq(ids(g['decay']['params']), ids([m[0].weight, m[3].weight]))
    ft.test_eq(ids(g['bias']['params']), ids([m[0].bias, m[3].bias]))
    ft.test_eq(ids(g['no_decay']['params']), ids([m[1].weight, m[1].bias, m[4].weight, m[4].bias]))
    ft.test_eq((g['bias']['lr'], g['bias']['weight_decay']), (0.02, 0.))
    ft.test_eq((g['no_decay']['lr'], g['no_decay']['weight_decay']), (0.01, 0.))
    ft.test_eq((g['decay']['lr'], g['decay']['weight_decay']), (0.01, 1e-4))


def test_grad_accumulation_steps(tmp_path):
    t = _tiny(tmp_path, grad_accum=2, epochs=2); r = t.fit()  # 5 batches per epoch -> 3 optimiser steps
    ft.test_eq((t.steps_per_epoch, r['step']), (3, 6))
    ft.test_eq(t.sched.state_dict()['t_initial'], 6)


def test_plot_log(runs):
    d = runs[0]
    fig = plot_log(d/'a', fname='again.png')
    assert (d/'a'/'again.png').stat().st_size > 0 and len(fig.axes) == 2
    with pytest.raises(FileNotFoundError, match='log.csv does not exist'): plot_log(d/'nothing')


def test_iteration_based_max_steps(tmp_path):
    t = _tiny(tmp_path, epochs=100, max_steps=7); r = t.fit()  # 5 batches per epoch: 2 epochs, stopped at step 7 where poly reaches 0
    ft.test_eq((t.n_epochs, r['step'], r['epoch']), (2, 7, 2))
    ft.test_eq([g['lr'] for g in t.opt.param_groups], [0.] * len(t.opt.param_groups))


# A training process killed (SIGKILL) at a chosen write: the n-th write of best.pt, last.pt or log.csv dies after
# half of the temporary file is on disk, as a kill in the middle of the write would leave it.
_KILLER = '''
import os, signal, sys
from pathlib import Path
import ea_nb.train as T
import torch
out, target, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))   # the test's own thread count: the resumed run must be the same computation
real, seen = T.atomic_write, []
def dying_write(path, data):
    path = Path(path); seen.append(path.name)
    if path.name == target and seen.count(target) == nth:
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent/f'.{path.name}.killed.tmp').write_bytes((data.encode() if isinstance(data, str) else data)[:len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, data)
T.atomic_write = dying_write
T.train_digits(out_dir=out, epochs=3, width=8, progress=False)
'''
KILL_KW = dict(epochs=3, width=8, progress=False)

@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp('whole')
    return train_digits(out_dir=str(d), **KILL_KW), d

@pytest.mark.parametrize('target, nth', [('best.pt', 2), ('last.pt', 2), ('log.csv', 3)])
def test_kill_and_resume(uninterrupted, tmp_path, target, nth):
    "Killed at a write and resumed: the same metrics as an uninterrupted run, best.pt and last.pt agree, no temporaries"
    import subprocess, sys
    whole, wd = uninterrupted
    r = subprocess.run([sys.executable, '-c', _KILLER, str(tmp_path), target, str(nth), str(torch.get_num_threads())], capture_output=True, text=True)
    assert r.returncode == -9, f'the process was not killed at {target} #{nth}: {r.returncode} {r.stderr[-500:]}'
    assert list(tmp_path.rglob('*.tmp')), 'the kill left no temporary file: the test did not kill mid-write'
    res = train_digits(out_dir=str(tmp_path), resume=True, **KILL_KW)
    same = ('epoch', 'step', 'train_loss', 'valid_loss', 'acc', 'best_acc')
    ft.test_eq({k: res[k] for k in same}, {k: whole[k] for k in same})
    best, last = (load_checkpoint(tmp_path/'ckpt'/f) for f in ('best.pt', 'last.pt'))
    ft.test_eq(best['best'], last['best'])                                       # best.pt holds the best epoch ...
    ft.test_eq(best['history'][-1]['acc'], last['best'])                         # ... and is that epoch's state
    wb = load_checkpoint(wd/'ckpt'/'best.pt')['model']
    assert all(torch.equal(best['model'][k], wb[k]) for k in wb)                 # the same weights as without the kill
    ft.test_eq(list(tmp_path.rglob('*.tmp')), [])
