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

@pytest.mark.parametrize('name', sorted(MANIFEST))
def test_every_parameter_parses(name):
    "papermill silently skips a parameters line it cannot parse (e.g. a comment holding ' = '): none may be skipped"
    import ast, nbformat, papermill as pm
    nb = ROOT/'nbs'/MANIFEST[name]['notebook']
    cell = next(c for c in nbformat.read(str(nb), as_version=4).cells if 'parameters' in c.metadata.get('tags', []))
    assigned = [n.target.id if isinstance(n, ast.AnnAssign) else n.targets[0].id
                for n in ast.parse(cell.source).body if isinstance(n, (ast.Assign, ast.AnnAssign))]
    assert sorted(pm.inspect_notebook(str(nb))) == sorted(assigned), f'{nb.name}: papermill cannot read some parameter lines'

def test_optional_entries_outside_make_reproduce(tmp_path):
    "An `optional` entry (ListOps) is left out of a plain cpu-scale reproduce, kept at the other scales and when named"
    from ea_nb.cli import experiments_to_run
    optional = [n for n, e in MANIFEST.items() if e.get('optional')]
    assert 'listops' in optional
    assert not set(optional) & set(experiments_to_run(MANIFEST, 'cpu'))
    assert set(optional) <= set(experiments_to_run(MANIFEST, 'tiny'))
    assert experiments_to_run(MANIFEST, 'cpu', ['listops']) == ['listops']
    (tmp_path/'experiments').mkdir(); (tmp_path/'nbs').mkdir(); (tmp_path/'nbs'/'x.ipynb').write_text('{}')
    (tmp_path/'experiments'/'manifest.yaml').write_text("x: {notebook: x.ipynb, tiny: {}, cpu: {}, full: {}, optional: 'yes'}\n")
    with pytest.raises(ValueError, match="optional='yes'.*must be true or false"): load_manifest(tmp_path)
