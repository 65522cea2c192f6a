"ListOps (ea_nb.listops): the generator's labels equal an independent evaluator's, its limits are LRA's, and padding changes no real token's output"
import pytest, torch, torch.nn.functional as F
from ea_nb.listops import (listops_splits, evaluate_listops, tokenize, ListOps, collate_listops, ListOpsEncoder, MIXERS, PAD_ID,
                           OPERATORS, END, MaskedExternalAttention, MaskedSelfAttention, LinearAttention, padding_gap, ea_ref, sa_ref, la_ref)
from ea_nb.attention import MultiHeadExternalAttention

def structure(tokens):
    "(operator nesting depth, smallest and largest argument count) of a token sequence"
    stack, depth, counts = [], 0, []
    for t in tokens:
        if t in OPERATORS: stack.append(0); depth = max(depth, len(stack))
        elif t == END: counts.append(stack.pop()); stack and stack.__setitem__(-1, stack[-1] + 1)
        elif stack: stack[-1] += 1
    return depth, min(counts, default=0), max(counts, default=0)

@pytest.mark.parametrize('text, value', [('[MAX 4 3 [MIN 2 3 ] 1 0 [MEDIAN 1 5 8 9 2]]', 5),     # the LRA paper's example
                                         ('[SM 9 8 [MED 1 2 ] ]', 8), ('[MED 3 1 4 1 ]', 2), ('[MIN [MAX 0 7 ] [SM 5 5 ] 3 ]', 0), ('7', 7)])
def test_hand_checked(text, value):
    assert evaluate_listops(text) == value

@pytest.mark.parametrize('seed, limits', [(0, dict(min_len=4, max_len=60, max_depth=4, max_args=3)), (1, dict(min_len=16, max_len=128)),
                                          (2, dict())])         # dict(): LRA's 500 < length < 2000, depth 10, 10 arguments
def test_generator_matches_evaluator_and_limits(seed, limits):
    n = 300 if limits else 12
    splits = listops_splits(n, n//4, n//4, seed=seed, **limits)
    lo, hi = limits.get('min_len', 500), limits.get('max_len', 2000)
    seen = set()
    for ex in splits.values():
        for t, v in ex:
            assert evaluate_listops(t) == v, ' '.join(t)
            assert lo < len(t) < hi
            d, a_min, a_max = structure(t)
            assert d <= limits.get('max_depth', 10) - 1 and 2 <= a_min and a_max <= limits.get('max_args', 10)
            seen.add(t)
    assert len(seen) == sum(len(ex) for ex in splits.values())           # distinct across the splits

def test_splits_fixed_by_seed():
    a, b = listops_splits(20, 5, 10, seed=3, min_len=8, max_len=64), listops_splits(40, 5, 10, seed=3, min_len=8, max_len=64)
    assert a['test'] == b['test'] and a['val'] == b['val'] and a['train'] == b['train'][:20]
    assert a['test'] != listops_splits(20, 5, 10, seed=4, min_len=8, max_len=64)['test']

@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('make, ref', [(lambda: MaskedExternalAttention(16, num_heads=2, coef=4, S=8), ea_ref),
                                       (lambda: MaskedSelfAttention(16, num_heads=2), sa_ref), (lambda: LinearAttention(16, num_heads=2), la_ref)])
def test_masked_mixer_equals_reference_on_the_real_tokens(make, ref, seed):
    torch.manual_seed(seed)
    assert padding_gap(make(), ref, seed=seed) < 1e-12

def test_unmasked_ea_leaks_padding():
    "The check above can fail: the library's EA module, which takes no mask, lets padding into the softmax over tokens"
    class Unmasked(MultiHeadExternalAttention):
        def forward(self, x, mask=None): return super().forward(x)
    torch.manual_seed(0)
    assert padding_gap(Unmasked(16, num_heads=2, coef=4, S=8), ea_ref) > 1e-3

@pytest.mark.parametrize('mixer', MIXERS)
def test_encoder_padding_invariance(mixer):
    ds = ListOps(listops_splits(4, 1, 1, seed=0, min_len=8, max_len=40)['train'])
    ids, lens, _ = collate_listops([ds[i] for i in range(4)])
    assert lens.min() < ids.shape[1]                                     # some rows are padded already
    torch.manual_seed(0)
    m = ListOpsEncoder(mixer, embed_dim=16, depth=2, num_heads=2, S=8, max_len=64).double().eval()
    with torch.no_grad(): torch.testing.assert_close(m(F.pad(ids, (0, 13), value=PAD_ID)), m(ids), rtol=0, atol=1e-10)

def test_bad_inputs():
    with pytest.raises(ValueError, match="mixer must be one of"): ListOpsEncoder('conv')
    with pytest.raises(ValueError, match="max_len"): ListOpsEncoder('none', embed_dim=8, num_heads=2, max_len=16)(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot read"): tokenize('[MAX 1 (2) ]')
    with pytest.raises(ValueError, match="n_train must be"): listops_splits(0, 1, 1)
