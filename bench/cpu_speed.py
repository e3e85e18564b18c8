r"""Which XLA CPU settings make the real SimCLR train step fastest; prints JSON.

    python bench/cpu_speed.py                       # every variant, 2 rounds
    python bench/cpu_speed.py --variants=dev1,dev1_no_strided_forms,lightly --batch=128 --rounds=3
    python bench/cpu_speed.py --list                # names and what they set
    python bench/cpu_speed.py --profile=dev1        # where the time goes
    python bench/cpu_speed.py --profile=lightly     # ... in the peer's step

`dev1` is the default set-up of `train_and_evaluate` on CPU (train.cpu_devices
= 1, XLA's own convolutions, the conv gradients of models/conv.py:
train.cpu_materialize_conv_inputs); `dev1_no_strided_forms` the one before it
(XLA's own gradients for strided convs); `dev2_no_materialize` the one before
that (2 devices, plain lax convolutions); `dev8_ynnpack` the one before that
(8 devices, jaxlib 0.10's YNNPACK convolutions). `dev1` runs, as main.py does, with glibc's huge-page malloc
(simclr_jax/hostmem.py); `dev1_small_pages` without it. bench/step_ab.py compares
two conv-gradient settings step by step in one process, which is steadier.

The variant `lightly` is the peer: lightly 1.6's SimCLR step on PyTorch's
CPU build (ResNet-18, CIFAR stem, 512-2048-128 head, LARS; random views, no
augmentation), timed by ../shared/peers/lightly_bench.py in the environment
that ../shared/peers/setup_lightly.sh builds; it runs in the same rounds as
ours, so `ratio_to_baseline` compares the two on the same load. `lightly` runs
with glibc's default malloc, as PyTorch users run it; `lightly_huge_pages`
with the same huge-page tunable our step gets, to show what it does for
PyTorch. The JSON names the CPU model (`cpu_model`).

--profile=VARIANT runs that variant once with a jax.profiler trace of two
steps (train_bench --profile_dir) and sums the trace's XLA op events by
kind (convolution, fusion, collective, ...): the op time of all devices,
which may exceed the wall time since devices run at once on several cores.
XLA's convolutions run on its Eigen threads, outside the trace's op events:
the step time less the summed op time is about their share. --profile=lightly
sums the peer's step by op kind instead (bench/peer_profile.py, PyTorch's
profiler, per step).

Each variant is one run of `bench/train_bench.py --cases=r18_32` (ResNet-18,
CIFAR stem, 32 px, LARS, global BatchNorm, NT-Xent over the global batch,
augmentation on the device: the step `train_and_evaluate` runs) in a FRESH
subprocess, because XLA_FLAGS and the CPU device count must be set before
JAX starts. The variants run in rounds, alternated (A, B, C, A, B, C, ...),
so that a change in the load of a shared machine hits every variant alike;
each variant's score is its best median step time over the rounds. The host
load average (os.getloadavg) is recorded before every run.

Each variant gets exactly the XLA flags listed here (XLA_FLAGS is replaced),
plus those train_and_evaluate adds (parallel.cpu_xla_flags) unless the
variant sets --cpu_ynnpack_convs or a YNN fusion flag of its own.
`ratio_to_baseline` > 1 is faster than --baseline. `hlo` counts convolutions
and custom calls in the compiled program (to see whether a flag changed it).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from simclr_jax import hostmem  # pylint: disable=g-import-not-at-top,wrong-import-position

BENCH = os.path.join(HERE, 'train_bench.py')

# name -> (XLA CPU devices, extra XLA flags, extra train_bench arguments).
VARIANTS = {
    'dev1': (1, [], []),
    'dev2': (2, [], []),
    'dev4': (4, [], []),
    'dev8': (8, [], []),
    'dev16': (16, [], []),
    'dev1_eigen_off': (1, ['--xla_cpu_multi_thread_eigen=false'], []),
    'dev8_eigen_off': (8, ['--xla_cpu_multi_thread_eigen=false'], []),
    'dev8_onednn': (8, ['--xla_cpu_use_onednn=true'], []),
    'dev8_onednn_cc': (8, ['--xla_cpu_use_onednn=true',
                           '--xla_cpu_experimental_onednn_custom_call=true'],
                       []),
    'dev2_onednn_cc': (2, ['--xla_cpu_use_onednn=true',
                           '--xla_cpu_experimental_onednn_custom_call=true'],
                       []),
    'dev8_xnn': (8, ['--xla_cpu_experimental_xnn_fusion_type='
                     'dot,eltwise,reduce'], []),
    'dev8_xnn_graph': (8, ['--xla_cpu_experimental_xnn_graph_fusion_mode='
                           'XNN_GRAPH_FUSION_MODE_GREEDY'], []),
    'dev8_xnnpack_off': (8, ['--xla_cpu_use_xnnpack=false'], []),
    # jaxlib 0.10's YNNPACK convolutions (the default before
    # train.cpu_ynnpack_convs), and no YNNPACK fusion at all.
    'dev8_ynnpack': (8, [], ['--cpu_ynnpack_convs']),
    'dev1_ynnpack': (1, [], ['--cpu_ynnpack_convs']),
    'dev2_ynnpack': (2, [], ['--cpu_ynnpack_convs']),
    'dev2_ynn_off': (2, ['--xla_cpu_experimental_ynn_fusion_type='], []),
    'dev1_ynn_off': (1, ['--xla_cpu_experimental_ynn_fusion_type='], []),
    # YNNPACK's reductions (BatchNorm's sums) off too: XLA's own instead.
    'dev1_ynn_no_reduce': (1, ['--xla_cpu_experimental_ynn_fusion_type='
                               '-individual_convolution,-reduce'], []),
    # Conv weight gradients that recompute BatchNorm/ReLU inside XLA's
    # transposes (the default before train.cpu_materialize_conv_inputs).
    'dev2_no_materialize': (2, [], ['--no_materialize']),
    'dev1_no_materialize': (1, [], ['--no_materialize']),
    # Stored operands but XLA's own gradients of strided convs (the default
    # before models/conv.py's sub-pixel input gradients, 2026-12-03).
    'dev1_no_strided_forms': (1, [], ['--no_strided_forms']),
    # XLA's padded kernels for the small 3x3 convs (the default before
    # models/conv.py's border forms, 2026-12-08).
    'dev1_no_border_forms': (1, [], ['--no_border_forms']),
    # glibc's default malloc, 4 KiB page faults (the default before
    # simclr_jax/hostmem.py's huge pages, 2026-12-06).
    'dev1_small_pages': (1, [], ['--small_pages']),
    'dev8_onednn_fusion': (8, ['--xla_cpu_experimental_onednn_fusion_type='
                               'dot,eltwise,reduce'], []),
    'dev8_vec512': (8, ['--xla_cpu_prefer_vector_width=512'], []),
    'dev8_fast_math': (8, ['--xla_cpu_enable_fast_math=true'], []),
    'dev8_bf16': (8, [], ['--dtype=bfloat16']),
    'dev2_bf16': (2, [], ['--dtype=bfloat16']),
    'dev2_bf16_ynnpack': (2, [], ['--dtype=bfloat16', '--cpu_ynnpack_convs']),
    'dev8_vmap': (8, [], ['--augment_strategy=vmap']),
    'dev8_no_augment': (8, [], ['--no_augment']),
    'dev2_no_augment': (2, [], ['--no_augment']),
    'dev8_proj2': (8, [], ['--proj_layers=2']),
    # configs/cifar10_cpu.py's quarter-width ResNet-18 (base_width 16): small
    # convolutions, where one XLA device per core may beat two threads on one.
    'w16_dev1': (1, [], ['--base_width=16']),
    'w16_dev2': (2, [], ['--base_width=16']),
    'w16_dev2_ynnpack': (2, [], ['--base_width=16', '--cpu_ynnpack_convs']),
    'w24_dev1': (1, [], ['--base_width=24']),
    'w24_dev2': (2, [], ['--base_width=24']),
    'w24_dev2_ynnpack': (2, [], ['--base_width=24', '--cpu_ynnpack_convs']),
    'w24_dev2_bf16': (2, [], ['--base_width=24', '--dtype=bfloat16']),
    'w24_dev2_bf16_ynnpack': (2, [], ['--base_width=24', '--dtype=bfloat16',
                                      '--cpu_ynnpack_convs']),
    'w24_dev2_no_augment': (2, [], ['--base_width=24', '--no_augment']),
    'w16_dev1_no_materialize': (1, [], ['--base_width=16', '--no_materialize']),
}
# The peer (lightly 1.6 on PyTorch CPU), run beside ours in the same rounds
# when its environment exists (bash ../shared/peers/setup_lightly.sh).
PEER = 'lightly'
# The peer again with glibc's huge-page malloc (what our step gets from
# simclr_jax/hostmem.py), to show what the same tunable does for PyTorch.
PEER_HUGE = 'lightly_huge_pages'
PEERS = (PEER, PEER_HUGE)
DEFAULT_VARIANTS = ('dev1,dev1_small_pages,dev1_no_strided_forms,dev1_no_materialize,dev2,'
                    'dev2_no_materialize,dev4,dev8,dev2_ynnpack,dev8_ynnpack,'
                    'dev2_ynn_off,dev8_onednn,dev8_onednn_cc,'
                    'dev8_xnn,dev8_onednn_fusion,dev8_vec512,dev8_fast_math,'
                    'dev8_bf16,dev8_vmap,'
                    'dev8_no_augment')


def small_pages_env(env):
  """`env` without glibc's huge-page tunable, and no restart to add it."""
  env = dict(env)
  kept = [t for t in env.pop('GLIBC_TUNABLES', '').split(':')
          if t and not t.startswith('glibc.malloc.hugetlb')]
  if kept:
    env['GLIBC_TUNABLES'] = ':'.join(kept)
  env[hostmem.OPT_OUT] = '0'
  return env


