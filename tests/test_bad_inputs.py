"A user's mistakes, table-driven: each case asserts the error type and the words of its message (or the right result)"
import io, os, pickle
from contextlib import redirect_stderr
from pathlib import Path
import numpy as np, pytest, torch
from ea_nb.cli import main, demo_project
from ea_nb.data import build, check_off, safe_unpickle
from ea_nb.official import load_official
from ea_nb.train import load_checkpoint, train_digits
from test_data_loaders import write_voc, write_cifar, write_modelnet, rgb, label_png, stripes, TETRA_OFF

pytestmark = pytest.mark.usefixtures('no_network')

# ---------- the CLI: one line on stderr, exit status 2 ----------
def cli(*argv, cwd=None):
    "(exit status, stderr) of `ea-nb argv`"
    err, here = io.StringIO(), os.getcwd()
    try:
        if cwd: os.chdir(cwd)
        with redirect_stderr(err):
            try: main(list(argv)); code = 0
            except SystemExit as e: code = e.code
    finally: os.chdir(here)
    return code, err.getvalue()

CLI_CASES = [  # argv, words the one-line message must hold
    (['train', 'nope'], ["unknown task 'nope'", "'digits'"]),
    (['train', 'digits', '--set', 'lr=-1'], ["'lr'", 'must be > 0, got -1', 'from --set']),
    (['train', 'digits', '--set', 'bs=0'], ["'bs'", 'must be > 0, got 0']),
    (['train', 'digits', '--set', 'grad_accum=0'], ["'grad_accum'", 'must be > 0']),
    (['train', 'digits', '--set', 'epochs=0'], ["'epochs'", 'must be > 0']),
    (['train', 'digits', '--set', 'epochs=abc'], ["'epochs'", 'must be int', "got 'abc'"]),
    (['train', 'digits', '--set', 'mixer=vit'], ["'mixer'", "one of 'none', 'ea'", "got 'vit'"]),
    (['train', 'digits', '--set', 'typo_key=1'], ["unknown config key 'typo_key'", 'allowed keys: mixer, opt']),
    (['train', 'eanet', '--set', 'typo_key=1'], ["unknown config key 'typo_key' for task eanet", 'allowed keys: dataset']),
    (['train', 'eanet', '--set', 'S=abc'], ["'S' of task eanet must be int", "got 'abc'"]),
    (['train', 'eanet', '--set', 'mixer=cbam'], ["'mixer' of task eanet", "one of 'ea', 'sa', 'none'"]),
    (['train', 'detection', '--set', 'lr=-1'], ["'lr' of task detection must be > 0"]),
    (['train', 'pointcloud', '--set', 'bs=0'], ["'bs' of task pointcloud must be > 0"]),
    (['train', 'eamlp', '--set', 'epochs=abc'], ["'epochs' of task eamlp must be int"]),
    (['train', 'gan', '--set', 'lr=0.1'], ["task gan does not use 'lr'", 'lr_g and lr_d']),
    (['train', 'eanet', '--config', 'experiments/eanet_voc.yaml', '--set', 'S=abc'], ["'S' of task eanet must be int", 'experiments/eanet_voc.yaml']),
    (['train', 'gan', '--config', 'experiments/eanet_voc.yaml'], ["experiment 'eanet' of task 'eanet', not 'gan'"]),
    (['train', 'digits', '--set', 'bs'], ['--set expects key=value', "'bs'"]),
    (['train', 'digits', '--set', 'ema_decay=1.5'], ["'ema_decay'", 'must be < 1']),
    (['train', 'digits', '--set', 'weight_decay=-0.1'], ["'weight_decay'", 'must be >= 0']),
    (['train', 'digits', '--config', 'experiments/digits.yaml'], ['--config experiments/digits.yaml: no such file', 'experiments']),
    (['train', 'digits', '--config', 'experiments'], ['no such file (it is a folder)']),
    (['reproduce', '--only', 'nope'], ["unknown experiment(s) ['nope']", 'the manifest lists']),
    (['reproduce', '--scale', 'huge'], ["invalid choice: 'huge'", "'tiny', 'cpu', 'full'"]),
    (['evaluate', 'x.pth', '--frobnicate'], ['unrecognized arguments: --frobnicate']),
    (['evaluate', 'nowhere/model_best.pth.tar'], ['nowhere/model_best.pth.tar does not exist', 'download the official weights']),
]

@pytest.mark.parametrize('argv, words', CLI_CASES, ids=lambda v: ' '.join(v) if isinstance(v, list) and isinstance(v[0], str) and ' ' not in v[0] else None)
def test_cli_user_error(argv, words):
    code, err = cli(*argv)
    assert code == 2 and 'Traceback' not in err, err
    assert all(w in err for w in words), err
    assert [l for l in err.splitlines() if 'error:' in l] == [err.strip().splitlines()[-1]], err   # one error line (argparse: after its usage)

@pytest.mark.parametrize('text, words', [('epochs: 2\nlr: [0.1\n', ['line 3', 'not valid YAML']),
                                         ('- 1\n- 2\n', ['must hold a mapping', 'got list']),
                                         ('epochs: 2\nwidht: 8\n', ["unknown config key 'widht'", 'from '])])
