r"""One short check on a GPU: tests, demo, train-step images/s and MFU, the
augmentation's share, host input; one JSON line per step, bounded in time.

    bash bench/gpu_check.sh                 # installs ".[cuda]" if JAX sees no GPU, then this
    python bench/gpu_check.py               # every step, within --total_s (480 s)
    python bench/gpu_check.py --only=env,bench_r18 --peak_tflops=989
    python bench/gpu_check.py --dry_run     # each step's command, nothing run
    python bench/gpu_check.py --quick --allow_cpu --total_s=900   # tiny steps on a CPU

Steps, in order, each a subprocess with its own time limit carved from one
deadline (a hang cannot outlast --total_s; what the deadline leaves no time
for prints {"step": ..., "skipped": "deadline"}):

  env            jax's platform, devices and device_kind, the GPU's memory, the
                 peak rate used for MFU (bench/accel.py's table: NVIDIA's dense
                 bfloat16 rate, no sparsity; or --peak_tflops), nvidia-smi
  tests          tests/test_accelerator.py (train step, NT-Xent, global BN,
                 augmentation and bfloat16 on the GPU against 8 CPU devices),
                 tests/test_losses.py, tests/test_resume.py (kill -9, SIGTERM and
                 resume, bit-identical) and two model tests, with
                 SIMCLR_TEST_ACCELERATOR=1 (tests/conftest.py)
  demo           main.py --config=configs/demo.py end to end, its final scores
  bench_r18      bench/train_bench.py, ResNet-18 CIFAR, batch 512, bfloat16
  bench_r50      ResNet-50 at 224 px, bfloat16, the largest batch from
                 --batch_r50 down (halved on out-of-memory) that fits
  input          bench/input_bench.py: 500x375 JPEGs host-cropped to 224 px on
                 this host's cores against the images/s the r50 step consumes
  augment_share  both cases again without the augmentation (--no_augment):
                 share = 1 - step time without / step time with (it reads
                 bench_r18's and bench_r50's times: rerun it with them, e.g.
                 --only=bench_r18,bench_r50,augment_share; the compilation
                 cache in --cache_dir makes the rerun's compiles quick)

MFU = flops_per_step / step_seconds / (peak TFLOP/s x 1e12 x devices), with
FLOPs from XLA's cost analysis of the compiled step (train_bench). Every line
has "step", "ok" and "seconds" (or "skipped"); the last is "summary". Each
step's full output is kept in --out_dir. SIGTERM or Ctrl-C stops the running
step's process group and skips the rest. Without a GPU the steps after env
are skipped unless --allow_cpu.
"""

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import accel  # bench/accel.py  # pylint: disable=g-import-not-at-top,wrong-import-position

STEPS = ('env', 'tests', 'demo', 'bench_r18', 'bench_r50', 'input',
         'augment_share')
MIN_STEP_S = 10.0  # A step is not started with less time than this left.
TESTS = ['tests/test_accelerator.py', 'tests/test_losses.py',
         'tests/test_resume.py',
         'tests/test_models.py::test_bfloat16_close_to_float32',
         'tests/test_models.py::'
         'test_batch_norm_variance_is_accurate_for_offset_features']
QUICK_TESTS = ['tests/test_accelerator.py::'
               'test_auto_augmentation_on_default_device_equals_cpu']
# The demo shrunk to seconds (as tests/test_resume.py's runs), for --quick.
QUICK_DEMO = ['--config.image_size=8', '--config.data.resize_to=8',
              '--config.model.base_width=4', '--config.model.proj_out_dim=8',
              '--config.train.global_batch_size=32',
              '--config.train.num_steps=2', '--config.eval.linear_probe=false',
              '--config.eval.compare_random_init=false']


@dataclasses.dataclass
class Step:
  """One step: a command and what its output means.

  argv and parse see the records of the steps before (name -> record), so a
  step can use an earlier one's result (the batch that fitted, a step time).
  """
  name: str
  cap_s: float  # Its own time limit (the deadline may leave less).
  argv: Callable[[dict], list[str]]
  parse: Callable[[str, dict], dict] = lambda out, done: {}
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  needs_gpu: bool = True
  before: Callable[[], None] = lambda: None  # Runs just before the command.