def run_peer(args, huge_pages=False):
  """lightly's SimCLR step (the peer), timed by ../shared/peers/lightly_bench.py.

  ResNet-18 with the CIFAR stem, 512-2048-128 head, NTXentLoss, LARS, on
  random 32x32 views (no augmentation), torch CPU threads = os.cpu_count().
  """
  cmd = [args.peer_python, args.peer_bench, 'train', f'--batch={args.batch}',
         f'--steps={max(args.steps, 3)}', f'--warmup={max(args.warmup, 1)}',
         '--optimizer=lars', '--head=512,2048,128',
         f'--threads={os.cpu_count()}']
  env = (hostmem.environ_with_huge_pages(small_pages_env(os.environ))
         if huge_pages else small_pages_env(os.environ))
  load = os.getloadavg()
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False)
  run = {'load_before': [round(x, 2) for x in load],
         'wall_s': round(time.perf_counter() - t0, 1)}
  if proc.returncode:
    run['error'] = proc.stderr.strip().splitlines()[-3:]
    return run
  out = json.loads(proc.stdout)
  rate = out.get('images_per_sec_median')
  run.update({'images_per_sec': rate,
              'step_time_median_ms': (1e3 * args.batch / rate if rate
                                      else None),
              'compile_s': 0.0, 'final_loss': None, 'hlo': None,
              'peer': {k: v for k, v in out.items()
                       if not isinstance(v, (list, dict))}})
  return run


