#!/usr/bin/env python3
"""The GPU path of ea_nb, measured: one prepared check that writes everything it measures to one folder (issue 21).

Sections (each independent: a failure is recorded, with its traceback, and the next section runs; each has a time
budget so that the whole check stays under 10 minutes on one GPU):

  env        torch, CUDA, cuDNN, GPU name, driver, python, ea_nb git commit, package versions    -> env.json
  imports    every ea_nb module imports with this torch (the GPU machine's torch 2.11)           -> imports.json
  parity     every fast path against its einsum reference on the device, fp64/fp32/bf16/fp16 and
             autocast, values and gradients; the double normalisation's in-place (CUDA) branch
             against the out-of-place formula, its aliasing, and gradcheck in float64             -> parity.json/.csv
  notebooks  `nbdev-test --flags gpu` on the notebooks that hold `#| gpu` cells                  -> notebooks.json
  pytest     `pytest -m gpu` on the test files that hold gpu-marked tests                        -> pytest.json
  bench      experiments/bench.yaml at full scale in fp32 and bf16: CUDA-synchronised times, peak
             memory (torch.cuda.max_memory_allocated), crossover N against SDPA self-attention    -> bench.json/.csv
  train      training steps (forward, backward, optimiser) in bf16 autocast: EAMLP-14 at 224 beside
             DeiT-S (same width 384), and EANet (ResNet-101, output stride 8) at the VOC crop 513 -> train.json/.csv
  dryrun     each paper-scale yaml of experiments/: its model built at the configured size and one
             forward/backward step on random input of the configured shape (no data, no weights)  -> dryrun.json/.csv
  compile    torch.compile'd against eager: the EA modules and SDPA self-attention; last, as one
             compilation cannot be cut short when the budget is spent                            -> compile.json/.csv

plus summary.md and summary.json (rewritten after every section, so a killed run still leaves a summary).
Every section prints one line: `[name] status seconds: what it found`.

On the GPU machine (python 3.12, torch 2.11, no package registry), from the repository root:

    # here, once (PyPI answers): wheels of what that machine lacks into .whl/gpu (git-ignored, about 7 MiB)
    make gpu-wheels
    # there (the device tool: carry [".whl/gpu"], timeout_s 600): unpack the wheels, run with ea_nb from the working
    # tree, results into $OUT/gpu (what the tool brings back); then copy them to runs/gpu/ here and commit them
    python3 tools/gpu_wheels.py --offline --unpack .whl/site && PYTHONPATH=$PWD:$PWD/.whl/site timeout 570 python3 tools/gpu_check.py --out "$OUT/gpu" --commit <HEAD>

<HEAD> is `git rev-parse HEAD` here, written into the command (the device's copy of the tree may have no .git;
env.json also records a sha256 of ea_nb/*.py and tools/*.py). `make gpu-check GPU_ARGS='--out "$OUT/gpu"'` does the same
where there is no .venv. Instead of unpacking, where pip is
there: `python3 -m pip install --no-deps --no-index --target .whl/site .whl/gpu/*.whl`. The default total budget is
540 s (`--budget`); a section that runs out of its share stops, says what it did not do, and the next one starts.
With 15 minutes of device time in all (the machine's start counts too), leave room for a rerun: `--only parity bench`
(any sections; each is independent) reruns just those into the same folder, and `--budget 360` shortens a full run.

On the CPU, the self-check at tiny sizes (tests/test_gpu_check.py runs it):

    python tools/gpu_check.py --device cpu --quick --out /tmp/gpu
"""
import argparse, contextlib, csv, gc, importlib, itertools, json, math, os, platform, re, subprocess, sys, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))   # ea_nb from this working tree (no install needed)

import torch, torch.nn as nn, torch.nn.functional as F

# the order the sections run in: compile last, because one compilation cannot be cut short when its budget is spent
ORDER = ('env', 'imports', 'parity', 'notebooks', 'pytest', 'bench', 'train', 'dryrun', 'compile')
STATUSES = ('ok', 'fail', 'error', 'partial', 'skipped')   # fail: a check did not hold; error: the section raised

# ---------------------------------------------------------------------------------------------------- the harness

class Ctx:
    "What a section sees: the device, the preset, its deadline, its checks and notes, and the output folder"
    def __init__(self, out:Path, device:str, quick:bool, budget:float):
        self.out, self.device, self.quick, self.budget = out, torch.device(device), quick, budget
        self.cuda = self.device.type == 'cuda'
        self.t0 = time.perf_counter()
        self.checks, self.notes, self.partial = [], [], False

    def left(self) -> float: return self.budget - (time.perf_counter() - self.t0)

    def check(self, name:str, ok:bool, **detail):
        "Record a numerical or behavioural check; any failed check makes the section `fail`"
        self.checks.append(dict(name=name, ok=bool(ok), **detail))
        return bool(ok)

    def note(self, s:str): self.notes.append(s)

    def out_of_time(self, what:str, need:float=0.) -> bool:
        "True (and the section marked partial, with a note) when less than `need` seconds are left"
        if self.left() > need: return False
        self.partial = True
        self.note(f"not done (section budget {self.budget:.0f}s spent): {what}")
        return True

    def sync(self):
        if self.cuda: torch.cuda.synchronize(self.device)

    def reset_peak(self):
        if self.cuda: self.sync(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self):
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None


def _jsonable(o):
    if isinstance(o, float) and not math.isfinite(o): return None if math.isnan(o) else ('inf' if o > 0 else '-inf')
    if isinstance(o, dict): return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [_jsonable(v) for v in o]
    if isinstance(o, (str, int, bool)) or o is None: return o
    if isinstance(o, float): return o
    if isinstance(o, torch.Tensor): return _jsonable(o.tolist())
    if hasattr(o, 'item'): return _jsonable(o.item())
    return str(o)

def write_json(path:Path, obj): path.write_text(json.dumps(_jsonable(obj), indent=1) + '\n')

def write_csv(path:Path, rows:list):
    "Rows (dicts) as CSV, the columns in order of first appearance"
    if not rows: return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, cols); w.writeheader()
        for r in rows: w.writerow({k: _jsonable(v) for k, v in r.items()})

def _tail(s:str, n:int=4000) -> str: return s[-n:]

SECTIONS = {}   # name -> (function, budget on the GPU in seconds, budget of the quick CPU preset)

def section(name:str, budget:float, quick_budget:float):
    def register(fn): SECTIONS[name] = (fn, budget, quick_budget); return fn
    return register

def run_section(name, fn, ctx:Ctx) -> dict:
    "Run one section; whatever happens, write <name>.json (and <name>.traceback.txt if it raised)"
    res, data, line = dict(section=name, budget_s=round(ctx.budget, 1)), {}, ''
    try:
        data, line = fn(ctx)
        failed = [c['name'] for c in ctx.checks if not c['ok']]
        status = 'fail' if failed else data.pop('_status', 'partial' if ctx.partial else 'ok')
        if failed: line = f"{len(failed)} of {len(ctx.checks)} checks failed ({', '.join(failed[:4])}{'...' if len(failed) > 4 else ''}); {line}"
    except Exception as e:
        status, line = 'error', f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        (ctx.out/f'{name}.traceback.txt').write_text(traceback.format_exc())
        res['traceback'] = f'{name}.traceback.txt'
    finally:
        if ctx.cuda:
            with contextlib.suppress(Exception): torch.cuda.synchronize(); torch.cuda.empty_cache()
    n_ok = sum(c['ok'] for c in ctx.checks)
    res.update(status=status, seconds=round(time.perf_counter() - ctx.t0, 2), summary=line,
               checks_passed=n_ok, checks_total=len(ctx.checks), notes=ctx.notes, checks=ctx.checks, **data)
    write_json(ctx.out/('env.json' if name == 'env' else f'{name}.json'), res)
    print(f"[{name}] {status} {res['seconds']:.1f}s: {line}", flush=True)
    return res

# ---------------------------------------------------------------------------------------------------- env, imports

