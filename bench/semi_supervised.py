r"""SimCLRv2's semi-supervised pipeline, measured: pretrain, fine-tune on few labels, distil.

    python bench/semi_supervised.py --config=configs/demo.py --root=/tmp/semi
    python bench/semi_supervised.py --config=configs/cifar10_cpu.py --root=/tmp/c10semi \
        --extra='--config.data.data_dir=/path/to/cifar10/train' \
        --finetune='--config.finetune.from_proj_layer=1 --config.finetune.batch_size=128 \
                    --config.finetune.epochs=15' \
        --distill='--config.distill.from_proj_layer=1 --config.distill.batch_size=128 \
                   --config.distill.base_learning_rate=0.05 \
                   --config.distill.warmup_epochs=0.2 --config.distill.epochs=1'

(the CIFAR-10 table of docs/evaluation.md: about 30 minutes after the
pretraining on 2 cores).

Runs `main.py` for each step, each in its own workdir under --root (a
finished workdir is reused: the command is the same, so main.py does not
train again, only evaluates again):

  pretrain          the config's pretraining
  random            the same network at random initialisation (a
                    pretraining run of 1 step at learning rate 1e-9, during
                    warm-up: its checkpoint holds the initial weights, moved
                    by about 1e-9, and BatchNorm statistics of one batch)
  ft{P}_{init}      fine-tuning of init's network on P% of the labels
                    (--fractions, e.g. 1 and 10)
  kd{P}_{init}      the fine-tuned teacher ft{P}_{init} distilled into a
                    student of the same architecture on every training image,
                    no labels; the student starts from init's encoder

and prints one JSON line per run (its command and final record) and then
one line with the table: top-1 on the evaluation split after fine-tuning
and after distillation, for each label fraction and initialisation.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def last_record(workdir: str) -> dict | None:
  """The last line of `workdir/metrics.jsonl` if it is a final record."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    lines = [l for l in f.read().splitlines() if l.strip()]
  record = json.loads(lines[-1]) if lines else None
  return record if record and record.get('final') else None


def run(name: str, args: list[str], root: str, timeout_s: float) -> dict:
  """Runs main.py with `args` in workdir root/name; its final record."""
  workdir = os.path.join(root, name)
  argv = [sys.executable, 'main.py', f'--workdir={workdir}', *args]
  print(f'semi_supervised: {name}: {shlex.join(argv[1:])}', file=sys.stderr,
        flush=True)
  done = subprocess.run(argv, cwd=ROOT, timeout=timeout_s,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True)
  record = last_record(workdir)
  if done.returncode != 0 or record is None:
    raise SystemExit(f'semi_supervised: {name} failed (exit '
                     f'{done.returncode}): {done.stderr.strip()[-2000:]}')
  print(json.dumps({'run': name, 'command': shlex.join(argv[1:]),
                    'record': record}), flush=True)
  return record


def score(record: dict, key: str) -> float:
  return round(float(record[key]), 4)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--root', required=True, help='the workdirs go here')
  parser.add_argument('--extra', default='', help='overrides for every run')
  parser.add_argument('--finetune', default='', help='overrides for fine-tuning')
  parser.add_argument('--distill', default='', help='overrides for distilling')
  parser.add_argument('--fractions', default='1,10',
                      help='label percentages, comma-separated')
  parser.add_argument('--timeout_s', type=float, default=4 * 3600,
                      help='the most one run may take')
  a = parser.parse_args()
  base = [f'--config={a.config}', *shlex.split(a.extra)]
  os.makedirs(a.root, exist_ok=True)
  run('pretrain', base, a.root, a.timeout_s)
  run('random', base + ['--config.train.num_steps=1',
                        '--config.train.num_epochs=0',
                        '--config.optim.base_learning_rate=1e-9',
                        '--config.eval.compare_random_init=false',
                        '--config.eval.linear_probe=false'],
      a.root, a.timeout_s)
  table = []
  for pct in [float(p) for p in a.fractions.split(',')]:
    label = f'{pct:g}'
    for init in ('pretrain', 'random'):
      init_dir = os.path.join(a.root, init)
      ft = run(f'ft{label}_{init}', base + [
          '--config.mode=finetune', f'--config.init_from={init_dir}',
          f'--config.finetune.label_fraction={pct / 100}',
          *shlex.split(a.finetune)], a.root, a.timeout_s)
      kd = run(f'kd{label}_{init}', base + [
          '--config.mode=distill',
          f'--config.init_from={os.path.join(a.root, f"ft{label}_{init}")}',
          f'--config.distill.student_init={init_dir}',
          f'--config.finetune.label_fraction={pct / 100}',
          *shlex.split(a.distill)], a.root, a.timeout_s)
      table.append({'labels_percent': pct, 'init': init,
                    'finetune_top1': score(ft, 'finetune_top1'),
                    'distill_top1': score(kd, 'final_distill_top1'),
                    'teacher_top1': score(kd, 'final_teacher_top1'),
                    'agreement': score(kd, 'final_agreement')})
  print(json.dumps({'config': a.config, 'table': table}), flush=True)


if __name__ == '__main__':
  main()
