"""The paper-scale configurations (every experiments/*.yaml) run end to end on data in the real on-disk layouts.

Each full-scale file runs through `ea-nb reproduce --scale full --only NAME` with the file's own model, data pipeline,
transforms, loss, schedule, evaluation and checkpointing at the paper's sizes; only the length is shortened (the
manifest entry's `dry` parameters: 1 iteration or epoch, a batch of 1-4, one validation image, one arm of a sweep).
The data are fixtures written in each data set's real layout (VOC + SBD, ADE20K, Cityscapes, ImageNet, CIFAR-10
python batches, COCO, ModelNet40, ShapeNet part) and the weight files are local files in their real formats
(torchvision ResNet state dicts, torch-fidelity's FID Inception). The run must end with metrics.json; then
`ea-nb train TASK --config experiments/X.yaml --set mixer=M resume=true ...` (the other entry point) must continue
from the checkpoint the notebook wrote for that arm, one step further on a schedule one step longer.
"""
import json, shutil, subprocess, sys, time
from pathlib import Path
import pytest, torch, yaml
from ea_nb.cli import full_configs, load_manifest, run_dir
from ea_nb.train import task_parameters
from test_data_loaders import rgb, label_png, stripes, write_voc, write_cifar
from test_detection import write_coco
from test_pointcloud import write_modelnet_off, write_shapenet

ROOT = Path(__file__).resolve().parents[1]
FULL = full_configs(ROOT)
MANIFEST = load_manifest(ROOT)
pytestmark = pytest.mark.usefixtures('no_network')
LENGTH_KEYS = ('iterations', 'epochs')       # the key that sets a run's length, in the order a task reads them


# ---------- the data sets, in their real layouts ----------
def write_imagenet(root):
    for s in ('train', 'val'):
        for c in ('n01440764', 'n01443537'):
            for k in range(2): rgb(root/s/c/f'{c}_{k}.JPEG', 64, 48, seed=k)
    return root

def write_voc_sbd(root):
    "VOC2012 with SBD's train_aug list and SegmentationClassAug masks (the paper's 10,582-image training set, in small)"
    write_voc(root); return root

def write_ade20k(root):
    r = root/'ADEChallengeData2016'
    for s in ('training', 'validation'):
        for k in range(2):
            rgb(r/'images'/s/f'ADE_{s[:5]}_{k:08d}.jpg', 48, 40, k)
            label_png(r/'annotations'/s/f'ADE_{s[:5]}_{k:08d}.png', stripes(40, 48, [0, 1, 150]))
    return r

def write_cityscapes(root):
    for s, city in (('train', 'aachen'), ('val', 'frankfurt')):
        stem = f'{city}_000000_000019'
        rgb(root/'leftImg8bit'/s/city/f'{stem}_leftImg8bit.png', 64, 32)
        label_png(root/'gtFine'/s/city/f'{stem}_gtFine_labelIds.png', stripes(32, 64, [7, 26, 0, 24]))
    return root

def write_coco_2017(root):
    root.mkdir(parents=True)
    write_coco(root)
    shutil.copytree(root/'val2017', root/'train2017')
    shutil.copy(root/'annotations/instances_val2017.json', root/'annotations/instances_train2017.json')
    return root

def write_cifar10(root): write_cifar(root); return root

def write_shapenet_16(root):
    "ShapeNet part with all 16 categories (the file trains on every one)"
    from torch_geometric.datasets import ShapeNet
    return write_shapenet(root, tuple(ShapeNet.category_ids))

DATASETS = dict(imagenet=write_imagenet, voc=write_voc_sbd, ade20k=write_ade20k, cityscapes=write_cityscapes, coco=write_coco_2017,
                cifar10=write_cifar10, modelnet40=write_modelnet_off, shapenet_part=write_shapenet_16)


# ---------- local weight files, in their real formats ----------
def resnet_weights(path, arch):
    "A torchvision ImageNet ResNet state dict (random values, the real keys and shapes)"
    import torchvision
    torch.save(getattr(torchvision.models, arch)().state_dict(), path)

def inception_weights(path):
    "torch-fidelity's FID Inception v3 state dict (random values, the real keys and shapes), built without its download"
    from unittest import mock
    import torch_fidelity.feature_extractor_inceptionv3 as fi
    with mock.patch.object(fi, 'load_state_dict_from_url', lambda *a, **k: None), \
         mock.patch.object(fi.FeatureExtractorInceptionV3, 'load_state_dict', lambda self, sd: None):
        net = fi.FeatureExtractorInceptionV3('inception-v3-compat', ['2048'])
    torch.save(net.state_dict(), path)