class Stopped(Exception):
  """SIGTERM or SIGINT arrived."""


def _on_signal(signum, frame):
  del frame
  raise Stopped(signum)


def kill_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
  """SIGTERM to the process group of `proc`; once `proc` has exited or after
  `grace_s`, SIGKILL to whatever is left of the group."""
  try:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(grace_s)
  except (ProcessLookupError, subprocess.TimeoutExpired):
    pass
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  proc.wait()


def _collect(proc: subprocess.Popen) -> tuple[str, str]:
  """What a killed process group wrote (empty if a pipe stays open)."""
  try:
    return proc.communicate(timeout=10)
  except subprocess.TimeoutExpired:
    return '', ''


def run_command(argv: list[str], env: dict[str, str], timeout_s: float,
                cwd: str = ROOT) -> tuple[int | None, str, str]:
  """Runs argv in its own process group: (exit code or None on timeout,
  stdout, stderr). On a timeout or a signal the whole group is killed."""
  proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, err
  except subprocess.TimeoutExpired:
    kill_group(proc)
    out, err = _collect(proc)
    return None, out, err
  except BaseException:
    kill_group(proc)
    _collect(proc)
    raise


def last_json(text: str) -> dict | None:
  """The last JSON object in `text` that starts at the start of a line."""
  decoder = json.JSONDecoder()
  found = None
  for m in re.finditer(r'^\{', text, re.M):
    try:
      obj, _ = decoder.raw_decode(text, m.start())
    except ValueError:
      continue
    if isinstance(obj, dict):
      found = obj
  return found


def _tail(text: str, n: int = 1500) -> str:
  return text[-n:] if text else ''


def run_steps(steps: list[Step], total_s: float, emit: Callable[[dict], None],
              allow_cpu: bool = False, out_dir: str | None = None) -> dict:
  """Runs `steps` in order within `total_s`; emits one record per step."""
  deadline = time.monotonic() + total_s
  done: dict[str, dict] = {}
  stop_reason = None
  for step in steps:
    left = deadline - time.monotonic()
    if stop_reason is not None:
      record = {'step': step.name, 'skipped': stop_reason}
    elif step.needs_gpu and not allow_cpu and (
        done.get('env', {}).get('platform') not in (None, 'gpu')):
      record = {'step': step.name, 'skipped': 'no gpu (--allow_cpu runs it)'}
    elif left < MIN_STEP_S:
      record = {'step': step.name, 'skipped': 'deadline'}
    else:
      try:
        record, stop_reason = _run_one(step, min(step.cap_s, left), done,
                                       out_dir)
      except Stopped as e:  # Between two commands.
        stop_reason = f'signal {e.args[0]}'
        record = {'step': step.name, 'ok': False, 'seconds': None,
                  'error': f'stopped by {stop_reason}'}
    done[step.name] = record
    emit(record)
  return done


def _run_one(step: Step, timeout_s: float, done: dict,
             out_dir: str | None) -> tuple[dict, str | None]:
  """(record, why the remaining steps are skipped or None) of one step."""
  record = {'step': step.name, 'ok': False, 'seconds': None,
            'timeout_s': round(timeout_s, 1)}
  t0 = time.monotonic()
  stop_reason, out, err = None, '', ''
  try:
    step.before()
    code, out, err = run_command(step.argv(done), step.env, timeout_s)
    if code is None:
      record['error'] = (f'timed out after {timeout_s:.0f} s (process group '
                         'killed)')
    elif code != 0:
      record['error'] = f'exit code {code}'
  except Stopped as e:
    stop_reason = f'signal {e.args[0]}'
    record['error'] = f'stopped by {stop_reason}'
  except OSError as e:
    record['error'] = f'could not start: {e}'
  record['seconds'] = round(time.monotonic() - t0, 2)
  if out_dir:
    for suffix, text in (('stdout', out), ('stderr', err)):
      with open(os.path.join(out_dir, f'{step.name}.{suffix}'), 'w') as f:
        f.write(text)
  if 'error' not in record:
    try:
      parsed = step.parse(out, done)
      record.update({k: v for k, v in parsed.items()
                     if k not in ('step', 'seconds', 'timeout_s')})
      record['ok'] = bool(parsed.get('ok', True))
    except Exception as e:  # pylint: disable=broad-except
      record['error'] = f'unreadable output: {type(e).__name__}: {e}'
  if 'error' in record:
    record['stderr_tail'] = _tail(err)
  return record, stop_reason


