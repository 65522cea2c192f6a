"Real-data loaders of ea_nb.data on tiny fixtures written here in each data set's real on-disk layout"
import json, pickle
import numpy as np, pytest, torch
import fastcore.test as ft
from pathlib import Path
from PIL import Image
from ea_nb.data import build, CorruptImageError, DatasetNotFoundError, ModelNetLocal, cityscapes_lut


pytestmark = pytest.mark.usefixtures('no_network')   # conftest: the network is off for every test here

def rgb(path, w=40, h=30, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(path, format=fmt)
    return a

def label_png(path, a, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(a.astype(np.uint8), mode='L')
    if palette:
        im = im.convert('P'); im.putpalette([v for i in range(256) for v in ((i*37) % 256, (i*91) % 256, (i*53) % 256)])
    im.save(path)

def stripes(h, w, values):
    "(h, w) label map made of vertical stripes of `values`"
    return np.array(values)[np.arange(w)*len(values)//w][None].repeat(h, 0)

# ---------- classification ----------
def test_imagenet_imagefolder(tmp_path):
    for s in ('train', 'val'):
        for c in ('n01440764', 'n01443537'):
            for k in range(2): rgb(tmp_path/s/c/f'{c}_{k}.JPEG', seed=k)
    ds = build('imagenet', 'train', root=tmp_path, img_size=32)
    x, y = ds[3]
    ft.test_eq((len(ds), x.shape, x.dtype, y), (4, (3, 32, 32), torch.float32, 1))
    ft.test_eq(ds.class_to_idx, {'n01440764': 0, 'n01443537': 1})
    ft.test_eq(build('imagenet', 'val', root=tmp_path, img_size=24)[0][0].shape, (3, 24, 24))

def write_cifar(root, n=2):
    d = root/'cifar-10-batches-py'; d.mkdir(parents=True)
    rng, data = np.random.default_rng(0), {}
    for f in [*(f'data_batch_{i}' for i in range(1, 6)), 'test_batch']:
        data[f] = dict(data=rng.integers(0, 256, (n, 3072), dtype=np.uint8), labels=rng.integers(0, 10, n).tolist())
        (d/f).write_bytes(pickle.dumps(data[f]))
    (d/'batches.meta').write_bytes(pickle.dumps(dict(label_names=[f'c{i}' for i in range(10)])))
    return data

def test_cifar10(tmp_path):
    data = write_cifar(tmp_path)
    ds = build('cifar10', 'train', root=tmp_path, transform=None)
    ft.test_eq((len(ds), len(build('cifar10', 'test', root=tmp_path)), len(build('cifar10', 'val', root=tmp_path))), (10, 2, 2))
    img, y = ds[0]
    ft.test_eq(np.array(img), data['data_batch_1']['data'][0].reshape(3, 32, 32).transpose(1, 2, 0))
    ft.test_eq(y, data['data_batch_1']['labels'][0])
    x, _ = build('cifar10', 'test', root=tmp_path/'cifar-10-batches-py')[1]     # root may be the batches folder
    ft.test_eq((x.shape, x.dtype), ((3, 32, 32), torch.float32))
    (tmp_path/'cifar-10-batches-py/data_batch_3').unlink()
    ft.test_fail(lambda: build('cifar10', 'train', root=tmp_path), contains='data_batch_3')

def test_tiny_imagenet(tmp_path):
    r, wnids = tmp_path/'tiny-imagenet-200', ['n02124075', 'n01443537']
    r.mkdir(); (r/'wnids.txt').write_text('\n'.join(wnids))
    for w in wnids:
        for k in range(3): rgb(r/'train'/w/'images'/f'{w}_{k}.JPEG', 64, 64, k)
        (r/'train'/w/f'{w}_boxes.txt').write_text('')
    for k in range(2): rgb(r/'val/images'/f'val_{k}.JPEG', 64, 64, k)
    (r/'val/val_annotations.txt').write_text('val_0.JPEG\tn02124075\t0\t0\t10\t10\nval_1.JPEG\tn01443537\t1\t2\t30\t30\n')
    tr, va = build('tiny_imagenet', 'train', root=r), build('tiny_imagenet', 'val', root=r)
    ft.test_eq((len(tr), len(va), tr.classes), (6, 2, sorted(wnids)))
    ft.test_eq([va[0][1], va[1][1]], [1, 0])                 # sorted wnids: n01443537 → 0
    ft.test_eq(va[0][0].shape, (3, 64, 64))

# ---------- segmentation ----------
def write_voc(root, names=('2007_000032', '2007_000033', '2008_000001')):
    v = root/'VOCdevkit/VOC2012'
    for k, n in enumerate(names):
        rgb(v/'JPEGImages'/f'{n}.jpg', 48, 32, k)
        label_png(v/'SegmentationClass'/f'{n}.png', stripes(32, 48, [0, 15, 255, 20]), palette=True)
        label_png(v/'SegmentationClassAug'/f'{n}.png', stripes(32, 48, [0, 7, 255]))
    (v/'ImageSets/Segmentation').mkdir(parents=True)
    (v/'ImageSets/Segmentation/train.txt').write_text('\n'.join(names[:2]))
    (v/'ImageSets/Segmentation/val.txt').write_text(names[2])
    (v/'ImageSets/Segmentation/train_aug.txt').write_text(
        ''.join(f'/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n' for n in names))
    return v

def test_voc(tmp_path):
    v = write_voc(tmp_path)
    img, m = build('voc', 'train', root=tmp_path, transforms=None)[0]
    ft.test_eq((img.shape, img.dtype, m.shape, m.dtype), ((3, 32, 48), torch.uint8, (32, 48), torch.int64))
    ft.test_eq(m.unique().tolist(), [0, 15, 20, 255])          # palette indices are the class ids
    x, m = build('voc', 'train', root=v, crop_size=64)[1]      # root may be VOC2012 itself
    ft.test_eq((x.shape, x.dtype, m.shape), ((3, 64, 64), torch.float32, (64, 64)))
    ft.test_eq(set(m.unique().tolist()) <= {0, 15, 20, 255}, True)
    ft.test_eq(len(build('voc', 'val', root=tmp_path)), 1)
    aug = build('voc', 'train_aug', root=tmp_path, transforms=None)
    ft.test_eq((len(aug), aug[2][1].unique().tolist()), (3, [0, 7, 255]))

def test_ade20k(tmp_path):
    r = tmp_path/'ADEChallengeData2016'
    for s, n in (('training', 2), ('validation', 1)):
        for k in range(n):
            rgb(r/'images'/s/f'ADE_{s[:5]}_{k:08d}.jpg', 40, 40, k)
            label_png(r/'annotations'/s/f'ADE_{s[:5]}_{k:08d}.png', stripes(40, 40, [0, 1, 150]))
    img, m = build('ade20k', 'val', root=tmp_path, transforms=None)[0]    # root may be the parent
    ft.test_eq((img.shape, m.unique().tolist()), ((3, 40, 40), [0, 149, 255]))   # reduce_zero_label
    ft.test_eq(len(build('ade20k', 'train', root=r)), 2)
    (r/'annotations/training'/'ADE_train_00000001.png').unlink()
    ft.test_fail(lambda: build('ade20k', 'train', root=r), contains='without an annotation')

def test_cityscapes(tmp_path):
    for s, city in (('train', 'aachen'), ('val', 'frankfurt')):
        stem = f'{city}_000000_000019'
        rgb(tmp_path/'leftImg8bit'/s/city/f'{stem}_leftImg8bit.png', 64, 32)
        label_png(tmp_path/'gtFine'/s/city/f'{stem}_gtFine_labelIds.png', stripes(32, 64, [7, 26, 0, 24]))
    img, m = build('cityscapes', 'val', root=tmp_path, transforms=None)[0]
    ft.test_eq((img.shape, m.unique().tolist()), ((3, 32, 64), [0, 11, 13, 255]))  # road 0, person 11, car 13
    lut = cityscapes_lut()
    ft.test_eq(((lut < 255).sum().item(), lut[lut < 255].unique().tolist()), (19, list(range(19))))
    x, m = build('cityscapes', 'train', root=tmp_path, crop_size=48)[0]
    ft.test_eq((x.shape, m.shape), ((3, 48, 48), (48, 48)))

# ---------- detection ----------
def test_coco(tmp_path):
    rgb(tmp_path/'val2017/000000000042.jpg', 50, 40); rgb(tmp_path/'val2017/000000000007.jpg', 30, 20, 1)
    counts = [5*40 + 10, 20, 40*50 - 5*40 - 30]            # column-major runs: 20 pixels of column 5
    anns = [dict(id=1, image_id=42, category_id=18, bbox=[10, 5, 20, 10], iscrowd=0, area=200,
                 segmentation=[[10, 5, 30, 5, 30, 15, 10, 15]]),
            dict(id=2, image_id=42, category_id=1, bbox=[5, 10, 1, 20], iscrowd=1, area=20,
                 segmentation=dict(counts=counts, size=[40, 50]))]
    d = dict(images=[dict(id=42, file_name='000000000042.jpg', height=40, width=50),
                     dict(id=7, file_name='000000000007.jpg', height=20, width=30)],
             annotations=anns, categories=[dict(id=1, name='person'), dict(id=18, name='dog')])
    (tmp_path/'annotations').mkdir(); (tmp_path/'annotations/instances_val2017.json').write_text(json.dumps(d))
    ds = build('coco', 'val', root=tmp_path, transforms=None)
    ft.test_eq((len(ds), ds.ids), (2, [7, 42]))
    img, t = ds[1]
    ft.test_eq(t['boxes'].tolist(), [[10, 5, 30, 15], [5, 10, 6, 30]])           # XYWH → XYXY
    ft.test_eq((t['labels'].tolist(), t['iscrowd'].tolist(), t['masks'].shape, t['masks'].dtype), ([18, 1], [0, 1], (2, 40, 50), torch.uint8))
    ft.test_eq(t['masks'][0, 5:16, 10:31].all().item() and t['masks'][0].sum().item() == 11*21, True)   # polygon, edges included
    ft.test_eq((t['masks'][1].sum().item(), t['masks'][1][10:30, 5].all().item()), (20, True))           # RLE
    ft.test_eq(len(ds[0][1]['labels']), 0)
    im, raw = build('coco', 'val', root=tmp_path, raw=True)[1]
    ft.test_eq((im.size, raw), ((50, 40), anns))                                   # what CocoDetection returns
    x, t = build('coco', 'val', root=tmp_path)[1]
    ft.test_eq((x.dtype, float(x.max()) <= 1.), (torch.float32, True))
    anns.append(dict(id=3, image_id=42, category_id=3, bbox=[40, 30, 0, 4], iscrowd=0, area=0, segmentation=[[40, 30, 40, 34, 40, 32]]))
    (tmp_path/'annotations/instances_val2017.json').write_text(json.dumps(d))
    ft.test_eq(len(build('coco', 'val', root=tmp_path, transforms=None)[1][1]['labels']), 3)
    _, t = build('coco', 'val', root=tmp_path)[1]                                 # degenerate box dropped everywhere
    ft.test_eq((t['labels'].tolist(), t['iscrowd'].tolist(), len(t['boxes']), len(t['masks'])), ([18, 1], [0, 1], 2, 2))

# ---------- point clouds ----------
CUBE_OFF = "OFF\n8 6 0\n" + "".join(f"{x} {y} {z}\n" for x in (0, 1) for y in (0, 1) for z in (0, 1)) + \
    "4 0 1 3 2\n4 4 6 7 5\n4 0 4 5 1\n4 2 3 7 6\n4 0 2 6 4\n4 1 5 7 3\n"
TETRA_OFF = "OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 2 1\n3 0 1 3\n3 0 3 2\n3 1 2 3\n"

def write_modelnet(root, classes=('airplane', 'bed', 'chair'), n=(2, 1)):
    for c in classes:
        for s, k in zip(('train', 'test'), n):
            (root/'raw'/c/s).mkdir(parents=True)
            for i in range(k): (root/'raw'/c/s/f'{c}_{i + 1:04d}.off').write_text(CUBE_OFF if c == 'bed' else TETRA_OFF)

def test_modelnet40(tmp_path):
    r = tmp_path/'ModelNet40'; write_modelnet(r)
    ds = build('modelnet40', 'train', root=r, num_points=64)
    d = ds[0]
    ft.test_eq((len(ds), d.pos.shape, ds.classes), (6, (64, 3), ['airplane', 'bed', 'chair']))
    ft.test_eq(sorted(ds[i].y.item() for i in range(6)), [0, 0, 1, 1, 2, 2])
    te = build('modelnet40', 'test', root=r, transform=None)
    ft.test_eq((len(te), te[1].face.shape[0], te[1].y.item()), (3, 3, 1))      # raw meshes

def test_modelnet_never_downloads(tmp_path):
    (tmp_path/'raw').mkdir()
    ft.test_fail(lambda: ModelNetLocal(str(tmp_path), name='40'), contains='modelnet.cs.princeton.edu')
    ft.test_fail(lambda: build('modelnet40', 'train', root=tmp_path), contains='is incomplete')
    write_modelnet(tmp_path/'m', n=(1, 1)); (tmp_path/'m/raw/bed/test/bed_0001.off').unlink(); (tmp_path/'m/raw/bed/test').rmdir()
    ft.test_fail(lambda: build('modelnet40', 'train', root=tmp_path/'m'), contains='bed/test')

def test_shapenet_part(tmp_path):
    raw, rng, lists = tmp_path/'raw', np.random.default_rng(0), dict(train=[], val=[], test=[])
    for cat, parts in (('02691156', [0, 1, 2, 3]), ('02773838', [4, 5])):
        for k, s in enumerate(('train', 'train', 'val', 'test')):
            sid = f'{cat}{k:04d}'; (raw/cat).mkdir(parents=True, exist_ok=True)
            pts = np.c_[rng.normal(size=(40, 6)), rng.choice(parts, 40)]
            np.savetxt(raw/cat/f'{sid}.txt', pts, fmt='%.5f')
            lists[s].append(f'shape_data/{cat}/{sid}')
    (raw/'train_test_split').mkdir()
    for s, l in lists.items(): (raw/'train_test_split'/f'shuffled_{s}_file_list.json').write_text(json.dumps(l))
    cats = ['Airplane', 'Bag']
    ds = build('shapenet_part', 'train', root=tmp_path, categories=cats, num_points=16)
    d = ds[2]
    ft.test_eq((len(ds), d.pos.shape, d.x.shape, d.y.shape), (4, (16, 3), (16, 3), (16,)))
    ft.test_eq(sorted({ds[i].category.item() for i in range(4)}), [0, 1])
    ft.test_eq(set(ds[3].y.tolist()) <= {4, 5}, True)                            # Bag's parts
    ft.test_eq(len(build('shapenet_part', 'trainval', root=tmp_path, categories=cats)), 6)
    ft.test_fail(lambda: build('shapenet_part', 'test', root=tmp_path), contains='raw/02958343')   # Car missing

# ---------- errors ----------
@pytest.mark.parametrize('name,split', [('imagenet', 'train'), ('cifar10', 'train'), ('tiny_imagenet', 'val'), ('voc', 'train'),
    ('ade20k', 'train'), ('cityscapes', 'val'), ('coco', 'val'), ('modelnet40', 'test'), ('shapenet_part', 'train')])
def test_missing_root(tmp_path, name, split):
    root = tmp_path/'not_here'
    with pytest.raises(DatasetNotFoundError) as e: build(name, split, root=root)
    msg = str(e.value)
    assert str(root) in msg and 'does not exist' in msg and 'Obtain' in msg and 'http' in msg, msg
    assert isinstance(e.value, FileNotFoundError)

def test_default_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv('EA_NB_DATA', str(tmp_path))
    ft.test_fail(lambda: build('voc'), contains=str(tmp_path/'voc'))

def test_incomplete_voc(tmp_path):
    v = write_voc(tmp_path)
    for p in (v/'SegmentationClass').iterdir(): p.unlink()
    (v/'SegmentationClass').rmdir()
    with pytest.raises(DatasetNotFoundError) as e: build('voc', 'train', root=tmp_path)
    assert 'is incomplete' in str(e.value) and 'SegmentationClass' in str(e.value) and 'host.robots.ox.ac.uk' in str(e.value)
    ft.test_fail(lambda: build('voc', 'train_aug', root=tmp_path / 'x'), contains='SegmentationClassAug')

def test_corrupt_images(tmp_path):
    for c in ('a', 'b'): rgb(tmp_path/'train'/c/'0.jpg')
    (tmp_path/'train/b/0.jpg').write_bytes(b'not a jpeg at all')
    ds = build('imagefolder', 'train', root=tmp_path, img_size=16)
    ds[0]
    with pytest.raises(CorruptImageError) as e: ds[1]
    assert str(tmp_path/'train/b/0.jpg') in str(e.value)
    v = write_voc(tmp_path/'voc')
    good = (v/'JPEGImages/2007_000033.jpg').read_bytes()
    (v/'JPEGImages/2007_000033.jpg').write_bytes(good[:len(good)//3])             # truncated JPEG
    with pytest.raises(CorruptImageError, match='2007_000033.jpg'): build('voc', 'train', root=tmp_path/'voc')[1]

def test_bad_names_and_splits():
    ft.test_fail(lambda: build('imagenet21k'), contains="choose one of")
    ft.test_fail(lambda: build('cifar10', 'trainval'), contains="['train', 'test']")
    ft.test_fail(lambda: build('digits', 'train', root='x'), contains='takes no root')