def dry_overrides(name, cfg, tmp):
    "The entry's `dry` length plus the paths of the fixtures written for file `cfg` under `tmp`"
    entry = MANIFEST[FULL[name][0]]
    ov = dict(entry.get('dry') or {})
    if 'dataset' in cfg:
        key = 'data_root' if 'data_root' in cfg else 'root'
        ov[key] = str(DATASETS[cfg['dataset']](tmp/cfg['dataset']))
    for key in ('weights', 'backbone_weights'):
        if cfg.get(key):
            f = tmp/Path(cfg[key]).name; resnet_weights(f, cfg['backbone']); ov[key] = str(f)
    if cfg.get('inception_weights'):
        f = tmp/Path(cfg['inception_weights']).name; inception_weights(f); ov['inception_weights'] = str(f)
    return ov

def ea_nb(*args, timeout=900):
    "Run the ea-nb CLI in a fresh process; its stdout (the test fails with its stderr)"
    r = subprocess.run([sys.executable, '-m', 'ea_nb.cli', *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert r.returncode == 0, f"ea-nb {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout

def sets(d): return ['--set', *(f'{k}={json.dumps(v)}' for k, v in d.items())]


# `make test` dry-runs every manifest entry's own full file (the eanet_voc and Mask R-CNN runs included); the other
# data sets of the same notebooks and the ablation's second ResNet-101 sweep add 14 min on 2 cores (measured:
# nbs/reproducing.md), beyond `make test`'s 15-minute budget: `make test-dry` runs them (pytest -m slow)
HEAVY = {'eanet_ablation', 'eanet_ade20k', 'eanet_cityscapes', 'det_coco_faster_rcnn', 'eamlp19_imagenet', 'pct_shapenet_part'}

@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in sorted(FULL)])
def test_full_config_dry_run(name, tmp_path):
    ename, fname = FULL[name]
    entry, cfg_file = MANIFEST[ename], ROOT/'experiments'/fname
    cfg = yaml.safe_load(cfg_file.read_text())
    ov, runs = dry_overrides(name, cfg, tmp_path), tmp_path/'runs'
    t0 = time.perf_counter()
    ea_nb('reproduce', '--scale', 'full', '--only', name, '--runs-dir', str(runs), *sets(ov))
    out = run_dir(name, 'full', runs)
    metrics = json.loads((out/'metrics.json').read_text())
    assert metrics, f'{name}: empty metrics.json'
    seconds = dict(reproduce=round(time.perf_counter() - t0, 1))
    if entry.get('task'):            # the other entry point: one arm through the task registry, resuming a checkpoint
        ps = task_parameters(entry['task'])
        length = next(k for k in LENGTH_KEYS if k in cfg)
        done = lambda ck: ck['step'] if length == 'iterations' else ck['epoch']
        mixer = (ov.get('mixers') or cfg.get('mixers') or [ps['mixer'].default])[-1]
        arm_sets = {k: v for k, v in ov.items() if k in ps} | dict(mixer=mixer, progress=False)
        t0 = time.perf_counter()
        if entry.get('arm'): arm = out/entry['arm'].format(**{**cfg, **ov, 'mixer': mixer})   # the notebook wrote this arm's checkpoint
        else:                        # a notebook that keeps no checkpoints (the ablation): a first run by ea-nb train
            arm = tmp_path/'arm'
            ea_nb('train', entry['task'], '--config', str(cfg_file), *sets(arm_sets | dict(out_dir=str(arm))))
        last = torch.load(arm/'ckpt'/'last.pt', map_location='cpu', weights_only=True)
        ea_nb('train', entry['task'], '--config', str(cfg_file),
              *sets(arm_sets | {'out_dir': str(arm), 'resume': True, 'extend_schedule': True, length: done(last) + 1}))
        again = torch.load(arm/'ckpt'/'last.pt', map_location='cpu', weights_only=True)
        assert done(again) == done(last) + 1 and again['epoch'] > last['epoch'], (name, done(last), done(again))
        seconds['train_resume'] = round(time.perf_counter() - t0, 1)
    print(f'dry run {name}: {seconds}')