def run_variant(name, args):
  if name in PEERS:
    return run_peer(args, huge_pages=name == PEER_HUGE)
  devices, flags, extra = VARIANTS[name]
  env = small_pages_env(os.environ) if '--small_pages' in extra else dict(
      os.environ)
  env['XLA_FLAGS'] = ' '.join(flags)
  cmd = [sys.executable, BENCH, '--cases=r18_32',
         f'--batch_r18={args.batch}', f'--steps={args.steps}',
         f'--warmup={args.warmup}', f'--cpu_devices={devices}',
         '--hlo_stats'] + extra
  load = os.getloadavg()
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False)
  wall = time.perf_counter() - t0
  run = {'load_before': [round(x, 2) for x in load], 'wall_s': round(wall, 1)}
  if proc.returncode:
    run['error'] = proc.stderr.strip().splitlines()[-3:]
    return run
  case = json.loads(proc.stdout)['cases'][0]
  run.update({
      'images_per_sec': case['images_per_sec'],
      'step_time_median_ms': case['step_time_median_ms'],
      'step_time_min_ms': case['step_time_min_ms'],
      'compile_s': case['compile_s'],
      'final_loss': case['final_loss'],
      'hlo': case['hlo'],
  })
  return run


def op_kind(name):
  """Coarse kind of an XLA CPU thunk/op event name."""
  n = name.lower()
  for kind, keys in (
      ('convolution', ('convolution',)),
      ('collective wait (rendezvous)', ('rendezvous', 'wait:')),
      ('collective', ('all-reduce', 'all-gather', 'reduce-scatter',
                      'collective', 'all-to-all', 'psum')),
      # YNNPACK runs most of the step's reductions (BatchNorm's statistics
      # and its backward sums, LARS's norms) as well as dots.
      ('ynn/xnn fusion (BN reductions, dots)', ('ynn', 'xnn')),
      ('dot (dense layers)', ('dot',)),
      ('sort/rng', ('sort', 'rng', 'threefry')),
      ('while/conditional (augment map)', ('while', 'conditional', 'call')),
      ('copy/transpose', ('copy', 'transpose')),
      ('reduce', ('reduce',)),
      ('fusion (elementwise, BN, ...)', ('fusion',)),
  ):
    if any(k in n for k in keys):
      return kind
  return 'other'