PACKAGES = ('torch', 'torchvision', 'triton', 'timm', 'torch_geometric', 'torchmetrics', 'accelerate', 'numpy', 'pandas',
            'pyyaml', 'fastcore', 'nbdev', 'execnb', 'papermill', 'fvcore', 'torch-fidelity', 'pycocotools', 'pytest')

def _git(*args):
    try: return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e: return f'unavailable ({type(e).__name__})'

COMMIT = dict(commit=None, dirty=None)   # set by main(): --commit, else `git rev-parse HEAD` (a copied tree may have no .git)

def _tree_sha() -> str:
    "sha256 over ea_nb/*.py and tools/*.py: names the code that ran even where there is no git"
    import hashlib
    h = hashlib.sha256()
    for f in sorted([*(ROOT/'ea_nb').glob('*.py'), *(ROOT/'tools').glob('*.py')]): h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()

def _nvidia_smi():
    try:
        r = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm',
                            '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
        return r.stdout.strip() or r.stderr.strip()
    except Exception as e: return f'unavailable ({type(e).__name__})'

@section('env', 15, 10)
def env_section(ctx):
    import importlib.metadata as md
    def version(p):
        try: return md.version(p)
        except md.PackageNotFoundError: return None
    e = dict(python=sys.version.split()[0], executable=sys.executable, platform=platform.platform(), cpu_count=os.cpu_count(),
             torch=torch.__version__, torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             cuda_available=torch.cuda.is_available(), device=str(ctx.device), torch_threads=torch.get_num_threads(),
             matmul_tf32=torch.backends.cuda.matmul.allow_tf32, cudnn_tf32=torch.backends.cudnn.allow_tf32,
             float32_matmul_precision=torch.get_float32_matmul_precision(),
             git_commit=COMMIT['commit'], git_dirty=COMMIT['dirty'], ea_nb_sha256=_tree_sha(),
             packages={p: version(p) for p in PACKAGES}, argv=sys.argv, started_utc=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
             pythonpath=os.environ.get('PYTHONPATH', ''))
    if ctx.cuda:
        p = torch.cuda.get_device_properties(ctx.device)
        e.update(gpu_name=p.name, gpu_capability=f'{p.major}.{p.minor}', gpu_memory_GiB=round(p.total_memory / 2**30, 1),
                 gpu_count=torch.cuda.device_count(), nvidia_smi=_nvidia_smi(), flash_sdp=torch.backends.cuda.flash_sdp_enabled())
        x = torch.randn(256, 256, device=ctx.device); ctx.sync()
        ctx.check('cuda_matmul_runs', torch.isfinite(x @ x).all().item())
    e['driver'] = e.get('nvidia_smi', 'no GPU').split(', ')[1] if ctx.cuda and ', ' in e.get('nvidia_smi', '') else None
    gpu = f"{e.get('gpu_name')} ({e.get('gpu_memory_GiB')} GiB), driver {e['driver']}, " if ctx.cuda else 'no GPU, '
    return dict(env=e), f"{gpu}torch {e['torch']} CUDA {e['torch_cuda']} cuDNN {e['cudnn']}, python {e['python']}, ea_nb {e['git_commit'][:10]}"

@section('imports', 25, 40)
def imports_section(ctx):
    import pkgutil, ea_nb
    mods = sorted(m.name for m in pkgutil.iter_modules(ea_nb.__path__) if not m.name.startswith('_'))
    rows = []
    for m in mods:
        t = time.perf_counter()
        try: importlib.import_module(f'ea_nb.{m}'); err = None
        except Exception as e: err = f'{type(e).__name__}: {e}'
        rows.append(dict(module=f'ea_nb.{m}', ok=err is None, error=err, seconds=round(time.perf_counter() - t, 2)))
        ctx.check(f'import ea_nb.{m}', err is None, error=err)
    bad = [r['module'] for r in rows if not r['ok']]
    return dict(modules=rows, ea_nb_file=ea_nb.__file__), f"{len(rows) - len(bad)}/{len(rows)} ea_nb modules import with torch {torch.__version__}" + (f"; failing: {', '.join(bad)}" if bad else '')

# ---------------------------------------------------------------------------------------------------- parity

def _rel(a, b, floor:float=1e-30) -> float:
    "max |a - b| / max(max |b|, floor), in float64"
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))

def _grad_err(gs, g64) -> float:
    """Worst relative error over the gradients; a gradient that is zero in exact arithmetic (that of a bias before the
    softmax over tokens, which is shift-invariant: float64 gives it as ~1e-16 of the others) is measured against the
    largest gradient instead of against itself"""
    scale = max(float(b.abs().max()) for b in g64)
    return max((_rel(a, b, scale if float(b.abs().max()) <= 1e-10 * scale else 1e-30) for a, b in zip(gs, g64) if a is not None), default=0.)

TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}   # relative to max |ref|

def _grads(fn, inputs, g):
    "Value and the gradients of <fn(*inputs), g> with respect to every input that requires grad"
    y = fn(*inputs)
    ps = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return y, torch.autograd.grad(y, ps, g.to(y.dtype), allow_unused=True)

def _cast(ts, dtype):
    "Leaf copies of `ts` in `dtype`, requiring grad where the original floating tensors do"
    return [t.detach().to(dtype).requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in ts]

def _compare(ctx, rows, case:str, fast, ref, inputs:list, g, modes):
    """`fast(*inputs)` against `ref(*inputs)`: the float64 reference is the truth; in each mode (a dtype, or autocast to
    a dtype with float32 weights) the fast path passes if its error is within the dtype's tolerance or within 4× the
    reference's own error in the same mode. Gradients are those of <y, g>, with g zero where |y| is under 5% of its
    largest value (the EANet block ends in a ReLU: there a low-precision rounding flips the derivative, in either path)"""
    with torch.no_grad(): y64 = ref(*_cast(inputs, torch.float64))
    g = g * (y64.abs() > 0.05 * y64.abs().max()).to(g.dtype)      # no cotangent at outputs near a ReLU's kink, where a rounding flips the derivative
    y64, g64 = _grads(ref, _cast(inputs, torch.float64), g)
    for mode in modes:
        dtype, autocast = (mode[1], True) if isinstance(mode, tuple) else (mode, False)
        base = torch.float32 if autocast else dtype
        errs = {}
        for name, fn in (('fast', fast), ('ref', ref)):
            ins = _cast(inputs, base)
            with torch.autocast(ctx.device.type, dtype=dtype, enabled=autocast):
                y, gs = _grads(fn, ins, g)
            errs[name] = (_rel(y, y64), _grad_err(gs, g64),
                          all(a is not None for a in gs), str(y.dtype).replace('torch.', ''))
        (fv, fg, fall, ydt), (rv, rg, _, _) = errs['fast'], errs['ref']
        tol = TOL[dtype]
        ok_v, ok_g = fv <= max(tol, 4 * rv), fg <= max(tol, 4 * rg) and fall
        mname = f'autocast_{str(dtype)[6:]}' if autocast else str(dtype)[6:]
        row = dict(case=case, mode=mname, out_dtype=ydt, value_err=fv, grad_err=fg, ref_value_err=rv, ref_grad_err=rg, tol=tol,
                   all_grads=fall, ok=ok_v and ok_g)
        rows.append(row)
        ctx.check(f'{case} {mname}', row['ok'], value_err=fv, grad_err=fg, tol=tol)

def _dn_formula(z, token_dim, memory_dim, eps=1e-9):
    "The double normalisation written out (softmax over tokens, then ℓ1 over memory), out of place"
    a = z.softmax(token_dim)
    return a / (a.sum(memory_dim, keepdim=True) + eps)

