#!/usr/bin/env python3
"""Wheels of what the GPU machine lacks, for python 3.12 on manylinux x86_64, downloaded here and unpacked into a folder
that travels with the run (issue 21).

The GPU machine has torch 2.11, torchvision, timm, torch-geometric, torchmetrics, accelerate, pandas, seaborn, pytest,
... but no registry and none of: nbdev, fastcore, execnb, papermill, fvcore, torch-fidelity, pycocotools (and the few
packages those need that it may lack). This downloads them with `pip download --no-deps`, at the versions installed in
the environment that runs this script (the ones the tests here pass with), then unpacks every wheel into one folder:

    make gpu-wheels                      # = python tools/gpu_wheels.py --dest .whl/gpu --unpack .whl/site

On the GPU machine (the device tool: carry [".whl/gpu"], about 7 MiB) unpack them there and put the folder on the path
(no install, no pip needed; the compiled wheels are cp312 manylinux):

    python3 tools/gpu_wheels.py --offline --unpack .whl/site
    PYTHONPATH=$PWD:$PWD/.whl/site python3 tools/gpu_check.py --out "$OUT/gpu"

or, where pip is there, install the same wheels into it: `python3 -m pip install --no-deps --no-index --target .whl/site .whl/gpu/*.whl`.
.whl/ is git-ignored: the wheels are never committed.
"""
import argparse, importlib.metadata as md, shutil, subprocess, sys, zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what the GPU machine lacks: the packages ea_nb and its tools import there, and what `nbdev-test` and papermill need to
# import and run a notebook (IPython's own small dependencies included: the machine may not have IPython; not jedi, 33 MB
# unpacked, which IPython only uses for tab completion and imports only if present)
WHEELS = [
    'fastcore', 'nbdev', 'execnb', 'astunparse', 'six', 'ipython', 'ipython-pygments-lexers', 'traitlets', 'matplotlib-inline',
    'pygments', 'stack-data', 'executing', 'asttokens', 'pure-eval', 'decorator', 'pexpect', 'ptyprocess',
    'prompt-toolkit', 'wcwidth',
    'papermill', 'nbclient', 'nbformat', 'jupyter-client', 'jupyter-core', 'fastjsonschema', 'jsonschema',
    'jsonschema-specifications', 'referencing', 'rpds-py', 'attrs', 'click', 'entrypoints', 'tenacity', 'platformdirs',
    'pyzmq', 'tornado',
    'fvcore', 'iopath', 'yacs', 'tabulate', 'termcolor', 'portalocker',
    'torch-fidelity', 'pycocotools',
]
TARGET = ['--python-version', '3.12', '--implementation', 'cp', '--abi', 'cp312', '--platform', 'manylinux2014_x86_64',
          '--platform', 'manylinux_2_17_x86_64', '--platform', 'manylinux_2_28_x86_64', '--only-binary=:all:']

def pinned(names):
    "name==version for the installed ones (the versions tested here), the bare name otherwise"
    out = []
    for n in names:
        try: out.append(f'{n}=={md.version(n)}')
        except md.PackageNotFoundError: out.append(n)
    return out

def _key(n:str) -> str: return n.lower().replace('-', '_').replace('.', '_')

def _pip(*args) -> bool:
    return subprocess.run([sys.executable, '-m', 'pip', *args], capture_output=True, text=True).returncode == 0

def download(dest:Path, names=WHEELS) -> list:
    "`pip download --no-deps` of every wheel for the target; a package PyPI has only as an sdist (fvcore, iopath) is built here into a wheel, which must be pure Python"
    dest.mkdir(parents=True, exist_ok=True)
    todo = pinned(names)
    print(f'pip download --no-deps {" ".join(TARGET)} --dest {dest} {" ".join(todo)}', flush=True)
    if not _pip('download', '--no-deps', '--quiet', '--dest', str(dest), *TARGET, *todo):    # one call; else one by one
        for n in todo:
            if _pip('download', '--no-deps', '--quiet', '--dest', str(dest), *TARGET, n): continue
            print(f'  {n}: no wheel on PyPI, building one here (pip wheel --no-deps)', flush=True)
            if not _pip('wheel', '--no-deps', '--quiet', '--wheel-dir', str(dest), n): raise SystemExit(f"{n}: neither a wheel nor a buildable sdist on PyPI")
    return present(dest, names)

def present(dest:Path, names=WHEELS) -> list:
    "The wheel of each of `names` in `dest`, or a clear error naming the missing ones"
    have = {_key(w.name.split('-')[0]): w for w in dest.glob('*.whl')}
    built = [w.name for w in have.values() if not w.name.endswith(('-none-any.whl', 'manylinux2014_x86_64.whl', 'x86_64.whl'))]
    if built: raise SystemExit(f"wheels for another platform than python 3.12 manylinux x86_64: {built}")
    missing = [n for n in names if _key(n) not in have]
    if missing: raise SystemExit(f"no wheel arrived for {missing} in {dest}: check the names and that PyPI answers")
    return [have[_key(n)] for n in names]

def unpack(wheels:list, site:Path):
    "Unzip each wheel into `site` (what pip --target does, minus scripts); `.data/purelib|platlib` go to the top"
    site.mkdir(parents=True, exist_ok=True)
    for w in wheels:
        with zipfile.ZipFile(w) as z: z.extractall(site)
    for d in site.glob('*.data'):
        for sub in ('purelib', 'platlib'):
            for f in (d/sub).glob('*') if (d/sub).exists() else []: shutil.copytree(f, site/f.name, dirs_exist_ok=True) if f.is_dir() else shutil.copy2(f, site/f.name)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dest', default=str(ROOT/'.whl'/'gpu'), help='folder for the .whl files')
    p.add_argument('--unpack', default=None, help='also unzip every wheel into this folder (put it on PYTHONPATH)')
    p.add_argument('--offline', action='store_true', help='download nothing: use the wheels already in --dest (on the GPU machine)')
    a = p.parse_args(argv)
    wheels = present(Path(a.dest)) if a.offline else download(Path(a.dest))
    if a.unpack: unpack(wheels, Path(a.unpack))
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels: print(f'{w.stat().st_size / 2**10:8.0f} KiB  {w.name}')
    print(f'{len(wheels)} wheels, {total / 2**20:.1f} MiB in {a.dest}' + (f'; unpacked into {a.unpack}' if a.unpack else ''))

if __name__ == '__main__': main()
