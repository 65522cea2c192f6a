"""The paper-scale configurations (every experiments/*.yaml) run end to end on data in the real on-disk layouts.

Each full-scale file runs through `ea-nb reproduce --scale full --only NAME` with the file's own model, data pipeline,
transforms, loss, schedule, evaluation and checkpointing at the paper's sizes; only the length is shortened (the
manifest entry's `dry` parameters: 1 iteration or epoch, a batch of 1-4, one validation image, one arm of a sweep).
The data are fixtures written in each data set's real layout (VOC + SBD, ADE20K, Cityscapes, ImageNet, CIFAR-10
python batches, COCO, ModelNet40, ShapeNet part) and the weight files are local files in their real formats
(torchvision ResNet state dicts, torch-fidelity's FID Inception). The run must end with metrics.json; then
`ea-nb train TASK --config experiments/X.yaml --set mixer=M resume=true ...` (the other entry point) must continue
from the checkpoint the notebook wrote for that arm, one step further on a schedule one step longer.

Both commands run through `ea_nb.cli.main`, the console script's own function, in the test process (its imports are
paid once per process, not once per command); the notebook itself runs in a papermill kernel, as `ea-nb reproduce`
always runs it. Each weight file is written once per test process.
"""
import contextlib, io, json, shutil, time
from pathlib import Path
import pytest, torch, yaml
from ea_nb.cli import full_configs, load_manifest, main, run_dir
from ea_nb.train import task_parameters
from conftest import test_threads
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


@pytest.fixture(scope='session')
def weight_file(tmp_path_factory):
    "weight_file(name, arch): the local weight file `name` of `arch` (a ResNet, or 'inception' for FID), written once per process"
    d, made = tmp_path_factory.mktemp('weights'), {}
    def get(name, arch):
        if (name, arch) not in made:
            f = made[name, arch] = d/arch/name; f.parent.mkdir(exist_ok=True)
            inception_weights(f) if arch == 'inception' else resnet_weights(f, arch)
        return made[name, arch]
    return get

def dry_overrides(name, cfg, tmp, weight_file):
    "The entry's `dry` length plus the paths of the fixtures written for file `cfg` under `tmp` (weights from `weight_file`)"
    entry = MANIFEST[FULL[name][0]]
    ov = dict(entry.get('dry') or {})
    if 'dataset' in cfg:
        key = 'data_root' if 'data_root' in cfg else 'root'
        ov[key] = str(DATASETS[cfg['dataset']](tmp/cfg['dataset']))
    for key in ('weights', 'backbone_weights'):
        if cfg.get(key): ov[key] = str(weight_file(Path(cfg[key]).name, cfg['backbone']))
    if cfg.get('inception_weights'): ov['inception_weights'] = str(weight_file(Path(cfg['inception_weights']).name, 'inception'))
    return ov

def ea_nb(*args):
    "Run the ea-nb CLI (`ea_nb.cli.main`, what the console script calls) on `args`; its stdout (the test fails with its message)"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: main(list(args)); code = 0
        except SystemExit as e: code = e.code
    assert code in (0, None), f"ea-nb {' '.join(args)} failed ({code}):\n{out.getvalue()[-3000:]}\n{err.getvalue()[-3000:]}"
    return out.getvalue()

def sets(d): return ['--set', *(f'{k}={json.dumps(v)}' for k, v in d.items())]


# the heaviest first, so that the two test processes finish together
COST = ['eanet_cityscapes', 'det_coco_mask_rcnn', 'det_coco_faster_rcnn', 'eanet_ade20k', 'eanet', 'eanet_ablation', 'pct_shapenet_part']

@pytest.mark.parametrize('name', sorted(FULL, key=lambda n: (COST.index(n) if n in COST else len(COST), n)))
def test_full_config_dry_run(name, tmp_path, weight_file):
    ename, fname = FULL[name]
    entry, cfg_file = MANIFEST[ename], ROOT/'experiments'/fname
    cfg = yaml.safe_load(cfg_file.read_text())
    ov, runs = dry_overrides(name, cfg, tmp_path, weight_file), tmp_path/'runs'
    t0 = time.perf_counter()
    # at this process's thread count (the file's 0, torch's default, would put 4 threads on 2 cores beside the other worker)
    ea_nb('reproduce', '--scale', 'full', '--only', name, '--runs-dir', str(runs), '--threads', str(test_threads()), *sets(ov))
    out = run_dir(name, 'full', runs)
    metrics = json.loads((out/'metrics.json').read_text())
    assert metrics, f'{name}: empty metrics.json'
    seconds = dict(reproduce=round(time.perf_counter() - t0, 1))
    if entry.get('task'):            # the other entry point: one arm through the task registry, resuming the notebook's checkpoint
        ps = task_parameters(entry['task'])
        length = next(k for k in LENGTH_KEYS if k in cfg)
        done = lambda ck: ck['step'] if length == 'iterations' else ck['epoch']
        mixer = (ov.get('mixers') or cfg.get('mixers') or [ps['mixer'].default])[-1]
        # the task's settings and the manifest's dry `device` (the file's cuda is honoured by ea-nb train, as by the notebook)
        arm_sets = {k: v for k, v in ov.items() if k in ps or k == 'device'} | dict(mixer=mixer, progress=False)
        arm = out/entry['arm'].format(**{k: p.default for k, p in ps.items()} | cfg | ov | dict(mixer=mixer))   # where the notebook wrote it
        last = torch.load(arm/'ckpt'/'last.pt', map_location='cpu', weights_only=True)
        t0 = time.perf_counter()
        ea_nb('train', entry['task'], '--config', str(cfg_file),
              *sets(arm_sets | {'out_dir': str(arm), 'resume': True, 'extend_schedule': True, length: done(last) + 1}))
        again = torch.load(arm/'ckpt'/'last.pt', map_location='cpu', weights_only=True)
        assert done(again) == done(last) + 1 and again['epoch'] > last['epoch'], (name, done(last), done(again))
        seconds['train_resume'] = round(time.perf_counter() - t0, 1)
    print(f'dry run {name}: {seconds}')