# ------------------------------------------------------------------ steps


def probe(peak_override: float | None) -> dict:
  """What this process's JAX sees (run as `gpu_check.py --probe`)."""
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  platform = 'gpu' if device.platform in ('cuda', 'rocm') else device.platform
  peak, source = peak_for(device.device_kind, 'bfloat16', peak_override)
  versions = {}
  for name in ('jaxlib', 'jax-cuda12-plugin', 'jax-cuda13-plugin',
               'tensorflow', 'tensorflow-cpu'):
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  smi = None
  if shutil.which('nvidia-smi'):
    code, out, _ = run_command(
        ['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
         '--format=csv,noheader'], {}, 20)
    smi = out.strip() if code == 0 else None
  return {'platform': platform, 'backend': jax.default_backend(),
          'jax': jax.__version__, 'packages': versions,
          'device_count': jax.device_count(), 'device_kind': device.device_kind,
          'memory_bytes_limit': accel.device_bytes_limit(device),
          'peak_tflops_bf16': peak, 'peak_source': source,
          'nvidia_smi': smi, 'cpu_cores': len(os.sched_getaffinity(0)),
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          # tf.data must stay on the host: data/host_ops.py hides GPUs from TF.
          'tensorflow_build': ('tensorflow-cpu' if 'tensorflow-cpu' in versions
                               else 'tensorflow')}


def peak_for(device_kind: str, dtype: str,
             override: float | None) -> tuple[float | None, str]:
  """(peak TFLOP/s of one device, where the number comes from)."""
  if override is not None:
    return override, '--peak_tflops'
  entry = accel.peak_entry(device_kind)
  if entry is None:
    return None, f'no table row for device_kind {device_kind!r}'
  return (accel.peak_tflops(device_kind, dtype),
          f"{accel.PEAK_SOURCE}; row '{entry[0]}' for {device_kind!r}")


def bench_summary(result: dict, case: str, peak_override: float | None
                  ) -> dict[str, Any]:
  """One case of train_bench's JSON as a gpu_check record, with its MFU."""
  rec = next(c for c in result['cases'] if c['case'] == case)
  step_s = rec['step_time_median_ms'] / 1e3
  peak, source = peak_for(result['device_kind'], result['dtype'],
                          peak_override)
  keep = ('global_batch', 'per_device_batch', 'images_per_sec',
          'step_time_median_ms', 'compile_s', 'flops_per_step',
          'memory_per_device_bytes', 'final_loss', 'batch_fit')
  return {'case': case, 'device_kind': result['device_kind'],
          'device_count': result['device_count'], 'dtype': result['dtype'],
          **{k: rec.get(k) for k in keep},
          'peak_tflops_per_device': peak, 'peak_source': source,
          'mfu': accel.mfu(rec['flops_per_step'], step_s, peak,
                           result['device_count'])}


def augment_share(result: dict, done: dict) -> dict[str, Any]:
  """Each case's step time without augmentation against the step with it."""
  shares = {}
  for rec in result['cases']:
    name = 'bench_r18' if rec['case'] == 'r18_32' else 'bench_r50'
    with_aug = done.get(name, {}).get('step_time_median_ms')
    without = rec['step_time_median_ms']
    same = done.get(name, {}).get('global_batch') == rec['global_batch']
    shares[rec['case']] = {
        'global_batch': rec['global_batch'], 'step_ms_with': with_aug,
        'step_ms_without': without,
        'share': (1.0 - without / with_aug) if with_aug and same else None}
  return {'cases': shares}


