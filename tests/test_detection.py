"COCO in its real on-disk layout → ea_nb.data's loader → the detectors of ea_nb.detection → box and mask mAP"
import json
import numpy as np, pytest, torch
import fastcore.test as ft
from PIL import Image
from torch.utils.data import DataLoader
from ea_nb.data import build, collate_det
from ea_nb.detection import detector, small_detector_kwargs, InstanceTask
from ea_nb.train import trainer


pytestmark = pytest.mark.usefixtures('no_network')   # conftest: the network is off for every test here

def poly(x0, y0, x1, y1): return [[x0, y0, x1, y0, x1, y1, x0, y1]]

@pytest.fixture
def coco_root(tmp_path): return write_coco(tmp_path)

def write_coco(tmp_path):
    "A 3-image COCO val2017 tree: instances json (polygons, an uncompressed-RLE crowd region) and JPEGs"
    rng = np.random.default_rng(0)
    sizes = {42: (48, 64), 7: (40, 40), 9: (56, 48)}                       # id: (h, w)
    (tmp_path/'val2017').mkdir()
    for i, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path/f'val2017/{i:012d}.jpg')
    boxes = {42: [(18, 4, 8, 30, 20), (1, 36, 24, 60, 44)], 7: [(3, 10, 10, 30, 34)], 9: [(18, 2, 30, 20, 50), (44, 24, 6, 46, 20)]}
    anns, k = [], 1
    for i, bs in boxes.items():
        for c, x0, y0, x1, y1 in bs:
            anns.append(dict(id=k, image_id=i, category_id=c, bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0)*(y1 - y0),
                             iscrowd=0, segmentation=poly(x0, y0, x1, y1))); k += 1
    h, w = sizes[7]                                                      # crowd: columns 32-35, rows 4-11 of image 7
    counts = [32*h + 4] + [8, h - 8]*3 + [8, h*(w - 36) + h - 12]
    anns.append(dict(id=k, image_id=7, category_id=1, bbox=[32, 4, 4, 8], area=32, iscrowd=1, segmentation=dict(counts=counts, size=[h, w])))
    d = dict(images=[dict(id=i, file_name=f'{i:012d}.jpg', height=h, width=w) for i, (h, w) in sizes.items()],
             annotations=anns, categories=[dict(id=c, name=n) for c, n in ((1, 'person'), (3, 'car'), (18, 'dog'), (44, 'bottle'))])
    (tmp_path/'annotations').mkdir(); (tmp_path/'annotations/instances_val2017.json').write_text(json.dumps(d))
    return tmp_path

def test_coco_loader_fixture(coco_root):
    ds = build('coco', 'val', root=coco_root)
    ft.test_eq((len(ds), ds.ids), (3, [7, 9, 42]))
    x, t = ds[0]
    ft.test_eq((x.shape, t['labels'].tolist(), t['iscrowd'].tolist(), t['masks'].shape), ((3, 40, 40), [3, 1], [0, 1], (2, 40, 40)))
    ft.test_eq((t['masks'][1].sum().item(), t['masks'][1][4:12, 32:36].all().item()), (32, True))   # the RLE crowd region

def test_coco_ground_truth_scores_one(coco_root):
    "Loader → metric: ground truth fed back as predictions is a perfect score for boxes and masks; crowds are ignored"
    task = InstanceTask(('bbox', 'segm'))
    ms = task.metrics()
    for images, targets in DataLoader(build('coco', 'val', root=coco_root), 2, collate_fn=collate_det):
        preds = [dict(boxes=t['boxes'], labels=t['labels'], scores=torch.ones(len(t['labels'])), masks=t['masks'][:, None].float())
                 for t in targets]
        task.update(ms, dict(preds=preds, target=targets))
    ft.test_close((ms['bbox'].compute()['map'], ms['segm'].compute()['map']), (1., 1.))

@pytest.mark.parametrize('arch', ['faster_rcnn', 'mask_rcnn'])
def test_coco_detector_eval_and_map(coco_root, arch):
    "Loader → detector (EA after layer4, 91 COCO classes) → eval step → mAP, end to end"
    torch.manual_seed(0)
    m = detector(arch, context='ea', num_classes=91, box_score_thresh=0., **small_detector_kwargs(48, scale=1., width=16)).eval()
    task = InstanceTask(('bbox', 'segm') if arch == 'mask_rcnn' else ('bbox',))
    ms = task.metrics()
    dl = DataLoader(build('coco', 'val', root=coco_root), 2, collate_fn=collate_det)
    with torch.no_grad():
        for batch in dl:
            out = task.step(m, batch)
            ft.test_eq(len(out['preds']), len(batch[0]))
            if arch == 'mask_rcnn':                                           # masks come back at input size
                ft.test_eq([tuple(p['masks'].shape[-2:]) for p in out['preds']], [tuple(x.shape[-2:]) for x in batch[0]])
            task.update(ms, out)
    res = {k: v.compute() for k, v in ms.items()}
    ft.test_eq(set(res), set(task.iou_types))
    for r in res.values(): ft.test_eq(0. <= r['map'].item() <= 1., True)

def test_coco_train_step_drops_crowd(coco_root):
    "A training step on COCO targets (with a crowd region) gives finite losses"
    torch.manual_seed(0)
    m = detector('mask_rcnn', context='ea', num_classes=91, **small_detector_kwargs(48, scale=1., width=16)).train()
    images, targets = collate_det([build('coco', 'val', root=coco_root)[i] for i in range(3)])
    loss = InstanceTask(('bbox', 'segm')).step(m, (images, targets))['loss']
    loss.backward()
    ft.test_eq(torch.isfinite(loss).item(), True)
    ft.test_eq(all(p.grad is not None for p in m.backbone.body.context.parameters()), True)

def test_trainer_on_coco_layout(coco_root, tmp_path):
    "detection_trainer reads COCO from its folder (train split written from the val fixture) and evaluates box + mask mAP"
    import shutil
    shutil.copytree(coco_root/'val2017', coco_root/'train2017')
    shutil.copy(coco_root/'annotations/instances_val2017.json', coco_root/'annotations/instances_train2017.json')
    t = trainer('detection', arch='mask_rcnn', mixer='ea', dataset='coco', data_root=str(coco_root), small=True, img_size=64,
                          epochs=1, bs=2, opt='adamw', lr=1e-3, warmup_iters=0, out_dir=None, progress=False)
    res = t.fit()
    ft.test_eq({'bbox_map', 'segm_map'} <= set(res), True)
