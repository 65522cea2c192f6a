"ea_nb.pointcloud on fixtures in the real on-disk layouts: ModelNet (.off meshes) and ShapeNet part (.txt points); nothing downloads"
import json
import pytest, torch
import fastcore.test as ft
from ea_nb.data import build
from ea_nb.pointcloud import train_pointcloud, PCT

CUBE_V = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
CUBE_F = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1), (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]
TET_V = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
TET_F = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]
TINY = dict(num_points=64, S=4, embed_dim=8, dims=[8, 16], n_samples=[16, 8], k=4, fuse_dim=16, head_dims=[16, 8],
            epochs=1, bs=2, opt='adamw', lr=1e-3, progress=False)

def write_off(path, verts, faces, scale=1.):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ['OFF', f'{len(verts)} {len(faces)} 0'] + [' '.join(f'{scale*c:g}' for c in v) for v in verts]
    path.write_text('\n'.join(lines + [f'3 {a} {b} {c}' for a, b, c in faces]) + '\n')

@pytest.fixture
def modelnet_root(tmp_path): return write_modelnet_off(tmp_path)

def write_modelnet_off(tmp_path):
    "Two classes in ModelNet40's layout: raw/<class>/{train,test}/<class>_NNNN.off"
    for cls, (v, f) in dict(cube=(CUBE_V, CUBE_F), tetra=(TET_V, TET_F)).items():
        for split, ids in (('train', range(1, 4)), ('test', range(4, 6))):
            for i in ids: write_off(tmp_path/'raw'/cls/split/f'{cls}_{i:04d}.off', v, f, scale=1 + i/10)
    return tmp_path

def test_modelnet_fixture_loads_without_download(modelnet_root, monkeypatch):
    import urllib.request
    monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: pytest.fail('tried to download'))
    ds = build('modelnet40', 'train', root=modelnet_root, num_points=64)
    ft.test_eq((len(ds), ds.classes, ds.num_classes), (6, ['cube', 'tetra'], 2))
    d = ds[0]
    ft.test_eq((d.pos.shape, d.y.shape), ((64, 3), (1,)))
    ft.test_eq(len(build('modelnet40', 'test', root=modelnet_root, num_points=64)), 4)

def test_train_pointcloud_on_modelnet_fixture(modelnet_root, tmp_path):
    for attn in ('offset', 'ea'):
        out = tmp_path/f'run_{attn}'
        r = train_pointcloud(dataset='modelnet40', mixer=attn, root=str(modelnet_root), out_dir=str(out), **TINY)
        assert 0 <= r['acc'] <= 1 and (out/'metrics.json').exists() and (out/'ckpt'/'last.pt').exists()
        assert json.loads((out/'metrics.json').read_text())['n_params'] == r['n_params']

@pytest.fixture
def shapenet_root(tmp_path): return write_shapenet(tmp_path)

def write_shapenet(tmp_path):
    "One category (Airplane, parts 0-3) in ShapeNet's raw layout, with the split lists"
    cat, g = '02691156', torch.Generator().manual_seed(0)
    names = {s: [f'{s}{i}' for i in range(n)] for s, n in (('train', 3), ('val', 1), ('test', 2))}
    for ns in names.values():
        for n in ns:
            pts = torch.randn(100, 6, generator=g)
            lab = (pts[:, 0] > 0).long() + 2*(pts[:, 1] > 0).long()
            (tmp_path/'raw'/cat).mkdir(parents=True, exist_ok=True)
            (tmp_path/'raw'/cat/f'{n}.txt').write_text('\n'.join(' '.join(f'{v:.4f}' for v in p) + f' {l}' for p, l in zip(pts.tolist(), lab.tolist())))
    (tmp_path/'raw'/'train_test_split').mkdir()
    for s, ns in names.items():
        (tmp_path/'raw'/'train_test_split'/f'shuffled_{s}_file_list.json').write_text(json.dumps([f'shape_data/{cat}/{n}' for n in ns]))
    return tmp_path

def test_train_pointcloud_partseg_on_shapenet_fixture(shapenet_root, tmp_path):
    r = train_pointcloud(dataset='shapenet_part', mixer='ea', root=str(shapenet_root), categories=['Airplane'], out_dir=str(tmp_path/'seg'),
                         **{**TINY, 'num_points': 32, 'embed_dim': 8})
    assert 0 <= r['miou'] <= 1 and 0 <= r['miou_class'] <= 1

def test_dense_tensor_and_pyg_batch_agree():
    from torch_geometric.data import Batch, Data
    x = torch.randn(2, 64, 3)
    net = PCT(3, 'ea', S=4, embed_dim=8, dims=(8, 16), n_samples=(16, 8), k=4, fuse_dim=16, head_dims=(16, 8)).eval()
    with torch.no_grad(): a, b = net(x), net(Batch.from_data_list([Data(pos=p) for p in x]))
    ft.test_close(a, b, eps=1e-5)

def test_exp_notebook_partseg_on_shapenet_fixture(shapenet_root, tmp_path):
    "The experiment notebook's segmentation path (what experiments/pct_shapenet_part.yaml runs), at toy size"
    import papermill as pm
    from pathlib import Path
    nbs = Path(__file__).resolve().parents[1]/'nbs'
    p = dict(dataset='shapenet_part', root=str(shapenet_root), num_points=32, epochs=1, bs=2, S=4, embed_dim=8, fuse_dim=16,
             head_dims=[16, 8], categories=['Airplane'], out_dir=str(tmp_path/'out'))
    pm.execute_notebook(str(nbs/'41_exp.pointcloud.ipynb'), str(tmp_path/'out.ipynb'), parameters=p, cwd=str(nbs), kernel_name='python3', progress_bar=False)
    m = json.loads((tmp_path/'out'/'metrics.json').read_text())
    assert 0 <= m['miou_ea'] <= 1 and 0 <= m['miou_offset'] <= 1 and m['dataset'] == 'shapenet_part'