def input_summary(result: dict, done: dict) -> dict[str, Any]:
  """Host input images/s at 224 px against what the r50 step consumes."""
  pipe = result['jpeg_500x375_host_crop_224']['pipeline']
  step_rate = done.get('bench_r50', {}).get('images_per_sec')
  cores = result['cores_used']
  need = (None if step_rate is None
          else step_rate * pipe['cpu_ms_per_image'] / 1e3)
  return {'cores_used': cores, 'input_images_per_sec': pipe['images_per_sec'],
          'cpu_ms_per_image': pipe['cpu_ms_per_image'],
          'step_images_per_sec': step_rate,
          'keeps_up': (None if step_rate is None
                       else pipe['images_per_sec'] >= step_rate),
          # Cores the decoding needs at the step's rate (CPU time per image
          # x images/s; assumes it scales with cores).
          'cores_needed': need}


def demo_summary(stdout: str, workdir: str) -> dict[str, Any]:
  """The demo's device line and its final evaluation record."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    final = json.loads(f.read().splitlines()[-1])
  start = re.search(r'^simclr_jax: .* on (\d+) (\w+) device\(s\)', stdout, re.M)
  keys = ('final_knn_accuracy', 'final_probe_accuracy',
          'final_knn_accuracy_random_init', 'final_probe_accuracy_random_init',
          'train_seconds')
  return {'ok': bool(final.get('final')), 'final_step': final.get('step'),
          'devices': f'{start.group(1)} {start.group(2)}' if start else None,
          **{k: final.get(k) for k in keys}}


def pytest_summary(stdout: str) -> dict[str, Any]:
  """Counts from pytest's last line ('3 passed, 1 skipped in 9.1s')."""
  counts = {k: int(n) for n, k in re.findall(
      r'(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)', stdout)}
  return {'ok': counts.get('passed', 0) > 0 and not counts.get('failed'),
          'counts': counts}