def _double_norm_checks(ctx, rows, shape, gc_shape):
    "The `ea_nb::double_norm` operator and the fast paths' private in-place kernel against the formula, on the device"
    from ea_nb import fast
    dn_formula = lambda z, token_dim, memory_dim: _dn_formula(z, token_dim, memory_dim)
    dev, f64 = ctx.device, torch.float64
    branch = 'aten._softmax.out in place (cpu)' if dev.type == 'cpu' else 'softmax + div_ (non-cpu)'
    torch.manual_seed(0)
    z = torch.randn(*shape, device=dev, dtype=f64) * 4            # (B, N, S) logits, token_dim 1
    want = dn_formula(z, token_dim=1, memory_dim=-1)
    # the operator: out of place, the input untouched
    z0 = z.clone(); a = fast.double_norm(z0, 1, -1)
    ctx.check('double_norm operator value', _rel(a, want) < 1e-12, err=_rel(a, want))
    ctx.check('double_norm operator leaves its input', torch.equal(z0, z) and a.data_ptr() != z0.data_ptr())
    # the private kernel of the fast paths in eager inference (no graph): same values; in place on the CPU
    with torch.no_grad():
        z1 = z.clone(); a1 = fast._norm_private(z1, 1, -1, 1e-9)
    ctx.check('private kernel (no grad) value', _rel(a1, want) < 1e-12, err=_rel(a1, want))
    if dev.type == 'cpu': ctx.check('private kernel aliases its input on the cpu', a1.data_ptr() == z1.data_ptr())
    zg = z.clone().requires_grad_()
    ctx.check('private kernel with a graph is the operator (input kept)', torch.equal(fast._norm_private(zg, 1, -1, 1e-9).detach(), a) and torch.equal(zg.detach(), z))
    # a (B, N, H, S) map over tokens, the layout of the multi-head plain path
    B, N, S = shape; H = 2
    z4 = torch.randn(B, N, H, S, device=dev, dtype=f64)
    ctx.check('double_norm (B, N, H, S), tokens on dim 1', _rel(fast.double_norm(z4, 1, -1), dn_formula(z4, 1, -1)) < 1e-12)
    # gradients: the registered backward against autograd through the formula, and gradcheck (finite differences)
    g = torch.randn_like(z)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    ga, = torch.autograd.grad(fast.double_norm(za, 1, -1), za, g)
    gb, = torch.autograd.grad(dn_formula(zb, token_dim=1, memory_dim=-1), zb, g)
    ctx.check('double_norm backward vs autograd of the formula', _rel(ga, gb) < 1e-10, err=_rel(ga, gb))
    zs = torch.randn(*gc_shape, device=dev, dtype=f64, requires_grad=True)
    ok = torch.autograd.gradcheck(lambda t: fast.double_norm(t, 1, -1), (zs,), eps=1e-6, atol=1e-8, raise_exception=False)
    ctx.check('double_norm gradcheck float64', ok)
    # low precision against float64: bf16/fp16 inputs in place, and autocast (which upcasts to float32)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        zl = z.to(dt)
        err = _rel(fast.double_norm(zl.clone(), 1, -1), want)
        ref_err = _rel(dn_formula(zl, token_dim=1, memory_dim=-1), want)
        rows.append(dict(case='double_norm', mode=str(dt)[6:], out_dtype=str(dt)[6:], value_err=err, ref_value_err=ref_err, tol=TOL[dt], ok=err <= max(TOL[dt], 4 * ref_err)))
        ctx.check(f'double_norm {str(dt)[6:]}', rows[-1]['ok'], err=err, ref_err=ref_err)
    return branch

@section('parity', 45, 40)
def parity_section(ctx):
    from ea_nb.attention import (ExternalAttention, ExternalAttention2d, MultiHeadExternalAttention, external_attention_ref,
                                 external_attention2d_ref, multihead_external_attention_ref)
    from ea_nb.fast import (multihead_external_attention, multihead_external_attention_official, mhea_weights, external_attention,
                            external_attention2d, LeanMultiHeadExternalAttention)
    dev = ctx.device
    B, N, C, heads, S, side, C2 = (2, 37, 32, 2, 8, 5, 16) if ctx.quick else (4, 577, 384, 6, 64, 33, 512)
    modes = [torch.float32, torch.bfloat16, torch.float16, ('autocast', torch.bfloat16), ('autocast', torch.float16)]
    rows = []
    branch = _double_norm_checks(ctx, rows, (B, N, S), (2, 5, 3))
    torch.manual_seed(0)
    x = torch.randn(B, N, C, device=dev, requires_grad=True)
    g = torch.randn(B, N, C, device=dev)
    # single head, with query linear and output projection (fold on and off)
    m = ExternalAttention(C, S=S, query=True, proj=True).to(dev)
    p = [m.q_linear.weight, m.q_linear.bias, m.linear_0.weight, m.linear_1.weight, m.proj.weight, m.proj.bias]
    ref1 = lambda x, wq, bq, mk, mv, wo, bo: F.linear(external_attention_ref(F.linear(x, wq, bq), mk, mv.t()), wo, bo)
    for fold in (False, True):
        fast1 = lambda x, wq, bq, mk, mv, wo, bo, fold=fold: external_attention(x, mk, mv, None, wq, bq, wo, bo, fold=fold)
        _compare(ctx, rows, f'ExternalAttention fold={fold}', fast1, ref1, [x, *p], g, modes)
        if ctx.out_of_time('the rest of the parity cases'): break
    # the module itself (what a user calls) against the reference, fp32
    y = m(x); ctx.check('ExternalAttention module == reference (fp32)', _rel(y, ref1(x, *p)) < TOL[torch.float32], err=_rel(y, ref1(x, *p)))
    # multi-head (EAMLP), fold on and off, and the official form
    mh = MultiHeadExternalAttention(C, num_heads=heads, coef=4, S=S).to(dev)
    w = list(mhea_weights(mh)); H = mh.num_heads
    def refm(x, *w):
        w = list(w); w[4] = w[4].t()                               # M_v as (S, d)
        return multihead_external_attention_ref(x, *w, heads=H)
    cases = [(f'MultiHeadExternalAttention fold={f}', lambda x, *w, f=f: multihead_external_attention(x, *w, H, fold=f)) for f in (False, True)]
    cases.append(('multihead official form', lambda x, *w: multihead_external_attention_official(x, *w, H)))
    for name, fn in cases:
        if ctx.out_of_time(f'parity {name} and later'): break
        _compare(ctx, rows, name, fn, refm, [x, *w], g, modes)
    y = mh(x); ctx.check('MultiHeadExternalAttention module == reference (fp32)', _rel(y, refm(x, *w)) < TOL[torch.float32], err=_rel(y, refm(x, *w)))
    # lean multi-head with the tied projection (fold on and off agree with each other in float64)
    lm = LeanMultiHeadExternalAttention(C, heads, coef=1, S=S, share_proj=True).to(dev, torch.float64)
    xl = x.detach().double()
    ya, yb = [multihead_external_attention(xl, *(list(mhea_weights(lm))[:-2] + [lm.trans_dims.weight.t(), lm.proj_bias]), lm.num_heads, fold=f) for f in (False, True)]
    ctx.check('LeanMultiHeadExternalAttention share_proj fold=True == fold=False (fp64)', _rel(ya, yb) < 1e-10, err=_rel(ya, yb))
    ctx.check('LeanMultiHeadExternalAttention module == fast (fp64)', _rel(lm(xl), ya) < 1e-10)
    # the EANet block on feature maps (BatchNorm in eval mode so that every call sees the same function)
    if not ctx.out_of_time('parity ExternalAttention2d'):
        m2 = ExternalAttention2d(C2, S=S).to(dev).eval()
        with torch.no_grad(): m2.conv2[1].running_mean.uniform_(-.1, .1); m2.conv2[1].running_var.uniform_(.5, 2)
        x2 = torch.randn(B, C2, side, side, device=dev, requires_grad=True)
        g2 = torch.randn(B, C2, side, side, device=dev)
        bn = m2.conv2[1]
        def bnf(t, w, b): return F.batch_norm(t, bn.running_mean.to(w.dtype), bn.running_var.to(w.dtype), w, b, False, 0., bn.eps)
        q = [m2.conv1.weight, m2.conv1.bias, m2.linear_0.weight, m2.linear_1.weight, m2.conv2[0].weight, bn.weight, bn.bias]
        def ref2(x, w1, b1, mk, mv, w2, bw, bb):
            return external_attention2d_ref(x, w1[..., 0, 0], b1, mk[..., 0], mv[..., 0].t(), w2[..., 0, 0], lambda t: bnf(t, bw, bb))
        for fold in (False, True):
            fast2 = lambda x, w1, b1, mk, mv, w2, bw, bb, fold=fold: external_attention2d(x, w1, b1, mk, mv, w2, lambda t: bnf(t, bw, bb), fold=fold)
            _compare(ctx, rows, f'ExternalAttention2d fold={fold}', fast2, ref2, [x2, *q], g2, modes)
        y = m2(x2); ctx.check('ExternalAttention2d module == reference (fp32, eval)', _rel(y, ref2(x2, *q)) < TOL[torch.float32], err=_rel(y, ref2(x2, *q)))
    write_csv(ctx.out/'parity.csv', rows)
    worst = {}
    for r in rows:
        w = worst.setdefault(r['mode'], dict(value=0., grad=0.))
        w['value'], w['grad'] = max(w['value'], r['value_err']), max(w['grad'], r.get('grad_err') or 0.)
    return (dict(double_norm_branch=branch, sizes=dict(B=B, N=N, C=C, heads=heads, S=S, map_side=side, map_C=C2), rows=rows,
                 worst_rel_err_by_mode=worst),
            f"{sum(c['ok'] for c in ctx.checks)}/{len(ctx.checks)} checks; double norm branch {branch}; worst rel err " +
            ', '.join(f"{k} {v['value']:.0e}/{v['grad']:.0e}" for k, v in worst.items()) + ' (value/grad)')

