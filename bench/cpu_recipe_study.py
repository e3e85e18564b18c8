r"""What learns most in a fixed CPU time: runs named config variants, one JSON line each.

    python bench/cpu_recipe_study.py --data_dir=/path/to/cifar10/train \
        --budget_s=600 --runs=base,t02,t02_b128 --out=/tmp/study.jsonl
    python bench/cpu_recipe_study.py --list          # the named runs
    # One short case (the digits demo, ~2 minutes on 2 cores):
    python bench/cpu_recipe_study.py --config=configs/demo.py --budget_s=20 \
        --runs=base --calibration_steps=10 --out=/tmp/study_demo.jsonl

Each named run is a set of config overrides on top of --config (default
configs/cifar10_cpu.py, the newcomer's hour on 2 CPU cores). For a budget of
B seconds of training, a run:

1. calibrates: `main.py` for --calibration_steps with no evaluation, and
   reads its steps/s from metrics.jsonl (the median of its logged windows,
   the first, compiling one, left out). Runs that differ only in knobs that
   do not change the step's cost (loss, optimiser, augmentation strengths)
   share one calibration.
2. trains: `main.py` with num_steps = B x steps/s, so every run gets the
   same wall time, and everything the config counts in epochs (warm-up)
   shrunk by the same factor as the steps when --budget_s is below the
   config's own length (a 15-minute proxy is the hour, shortened).
3. writes one JSON line: the overrides, steps, train_seconds (wall
   time of the training, compilation included), final_knn_accuracy and
   final_probe_accuracy on the config's evaluation split, the load average
   before it, the CPU model and the commit.

Each run's workdir is --workroot/NAME (removed first, so a run never
resumes an old one). The machine should be quiet: the step rate, and so
the steps a run gets, is measured, not assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Mapping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from simclr_jax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import hostmem  # pylint: disable=g-import-not-at-top,wrong-import-position

# configs/cifar10_cpu.py's knobs before the second study (2026-12-07).
_PREV: dict[str, Any] = {'model.base_width': 16,
                         'optim.base_learning_rate': 0.075,
                         'augment.crop_scale': (0.08, 1.0),
                         'train.cpu_devices': 1}

# name -> config overrides (dotted field -> value) on top of --config, as the
# config file is when the study runs (each JSON line records the commit).
RUNS: dict[str, dict[str, Any]] = {
    'base': {},
    # Temperature: google's CIFAR recipe uses 0.5, solo-learn's 0.2.
    't02': {'loss.temperature': 0.2},
    't03': {'loss.temperature': 0.3},
    't01': {'loss.temperature': 0.1},
    # Batch against steps: half the batch, twice the steps in the same time;
    # LARS's learning rate scales linearly (1.0 x B/256) or by sqrt(B).
    't02_b128': {'loss.temperature': 0.2, 'train.global_batch_size': 128},
    't02_b128_sqrt': {'loss.temperature': 0.2, 'train.global_batch_size': 128,
                      'optim.lr_scaling': 'sqrt',
                      'optim.base_learning_rate': 0.075},
    't02_b512': {'loss.temperature': 0.2, 'train.global_batch_size': 512},
    # Learning rate and warm-up.
    't02_lr2': {'loss.temperature': 0.2, 'optim.base_learning_rate': 2.0},
    't02_lr05': {'loss.temperature': 0.2, 'optim.base_learning_rate': 0.5},
    't02_nowarm': {'loss.temperature': 0.2, 'optim.warmup_epochs': 0.0},
    # Width against steps.
    't02_w12': {'loss.temperature': 0.2, 'model.base_width': 12},
    't02_w24': {'loss.temperature': 0.2, 'model.base_width': 24},
    't02_w32': {'loss.temperature': 0.2, 'model.base_width': 32},
    # Augmentation: a milder crop, stronger colour.
    't02_crop02': {'loss.temperature': 0.2, 'augment.crop_scale': (0.2, 1.0)},
    't02_color1': {'loss.temperature': 0.2, 'augment.color_jitter_strength': 1.0},
    # Head: SimCLR v1's 2 layers, a smaller output.
    't02_proj2': {'loss.temperature': 0.2, 'model.num_proj_layers': 2},
    't02_proj64': {'loss.temperature': 0.2, 'model.proj_out_dim': 64},
    # The second study (2026-12-07, docs/cifar10_cpu.md), on top of the
    # first one's winner: `prev` pins the knobs that study then changed
    # (width 16, LARS 0.075 x sqrt(B), crop scale 0.08-1, one XLA device), so
    # these runs mean the same on any later configs/cifar10_cpu.py.
    'prev': dict(_PREV),
    'prev_crop02': {**_PREV, 'augment.crop_scale': (0.2, 1.0)},
    'prev_lr015': {**_PREV, 'optim.base_learning_rate': 0.15},
    'prev_w24': {**_PREV, 'model.base_width': 24},
    'prev_crop02_lr015': {**_PREV, 'augment.crop_scale': (0.2, 1.0),
                          'optim.base_learning_rate': 0.15},
    'prev_b64': {**_PREV, 'train.global_batch_size': 64},
    # On the config as it is: a higher learning rate again, a stronger
    # colour distortion, SimCLR v1's 2-layer head, the width back at 16.
    'lr03': {'optim.base_learning_rate': 0.3},
    'color1': {'augment.color_jitter_strength': 1.0},
    'proj2': {'model.num_proj_layers': 2},
    'w16': {'model.base_width': 16},
    # The third study (2026-12-07): the training views' side
    # (augment.output_size; evaluation stays at image_size 32). Named by the
    # side, so they mean the same on any later config.
    'views32': {'augment.output_size': 32},
    'views32_lr03': {'augment.output_size': 32,
                     'optim.base_learning_rate': 0.3},
    'views24': {'augment.output_size': 24},
    'views20': {'augment.output_size': 20},
    'views16': {'augment.output_size': 16},
    'w32_views24': {'model.base_width': 32, 'augment.output_size': 24},
}

# Fields whose value does not change the cost of a step: runs differing only
# in these share a calibration.
_COST_NEUTRAL = ('loss.', 'optim.', 'augment.crop_scale', 'augment.crop_ratio',
                 'augment.color_jitter_strength', 'augment.grayscale_prob')


def cost_key(overrides: Mapping[str, Any]) -> str:
  """Identifies the overrides that change the step's cost (for calibration)."""
  kept = {k: v for k, v in overrides.items() if not k.startswith(_COST_NEUTRAL)}
  return json.dumps(sorted(kept.items()), default=str)