def make_steps(args: argparse.Namespace) -> list[Step]:
  """The check's steps, in order, from the command line."""
  py, quick = sys.executable, args.quick
  peak = ([f'--peak_tflops={args.peak_tflops}'] if args.peak_tflops else [])
  cache = {'JAX_COMPILATION_CACHE_DIR': args.cache_dir}
  bench = [py, 'bench/train_bench.py', '--dtype=bfloat16',
           f'--steps={args.bench_steps}', '--warmup=2', *peak] + (
               ['--quick'] if quick else [])
  r50_batch = lambda done: (done.get('bench_r50', {}).get('global_batch') or
                            args.batch_r50)
  demo_dir = os.path.join(args.out_dir, 'demo')

  as_json = lambda out: last_json(out) or {}
  steps = [
      Step('env', 60, lambda d: [py, 'bench/gpu_check.py', '--probe', *peak],
           lambda out, d: as_json(out), needs_gpu=False),
      Step('tests', 200, lambda d: [
          py, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
          *(QUICK_TESTS if quick else TESTS)],
           lambda out, d: pytest_summary(out),
           env={'SIMCLR_TEST_ACCELERATOR': '1',
                'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'}),
      Step('demo', 120, lambda d: [
          py, 'main.py', '--config=configs/demo.py', f'--workdir={demo_dir}',
          *(QUICK_DEMO if quick else [])],
           lambda out, d: demo_summary(out, demo_dir),
           # A fresh run, not a resume of the last check's.
           before=lambda: shutil.rmtree(demo_dir, ignore_errors=True)),
      Step('bench_r18', 100, lambda d: bench + [
          '--cases=r18_32', f'--batch_r18={args.batch_r18}'],
           lambda out, d: bench_summary(last_json(out), 'r18_32',
                                        args.peak_tflops), env=cache),
      Step('bench_r50', 200, lambda d: bench + [
          '--cases=r50_224', f'--batch_r50={args.batch_r50}', '--fit_batch'],
           lambda out, d: bench_summary(last_json(out), 'r50_224',
                                        args.peak_tflops), env=cache),
      Step('input', 90, lambda d: [
          py, 'bench/input_bench.py', '--photos_only',
          *(['--quick'] if quick else ['--steps=100'])],
           lambda out, d: input_summary(last_json(out), d)),
      Step('augment_share', 150, lambda d: bench + [
          '--no_augment', '--cases=r18_32,r50_224',
          f'--batch_r18={args.batch_r18}', f'--batch_r50={r50_batch(d)}',
          '--fit_batch'],
           lambda out, d: augment_share(last_json(out), d), env=cache),
  ]
  return [s for s in steps if s.name in args.only]


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--total_s', type=float, default=480.0,
                 help='the whole check ends within this many seconds')
  p.add_argument('--only', default=','.join(STEPS),
                 help=f'comma-separated steps of: {", ".join(STEPS)}')
  p.add_argument('--peak_tflops', type=float, default=None,
                 help='peak dense bfloat16 TFLOP/s of one device for the MFU '
                      "(default: bench/accel.py's table by device_kind)")
  p.add_argument('--batch_r18', type=int, default=512)
  p.add_argument('--batch_r50', type=int, default=512,
                 help='the first ResNet-50 batch tried (halved until it fits)')
  p.add_argument('--bench_steps', type=int, default=10,
                 help='timed steps per train_bench case')
  p.add_argument('--out_dir', default='/tmp/simclr_gpu_check',
                 help="each step's stdout/stderr, the demo's workdir and "
                      'gpu_check.jsonl')
  p.add_argument('--cache_dir', default='/tmp/simclr_gpu_check_jax_cache',
                 help="JAX's persistent compilation cache for the benches (a "
                      'rerun skips their compiles)')
  p.add_argument('--quick', action='store_true',
                 help='every step tiny (a smoke run of the script itself)')
  p.add_argument('--allow_cpu', action='store_true',
                 help='run the steps after env without a GPU')
  p.add_argument('--dry_run', action='store_true',
                 help='print each step\'s command as JSON; run nothing')
  p.add_argument('--probe', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.only = [s.strip() for s in args.only.split(',') if s.strip()]
  if not args.only or set(args.only) - set(STEPS):
    p.error(f'--only must name some of {", ".join(STEPS)}, got {args.only}')
  if args.total_s <= 0 or args.bench_steps < 1:
    p.error('--total_s and --bench_steps must be positive')
  if args.peak_tflops is not None and args.peak_tflops <= 0:
    p.error(f'--peak_tflops must be positive, got {args.peak_tflops}')
  return args


def main(argv: list[str] | None = None) -> int:
  args = _parse_args(argv)
  if args.probe:
    print(json.dumps(probe(args.peak_tflops)), flush=True)
    return 0
  steps = make_steps(args)
  if args.dry_run:
    for s in steps:
      print(json.dumps({'step': s.name, 'argv': s.argv({}), 'env': s.env,
                        'cap_s': s.cap_s}), flush=True)
    return 0
  return check(steps, args.total_s, args.out_dir, args.allow_cpu)


def check(steps: list[Step], total_s: float, out_dir: str,
          allow_cpu: bool = False) -> int:
  """Runs `steps` with SIGTERM/SIGINT handled, one JSON line each, then the
  summary line (also written to out_dir/gpu_check.jsonl). Returns the exit
  code: 0 all ran and passed, 1 not, 130 stopped by a signal."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'gpu_check.jsonl'), 'w') as log:

    def emit(record):
      line = json.dumps(record)
      print(line, flush=True)
      log.write(line + '\n')
      log.flush()

    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, _on_signal)
    t0 = time.monotonic()
    done = run_steps(steps, total_s, emit, allow_cpu, out_dir)
    ran = [r for r in done.values() if 'skipped' not in r]
    summary_ok = bool(ran) and len(ran) == len(done) and all(
        r['ok'] for r in ran)
    emit({'step': 'summary', 'seconds': round(time.monotonic() - t0, 2),
          'ok': summary_ok,
          'failed': [r['step'] for r in ran if not r['ok']],
          'skipped': [r['step'] for r in done.values() if 'skipped' in r],
          'device_kind': done.get('env', {}).get('device_kind'),
          'out_dir': out_dir})
  if any(str(r.get('skipped', '')).startswith('signal') or
         'stopped by signal' in r.get('error', '') for r in done.values()):
    return 130
  return 0 if summary_ok else 1


if __name__ == '__main__':
  sys.exit(main())
