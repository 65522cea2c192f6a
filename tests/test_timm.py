"""eamlp_* as timm models: a full pretrained_cfg, timm's validate/benchmark pipeline, the Hugging Face folder round trip.

timm's validate.py and benchmark.py are repository scripts, in neither the timm wheel nor its sdist (and the wheel
installs no console script), so the tests make the library calls those scripts make, in their order:
validate: resolve_model_input_args → create_model → resolve_input_data_config → create_dataset (an ImageFolder in
the real layout) → create_loader (prefetcher on, as the script's default) → accuracy; benchmark:
create_model → resolve_data_config → timed forward and forward+backward on a batch of that size, fvcore's FLOP count.
"""
import math
import numpy as np, pytest, torch
import fastcore.test as ft
from PIL import Image
import timm
from timm.data import create_dataset, create_loader, resolve_data_config, resolve_input_data_config
from timm.models import resolve_model_input_args
from timm.utils import accuracy
import ea_nb.eamlp  # registers eamlp_*

pytestmark = pytest.mark.usefixtures('no_network')   # conftest: nothing here may reach the network
NAMES = ['eamlp_7', 'eamlp_14', 'eamlp_19', 'eamlp_tiny']
KEYS = ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'classifier', 'first_conv', 'num_classes')

@pytest.mark.parametrize('name', NAMES)
def test_pretrained_cfg(name):
    "Every key timm's pipeline reads is set; the classifier and first layer it names exist; data config = model input"
    with torch.device('meta'): m = timm.create_model(name)
    cfg = m.pretrained_cfg
    assert all(cfg.get(k) is not None for k in KEYS), {k: cfg.get(k) for k in KEYS}
    mods = dict(m.named_modules())
    assert cfg['classifier'] in mods and mods[cfg['classifier']].out_features == cfg['num_classes'] == m.num_classes
    assert mods[cfg['first_conv']].in_features == 3 * 7 * 7          # the first layer on the image's 7×7 patches
    dc = resolve_data_config({}, model=m)
    ft.test_eq(dc['input_size'], (m.in_chans, m.img_size, m.img_size))
    if name != 'eamlp_tiny': assert 'paper' in cfg['notes'][0] and '%' in cfg['notes'][0], cfg['notes']

def test_cfg_follows_the_model():
    "A model built at another size reports it to timm's data pipeline; a non-square size is refused"
    ft.test_eq(timm.create_model('eamlp_tiny', num_classes=3).get_classifier().out_features, 3)
    with torch.device('meta'): ft.test_eq(resolve_data_config({}, model=timm.create_model('eamlp_7', img_size=384))['input_size'], (3, 384, 384))
    ft.test_fail(lambda: timm.create_model('eamlp_tiny', img_size=(32, 48)), contains='square images')

def image_folder(root, classes=('n01440764', 'n01443537'), n=3):
    "An ImageNet-style val folder: <root>/<wnid>/<wnid>_k.JPEG, images of odd sizes (the loader resizes and crops)"
    rng = np.random.default_rng(0)
    for c in classes:
        (root/c).mkdir(parents=True)
        for k in range(n): Image.fromarray(rng.integers(0, 256, (37 + k, 45, 3), dtype=np.uint8)).save(root/c/f'{c}_{k}.JPEG')
    return root

def test_validate_pipeline(tmp_path):
    "validate.py's calls, end to end on an ImageFolder: batches of the cfg's size, normalised, and a top-1 in [0, 100]"
    args = dict(model='eamlp_tiny', num_classes=2, img_size=None, input_size=None, crop_pct=None, mean=None, std=None,
                interpolation=None)
    model = timm.create_model(**resolve_model_input_args('eamlp_tiny', args, pretrained=False, num_classes=2)).eval()
    dc = resolve_input_data_config(model, args, use_test_size=True)
    ds = create_dataset(root=str(image_folder(tmp_path/'val')), name='', split='validation', input_img_mode='RGB')
    loader = create_loader(ds, input_size=dc['input_size'], batch_size=4, use_prefetcher=True, interpolation=dc['interpolation'],
                           mean=dc['mean'], std=dc['std'], num_workers=0, crop_pct=dc['crop_pct'], crop_mode=dc['crop_mode'],
                           device=torch.device('cpu'))
    seen, top1 = 0, []
    with torch.inference_mode():
        for x, y in loader:
            ft.test_eq(tuple(x.shape[1:]), dc['input_size'])
            assert abs(x.mean().item()) < 3 and x.dtype == torch.float32      # normalised, not raw bytes
            top1.append(accuracy(model(x), y, topk=(1,))[0].item()); seen += len(y)
    ft.test_eq((seen, sorted(set(ds.reader.class_to_idx.values()))), (6, [0, 1]))
    assert all(0 <= a <= 100 for a in top1)

def test_benchmark_pipeline():
    "benchmark.py's inference and train runs: an input of the resolved size, a forward, a training step"
    model = timm.create_model('eamlp_tiny')
    dc = resolve_data_config({}, model=model)
    x = torch.randn((2,) + tuple(dc['input_size']))
    with torch.no_grad(): ft.test_eq(model.eval()(x).shape, (2, model.num_classes))
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters()) and math.isfinite(loss.item())

def test_benchmark_profile_fvcore():
    "benchmark.py's profile mode: fvcore's jit trace of the model counts its FLOPs (the double norm is one registered op)"
    from fvcore.nn import FlopCountAnalysis
    model = timm.create_model('eamlp_tiny').eval()
    fca = FlopCountAnalysis(model, torch.randn((1,) + tuple(resolve_data_config({}, model=model)['input_size'])))
    fca.unsupported_ops_warnings(False); fca.uncalled_modules_warnings(False)
    assert fca.total() > 0

@pytest.mark.parametrize('kwargs', [dict(), dict(mixer='sa', num_classes=4), dict(coef=1, query=False, proj=False)],
                         ids=['ea', 'sa_4_classes', 'lean'])
def test_hf_folder_round_trip(tmp_path, kwargs):
    "A trained model saved in the Hugging Face layout timm uses (config.json + model.safetensors) reloads, offline, as the same function"
    from timm.models import save_for_hf
    torch.manual_seed(0)
    m = timm.create_model('eamlp_tiny', **kwargs)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)                        # a few steps: not the initialisation
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, m.num_classes, (4,))
    for _ in range(2): opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
    save_for_hf(m.eval(), tmp_path/'eamlp', safe_serialization=True)
    ft.test_eq(sorted(p.name for p in (tmp_path/'eamlp').iterdir()), ['config.json', 'model.safetensors'])
    m2 = timm.create_model(f'local-dir:{tmp_path/"eamlp"}', pretrained=True).eval()
    ft.test_eq((type(m2).__name__, m2.num_classes, m2.mixer), ('EAMLP', m.num_classes, m.mixer))
    with torch.no_grad(): ft.test_eq(m2(x), m(x))                       # bit for bit
    ft.test_eq(resolve_data_config({}, model=m2)['input_size'], (3, 32, 32))
    ft.test_eq(m2.pretrained_cfg['source'], 'local-dir')