def unknown_fields(config, overrides: Mapping[str, Any]) -> list[str]:
  """The dotted keys of `overrides` that are not fields of `config`."""
  return [key for key in overrides if not config_lib.has_field(config, key)]


def flag(key: str, value: Any) -> str:
  """One main.py flag, --config.KEY=VALUE (tuples as '(a,b)')."""
  if isinstance(value, tuple):
    value = '(' + ','.join(str(v) for v in value) + ')'
  elif isinstance(value, bool):
    value = 'true' if value else 'false'
  return f'--config.{key}={value}'


def plan_steps(budget_s: float, steps_per_s: float, round_to: int) -> int:
  """Steps that fill `budget_s` at `steps_per_s`, rounded down to `round_to`."""
  steps = int(budget_s * steps_per_s)
  return max(round_to, steps // round_to * round_to)


def read_records(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def calibrated_rate(records: list[dict[str, Any]], batch: int) -> float:
  """Steps/s: the median logged images/s (first window left out) / batch."""
  rates = [r['images_per_sec'] for r in records if 'images_per_sec' in r]
  if len(rates) > 1:
    rates = rates[1:]  # The first window holds the compiling step's wait.
  if not rates:
    raise RuntimeError('calibration logged no images_per_sec')
  return statistics.median(rates) / batch


def _main_py(config: str, workdir: str, flags: list[str], log_path: str,
             timeout_s: float) -> None:
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={config}',
         f'--workdir={workdir}', *flags]
  with open(log_path, 'w') as log:
    log.write(' '.join(cmd) + '\n')
    log.flush()
    try:
      proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
      raise RuntimeError(f'main.py ran past {timeout_s:.0f} s; see {log_path}') from e
  if proc.returncode:
    raise RuntimeError(f'main.py exited {proc.returncode}; see {log_path}')


def _commit() -> str:
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ''


def _base_config(path: str):
  """The config file's get_config() (for the batch, steps and warm-up)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('study_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default=os.path.join(ROOT, 'configs', 'cifar10_cpu.py'))
  p.add_argument('--data_dir', default='', help='data.data_dir for folder configs')
  p.add_argument('--runs', default='base,t02,t02_b128')
  p.add_argument('--budget_s', type=float, default=900.0,
                 help='seconds of training per run (the wall time it gets)')
  p.add_argument('--full_s', type=float, default=3600.0,
                 help="the config's own length: epoch-counted fields shrink by "
                 'budget_s/full_s when the budget is shorter')
  p.add_argument('--calibration_steps', type=int, default=40)
  p.add_argument('--workroot', default='/tmp/simclr_cpu_study')
  p.add_argument('--out', default='', help='append the JSON lines here too')
  p.add_argument('--extra', default='', help='more main.py flags for every run, '
                 "space-separated, e.g. '--config.eval.compare_random_init=false'")
  p.add_argument('--list', action='store_true')
  args = p.parse_args(argv)
  if args.list:
    for name, overrides in RUNS.items():
      print(f'{name:16s} {" ".join(flag(k, v) for k, v in overrides.items())}')
    return
  names = [n.strip() for n in args.runs.split(',') if n.strip()]
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    p.error(f'unknown runs {unknown}; see --list')
  if not os.path.exists(args.config):
    p.error(f'no config file {args.config}')
  base = _base_config(args.config)
  bad = {n: unknown_fields(base, RUNS[n]) for n in names}
  bad = {n: keys for n, keys in bad.items() if keys}
  if bad:  # Before any run starts, not an hour in.
    p.error(f'runs name fields {args.config} does not have: {bad}')
  common = [f'--config.data.data_dir={args.data_dir}'] if args.data_dir else []
  common += args.extra.split()
  os.makedirs(args.workroot, exist_ok=True)
  rates: dict[str, float] = {}
  shrink = min(1.0, args.budget_s / args.full_s)
  for name in names:
    overrides = RUNS[name]
    batch = int(overrides.get('train.global_batch_size',
                              base.train.global_batch_size))
    run_flags = [flag(k, v) for k, v in overrides.items()]
    key = cost_key(overrides)
    if key not in rates:
      cal_dir = os.path.join(args.workroot, f'{name}_calibration')
      log_every = max(1, args.calibration_steps // 4)
      t0 = time.perf_counter()
      _main_py(args.config, cal_dir, common + run_flags + [
          f'--config.train.num_steps={args.calibration_steps}',
          f'--config.train.log_every_steps={log_every}',
          f'--config.train.checkpoint_every_steps={args.calibration_steps}',
          '--config.eval.knn_k=0', '--config.eval.linear_probe=false',
          '--config.eval.compare_random_init=false',
          '--config.eval.every_steps=0'],
               cal_dir + '.log', timeout_s=1800)
      rates[key] = calibrated_rate(read_records(cal_dir), batch)
      print(f'{name}: calibrated {rates[key]:.3f} steps/s '
            f'({time.perf_counter() - t0:.0f} s)', file=sys.stderr, flush=True)
    steps = plan_steps(args.budget_s, rates[key], 10)
    warmup = float(overrides.get('optim.warmup_epochs', base.optim.warmup_epochs))
    train_flags = run_flags + [f'--config.train.num_steps={steps}']
    if shrink < 1.0 and 'optim.warmup_epochs' not in overrides:
      train_flags.append(f'--config.optim.warmup_epochs={warmup * shrink:.4g}')
    workdir = os.path.join(args.workroot, name)
    load = os.getloadavg()
    t0 = time.perf_counter()
    _main_py(args.config, workdir, common + train_flags, workdir + '.log',
             timeout_s=args.budget_s * 3 + 1800)
    final = [r for r in read_records(workdir) if r.get('final')]
    if not final:
      raise RuntimeError(f'{name}: no final record in {workdir}/metrics.jsonl')
    rec = final[-1]
    line = {
        'bench': 'cpu_recipe_study', 'run': name,
        'config': os.path.relpath(args.config, ROOT),
        'overrides': {k: list(v) if isinstance(v, tuple) else v
                      for k, v in overrides.items()},
        'flags': train_flags,
        'budget_s': args.budget_s, 'steps': steps, 'global_batch_size': batch,
        'calibrated_steps_per_s': round(rates[key], 4),
        'train_seconds': rec.get('train_seconds'),
        'final_knn_accuracy': rec.get('final_knn_accuracy'),
        'final_probe_accuracy': rec.get('final_probe_accuracy'),
        'final_loss': next((r['loss'] for r in reversed(read_records(workdir))
                            if 'loss' in r), None),
        'command_seconds': round(time.perf_counter() - t0, 1),
        'load_before': [round(x, 2) for x in load],
        'cpu_model': hostmem.cpu_model(), 'cpu_count': os.cpu_count(),
        'commit': _commit(),
    }
    text = json.dumps(line)
    print(text, flush=True)
    if args.out:
      with open(args.out, 'a') as f:
        f.write(text + '\n')


if __name__ == '__main__':
  main()
