"The EA modules under the ecosystem's own tools: hooks, PEFT LoRA, torch.ao dynamic int8, pruning, weight norm, torch.export, ONNX Runtime, timm"
import copy, warnings
import pytest, torch, torch.nn as nn
import fastcore.test as ft
import onnxruntime as ort, timm
from peft import LoraConfig, get_peft_model
from torch.nn.utils import prune, parametrizations
from ea_nb.attention import ExternalAttention, ExternalAttention2d, MultiHeadExternalAttention
from ea_nb.fast import LeanMultiHeadExternalAttention, double_norm, export_onnx
import ea_nb.eamlp  # registers eamlp_* with timm

# name: (module factory, input shape, the linear layer before M_k, the map's axes in linear_0's output)
CASES = {
    'ea': (lambda: ExternalAttention(16, S=8, query=True, proj=True, mv_bias=True), (2, 10, 16), 'q_linear', dict(token_dim=1, memory_dim=2)),
    'mhea': (lambda: MultiHeadExternalAttention(16, num_heads=2, S=8), (2, 10, 16), 'trans_dims', dict(token_dim=1, memory_dim=3)),
    'ea2d': (lambda: ExternalAttention2d(16, S=8), (2, 16, 4, 5), 'conv1', dict(token_dim=2, memory_dim=1)),
    'lean': (lambda: LeanMultiHeadExternalAttention(16, num_heads=2, S=8, coef=2), (2, 10, 16), 'trans_dims', dict(token_dim=1, memory_dim=3)),
}
NAMES = list(CASES)

def case(name, seed=0):
    "A fresh module (eval mode) and an input"
    make, shape, query, axes = CASES[name]
    torch.manual_seed(seed)
    return make().eval(), torch.randn(*shape), query, axes

def run_onnx(path, x):
    s = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])

@pytest.mark.parametrize('name', NAMES)
def test_fast_path_taken_by_plain_modules(name):
    m, x, *_ = case(name)
    ft.test_eq([m.train(mode).fast_path_reason(x) for mode in (True, False)], ['', ''])

@pytest.mark.parametrize('name', NAMES)
def test_forward_hooks_see_the_attention_map(name):
    m, x, _, axes = case(name)
    fused, seen = m(x), {}
    hs = [m.linear_0.register_forward_hook(lambda mod, i, o: seen.update(logits=o)),
          m.linear_1.register_forward_hook(lambda mod, i, o: seen.update(attn=i[0]))]
    ft.test_eq(m.fast_path_reason(x), 'linear_0 has hooks')
    y = m(x)
    for h in hs: h.remove()
    ft.test_close(y, fused, eps=1e-5)
    ft.test_close(seen['attn'], double_norm(seen['logits'], **axes), eps=1e-6)
    ft.test_close(seen['attn'].sum(axes['memory_dim']), 1., eps=1e-5)

def test_global_module_hooks_are_honoured():
    m, x, *_ = case('mhea')
    seen = []
    h = nn.modules.module.register_module_forward_hook(lambda mod, i, o: seen.append(type(mod).__name__))
    try: why = m.fast_path_reason(x); m(x)
    finally: h.remove()
    ft.test_eq(why, 'a global module hook is registered')
    ft.test_eq(seen, ['Linear', 'Linear', 'Dropout', 'Linear', 'Linear', 'Dropout', 'MultiHeadExternalAttention'])

