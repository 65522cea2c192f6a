"""eamlp_* against timm's model contract: the checks of timm's own tests/test_models.py, family by family.

timm's test file is in neither its wheel nor its sdist, so its checks are written out here, with timm's test names,
on the four registered models. Where timm's suite shrinks the input (`_get_input_size(target=...)` for models without
a fixed size), these tests build eamlp_7/14/19 at `img_size=32` (a 2×2 patch grid; every weight is the same shape as
at 224 except the position table); where only shapes matter they run at the default 224 on the meta device.
The ViT family's variants of the checks apply (timm's NON_STD_FILTERS: tokens out of `forward_features`, not maps).

One deliberate difference: timm asserts at least 3 feature levels, true of every model in its zoo; eamlp_tiny has
2 blocks, so it has 2 levels, and the assertion here is min(3, depth).
"""
import copy, math
from contextlib import nullcontext
import pytest, torch
import fastcore.test as ft
import timm
from timm.layers import set_layer_config
from timm.models import FeatureInfo
from timm.models._features_fx import get_notrace_modules, get_notrace_functions, create_feature_extractor as timm_extractor
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names, NodePathTracer
from ea_nb.eamlp import EAMLP_CONFIGS, official_param_count
import ea_nb.eamlp  # registers eamlp_*  # noqa: F401

NAMES = ['eamlp_7', 'eamlp_14', 'eamlp_19', 'eamlp_tiny']
SMALL = 32          # input side where timm's suite uses a reduced size: a 2×2 patch grid for the 224 models
BATCH = 2

_BUILT = {}

def create(name, **kwargs):
    "The model at the reduced size (the 224 models) or its own (eamlp_tiny), seeded; built once, a fresh copy each call"
    if name != 'eamlp_tiny': kwargs.setdefault('img_size', SMALL)
    key = (name, repr(sorted(kwargs.items())))
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = timm.create_model(name, pretrained=False, **kwargs)
    return copy.deepcopy(_BUILT[key])

def input_size(m):
    "timm's _get_input_size for a fixed-size model: the size in its pretrained_cfg (here: the size it was built for)"
    return tuple(m.pretrained_cfg['input_size'])

def depth(name): return EAMLP_CONFIGS[name].get('depth', 7)

def _create_fx_model(model, train=False):
    "timm's helper: trace with timm's leaf modules and autowrapped functions, return the graph's output node(s)"
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    eval_return_nodes, train_return_nodes = [eval_nodes[-1]], [train_nodes[-1]]
    if train:
        tracer = NodePathTracer(**tracer_kwargs)
        graph = tracer.trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_node_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        graph_node_names = [n.name for n in graph_nodes]
        output_node_indices = [-graph_node_names.index(node_name) for node_name in output_node_names]
        train_return_nodes = [train_nodes[ix] for ix in output_node_indices]
    return create_feature_extractor(model, train_return_nodes=train_return_nodes, eval_return_nodes=eval_return_nodes,
                                    tracer_kwargs=tracer_kwargs)

def check_features(outputs, channels, reductions, size, levels):
    "timm's checks on feature maps (NCHW): one per level, its channels, at most ceil(side / stride) + 1 on a side, finite"
    assert len(channels) >= levels and len(outputs) == len(channels), (len(outputs), channels)
    for c, r, o in zip(channels, reductions, outputs):
        ft.test_eq(o.shape[1], c)
        assert o.shape[2] <= math.ceil(size[1] / r) + 1 and o.shape[3] <= math.ceil(size[2] / r) + 1, (o.shape, r)
        ft.test_eq(o.shape[0], BATCH)
        assert not torch.isnan(o).any()

@pytest.mark.parametrize('name', NAMES)
def test_model_forward(name):
    model = create(name).eval()
    x = torch.randn(BATCH, *input_size(model))
    y = model(x)
    ft.test_eq(y.shape, (BATCH, model.num_classes))
    assert not torch.isnan(y).any()