def summarize_trace(trace_dir):
  """Per-kind totals of the perfetto trace written by jax.profiler."""
  import glob  # pylint: disable=import-outside-toplevel
  import gzip  # pylint: disable=import-outside-toplevel
  files = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'),
                    recursive=True)
  if not files:
    return {'error': f'no perfetto trace under {trace_dir}'}
  with gzip.open(sorted(files)[-1], 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  threads = {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'thread_name':
      threads[(e['pid'], e['tid'])] = e['args']['name']
  by_kind, by_name, by_thread = {}, {}, {}
  for e in events:
    if e.get('ph') != 'X' or 'dur' not in e:
      continue
    name = e.get('name', '')
    tname = threads.get((e.get('pid'), e.get('tid')), '')
    by_thread[tname] = by_thread.get(tname, 0.0) + e['dur']
    by_name[name] = by_name.get(name, 0.0) + e['dur']
  # Thunk events: names of HLO instructions (they have a '.' or are ops).
  # Only XLA's worker threads (where thunks run), without the executor's
  # own wrapper events.
  # Self time (an event's duration less its nested events') on XLA's
  # worker threads, where the thunks run, without the executor's own
  # wrapper events: a collective's wait for the other devices is counted
  # apart ('collective wait') from its own work.
  skip = ('ThunkExecutor', 'CommonPjRt', 'TfrtCpu', 'PjRt', '$')
  per_thread = {}
  for e in events:
    if e.get('ph') != 'X' or 'dur' not in e:
      continue
    tname = threads.get((e.get('pid'), e.get('tid')), '')
    if tname.startswith('tf_XLA'):
      per_thread.setdefault((e['pid'], e['tid']), []).append(e)
  for evs in per_thread.values():
    evs.sort(key=lambda e: (e['ts'], -e['dur']))
    stack = []  # [end, event, self]
    def close(item):
      name = item[1].get('name', '')
      if not name.startswith(skip):
        kind = op_kind(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + item[2]
    for e in evs:
      while stack and e['ts'] >= stack[-1][0]:
        close(stack.pop())
      if stack:
        stack[-1][2] -= e['dur']
      stack.append([e['ts'] + e['dur'], e, e['dur']])
    while stack:
      close(stack.pop())
  total = sum(by_kind.values()) or 1.0
  top = sorted(by_name.items(), key=lambda kv: -kv[1])[:40]
  return {
      'trace_file': sorted(files)[-1],
      'op_time_ms_by_kind': {k: round(v / 1e3, 1) for k, v in
                             sorted(by_kind.items(), key=lambda kv: -kv[1])},
      'op_share_by_kind': {k: round(v / total, 3) for k, v in
                           sorted(by_kind.items(), key=lambda kv: -kv[1])},
      'top_events_ms': {k: round(v / 1e3, 1) for k, v in top},
      'busy_ms_by_thread_top': dict(sorted(
          ((k, round(v / 1e3, 1)) for k, v in by_thread.items()),
          key=lambda kv: -kv[1])[:12]),
  }


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--variants', default=DEFAULT_VARIANTS)
  p.add_argument('--baseline', default='dev1')
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--list', action='store_true')
  p.add_argument('--profile', default='',
                 help='profile this variant (2 traced steps) instead')
  p.add_argument('--trace_dir', default='/tmp/simclr_cpu_trace')
  p.add_argument('--peer_python', default='/tmp/peers/torchvenv/bin/python',
                 help="python of lightly's environment (variant 'lightly')")
  p.add_argument('--peer_bench', default=os.path.join(
      os.path.dirname(HERE), '..', 'shared', 'peers', 'lightly_bench.py'),
                 help="lightly's step bench (variant 'lightly')")
  args = p.parse_args()
  if args.profile == PEER:
    cmd = [args.peer_python, os.path.join(HERE, 'peer_profile.py'),
           f'--peer_bench={args.peer_bench}', f'--batch={args.batch}']
    proc = subprocess.run(cmd, env=small_pages_env(os.environ),
                          capture_output=True, text=True, check=False)
    if proc.returncode:
      sys.exit(proc.stderr[-3000:])
    print(proc.stdout.strip())
    return
  if args.profile:
    if args.profile not in VARIANTS:
      p.error(f'unknown --profile {args.profile!r}; see --list (or {PEER})')
    devices, flags, extra = VARIANTS[args.profile]
    env = dict(os.environ, XLA_FLAGS=' '.join(flags))
    cmd = [sys.executable, BENCH, '--cases=r18_32', f'--batch_r18={args.batch}',
           f'--steps={args.steps}', f'--warmup={args.warmup}',
           f'--cpu_devices={devices}',
           f'--profile_dir={args.trace_dir}'] + extra
    load = os.getloadavg()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
      sys.exit(proc.stderr[-3000:])
    case = json.loads(proc.stdout)['cases'][0]
    print(json.dumps({'variant': args.profile, 'load_before': load,
                      'images_per_sec': case['images_per_sec'],
                      'step_time_median_ms': case['step_time_median_ms'],
                      'steps_traced': 2,
                      **summarize_trace(args.trace_dir)}, indent=1))
    return
  if args.list:
    for name, (dev, flags, extra) in VARIANTS.items():
      print(f'{name:18s} devices={dev} {" ".join(flags + extra)}')
    return
  names = [v.strip() for v in args.variants.split(',') if v.strip()]
  if set(PEERS) & set(names) and not (os.path.exists(args.peer_python) and
                            os.path.exists(args.peer_bench)):
    p.error(f"variant {PEER!r} needs {args.peer_python} and {args.peer_bench} "
            '(bash ../shared/peers/setup_lightly.sh)')
  unknown = [n for n in names if n not in VARIANTS and n not in PEERS]
  if unknown:
    p.error(f'unknown variants {unknown}; see --list')
  if args.baseline not in names:
    names.insert(0, args.baseline)
  runs = {n: [] for n in names}
  for r in range(args.rounds):
    for n in names:
      run = run_variant(n, args)
      runs[n].append(run)
      print(f'round {r} {n}: {run.get("images_per_sec", run.get("error"))} '
            f'load {run["load_before"]}', file=sys.stderr, flush=True)
  summary = {}
  for n in names:
    ok = [x for x in runs[n] if 'images_per_sec' in x]
    devices, flags, extra = VARIANTS.get(n, (None, [], ['(lightly)']))
    summary[n] = {
        'devices': devices,
        'xla_flags': ' '.join(flags),
        'bench_args': ' '.join(extra),
        'best_images_per_sec': max((x['images_per_sec'] for x in ok),
                                   default=None),
        'median_images_per_sec': (statistics.median(
            x['images_per_sec'] for x in ok) if ok else None),
        'compile_s': min((x['compile_s'] for x in ok), default=None),
        'final_loss': ok[0]['final_loss'] if ok else None,
        'hlo': ok[0]['hlo'] if ok else None,
        'runs': runs[n],
    }
  base = summary[args.baseline]['best_images_per_sec']
  for n in names:
    best = summary[n]['best_images_per_sec']
    summary[n]['ratio_to_baseline'] = (best / base if best and base else None)
  print(json.dumps({
      'bench': 'cpu_speed',
      'what': ('train step of ResNet-18/CIFAR stem/32 px, LARS, global BN, '
               'augmentation on device (bench/train_bench.py --cases=r18_32)'),
      'global_batch': args.batch, 'steps': args.steps, 'warmup': args.warmup,
      'rounds': args.rounds, 'cpu_count': os.cpu_count(),
      'cpu_model': hostmem.cpu_model(),
      'baseline': args.baseline,
      'score': 'best over rounds of each run\'s median step time',
      'variants': summary,
  }, indent=1))


if __name__ == '__main__':
  main()
