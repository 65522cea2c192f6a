"""Many processes: `torchrun --nproc_per_node 2 -m ea_nb.cli train digits` on the CPU (gloo DDP) against one process.

Both runs see the same global batch (2 x 16 = 1 x 32) in the same order (Accelerate's seedable sampler gives rank r
the r-th half of each global batch) and average the same gradients; they differ only in BatchNorm, whose batch
statistics are per process (SyncBatchNorm needs a GPU) and in the order of float reductions. So the metrics agree
within a tolerance, not to the bit: measured on 2 cores, 4 epochs, seeds 0-2, |accuracy difference| <= 0.003 and
valid loss within 9 % (nbs/reproducing.md). The checkpoint the two processes wrote then resumes in one process.
"""
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch
from conftest import test_threads

ROOT = Path(__file__).resolve().parents[1]
RUN = dict(epochs=4, width=16, progress=False)
ACC_TOL, LOSS_RTOL = 0.05, 0.5      # ~15x and ~6x the largest differences measured


def ea_nb_train(out, procs, bs, **kw):
    "Train digits with `procs` processes (torchrun, gloo) of batch `bs` each; its metrics"
    args = ['-m', 'ea_nb.cli', 'train', 'digits', '--set', *(f'{k}={json.dumps(v)}' for k, v in {**RUN, 'bs': bs, 'out_dir': str(out), **kw}.items())]
    cmd = [sys.executable, *args] if procs == 1 else [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(procs),
                                                     '--master_port', str(29500 + os.getpid() % 1000), *args]
    env = {**os.environ, 'OMP_NUM_THREADS': str(test_threads()), 'CUDA_VISIBLE_DEVICES': ''}   # the test's thread count
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out/'metrics.json').read_text())


@pytest.mark.xdist_group('ddp')
def test_two_processes_match_one(tmp_path):
    one = ea_nb_train(tmp_path/'one', 1, 32)
    two = ea_nb_train(tmp_path/'two', 2, 16)
    assert (one['num_processes'], two['num_processes']) == (1, 2)
    assert abs(one['acc'] - two['acc']) <= ACC_TOL, (one['acc'], two['acc'])
    assert abs(one['valid_loss'] - two['valid_loss']) <= LOSS_RTOL * one['valid_loss'], (one['valid_loss'], two['valid_loss'])
    ck = torch.load(tmp_path/'two'/'ckpt'/'last.pt', map_location='cpu', weights_only=True)
    assert ck['epoch'] == RUN['epochs']
    more = ea_nb_train(tmp_path/'two', 1, 32, epochs=RUN['epochs'] + 1, resume=True, extend_schedule=True)   # one process goes on
    ck2 = torch.load(tmp_path/'two'/'ckpt'/'last.pt', map_location='cpu', weights_only=True)
    assert (ck2['epoch'], more['num_processes'], len(ck2['history'])) == (RUN['epochs'] + 1, 1, RUN['epochs'] + 1)
