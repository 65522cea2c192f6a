"The long-range diagnostic's premise, for any weights: a head without context (or EA with a softmax over S only) cannot see the marker"
import pytest, torch
from ea_nb.data import build
from ea_nb.train import trainer

GEOMETRY = dict(height=16, width=152, marker=16, gap=104)      # the notebook's cpu-scale strips
HEAD = dict(backbone='narrow', channels=16, mid_channels=16, widths=[8, 8, 16, 16], S=8, iterations=1, bs=2)

def far_change(mixer, norm='double', seed=0):
    "Largest change of the far-zone logits of a random float64 model when each strip's marker is swapped for another's"
    torch.manual_seed(seed)
    ds = build('longrange', 'val', n_images=4, **GEOMETRY)
    x = torch.stack([ds[i][0] for i in range(len(ds))]).double()
    y = x.clone(); y[..., :ds.marker] = x[..., :ds.marker].roll(1, 0)
    m = trainer('eanet', HEAD, num_classes=ds.num_classes, mixer=mixer, norm=norm, seed=seed, datasets=(ds, ds)).unwrapped.double().eval()
    for mod in m.modules():                         # DANet's SA starts as the identity (gamma = 0): open its attention path
        if hasattr(mod, 'gamma'): torch.nn.init.ones_(mod.gamma)
    with torch.no_grad(): return (m(y)[..., ds.far_start:] - m(x)[..., ds.far_start:]).abs().max().item()

@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('mixer, norm', [('none', 'double'), ('ea', 'softmax_s'), ('ea', 'gelu')])
def test_no_context_cannot_see_the_marker(mixer, norm, seed):
    assert far_change(mixer, norm, seed) == 0

@pytest.mark.parametrize('mixer, norm', [('sa', 'double'), ('ea', 'double'), ('ea', 'pooled')])
def test_context_can_see_the_marker(mixer, norm):
    assert far_change(mixer, norm) > 0