# ---------------------------------------------------------------------------------------------------- subprocess sections

def _run(cmd:list, timeout:float) -> dict:
    "Run a command from the repo root with this python's environment; rc, seconds and the output's tail"
    t = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, os.environ.get('PYTHONPATH', '').split(os.pathsep))]))
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1, timeout), env=env)
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 'timeout', ((e.stdout or b'').decode(errors='replace') if isinstance(e.stdout, bytes) else (e.stdout or '')) + f'\n[killed after {timeout:.0f}s]'
    return dict(cmd=' '.join(cmd), rc=rc, seconds=round(time.perf_counter() - t, 1), tail=_tail(out))

def gpu_cells() -> dict:
    "notebook -> number of code cells flagged `#| gpu`"
    found = {}
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        if nb.name.startswith('_'): continue
        cells = json.loads(nb.read_text()).get('cells', [])
        n = sum(1 for c in cells if c.get('cell_type') == 'code' and re.search(r'^#\|\s*gpu\b', ''.join(c.get('source', [])), re.M))
        if n: found[f'nbs/{nb.name}'] = n
    return found

# `nbdev-test --flags gpu <notebook>` without its console script (the unpacked wheels have none): the undecorated function,
# because under `python -c` fastcore's call_parse finds no calling module and ignores argv (it would test every notebook)
_NBDEV_TEST = "import sys; from nbdev.test import nbdev_test; getattr(nbdev_test, '__wrapped__', nbdev_test)(path=sys.argv[1], flags=sys.argv[2])"

@section('notebooks', 60, 5)
def notebooks_section(ctx):
    cells = gpu_cells()
    data = dict(gpu_cells=cells, runs=[])
    if not ctx.cuda:
        data['_status'] = 'skipped'
        return data, f"skipped (the `#| gpu` cells need CUDA); found {sum(cells.values())} gpu cells in {', '.join(cells) or 'no notebook'}"
    try: import nbdev  # noqa: F401
    except ImportError as e:
        raise ImportError(f"nbdev is not importable ({e}): run `make gpu-wheels` where PyPI answers and put .whl/site on PYTHONPATH") from None
    for nb in cells:
        if ctx.out_of_time(f'nbdev-test --flags gpu {nb}', 5): break
        r = _run([sys.executable, '-c', _NBDEV_TEST, nb, 'gpu'], ctx.left() - 2)
        r['as'] = f'nbdev-test --flags gpu {nb}'
        data['runs'].append(r)
        ctx.check(f'nbdev-test --flags gpu {nb}', r['rc'] == 0, rc=r['rc'])
    return data, ', '.join(f"{r['as']}: rc={r['rc']} ({r['seconds']}s)" for r in data['runs']) or 'nothing run'

@section('pytest', 45, 40)
def pytest_section(ctx):
    files = sorted(f'tests/{p.name}' for p in (ROOT/'tests').glob('test_*.py') if re.search(r'mark\.gpu\b', p.read_text()))
    if ctx.quick: files = [f for f in files if f.endswith('test_gpu.py')] or files[:1]
    if not files: return dict(_status='skipped', files=[]), 'no test file has a gpu-marked test'
    r = _run([sys.executable, '-m', 'pytest', '-m', 'gpu', '-q', '-p', 'no:cacheprovider', *files], ctx.left() - 2)
    last = next((l for l in reversed(r['tail'].splitlines()) if re.search(r'passed|failed|skipped|error|no tests ran', l)), '')
    ok = r['rc'] == 0 or (r['rc'] == 5 and not ctx.cuda)
    ctx.check('pytest -m gpu', ok, rc=r['rc'])
    status = 'skipped' if ok and not ctx.cuda and 'passed' not in last else None
    data = dict(files=files, run=r, result_line=last)
    if status: data['_status'] = status
    return data, f"rc={r['rc']}: {last.strip('= ')}"

# ---------------------------------------------------------------------------------------------------- bench

def bench_api():
    """The benchmark harness, wherever it lives: ea_nb.bench (its new home) or ea_nb.fast (today). The only place this
    script touches the harness's module; everything below uses the public names returned here."""
    names = ('run_benchmark', 'build_variant', 'crossover', 'ratio', 'time_interleaved', 'VARIANTS')
    for mod in ('ea_nb.bench', 'ea_nb.fast'):
        try: m = importlib.import_module(mod)
        except ImportError: continue
        if all(hasattr(m, n) for n in names): return argparse.Namespace(module=mod, **{n: getattr(m, n) for n in names})
    raise ImportError(f"no benchmark harness with {names} in ea_nb.bench or ea_nb.fast")

def _load_yaml(path):
    import yaml
    return yaml.safe_load(Path(path).read_text())

def _bench_cfg(quick:bool) -> dict:
    cfg = _load_yaml(ROOT/'experiments'/'bench.yaml')
    if quick: cfg.update(_load_yaml(ROOT/'experiments'/'manifest.yaml')['bench']['tiny'])
    return cfg

def _probe(ctx, api, variants, N, kw):
    "Per variant at N: one forward+backward after a warm-up call, its seconds and the peak memory it allocates"
    out = {}
    for v in variants:
        try:
            ctx.reset_peak()
            base = torch.cuda.memory_allocated(ctx.device) if ctx.cuda else 0
            b = api.build_variant(v, N, **kw)
            b['fwdbwd'](); ctx.sync()
            t = time.perf_counter(); b['fwdbwd'](); ctx.sync()
            out[v] = dict(s=time.perf_counter() - t, peak_MB=None if not ctx.cuda else (torch.cuda.max_memory_allocated(ctx.device) - base) / 2**20)
            del b
        except torch.cuda.OutOfMemoryError as e:
            out[v] = dict(s=math.inf, peak_MB=None, error=f'OOM: {str(e).splitlines()[0][:160]}')
        except Exception as e:
            out[v] = dict(s=math.inf, peak_MB=None, error=f'{type(e).__name__}: {str(e)[:160]}')
    ctx.reset_peak()
    return out

def _flash_usable(ctx, head_dim:int):
    "Whether SDPA's flash kernel runs here in bf16 at this head dim (then the bf16 'sa' rows are flash attention)"
    if not ctx.cuda: return None
    from torch.nn.attention import sdpa_kernel, SDPBackend
    q = torch.randn(1, 2, 256, head_dim, device=ctx.device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]): F.scaled_dot_product_attention(q, q, q)
        return True
    except RuntimeError as e: return f'no: {str(e).splitlines()[0][:160]}'

