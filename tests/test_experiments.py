"Every manifest entry runs end to end through the runner at tiny scale, and every scale's parameters are valid"
import json, pytest
from pathlib import Path
from ea_nb.cli import load_manifest, scale_params, check_params, run_experiment, SCALES

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = load_manifest(ROOT)

@pytest.mark.parametrize('name', sorted(MANIFEST))
def test_tiny_run(name, tmp_path):
    metrics = run_experiment(name, 'tiny', runs_dir=tmp_path, root=ROOT)
    out = tmp_path/f'{name}_tiny'
    assert metrics and json.loads((out/'metrics.json').read_text()) == metrics
    run = json.loads((out/'run.json').read_text())
    assert run['scale'] == 'tiny' and run['parameters']['out_dir'] == str(out.resolve())

@pytest.mark.parametrize('name', sorted(MANIFEST))
@pytest.mark.parametrize('scale', SCALES)
def test_scale_params_match_notebook(name, scale):
    "A key the notebook does not define fails here, not after an hour on a GPU"
    check_params(ROOT/'nbs'/MANIFEST[name]['notebook'], scale_params(MANIFEST[name], scale, ROOT))
