"Loading the released EAMLP-7@384 and EANet (VOC, ResNet-101) checkpoints: files in the official formats, random tensors"
import argparse, json, pickle
from pathlib import Path
import pytest, torch
import fastcore.test as ft
from ea_nb.eamlp import eamlp_7
from ea_nb.official import (load_official, official_eanet, official_dilations, random_state_dict, read_checkpoint,
                            detect_kind, check_memories)

KEYS = Path(__file__).parent/'fixtures/official_keys'

def keys(name): return [(k, tuple(s)) for k, s in json.loads((KEYS/name).read_text())['keys']]

@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "An EAMLP file as timm writes it, and an EANet file as the official train_torch.py writes it ({'net': ...}, module. prefixes)"
    d = tmp_path_factory.mktemp('official')
    ema, raw = random_state_dict(keys('eamlp7_384_keys.json'), seed=1), random_state_dict(keys('eamlp7_384_keys.json'))
    torch.save(dict(epoch=309, arch='T2t_vit_7', state_dict=raw, state_dict_ema=ema, version=2,
                    args=argparse.Namespace(model='T2t_vit_7', img_size=384)), d/'model_best.pth.tar')
    net = random_state_dict(keys('eanet_voc_r101_keys.json'))
    torch.save(dict(net={f'module.{k}': v for k, v in net.items()}), d/'eanet.pth')
    return dict(dir=d, ema=ema, raw=raw, net=net)

def test_structure_equals_official_lists():
    with torch.device('meta'): a, b = official_eanet(), eamlp_7(img_size=384)
    ft.test_eq([(k, tuple(v.shape)) for k, v in a.state_dict().items()], keys('eanet_voc_r101_keys.json'))
    ft.test_eq([(k, tuple(v.shape)) for k, v in b.state_dict().items()], keys('eamlp7_384_keys.json'))
    ft.test_eq([[blk.conv2.dilation[0] for blk in a.extractor[i]] for i in (6, 7)], [official_dilations(23, 2), [2, 8, 16]])

def test_eamlp_loads_exactly(files):
    m = load_official(files['dir']/'model_best.pth.tar')
    ft.test_eq(all(torch.equal(v, files['ema'][k]) for k, v in m.state_dict().items()), True)
    ref = eamlp_7(img_size=384).eval(); ref.load_state_dict(files['ema'])
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad(): ft.test_eq(m(x), ref(x))
    raw = load_official(files['dir']/'model_best.pth.tar', eamlp_7(img_size=384), use_ema=False)
    ft.test_eq(all(torch.equal(v, files['raw'][k]) for k, v in raw.state_dict().items()), True)

def test_eanet_loads_exactly(files):
    m = load_official(files['dir']/'eanet.pth', kind='eanet')
    ft.test_eq(all(torch.equal(v, files['net'][k]) for k, v in m.state_dict().items()), True)
    ref = official_eanet().eval(); ref.load_state_dict(files['net'])
    x = torch.randn(1, 3, 48, 56)
    with torch.no_grad(): y, r = m(x), ref(x)
    ft.test_eq(y, r)
    ft.test_eq((y.shape, bool(y.isfinite().all())), ((1, 21, 48, 56), True))

def test_tied_models(files):
    m = load_official(files['dir']/'model_best.pth.tar', eamlp_7(img_size=384, tie_memories=True))
    a = m.tokens_to_token.attention1.attn
    ft.test_eq(a.linear_1.weight.data_ptr(), a.linear_0.weight.data_ptr())
    sd = {**files['net'], 'linu.linear_1.weight': torch.zeros(512, 64, 1)}
    ft.test_fail(lambda: load_official(sd, official_eanet(tie_memories=True)), contains='tie_memories=False')
    ft.test_eq(check_memories(files['net'], official_eanet())['linu.linear_1.weight'], True)

def test_missing_bn_counters_are_tolerated(files):
    sd = {k: v for k, v in files['net'].items() if not k.endswith('num_batches_tracked')}
    ft.test_eq(detect_kind(sd), 'eanet')
    load_official(sd)

def test_errors(files):
    d = files['dir']
    ft.test_fail(lambda: load_official(d/'eanet.pth', eamlp_7(img_size=384)), contains='looks like an EANet (segmentation) checkpoint, not an EAMLP')
    ft.test_fail(lambda: load_official(d/'model_best.pth.tar', official_eanet(n_layers=50)), contains='looks like an EAMLP')
    ft.test_fail(lambda: load_official(d/'model_best.pth.tar', kind='eanet'), contains="kind='eanet'")
    ft.test_fail(lambda: load_official(d/'model_best.pth.tar', eamlp_7(img_size=224)), contains='pos_embed (1, 577, 256) vs (1, 197, 256)')
    ft.test_fail(lambda: load_official({'conv.weight': torch.ones(1)}), contains='cannot tell which model')
    ft.test_fail(lambda: load_official(d/'model_best.pth.tar', kind='resnet'), contains="kind must be")
    (d/'cut.pth').write_bytes((d/'eanet.pth').read_bytes()[:1_000_000])
    (d/'notes.txt').write_text('hello')
    (d/'list.pkl').write_bytes(pickle.dumps([1, 2]))
    for f in ('cut.pth', 'notes.txt', 'list.pkl'):
        ft.test_fail(lambda: load_official(d/f), contains='not a readable PyTorch checkpoint')
    torch.save([torch.ones(1)], d/'list.pt')
    ft.test_fail(lambda: load_official(d/'list.pt'), contains='expected a checkpoint dict')
    torch.save(dict(state_dict=dict(a=1)), d/'nontensor.pt')
    ft.test_fail(lambda: read_checkpoint(d/'nontensor.pt'), contains='holds no state dict')
    ft.test_fail(lambda: load_official(d/'nope.pth'), contains='does not exist')

def test_error_names_counts(files):
    sd = dict(files['net']); sd.pop('fc2.bias'); sd['extra.weight'] = torch.ones(1)
    with pytest.raises(ValueError) as e: load_official(sd, official_eanet())
    ft.test_eq(all(s in str(e.value) for s in ('1 (fc2.bias) missing', '1 (extra.weight) unexpected', '0 () misshapen')), True)

def test_evaluate_official_voc(tmp_path):
    from test_data_loaders import write_voc
    from ea_nb.official import evaluate_official
    write_voc(tmp_path/'voc')
    torch.save(dict(net=official_eanet(n_layers=50).state_dict()), tmp_path/'r50.pth')
    r = evaluate_official(tmp_path/'r50.pth', root=tmp_path/'voc', num_workers=0, device='cpu', scales=(0.75, 1.), flip=True)
    ft.test_eq((r['kind'], r['n']), ('eanet', 1))
    ft.test_eq(0 <= r['miou'] <= 1, True)