def test_cli_bad_config_file(tmp_path, text, words):
    f = tmp_path/'x.yaml'; f.write_text(text)
    code, err = cli('train', 'digits', '--config', str(f))
    assert code == 2 and all(w in err for w in words) and str(f) in err, err

@pytest.mark.parametrize('manifest, words', [('demo: {notebook: demo.ipynb, tiny: {}', ['manifest.yaml, line 1: not valid YAML']),
                                             ('demo: {notebook: demo.ipynb, tiny: {}}', ["entry 'demo' lacks ['cpu', 'full']"])])
def test_cli_bad_manifest(manifest, words):
    root = demo_project(); (root/'experiments'/'manifest.yaml').write_text(manifest)
    code, err = cli('list', cwd=root)
    assert code == 2 and 'Traceback' not in err and any(w in err for w in words), err

def test_cli_debug_and_task_help(capsys):
    with pytest.raises(ValueError, match="'epochs' of task digits must be > 0"): main(['--debug', 'train', 'digits', '--set', 'epochs=0'])
    main(['train', 'digits', '--help'])
    out = capsys.readouterr().out
    assert 'extend_schedule' in out and "'none'" in out and 'passes over the training data' in out and 'the engine' in out

# ---------- data on disk ----------
def test_voc_mask_of_another_size(tmp_path):
    v = write_voc(tmp_path)
    label_png(v/'SegmentationClass'/'2008_000001.png', stripes(20, 48, [0, 15]), palette=True)   # val image is 48x32
    with pytest.raises(ValueError, match=r'2008_000001\.png: the mask is 48x20 but its image .*2008_000001\.jpg is 48x32'):
        build('voc', 'val', root=tmp_path, transforms=None)[0]
    label_png(v/'SegmentationClass'/'2007_000032.png', stripes(32, 40, [0, 15]), palette=True)   # a train image
    with pytest.raises(ValueError, match='pixel for pixel'): build('voc', 'train', root=tmp_path)[0]

def test_cifar_crafted_pickle_runs_nothing(tmp_path):
    write_cifar(tmp_path)
    flag = tmp_path/'pwned'
    class Payload:
        def __reduce__(self): return (os.system, (f'touch {flag}',))
    (tmp_path/'cifar-10-batches-py'/'data_batch_1').write_bytes(pickle.dumps(dict(data=Payload(), labels=[0])))
    with pytest.raises(ValueError, match=r'data_batch_1 is not a plain-data pickle \(it asks for posix\.system'):
        build('cifar10', 'train', root=tmp_path)
    assert not flag.exists()
    write_cifar(tmp_path/'ok')
    assert len(build('cifar10', 'train', root=tmp_path/'ok')) == 10 and safe_unpickle(tmp_path/'ok'/'cifar-10-batches-py'/'batches.meta')['label_names'][0] == 'c0'

@pytest.mark.parametrize('text, words', [(TETRA_OFF.rsplit('\n', 3)[0], 'truncated OFF mesh: its header announces 4 vertices and 4 faces'),
                                         ('PLY\n1 2 3\n', "not an OFF mesh (first line 'PLY'"),
                                         ('OFF\nfour 4 0\n', "malformed OFF header 'four 4 0'")])
def test_bad_off_mesh(tmp_path, text, words):
    f = tmp_path/'m.off'; f.write_text(text)
    with pytest.raises(ValueError, match='m.off: ' + __import__('re').escape(words)): check_off(f)

def test_modelnet_truncated_then_fixed(tmp_path):
    "A truncated mesh is named; once it is fixed, the stale processed/ cache is not reused (the raw files changed)"
    r = tmp_path/'ModelNet40'; write_modelnet(r)
    bad = r/'raw'/'chair'/'train'/'chair_0001.off'
    bad.write_text(TETRA_OFF.rsplit('\n', 3)[0])
    with pytest.raises(ValueError, match='chair_0001.off: truncated OFF mesh'): build('modelnet40', 'train', root=r, transform=None)
    bad.write_text(TETRA_OFF)
    assert len(build('modelnet40', 'train', root=r, transform=None)) == 6
    (r/'raw'/'chair'/'train'/'chair_0003.off').write_text(TETRA_OFF)            # one more mesh: processed/ is remade
    assert len(build('modelnet40', 'train', root=r, transform=None)) == 7

# ---------- checkpoints ----------
def _file(path, data:bytes) -> Path: path.write_bytes(data); return path

@pytest.mark.parametrize('make, exc, words', [
    (lambda d: _file(d/'e.pth', b''), ValueError, 'is empty (0 bytes)'),
    (lambda d: (d/'w').mkdir() or d/'w', IsADirectoryError, 'is a folder: pass the checkpoint file in it'),
    (lambda d: d/'none.pth', FileNotFoundError, 'does not exist'),
    (lambda d: _file(d/'g.pth', b'not a checkpoint'), ValueError, 'is not a readable PyTorch checkpoint'),
    (lambda d: torch.save({'epoch': 1}, d/'s.pth') or d/'s.pth', ValueError, 'the checkpoint holds no state dict')])
