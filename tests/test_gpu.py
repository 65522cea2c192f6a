"The CUDA fast paths against their einsum references, in float64 (exact) and bf16 (autocast); skipped without CUDA"
import pytest, torch
import fastcore.test as ft
from ea_nb import fast
from ea_nb.attention import (ExternalAttention2d, MultiHeadExternalAttention, external_attention2d_ref,
                             multihead_external_attention_ref)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')]
DEV = 'cuda'

def _mhea_ref(m, x):
    w = list(fast.mhea_weights(m)); w[4] = w[4].t()               # M_v as (S, d), the reference's layout
    return multihead_external_attention_ref(x, *w, heads=m.num_heads)

def _formula(z, token_dim, memory_dim, eps=1e-9):
    a = z.softmax(token_dim)
    return a / (a.sum(memory_dim, keepdim=True) + eps)

def test_double_norm_operator_and_private_kernel_cuda():
    "The `ea_nb::double_norm` operator and the fast paths' private kernel (no graph) are the formula on CUDA"
    z = torch.randn(3, 257, 64, device=DEV, dtype=torch.float64) * 4
    want = _formula(z, 1, -1)
    zo = z.clone()
    ft.test_close(fast.double_norm(zo, 1, -1), want, eps=1e-12)
    ft.test_eq(zo, z)                                             # the operator leaves the logits alone
    with torch.no_grad(): ft.test_close(fast._norm_private(z.clone(), 1, -1, 1e-9), want, eps=1e-12)

def test_double_norm_gradcheck_cuda():
    z = torch.randn(2, 5, 3, device=DEV, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fast.double_norm(t, 1, -1), (z,), eps=1e-6, atol=1e-8)

@pytest.mark.parametrize('fold', [False, True])
def test_mhea_cuda_float64_values_and_grads(fold):
    m = MultiHeadExternalAttention(48, num_heads=3, coef=4, S=16).to(DEV, torch.float64)
    x = torch.randn(2, 197, 48, device=DEV, dtype=torch.float64, requires_grad=True)
    fast_fn = lambda x: fast.multihead_external_attention(x, *fast.mhea_weights(m), m.num_heads, fold=fold)
    ps = [x, *m.parameters()]
    y, y_ref = fast_fn(x), _mhea_ref(m, x)
    ft.test_close(y, y_ref, eps=1e-10)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, ps, g), torch.autograd.grad(y_ref, ps, g)): ft.test_close(a, b, eps=1e-9)

def test_mhea_cuda_bf16_autocast_close_to_float64():
    m = MultiHeadExternalAttention(64, num_heads=2, coef=4, S=16).to(DEV)
    x = torch.randn(2, 300, 64, device=DEV)
    with torch.autocast(DEV, dtype=torch.bfloat16): y = m(x)
    ref = _mhea_ref(m.double(), x.double())
    assert y.dtype == torch.bfloat16
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 3e-2

@pytest.mark.parametrize('fold', [False, True])
def test_ea2d_cuda_matches_reference(fold):
    m = ExternalAttention2d(32, S=8).to(DEV, torch.float64).eval()
    x = torch.randn(2, 32, 9, 9, device=DEV, dtype=torch.float64)
    args = (m.conv1.weight, m.conv1.bias, m.linear_0.weight, m.linear_1.weight, m.conv2[0].weight, m.conv2[1])
    ref = external_attention2d_ref(x, m.conv1.weight[..., 0, 0], m.conv1.bias, m.linear_0.weight[..., 0],
                                   m.linear_1.weight[..., 0].t(), m.conv2[0].weight[..., 0, 0], m.conv2[1])
    ft.test_close(fast.external_attention2d(x, *args, fold=fold), ref, eps=1e-10)
    ft.test_close(m(x), ref, eps=1e-10)