@pytest.mark.parametrize('name', NAMES)
def test_model_backward(name):
    "Every parameter receives a gradient (the fixed position table is a buffer, saved under its official key)"
    model = create(name, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    y = model(torch.randn(BATCH, *input_size(model)))
    y.mean().backward()
    for n, p in model.named_parameters(): assert p.grad is not None, f'No gradient for {n}'
    ft.test_eq(sum(p.grad.numel() for p in model.parameters() if p.grad is not None), num_params)
    ft.test_eq(y.shape[-1], 42)
    assert not torch.isnan(y).any()
    assert 'pos_embed' in dict(model.named_buffers()) and 'pos_embed' in model.state_dict()
    ft.test_eq(official_param_count(model), num_params + model.pos_embed.numel())

@pytest.mark.parametrize('name', NAMES)
def test_model_default_cfgs(name):
    "timm's test_model_default_cfgs_non_std (the ViT family), at the default size; shapes only: meta device for the 224 models"
    with torch.device('meta') if name != 'eamlp_tiny' else nullcontext():
        model = timm.create_model(name).eval()
        assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
        state_dict, cfg = model.state_dict(), model.pretrained_cfg
        size = input_size(model)
        assert max(size) <= 320
        x = torch.randn(BATCH, *size)
        f = model.forward_features(x)
        ft.test_eq(f.shape, (BATCH, model.grid ** 2 + 1, model.num_features))
        ft.test_eq(model.forward_head(f, pre_logits=True).shape, (BATCH, model.head_hidden_size))
        ft.test_eq(len(model.feature_info), depth(name))
        ft.test_eq({(i['num_chs'], i['reduction']) for i in model.feature_info}, {(model.num_features, size[1] // model.grid)})
        model.reset_classifier(0)
        ft.test_eq(model(x).shape, (BATCH, model.head_hidden_size))
        model.reset_classifier(7)
        ft.test_eq(model(x).shape, (BATCH, 7))
        model = timm.create_model(name, num_classes=0).eval()
        ft.test_eq(model(x).shape, (BATCH, model.num_features))
        ft.test_eq(timm.create_model(name, num_classes=0, global_pool='')(x).shape, (BATCH, model.grid ** 2 + 1, model.num_features))
    assert cfg['classifier'] + '.weight' in state_dict
    assert cfg['first_conv'] + '.weight' in state_dict

@pytest.mark.parametrize('name', NAMES)
def test_model_forward_intermediates_features(name):
    model = create(name, features_only=True, feature_cls='getter').eval()
    size = (3, model.model.img_size, model.model.img_size)
    outputs = model(torch.randn(BATCH, *size))
    check_features(outputs, model.feature_info.channels(), model.feature_info.reduction(), size, min(3, depth(name)))

@pytest.mark.parametrize('name', NAMES)
def test_model_forward_intermediates(name):
    "All blocks as maps, the final output equal to forward_features; indices, norm, NLC, prefix tokens and stop_early agree"
    model = create(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    size = input_size(model)
    x = torch.randn(BATCH, *size)
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
        check_features(intermediates, info.channels(), info.reduction(), size, min(3, depth(name)))
        ft.test_eq(output, model.forward_features(x))
        nlc = model.forward_intermediates(x, indices=[0, -1], output_fmt='NLC', intermediates_only=True, stop_early=True)
        ft.test_eq([y.flatten(2).transpose(1, 2) for y in (intermediates[0], intermediates[-1])], nlc)
        normed = model.forward_intermediates(x, indices=1, norm=True, return_prefix_tokens=True, output_fmt='NLC', intermediates_only=True)
    ft.test_eq(torch.cat(normed[0][::-1], dim=1), output)       # cls token + patches of the last block, normed: the final tokens

@pytest.mark.parametrize('name', NAMES)
def test_model_forward_features(name):
    "features_only=True through timm's builder: the last 3 blocks (timm ViT's default), pruned after them"
    model = create(name, features_only=True).eval()
    size = (3, model.model.img_size, model.model.img_size)
    outputs = model(torch.randn(BATCH, *size))
    check_features(outputs, model.feature_info.channels(), model.feature_info.reduction(), size, min(3, depth(name)))
    ft.test_eq(len(model.model.blocks), depth(name))
    ft.test_eq(len(create(name, features_only=True, out_indices=(0,)).model.blocks), 1)

@pytest.mark.parametrize('name', NAMES)
def test_model_forward_fx(name):
    "torch.fx traces the model (timm's tracer settings and plain symbolic_trace); the graph computes the same numbers"
    model = create(name).eval()
    x = torch.randn(BATCH, *input_size(model))
    with torch.no_grad():
        y = model(x)
        fx_y = torch.cat(tuple(_create_fx_model(model)(x).values()))
        ft.test_eq(torch.all(fx_y == y).item(), True)
        ft.test_eq(torch.fx.symbolic_trace(model)(x), y)
        blk = timm_extractor(model, {'blocks.0': 'b0'})(x)['b0']            # timm's feature extractor on a block's output
        ft.test_eq(blk[:, 1:], model.forward_intermediates(x, indices=[0], output_fmt='NLC', intermediates_only=True)[0])
    assert not torch.isnan(y).any()

@pytest.mark.parametrize('name', NAMES)
def test_model_backward_fx(name):
    model = create(name, num_classes=42).train()
    num_params, size = sum(p.numel() for p in model.parameters()), input_size(model)
    model = _create_fx_model(model, train=True)
    y = torch.cat(tuple(model(torch.randn(BATCH, *size)).values()))
    y.mean().backward()
    for n, p in model.named_parameters(): assert p.grad is not None, f'No gradient for {n}'
    ft.test_eq(sum(p.grad.numel() for p in model.parameters() if p.grad is not None), num_params)
    ft.test_eq(y.shape[-1], 42)
    assert not torch.isnan(y).any()

@pytest.mark.parametrize('name', NAMES)
def test_model_forward_fx_torchscript(name):
    with set_layer_config(scriptable=True): model = create(name).eval()
    x = torch.randn(BATCH, *input_size(model))
    with torch.no_grad(): y = torch.cat(tuple(torch.jit.script(_create_fx_model(model))(x).values()))
    ft.test_eq(y.shape[0], BATCH)
    assert not torch.isnan(y).any()

@pytest.mark.parametrize('name', NAMES)
def test_model_forward_torchscript(name):
    "TorchScript compiles the computation (the eager-only checks and fused-kernel choice are left out) and gives the same numbers"
    with set_layer_config(scriptable=True): model = create(name).eval()
    x = torch.randn(BATCH, *input_size(model))
    with torch.no_grad(): y, ref = torch.jit.script(model)(x), model(x)
    ft.test_eq(y.shape[0], BATCH)
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y, ref)        # eager takes the fused kernel, TorchScript the modules: the same function

@pytest.mark.parametrize('kwargs', [dict(mixer='sa'), dict(coef=1, query=False, proj=False), dict(coef=1, share_proj=True)],
                         ids=['sa', 'lean_noq_noproj', 'lean_shared'])
def test_twins_trace_and_script(kwargs):
    "The experiment's other arms (the T2T-ViT twin, lean EA) trace and script too"
    model = create('eamlp_tiny', **kwargs).eval()
    x = torch.randn(BATCH, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        ft.test_eq(torch.fx.symbolic_trace(model)(x), y)
        torch.testing.assert_close(torch.jit.script(model)(x), y)

def test_eager_checks_kept():
    "Tracing and scripting skip the input checks; an eager call still fails with the same one-line messages"
    model = create('eamlp_tiny').eval()
    torch.fx.symbolic_trace(model); torch.jit.script(model)
    ft.test_fail(lambda: model(torch.randn(1, 3, 64, 64)), contains='expected (B, 3, 32, 32) images, got shape (1, 3, 64, 64)')
    ft.test_fail(lambda: model(torch.randn(3, 32, 32)), contains='expected (B, 3, 32, 32) images, got (3, 32, 32)')
    ft.test_fail(lambda: model.blocks[0].attn(torch.randn(1, 5, 7)), contains='expected (B, N, C) tokens with C=64, got shape (1, 5, 7)')
    ft.test_fail(lambda: model.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt='NHWC'), contains="output_fmt must be 'NCHW'")
    ft.test_fail(lambda: timm.create_model('eamlp_tiny', global_pool='avg'), contains="global_pool must be 'token'")