def test_official_checkpoint_errors(tmp_path, make, exc, words):
    with pytest.raises(exc, match=__import__('re').escape(words)): load_official(make(tmp_path))

@pytest.fixture(scope='module')
def stopped_run(tmp_path_factory):
    "A 2-epoch digits run stopped after its first epoch"
    d = tmp_path_factory.mktemp('stopped')
    train_digits(out_dir=str(d), epochs=2, width=8, stop_after_epoch=1, progress=False)
    return d

@pytest.mark.parametrize('change, words', [
    (dict(width=16), 'weights: 0.weight [8, 3, 3, 3] -> [16, 3, 3, 3]'),
    (dict(mixer='ea'), 'weights:'),
    (dict(opt='sgd'), "opt: 'AdamW' -> 'SGD'"),
    (dict(bs=16), 'steps_per_epoch: 45 -> 90'),
    (dict(seed=1), 'seed: 0 -> 1'),
    (dict(epochs=4), 'total_steps: 90 -> 180); resume with extend=True')])
def test_resume_with_another_configuration(stopped_run, change, words):
    with pytest.raises(ValueError, match=__import__('re').escape(words)) as e:
        train_digits(out_dir=str(stopped_run), resume=True, **{**dict(epochs=2, width=8, progress=False), **change})
    assert 'last.pt' in str(e.value)

def test_not_an_ea_nb_checkpoint(tmp_path):
    torch.save({'weights': torch.zeros(1)}, tmp_path/'x.pt')
    with pytest.raises(ValueError, match=r"x\.pt is not an ea_nb checkpoint: it lacks \['model', 'opt', 'epoch', 'step'\]"): load_checkpoint(tmp_path/'x.pt')

# ---------- modules: sizes and options at construction, dtypes at the call ----------
from ea_nb.attention import ExternalAttention, ExternalAttention2d, MultiHeadExternalAttention
from ea_nb.fast import LeanMultiHeadExternalAttention

@pytest.mark.parametrize('build, words', [
    (lambda: ExternalAttention(8, S=0), 'ExternalAttention: S must be a whole number ≥ 1, got 0'),
    (lambda: ExternalAttention(8, S=-1), 'S must be a whole number ≥ 1, got -1'),
    (lambda: ExternalAttention(8, S=2.5), 'got 2.5 (float)'),
    (lambda: ExternalAttention(0), 'dim must be a whole number ≥ 1, got 0'),
    (lambda: ExternalAttention(8, fold='yes'), "fold must be True, False or 'auto', got 'yes'"),
    (lambda: ExternalAttention2d(8, S=0), 'ExternalAttention2d: S must be a whole number ≥ 1, got 0'),
    (lambda: ExternalAttention2d(8, fold='no'), "fold must be True, False or 'auto'"),
    (lambda: MultiHeadExternalAttention(8, num_heads=0), 'num_heads must be a whole number ≥ 1, got 0'),
    (lambda: MultiHeadExternalAttention(8, coef=-1), 'coef must be a whole number ≥ 1, got -1'),
    (lambda: MultiHeadExternalAttention(8, coef=0), 'coef must be a whole number ≥ 1, got 0'),
    (lambda: MultiHeadExternalAttention(8, num_heads=3), 'dim must be divisible by num_heads: got dim=8, num_heads=3'),
    (lambda: LeanMultiHeadExternalAttention(8, num_heads=0), 'LeanMultiHeadExternalAttention: num_heads must be a whole number ≥ 1')])
def test_module_constructor(build, words):
    with pytest.raises(ValueError, match=__import__('re').escape(words)): build()

@pytest.mark.parametrize('m, x, words', [
    (ExternalAttention(8), torch.ones(2, 4, 8, dtype=torch.long), 'got dtype torch.int64: convert it, e.g. x.float()'),
    (ExternalAttention(8), torch.ones(2, 4, 8, dtype=torch.bool), 'got dtype torch.bool'),
    (ExternalAttention(8), torch.ones(2, 4, 8, dtype=torch.complex64), 'got dtype torch.complex64'),
    (ExternalAttention(8), torch.ones(2, 4, 8).half(), 'expected a torch.float32 input for this torch.float32 module, got torch.float16'),
    (ExternalAttention2d(8), torch.ones(2, 8, 4, 4).half(), 'or run under torch.autocast'),
    (MultiHeadExternalAttention(8, num_heads=2), torch.ones(2, 4, 8).double(), 'got torch.float64: pass x.to(torch.float32)'),
    (MultiHeadExternalAttention(8, num_heads=2), torch.ones(2, 4, 8, 1), 'expected (B, N, C) tokens with C=8, got shape (2, 4, 8, 1)')])
def test_module_input(m, x, words):
    with pytest.raises((TypeError, ValueError), match=__import__('re').escape(words)): m(x)

def test_module_autocast_input_is_accepted():
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert ExternalAttention(8)(torch.randn(2, 4, 8).bfloat16()).dtype == torch.bfloat16