@section('bench', 150, 30)
def bench_section(ctx):
    import pandas as pd
    api = bench_api()
    cfg = _bench_cfg(ctx.quick)
    S, batch = cfg['S'], cfg['batch']
    dtypes = [torch.bfloat16, torch.float32] if ctx.cuda else [torch.float32]
    groups = []   # (family, dtype, variants, Ns, kw, repeats): bf16 first (the targets), then fp32 (the yaml)
    for dt in dtypes:
        groups += [('mhea', dt, list(cfg['mhea_variants']), cfg['mhea_Ns'], dict(dim=cfg['dim'], heads=cfg['heads'], S=S, batch=batch), cfg['repeats']),
                   ('core', dt, list(api.VARIANTS['core']) + ['sa'], cfg['core_Ns'], dict(dim=cfg['core_dim'], heads=8, S=S, batch=1), cfg['core_repeats']),
                   ('map2d', dt, list(api.VARIANTS['map2d']), cfg['map_Ns'], dict(dim=cfg['map_dim'], S=S, batch=1), cfg['repeats'])]
    frames, probes, skipped = [], [], []
    for gi, (fam, dt, variants, Ns, kw, repeats) in enumerate(groups):
        share_end = ctx.t0 + ctx.budget * (gi + 1) / len(groups)        # this group's slice of the section budget
        kw = dict(kw, device=str(ctx.device), dtype=dt)
        last = {}                                                        # variant -> (N, probe seconds) at the last N
        for N in Ns:
            left = share_end - time.perf_counter()
            if left <= 0 or ctx.left() <= 0:
                skipped.append(f'{fam} {str(dt)[6:]} N={N}'); ctx.partial = True; continue
            def guess(v):                                                # self-attention grows as N², EA as N
                n0, t0 = last.get(v, (N, 0.))
                return t0 * (N / n0) ** (2 if v.startswith('sa') else 1)
            cand = [v for v in variants if 8 * guess(v) < left]          # probe (3 calls) + 2 timed rounds must fit
            for v in set(variants) - set(cand): skipped.append(f'{fam} {str(dt)[6:]} N={N} {v} (predicted too slow for the budget)')
            pr = _probe(ctx, api, cand, N, kw)
            last.update({v: (N, r['s']) for v, r in pr.items() if math.isfinite(r['s'])})
            variants_n = cand
            vs = [v for v in cand if math.isfinite(pr[v]['s'])]
            for v in variants_n: probes.append(dict(group=fam, dtype=str(dt)[6:], N_asked=N, variant=v, probe_fwdbwd_ms=pr[v]['s'] * 1e3, peak_MB=pr[v]['peak_MB'], error=pr[v].get('error')))
            left = share_end - time.perf_counter()
            while vs and 3 * 1.5 * sum(pr[v]['s'] for v in vs) > left and len(vs) > 1:   # drop the slowest until 2 repeats fit
                slow = max(vs, key=lambda v: pr[v]['s']); vs.remove(slow); skipped.append(f'{fam} {str(dt)[6:]} N={N} {slow} (too slow for the budget)')
            round_s = 1.5 * sum(pr[v]['s'] for v in vs)
            later = [n for n in Ns if n >= N]
            mine = left * N / sum(later)                                 # this N's part of what is left, by cost (∝ N at least)
            reps = int(min(repeats, max(2, mine / max(round_s, 1e-9) - 2)))
            if not vs or (reps + 1) * round_s > max(left, 0) + round_s:
                skipped.append(f'{fam} {str(dt)[6:]} N={N} (no time)'); ctx.partial = True; continue
            df = api.run_benchmark(vs, [N], repeats=reps, warmup=1, backward=True, **kw)
            df['group'], df['dtype'], df['repeats'] = fam, str(dt)[6:], reps
            frames.append(df)
    if not frames: raise RuntimeError(f"no benchmark point fitted in the budget; skipped: {skipped}")
    df = pd.concat(frames, ignore_index=True)
    pk = pd.DataFrame(probes)
    df = df.merge(pk[['group', 'dtype', 'N_asked', 'variant', 'peak_MB', 'probe_fwdbwd_ms']], on=['group', 'dtype', 'N_asked', 'variant'], how='left')
    df.drop(columns=['rounds_ms']).to_csv(ctx.out/'bench.csv', index=False)
    pk.to_csv(ctx.out/'bench_probe.csv', index=False)
    res, cross = dict(harness=api.module, config=cfg, skipped=skipped, dtypes=[str(d)[6:] for d in dtypes]), {}
    sa_of = dict(mhea='sa', core='sa', map2d='sa2d')
    def sub(fam, dt): return df[(df.group == fam) & (df.dtype == dt)]   # group: 'sa' is in the core and mhea groups
    def at(r, n): return None if r is None or n not in r.index else round(float(r[n]), 4)
    def rat(d, a, b):
        return api.ratio(d, a, b) if {a, b} <= set(d.variant) and len(api.ratio(d, a, b).dropna()) else None
    for dt in res['dtypes']:
        for fam in ('mhea', 'core', 'map2d'):
            d = sub(fam, dt)
            if d.empty or sa_of[fam] not in set(d.variant): continue
            for v in sorted(set(d.variant) - {sa_of[fam]}):
                r = rat(d, v, sa_of[fam])
                if r is not None: cross[f'{dt}/{v}'] = api.crossover(d, v, sa_of[fam])
    res['crossover_N_vs_sdpa'] = cross
    res['sdpa_flash_bf16'] = _flash_usable(ctx, cfg['dim'] // cfg['heads'])
    mh = sub('mhea', 'bfloat16' if ctx.cuda else 'float32')
    big = [n for n in cfg['core_Ns'] if n >= (16384 if not ctx.quick else 0)]
    r_off = rat(mh, 'mhea4_official', 'mhea4_fast')
    res['targets'] = {   # reported, not asserted
        **{f'core_fast_over_mm_{dt}_N16k+ (target <= 1.2)': {str(n): at(rat(sub('core', dt), 'core_fast', 'core_mm'), n) for n in big} for dt in res['dtypes']},
        'mhea4_official_over_fast_bf16_N197 (target >= 1.3)': at(r_off, 197),
        'mhea4_official_over_fast_bf16_N1025 (target >= 1.3)': at(r_off, 1025),
    }
    res['peak_MB'] = {f"{r.dtype}/{r.variant}/N={r.N_asked}": r.peak_MB for r in pk.itertuples() if r.peak_MB is not None}
    ctx.check('bench rows are finite', bool((df.ms > 0).all() and df.ms.notna().all()))
    c = {k: v for k, v in cross.items() if k.endswith('mhea4_fast')}
    return res, (f"{len(df)} rows ({', '.join(res['dtypes'])}), harness {api.module}; crossover vs SDPA " +
                 ', '.join(f"{k} N≈{v:.0f}" if math.isfinite(v) else f'{k} never' for k, v in c.items()) +
                 f"; official/fast N197 {res['targets']['mhea4_official_over_fast_bf16_N197 (target >= 1.3)']}" +
                 (f"; skipped {len(skipped)}" if skipped else ''))

# ---------------------------------------------------------------------------------------------------- compile

@section('compile', 60, 30)
def compile_section(ctx):
    from ea_nb.attention import ExternalAttention, MultiHeadExternalAttention, SelfAttention, ExternalAttention2d
    api = bench_api()
    dt = torch.bfloat16 if ctx.cuda else torch.float32
    dim, heads, S, B = (32, 2, 8, 2) if ctx.quick else (384, 6, 64, 8)
    Ns = [64] if ctx.quick else [1025, 16385]
    builders = [('mhea4 (MultiHeadExternalAttention)', lambda: MultiHeadExternalAttention(dim, num_heads=heads, coef=4, S=S), 'tokens'),
                ('sa (SelfAttention, SDPA)', lambda: SelfAttention(dim, num_heads=heads), 'tokens'),
                ('core (ExternalAttention)', lambda: ExternalAttention(dim, S=S), 'tokens'),
                ('ea2d (ExternalAttention2d)', lambda: ExternalAttention2d(dim, S=S), 'map')]
    if ctx.quick: builders = builders[:2]
    rows = []
    backend = 'aot_eager' if ctx.quick else 'inductor'   # the quick CPU self-check traces (dynamo + AOT autograd) without code generation
    torch._dynamo.reset()
    for N in Ns:
        for name, build, kind in builders:
            if ctx.out_of_time(f'compile {name} N={N}', 10 if not ctx.quick else 1): break
            torch.manual_seed(0)
            m = build().to(ctx.device, dt).train()
            side = round(math.sqrt(N))
            x = (torch.randn(B, dim, side, side) if kind == 'map' else torch.randn(B, N, dim)).to(ctx.device, dt).requires_grad_()
            g = torch.randn_like(x)
            row = dict(model=name, N=N if kind == 'tokens' else side * side, dtype=str(dt)[6:], batch=B, backend=backend)
            try:
                mc = torch.compile(m, backend=backend, dynamic=False)
                t = time.perf_counter(); yc = mc(x); yc.backward(g); ctx.sync(); row['compile_s'] = time.perf_counter() - t
                ye = m(x)
                err = _rel(yc, ye); row['compiled_vs_eager_rel_err'] = err
                ctx.check(f'compiled == eager {name} N={N}', err <= 4 * TOL[dt], err=err)
                fns = {'eager': lambda: m(x).backward(g), 'compiled': lambda: mc(x).backward(g)}
                ts = api.time_interleaved(fns, repeats=3 if ctx.quick else 10, warmup=1, device=str(ctx.device))
                row.update(eager_ms=ts['eager'] * 1e3, compiled_ms=ts['compiled'] * 1e3, eager_over_compiled=ts['eager'] / ts['compiled'])
            except Exception as e:
                row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'
                ctx.check(f'torch.compile {name} N={N}', False, error=row['error'])
            rows.append(row)
            del m, x
    write_csv(ctx.out/'compile.csv', rows)
    ok = [r for r in rows if 'eager_over_compiled' in r]
    return dict(rows=rows, backend=backend), (f"{len(ok)}/{len(rows)} compiled ({backend}); eager/compiled " + ', '.join(f"{r['model'].split()[0]}@{r['N']} {r['eager_over_compiled']:.2f}×" for r in ok)
                             + (f"; {len(rows) - len(ok)} failed to compile" if len(ok) < len(rows) else ''))

# ---------------------------------------------------------------------------------------------------- train

def _steps(ctx, model, opt, make_batch, loss_fn, steps:int, warmup:int, autocast_dtype):
    "Timed training steps: seconds per step (CUDA-synchronised), peak memory, the losses"
    model.train()
    losses, ts = [], []
    ctx.reset_peak()
    for i in range(warmup + steps):
        x, y = make_batch()
        ctx.sync(); t = time.perf_counter()
        with torch.autocast(ctx.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(model(x), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        ctx.sync()
        if i >= warmup: ts.append(time.perf_counter() - t)
        losses.append(loss.detach().item())
    return dict(step_ms=1e3 * sorted(ts)[len(ts) // 2], peak_MB=ctx.peak_mb(), losses=losses)

def _train_one(ctx, name, build, make_batch, loss_fn, opt_fn, bs, steps, warmup, adt):
    "Train `steps` steps at batch `bs`, halving the batch on CUDA out-of-memory"
    from ea_nb.core import count_params
    while True:
        model = opt = None
        try:
            torch.manual_seed(0)
            model = build().to(ctx.device)
            opt = opt_fn(model)
            r = _steps(ctx, model, opt, lambda: make_batch(bs), loss_fn, steps, warmup, adt)
            r.update(model=name, batch=bs, params_M=count_params(model) / 1e6, images_per_s=bs / (r['step_ms'] / 1e3),
                     autocast=str(adt)[6:] if adt else 'off', steps=steps)
            ctx.check(f'{name}: finite losses', all(math.isfinite(l) for l in r['losses']), losses=r['losses'])
            return r
        except torch.cuda.OutOfMemoryError:
            if bs == 1: raise
        model = opt = None; gc.collect(); ctx.reset_peak()      # after the except block, whose traceback held the activations
        ctx.note(f'{name}: out of memory at batch {bs}; retrying at {bs // 2}')
        bs //= 2

@section('train', 70, 40)
def train_section(ctx):
    import timm
    import ea_nb.eamlp  # noqa: F401  (registers eamlp_7/14/19/tiny with timm)
    from ea_nb.eanet import EANet, seg_loss
    from ea_nb.train import build_adamw, build_sgd
    q, dev = ctx.quick, ctx.device
    adt = torch.bfloat16 if ctx.cuda else None      # CPU self-check: fp32 (bf16 matmuls are emulated on most CPUs; parity covers CPU autocast)
    if not ctx.cuda: ctx.note('CPU: autocast off in the training steps (bf16 matmuls are slow on this CPU); the GPU run uses bf16 autocast')
    m_cfg, e_cfg = _load_yaml(ROOT/'experiments'/'eamlp14_imagenet.yaml'), _load_yaml(ROOT/'experiments'/'eanet_voc.yaml')
    img, ncls, bs = (32, 10, 4) if q else (m_cfg['img_size'], m_cfg['num_classes'], m_cfg['bs'])
    steps, warmup = (1, 1) if q else (5, 2)
    cls_batch = lambda b: (torch.randn(b, 3, img, img, device=dev), torch.randint(0, ncls, (b,), device=dev))
    ce = lambda out, y: F.cross_entropy(out.float(), y)
    adamw = lambda m: build_adamw(m, lr=m_cfg['lr'], weight_decay=m_cfg['weight_decay'])
    jobs = [('EAMLP-14 (eamlp_14)' if not q else 'eamlp_tiny',
             lambda: timm.create_model('eamlp_tiny' if q else 'eamlp_14', num_classes=ncls, drop_path_rate=m_cfg['drop_path']), cls_batch, ce, adamw, bs),
            ('DeiT-S (deit_small_patch16_224)',
             lambda: timm.create_model('deit_small_patch16_224', pretrained=False, num_classes=ncls, drop_path_rate=m_cfg['drop_path'], **(dict(img_size=img, depth=2) if q else {})),
             cls_batch, ce, adamw, bs)]
    crop, ecls, ebs = (32, 21, 2) if q else (e_cfg['crop_size'], e_cfg['num_classes'], e_cfg['bs'])
    ekw = (dict(backbone='narrow', channels=16, mid_channels=16, S=8, widths=(8, 8, 16, 16)) if q else
           dict(backbone='resnet101', channels=e_cfg['channels'], mid_channels=e_cfg['mid_channels'], S=e_cfg['S'], multi_grid=tuple(e_cfg['multi_grid'])))
    seg_batch = lambda b: (torch.randn(b, 3, crop, crop, device=dev), torch.randint(0, ecls, (b, crop, crop), device=dev))
    for context in ('ea', 'sa', 'none') if not q else ('ea',):
        jobs.append((f'EANet {ekw["backbone"]} OS8 context={context} crop {crop}',
                     lambda context=context: EANet(num_classes=ecls, context=context, output_stride=8, **ekw), seg_batch,
                     lambda out, y: seg_loss(out.float(), y), lambda m: build_sgd(m, lr=e_cfg['lr'], weight_decay=e_cfg['weight_decay']), ebs))
    rows = []
    for name, build, mk, loss_fn, opt_fn, b in jobs:
        if ctx.out_of_time(f'training steps of {name}', 3 if q else 15): break
        try: rows.append(_train_one(ctx, name, build, mk, loss_fn, opt_fn, b, steps, warmup, adt))
        except Exception as e:
            rows.append(dict(model=name, error=f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'))
            ctx.check(f'{name}: trains', False, error=rows[-1]['error'])
        if ctx.cuda: torch.cuda.empty_cache()
    write_csv(ctx.out/'train.csv', [{k: v for k, v in r.items() if k != 'losses'} for r in rows])
    return dict(rows=rows, precision='bf16 autocast' if adt else 'fp32 (CPU)', note='random images and labels; timm deit_small_patch16_224 pretrained=False; optimisers: ea_nb.train.build_adamw / build_sgd with the yaml lr'), \
        '; '.join(f"{r['model']}: {r['images_per_s']:.0f} img/s bs {r['batch']}" + (f", peak {r['peak_MB'] / 1024:.1f} GiB" if r.get('peak_MB') else '')
                  if 'images_per_s' in r else f"{r['model']}: {r.get('error')}" for r in rows)

# ---------------------------------------------------------------------------------------------------- dry runs

DRY_DID = ("built the model that each full-scale yaml of experiments/ configures, at its configured size, and ran one "
           "forward + backward step (fp32, train mode) on random input of the configured shape and batch")
DRY_DID_NOT = ("no data set was read (random tensors stand in), no pretrained or ImageNet weights were loaded (weights=None), "
               "no optimiser schedule, evaluation, checkpointing or multi-GPU launch; the experiment notebooks themselves did not run "
               "(papermill full-scale dry runs are another issue's work); bench.yaml runs in the bench section; manifest.yaml and "
               "paper.yaml are not run configurations")

def _dry_eamlp(cfg, q):
    import timm, ea_nb.eamlp  # noqa: F401
    img, bs, name = (32, 2, cfg['model']) if q else (cfg['img_size'], cfg['bs'], cfg['model'])
    kw = dict(num_classes=cfg['num_classes'], mixer=cfg['mixer'], coef=cfg['coef'], drop_path_rate=cfg['drop_path'], img_size=img, **(dict(depth=2) if q else {}))
    yield name, lambda: timm.create_model(name, **kw), lambda d: (torch.randn(bs, 3, img, img, device=d),), \
        lambda out: F.cross_entropy(out, torch.zeros(len(out), dtype=torch.long, device=out.device)), dict(bs=bs, img_size=img)

def _dry_eanet(cfg, q):
    from ea_nb.eanet import EANet
    crop, bs = (32, 2) if q else (cfg['crop_size'], cfg['bs'])
    base = dict(num_classes=cfg['num_classes'], output_stride=8, multi_grid=tuple(cfg['multi_grid']), channels=cfg['channels'],
                mid_channels=cfg['mid_channels'], backbone=cfg['backbone'])
    if q: base.update(backbone='narrow', channels=16, mid_channels=16, widths=(8, 8, 16, 16))
    if 'mixers' in cfg: variants = [dict(context=c, S=cfg['S'], norm=cfg.get('norm', 'double') if c == 'ea' else 'double') for c in cfg['mixers']]
    else: variants = [dict(context='ea', S=max(cfg['S_values']), norm='double')] + [dict(context='ea', S=cfg['S_norm'], norm=n) for n in cfg['norms'] if n != 'double']
    if q: variants = variants[-1:]
    for v in variants:
        yield (f"EANet {base['backbone']} {' '.join(f'{k}={x}' for k, x in v.items())}", lambda v=v: EANet(**base, **v),
               lambda d: (torch.randn(bs, 3, crop, crop, device=d),), lambda out: out.float().square().mean(), dict(bs=bs, crop_size=crop))

def _dry_gan(cfg, q):
    from ea_nb.gan import Generator, Discriminator, d_hinge_loss, g_hinge_loss
    ch, bs = (4, 2) if q else (cfg['ch'], cfg['bs'])
    for attn in cfg['mixers'][-1:] if q else cfg['mixers']:
        kw = dict(ch=ch, img_size=cfg['img_size'], attn=attn, attn_res=cfg['attn_res'], S=cfg['S'], ea_style=cfg['ea_style'])
        class GD(nn.Module):
            def __init__(self): super().__init__(); self.G, self.D = Generator(z_dim=cfg['z_dim'], **kw), Discriminator(**kw)
            def forward(self, z, x): return self.D(self.G(z)), self.D(x)
        yield (f'GAN attn={attn} ch={ch}', GD, lambda d: (torch.randn(bs, cfg['z_dim'], device=d), torch.randn(bs, 3, cfg['img_size'], cfg['img_size'], device=d)),
               lambda out: d_hinge_loss(out[1], out[0]) + g_hinge_loss(out[0]), dict(bs=bs, img_size=cfg['img_size']))

def _dry_pct(cfg, q):
    from ea_nb.pointcloud import PCT, PCTSeg
    npts, bs = (128, 2) if q else (cfg['num_points'], cfg['bs'])
    seg = cfg['dataset'].startswith('shapenet')
    for attn in cfg['mixers'][-1:] if q else cfg['mixers']:
        if seg: build = lambda attn=attn: PCTSeg(num_parts=50, num_categories=16, attn=attn, S=cfg['S'], embed_dim=cfg['embed_dim'], fuse_dim=cfg['fuse_dim'], head_dims=tuple(cfg['head_dims']), drop=cfg['drop'])
        else: build = lambda attn=attn: PCT(num_classes=40, attn=attn, S=cfg['S'], embed_dim=cfg['embed_dim'], dims=tuple(cfg['dims']),
                                            n_samples=(32, 16) if q else tuple(cfg['n_samples']), k=8 if q else cfg['k'], fuse_dim=cfg['fuse_dim'],
                                            head_dims=tuple(cfg['head_dims']), drop=cfg['drop'])
        yield (f"{'PCTSeg' if seg else 'PCT'} attn={attn}", build, lambda d: (torch.rand(bs, npts, 3, device=d) * 2 - 1,),
               lambda out: out.float().square().mean(), dict(bs=bs, num_points=npts))

def _dry_detection(cfg, q):
    from ea_nb.detection import detector, small_detector_kwargs
    bs = 2 if q else cfg['bs']
    h, w = (64, 80) if q else (480, 640)                           # a typical COCO image, resized by the model to 800 short side
    kw = small_detector_kwargs(64) if q else {}
    mask = cfg['arch'] == 'mask_rcnn'
    def inputs(d):
        ims = [torch.rand(3, h, w, device=d) for _ in range(bs)]
        tg = []
        for _ in range(bs):
            t = dict(boxes=torch.tensor([[4., 6., w / 2, h / 2], [w / 3, h / 4, w - 5., h - 3.]], device=d), labels=torch.tensor([1, 18], device=d))
            if mask:
                mk = torch.zeros(2, h, w, dtype=torch.uint8, device=d)
                mk[0, 6:h // 2, 4:w // 2] = 1; mk[1, h // 4:h - 3, w // 3:w - 5] = 1
                t['masks'] = mk
            tg.append(t)
        return ims, tg
    for c in cfg['mixers'][-1:] if q else cfg['mixers']:
        yield (f"{cfg['arch']} {kw.get('backbone', cfg['backbone'])} context={c}",
               lambda c=c: detector(cfg['arch'], **{'backbone': cfg['backbone'], **kw}, context=c, num_classes=91, S=cfg['S']),
               inputs, lambda out: sum(out.values()), dict(bs=bs, image=f'{h}x{w}'))

def _dry_complexity(cfg, q):
    from ea_nb.attention import ExternalAttention2d, SelfAttention2d
    C = 16 if q else cfg['channels']
    ea_side, sa_side = (8, 8) if q else (max(cfg['ea_sizes']), max(cfg['sizes']))   # each module's largest map
    for name, build, side in (('EA block (ExternalAttention2d)', lambda: ExternalAttention2d(C, S=cfg['S']), ea_side),
                              ('SA block (SelfAttention2d)', lambda: SelfAttention2d(C), sa_side)):
        yield (f'complexity {name} {C}×{side}²', build, lambda d, side=side: (torch.randn(cfg['batch'], C, side, side, device=d),),
               lambda out: out.float().square().mean(), dict(bs=cfg['batch'], side=side))

def _dry_listops(cfg, q):
    from ea_nb.listops import ListOpsEncoder, VOCAB
    L, bs = (64, 2) if q else (cfg['max_len'], cfg['bs'])
    kw = dict(embed_dim=16, depth=1, num_heads=2, S=8) if q else dict(embed_dim=cfg['embed_dim'], depth=cfg['depth'], num_heads=cfg['num_heads'], S=cfg['S'])
    for m in cfg['mixers'][-1:] if q else cfg['mixers']:
        yield (f'ListOps encoder mixer={m}', lambda m=m: ListOpsEncoder(m, mlp_ratio=cfg['mlp_ratio'], coef=cfg['coef'], max_len=L, **kw),
               lambda d: (torch.randint(1, len(VOCAB), (bs, L), device=d),), lambda out: out.float().square().mean(), dict(bs=bs, length=L))

def dry_builder(cfg:dict):
    "The dry-run recipe for one experiments/*.yaml, from the keys it holds (None: not a run configuration)"
    if not isinstance(cfg, dict): return None
    if str(cfg.get('model', '')).startswith('eamlp'): return _dry_eamlp
    if 'crop_size' in cfg: return _dry_eanet
    if 'lr_g' in cfg: return _dry_gan
    if 'num_points' in cfg: return _dry_pct
    if 'arch' in cfg: return _dry_detection
    if 'sizes' in cfg and 'channels' in cfg: return _dry_complexity
    if 'cost_lengths' in cfg: return _dry_listops
    return None

@section('dryrun', 70, 50)
def dryrun_section(ctx):
    from ea_nb.core import count_params
    rows, not_run, jobs, seen = [], {}, [], {}
    for f in sorted((ROOT/'experiments').glob('*.yaml')):
        cfg = _load_yaml(f)
        recipe = dry_builder(cfg) if f.name != 'bench.yaml' else None
        if recipe is None: not_run[f.name] = 'benchmark config: see the bench section' if f.name == 'bench.yaml' else 'not a run configuration'
        elif ctx.quick and recipe in seen: not_run[f.name] = f'--quick runs one yaml per recipe ({seen[recipe]} ran {recipe.__name__})'
        else: jobs.append([(f, *j) for j in recipe(cfg, ctx.quick)]); seen.setdefault(recipe, f.name)
    for f, name, build, inputs, loss_fn, shape in (j for js in itertools.zip_longest(*jobs) for j in js if j):   # every yaml's first model first
        if ctx.out_of_time(f'{f.name}: {name}', 2 if ctx.quick else 8):
            not_run[f'{f.name}: {name}'] = 'section budget spent'; continue
        row = dict(yaml=f.name, model=name, **shape)
        model = None
        try:
            torch.manual_seed(0)
            model = build().to(ctx.device).train()
            row['params_M'] = count_params(model) / 1e6
            ctx.reset_peak()
            ins = inputs(ctx.device)
            ctx.sync(); t = time.perf_counter()
            loss = loss_fn(model(*ins)); loss.backward(); ctx.sync()
            row.update(step_s=time.perf_counter() - t, peak_MB=ctx.peak_mb(), loss=loss.detach().item())
            grads = [p.grad for p in model.parameters() if p.requires_grad]
            ok = math.isfinite(row['loss']) and all(g is None or torch.isfinite(g).all() for g in grads) and any(g is not None for g in grads)
            ctx.check(f'{f.name} {name}: finite loss and gradients', ok)
        except torch.cuda.OutOfMemoryError as e:
            row['error'] = f'OOM: {str(e).splitlines()[0][:200]}'; ctx.check(f'{f.name} {name}: fits', False, error=row['error'])
        except Exception as e:
            row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'
            ctx.check(f'{f.name} {name}: runs', False, error=row['error'])
        rows.append(row)
        del model
        if ctx.cuda: torch.cuda.empty_cache()
    write_csv(ctx.out/'dryrun.csv', rows)
    done = sorted({r['yaml'] for r in rows if 'error' not in r})
    return (dict(did=DRY_DID + (' (QUICK: shrunk sizes and narrow backbones, one variant per yaml)' if ctx.quick else ''),
                 did_not=DRY_DID_NOT, rows=rows, not_run=not_run),
            f"{sum('error' not in r for r in rows)}/{len(rows)} model steps ran ({len(done)} yamls); not run: {', '.join(not_run) or 'none'}")

# ---------------------------------------------------------------------------------------------------- main

def write_summary(out:Path, results:list, args, t0:float):
    lines = [f"# ea_nb GPU check ({'QUICK CPU self-check' if args.quick else 'full'}, device {args.device})", '',
             f"Written by `tools/gpu_check.py` ({' '.join(sys.argv[1:])}); total {time.perf_counter() - t0:.0f} s of a {args.budget:.0f} s budget.", '',
             '| section | status | s | checks | summary |', '|---|---|---|---|---|']
    for r in results:
        lines.append(f"| {r['section']} | {r['status']} | {r['seconds']:.0f} | {r['checks_passed']}/{r['checks_total']} | {r['summary'].replace('|', chr(92) + '|')} |")
    for r in results:
        if r.get('notes') or r['section'] == 'dryrun':
            lines += ['', f"## {r['section']}"]
            if r['section'] == 'dryrun': lines += [f"- did: {r.get('did', '')}", f"- did not: {r.get('did_not', '')}"]
            lines += [f'- {n}' for n in r.get('notes', [])]
    (out/'summary.md').write_text('\n'.join(lines) + '\n')
    write_json(out/'summary.json', dict(device=args.device, quick=args.quick, budget_s=args.budget, total_s=round(time.perf_counter() - t0, 1),
                                        sections={r['section']: {k: r[k] for k in ('status', 'seconds', 'summary', 'checks_passed', 'checks_total')} for r in results}))

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog='sections, in this order: ' + ', '.join(ORDER))
    p.add_argument('--out', default=str(ROOT/'runs'/'gpu'), help='folder for every file this check writes (default runs/gpu)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help="'cuda' (default where present) or 'cpu'")
    p.add_argument('--quick', action='store_true', help='tiny sizes and budgets: the CPU self-check (tests/test_gpu_check.py)')
    p.add_argument('--budget', type=float, default=None, help='total seconds for all sections (default 540 on the GPU; 300 with --quick, a ceiling: about 40 s on an idle 2-core CPU)')
    p.add_argument('--only', nargs='+', choices=list(SECTIONS), help='run only these sections')
    p.add_argument('--skip', nargs='+', default=[], choices=list(SECTIONS), help='skip these sections')
    p.add_argument('--commit', help='the ea_nb git commit to record where the tree has no .git (default: git rev-parse HEAD)')
    args = p.parse_args(argv)
    head = _git('rev-parse', 'HEAD')
    COMMIT.update(commit=args.commit or (head if re.fullmatch(r'[0-9a-f]{40}', head or '') else 'unknown (no git here: pass --commit)'),
                  dirty=None if args.commit else bool(_git('status', '--porcelain', '--untracked-files=no')))
    if torch.device(args.device).type == 'cuda' and not torch.cuda.is_available():
        p.error(f"--device {args.device} but CUDA is not available here (torch {torch.__version__}, built for CUDA {torch.version.cuda}); pass --device cpu")
    args.budget = args.budget or (300. if args.quick else 540.)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    names = [n for n in (args.only or ORDER) if n not in args.skip]
    for n in names: (out/f'{n}.traceback.txt').unlink(missing_ok=True)
    kept = {} if not args.only else {n: json.loads((out/('env.json' if n == 'env' else f'{n}.json')).read_text())   # --only: the others stay
                                     for n in ORDER if n not in names and (out/('env.json' if n == 'env' else f'{n}.json')).exists()}
    full = sum(SECTIONS[n][2 if args.quick else 1] for n in names)
    scale = min(1., args.budget / full)                        # budgets shrink to fit the total
    t0, results = time.perf_counter(), []
    for n in names:
        fn, b, qb = SECTIONS[n]
        left = args.budget - (time.perf_counter() - t0)
        budget = max(0., min((qb if args.quick else b) * scale, left))
        if budget > 1: results.append(run_section(n, fn, Ctx(out, args.device, args.quick, budget)))
        else:
            results.append(dict(section=n, status='skipped', seconds=0., summary='no time left in the total budget', checks_passed=0, checks_total=0, notes=[]))
            write_json(out/('env.json' if n == 'env' else f'{n}.json'), results[-1])
        done = {r['section']: r for r in results}
        write_summary(out, [done.get(m) or kept[m] for m in dict.fromkeys([*ORDER, *names]) if m in done or m in kept], args, t0)
    bad = [r['section'] for r in results if r['status'] in ('fail', 'error')]
    print(f"gpu_check: {len(results) - len(bad)}/{len(results)} sections without failures in {time.perf_counter() - t0:.0f}s; results in {out}", flush=True)
    return 1 if bad else 0

if __name__ == '__main__': sys.exit(main())