@pytest.mark.parametrize('name', NAMES)
def test_peft_lora_on_memories_and_query_changes_the_output_and_trains(name):
    m, x, query, _ = case(name)
    y0 = m(x).detach()
    pm = get_peft_model(m, LoraConfig(target_modules=['linear_0', 'linear_1', query], r=4, init_lora_weights=False))
    assert pm.base_model.model.fast_path_reason(x).startswith(f'{query} is a peft.tuners.lora')
    y = pm(x)
    assert (y - y0).abs().max() > 1e-3                                         # the LoRA layers are used
    lora = [p for n, p in pm.named_parameters() if 'lora_' in n]
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    ft.test_eq(len(lora), 6)
    ft.test_eq([n for n in trainable if 'lora_' not in n], [])                # the base is frozen
    ft.test_eq(len(trainable), 6)
    opt, target, losses = torch.optim.SGD(lora, lr=0.05), torch.randn_like(y0), []
    for _ in range(5):
        loss = (pm(x) - target).square().mean()
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert losses[-1] < losses[0]
    y = pm(x).detach()
    merged = pm.merge_and_unload()                                             # plain layers again: the fused path
    ft.test_eq(merged.fast_path_reason(x), '')
    ft.test_close(merged(x).detach(), y, eps=1e-5)

@pytest.mark.parametrize('name', ['ea', 'mhea', 'lean'])  # dynamic int8 quantises nn.Linear; the EANet block is 1×1 convs
def test_quantize_dynamic_int8_runs_and_stays_close(name):
    m, x, *_ = case(name)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(m), {nn.Linear}, dtype=torch.qint8)
    assert 'quantized' in q.fast_path_reason(x)
    y, yq = m(x).detach(), q(x).detach()
    assert 0 < ((y - yq).norm() / y.norm()).item() < 0.05

@pytest.mark.parametrize('name', NAMES)
def test_pruning_and_weight_norm_are_honoured(name):
    m, x, *_ = case(name)
    y0 = m(x).detach()
    prune.l1_unstructured(m.linear_0, 'weight', amount=0.5)                   # a pre-forward hook
    ft.test_eq(m.fast_path_reason(x), 'linear_0 has hooks')
    y = m(x).detach()
    assert (y - y0).abs().max() > 1e-4
    prune.remove(m.linear_0, 'weight')                                        # the pruned weights, made permanent
    ft.test_eq(m.fast_path_reason(x), '')
    ft.test_close(m(x).detach(), y, eps=1e-5)
    m.linear_1 = parametrizations.weight_norm(m.linear_1)                     # a parametrisation: the same function
    assert 'Parametrized' in m.fast_path_reason(x)
    ft.test_close(m(x).detach(), y, eps=1e-5)

@pytest.mark.parametrize('name', NAMES)
def test_torch_export_and_onnx_runtime_match_eager(name, tmp_path):
    m, x, *_ = case(name)
    y = m(x).detach()
    ep = torch.export.export(m, (x,))
    ft.test_eq(sum(n.target == torch.ops.ea_nb.double_norm.default for n in ep.graph.nodes), 1)
    ft.test_close(ep.module()(x), y, eps=1e-5)
    p = export_onnx(m, x, tmp_path/f'{name}.onnx', dynamic_shapes=({0: torch.export.Dim('B')},))
    for xb in (x, torch.cat([x, -x, x + 1])): ft.test_close(run_onnx(p, xb), m(xb).detach(), eps=1e-4)

def test_eamlp_7_through_every_tool(tmp_path):
    torch.manual_seed(0)
    m, x = timm.create_model('eamlp_7').eval(), torch.randn(1, 3, 224, 224)
    ft.test_eq({b.attn.fast_path_reason() for b in m.blocks}, {''})
    y = m(x).detach()
    ft.test_close(torch.export.export(m, (x,)).module()(x), y, eps=1e-4)
    ft.test_close(run_onnx(export_onnx(m, x, tmp_path/'eamlp_7.onnx'), x), y, eps=1e-4)
    deploy = timm.utils.reparameterize_model(m)                                  # timm's deploy-time step
    ft.test_eq(type(deploy.blocks[0].attn.linear_0), nn.Identity)
    ft.test_close(deploy(x), y, eps=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(m), {nn.Linear}, dtype=torch.qint8)
    assert ((q(x) - y).norm() / y.norm()).item() < 0.1
    pm = get_peft_model(m, LoraConfig(target_modules=['linear_0', 'linear_1', 'trans_dims'], r=4, init_lora_weights=False))
    pm(x).square().mean().backward()
    lora = [p for n, p in pm.named_parameters() if 'lora_' in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
