r"""Where lightly's SimCLR step spends its time, by op kind; prints JSON.

Run by lightly's interpreter (PyTorch; `bash ../shared/peers/setup_lightly.sh`
builds it), usually through `python bench/cpu_speed.py --profile=lightly`:

    /tmp/peers/torchvenv/bin/python bench/peer_profile.py \
        --peer_bench=../shared/peers/lightly_bench.py --batch=128

The step is lightly_bench.py's `train` step (CIFAR ResNet-18 of torchvision,
lightly's 512-2048-128 projection head, NTXentLoss, LARS, two forward passes
on random 32x32 views), traced by torch.profiler for `--steps` steps after
`--warmup`. Each ATen op's self time is put into one kind (convolution,
BatchNorm, elementwise, copy, matmul, optimizer, other) and divided by the
number of traced steps: the counterpart of `cpu_speed.py --profile=dev1`
for our step, to see which work costs the peer less.
"""

import argparse
import collections
import json
import os
import sys
import time

KINDS = (('convolution', ('convolution',)),
         ('batch_norm', ('batch_norm',)),
         ('copy/transpose', ('copy_', 'contiguous', 'clone', 'cat')),
         ('matmul', ('mm', 'addmm', 'matmul', 'linear')),
         ('elementwise (ReLU, add, ...)', ('relu', 'threshold', 'add', 'mul',
                                           'clamp', 'div', 'sub')),
         ('optimizer', ('optimizer', 'lars', 'norm')))


def op_kind(name: str) -> str:
  low = name.lower()
  for kind, keys in KINDS:
    if any(k in low for k in keys):
      return kind
  return 'other'


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--peer_bench', required=True,
                 help="path of ../shared/peers/lightly_bench.py")
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--steps', type=int, default=2)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--quick', action='store_true',
                 help='smoke run: batch 16, one traced step')
  args = p.parse_args()
  if args.quick:
    args.batch, args.steps, args.warmup = 16, 1, 1
  if args.batch < 1 or args.steps < 1 or args.warmup < 0:
    p.error('--batch and --steps must be positive, --warmup >= 0')
  sys.path.insert(0, os.path.dirname(os.path.abspath(args.peer_bench)))
  import torch  # pylint: disable=g-import-not-at-top,import-error
  import lightly_bench  # pylint: disable=g-import-not-at-top,import-error
  lightly_bench.ensure_torchvision_importable()
  from lightly.loss import NTXentLoss  # pylint: disable=g-import-not-at-top,import-error
  from lightly.utils.lars import LARS  # pylint: disable=g-import-not-at-top,import-error
  from torch import profiler  # pylint: disable=g-import-not-at-top,import-error

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  model, _ = lightly_bench.build_model([512, 2048, 128])
  model.train()
  criterion = NTXentLoss(temperature=0.5)
  opt = LARS(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
  x0 = torch.rand(args.batch, 3, 32, 32)
  x1 = torch.rand(args.batch, 3, 32, 32)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = criterion(model(x0), model(x1))
    loss.backward()
    opt.step()
    return loss.item()

  for _ in range(args.warmup):
    step()
  t0 = time.perf_counter()
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(args.steps):
      step()
  wall_ms = 1e3 * (time.perf_counter() - t0) / args.steps
  by_kind = collections.defaultdict(float)
  top = {}
  for ev in prof.key_averages():
    if not ev.key.startswith('aten::'):
      continue  # Autograd wrappers: their self time is bookkeeping.
    ms = ev.self_cpu_time_total / 1e3 / args.steps
    by_kind[op_kind(ev.key)] += ms
    top[ev.key] = round(ms, 1)
  total = sum(by_kind.values())
  print(json.dumps({
      'peer': 'lightly', 'torch': torch.__version__, 'batch': args.batch,
      'steps_traced': args.steps, 'traced_step_wall_ms': round(wall_ms, 1),
      'op_ms_per_step_by_kind': {k: round(v, 1) for k, v in
                                 sorted(by_kind.items(), key=lambda kv: -kv[1])},
      'op_share_by_kind': {k: round(v / total, 3) for k, v in
                           sorted(by_kind.items(), key=lambda kv: -kv[1])},
      'top_ops_ms_per_step': dict(sorted(top.items(),
                                         key=lambda kv: -kv[1])[:15]),
  }, indent=1))


if __name__ == '__main__':
  main()
