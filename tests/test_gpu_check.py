"""bench/gpu_check.py's own logic, on any CPU: its JSON lines, its MFU
arithmetic and peak table, its time bound, its signal handling, and that the
commands it would run still parse (no GPU needed, none used)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'bench')
sys.path.insert(0, BENCH)

import accel  # pylint: disable=g-import-not-at-top,wrong-import-position
import gpu_check  # pylint: disable=g-import-not-at-top,wrong-import-position

PY = sys.executable


def _lines(text):
  """Every non-empty line, each parsed as JSON (fails on any other line)."""
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def _py_step(name, code, cap_s=30.0):
  return gpu_check.Step(name, cap_s, lambda d: [PY, '-c', code],
                        lambda out, d: gpu_check.last_json(out) or {},
                        needs_gpu=False)


def test_mfu_is_flops_over_time_over_peak_of_all_devices():
  # 1 PFLOP in 0.5 s on 2 devices of 1000 TFLOP/s: 2e15 / 2e15 = 1.
  assert accel.mfu(1e15, 0.5, 1000.0, 2) == pytest.approx(1.0)
  assert accel.mfu(3.956e14, 1.0, 989.0) == pytest.approx(0.4)
  assert accel.mfu(None, 1.0, 989.0) is None
  assert accel.mfu(1e12, 1.0, None) is None
  with pytest.raises(ValueError):
    accel.mfu(1e12, 0.0, 989.0)


@pytest.mark.parametrize('kind, bf16', [
    ('NVIDIA H100 80GB HBM3', 989.0), ('NVIDIA H100 PCIe', 756.0),
    ('NVIDIA H100 NVL', 835.0), ('NVIDIA H200', 989.0),
    ('NVIDIA GH200 480GB', 989.0), ('NVIDIA A100-SXM4-80GB', 312.0),
    ('NVIDIA A100-PCIE-40GB', 312.0), ('NVIDIA L4', 121.0),
    ('NVIDIA L40S', 362.0), ('NVIDIA A10G', None), ('TPU v4', 275.0),
    ('cpu', None), ('Tesla V100-SXM2-16GB', None)])
def test_peak_table_lookup(kind, bf16):
  assert accel.peak_tflops(kind, 'bfloat16') == bf16
  peak, source = gpu_check.peak_for(kind, 'bfloat16', None)
  assert peak == bf16 and source
  assert gpu_check.peak_for(kind, 'bfloat16', 500.0) == (500.0,
                                                         '--peak_tflops')


def test_bench_records_carry_mfu_augment_share_and_input_rate():
  """train_bench's and input_bench's JSON (their real keys) to the check's
  records: MFU from cost-analysis FLOPs over the table's H100 peak."""
  bench = {'device_kind': 'NVIDIA H100 80GB HBM3', 'device_count': 1,
           'dtype': 'bfloat16', 'cases': [{
               'case': 'r50_224', 'global_batch': 256, 'per_device_batch': 256,
               'images_per_sec': 2000.0, 'step_time_median_ms': 128.0,
               'compile_s': 50.0, 'flops_per_step': 6.33e15,
               'memory_per_device_bytes': 5e10, 'final_loss': 11.0,
               'batch_fit': {'tried': [512, 256], 'fits': 256}}]}
  rec = gpu_check.bench_summary(bench, 'r50_224', None)
  assert rec['peak_tflops_per_device'] == 989.0
  assert 'no sparsity' in rec['peak_source'] and "'H100'" in rec['peak_source']
  assert rec['mfu'] == pytest.approx(6.33e15 / 0.128 / 989e12)
  assert rec['batch_fit']['fits'] == 256
  done = {'bench_r50': rec}
  no_aug = {'cases': [dict(bench['cases'][0], step_time_median_ms=96.0)]}
  share = gpu_check.augment_share(no_aug, done)['cases']['r50_224']
  assert share['share'] == pytest.approx(0.25)
  no_aug['cases'][0]['global_batch'] = 128  # Another batch: no share.
  assert gpu_check.augment_share(no_aug, done)['cases']['r50_224'][
      'share'] is None
  host = {'cores_used': 16, 'jpeg_500x375_host_crop_224': {'pipeline': {
      'images_per_sec': 1500.0, 'cpu_ms_per_image': 10.0}}}
  got = gpu_check.input_summary(host, done)
  assert got['keeps_up'] is False and got['cores_needed'] == pytest.approx(20)


def test_output_parsers():
  text = 'log line\n{\n "a": 1\n}\nnoise {"x": 2}\n{"b": 2}\n'
  assert gpu_check.last_json(text) == {'b': 2}
  assert gpu_check.last_json('no json') is None
  got = gpu_check.pytest_summary('..s\n12 passed, 3 skipped in 9.1s\n')
  assert got == {'ok': True, 'counts': {'passed': 12, 'skipped': 3}}
  assert not gpu_check.pytest_summary('1 failed, 2 passed in 3s')['ok']


def test_demo_record_reads_the_final_line_of_metrics(tmp_path):
  final = {'step': 150, 'final_knn_accuracy': 0.95, 'final': True,
           'train_seconds': 20.0}
  (tmp_path / 'metrics.jsonl').write_text(
      json.dumps({'step': 150, 'loss': 11.0}) + '\n' + json.dumps(final))
  out = 'simclr_jax: 1438 training images, 150 steps of 256 on 1 gpu device(s)\n'
  got = gpu_check.demo_summary(out, str(tmp_path))
  assert got['ok'] and got['devices'] == '1 gpu' and got['final_step'] == 150
  assert got['final_knn_accuracy'] == 0.95 and 'step' not in got
  # A parse cannot rename its step.
  step = gpu_check.Step('demo', 30, lambda d: ['true'],
                        lambda out, d: {'step': 7, 'x': 1}, needs_gpu=False)
  record, _ = gpu_check._run_one(step, 30, {}, None)  # pylint: disable=protected-access
  assert record['step'] == 'demo' and record['x'] == 1 and record['ok']


def test_a_hanging_step_is_cut_off_and_the_rest_skipped(tmp_path,
                                                        monkeypatch):
  monkeypatch.setattr(gpu_check, 'MIN_STEP_S', 0.5)
  pid_file = tmp_path / 'pid'
  # The hang is a grandchild (bash runs sleep): the whole group must go.
  hang = gpu_check.Step('hang', 60.0, lambda d: [
      'bash', '-c', f'sleep 60 & echo $! > {pid_file}; wait'],
                        needs_gpu=False)
  steps = [_py_step('first', 'print(\'{"value": 3}\')'), hang,
           _py_step('late', 'print(1)')]
  records = []
  t0 = time.monotonic()
  done = gpu_check.run_steps(steps, 3.0, records.append, out_dir=str(tmp_path))
  elapsed = time.monotonic() - t0
  assert elapsed < 3.0 + 2.0, elapsed
  assert [r['step'] for r in records] == ['first', 'hang', 'late']
  assert records[0]['ok'] and records[0]['value'] == 3
  assert set(records[0]) >= {'step', 'ok', 'seconds', 'timeout_s'}
  assert not records[1]['ok'] and 'timed out' in records[1]['error']
  assert records[2] == {'step': 'late', 'skipped': 'deadline'}
  assert done['first']['seconds'] < 3.0
  json.dumps(records)  # Every record is JSON.
  assert (tmp_path / 'first.stdout').read_text().strip() == '{"value": 3}'
  pid = int(pid_file.read_text())
  for _ in range(40):
    if not _running(pid):
      break
    time.sleep(0.05)
  else:
    pytest.fail(f'the hanging grandchild {pid} survived')


def _running(pid: int) -> bool:
  """Whether `pid` still runs. A killed orphan stays a zombie until the
  container's PID 1 reaps it, which some CI inits never do: a zombie has
  stopped running, so it counts as gone (os.kill(pid, 0) would not say so)."""
  if not os.path.isdir('/proc/self'):  # Not Linux: a signal probe.
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    return True
  try:
    with open(f'/proc/{pid}/stat') as f:
      state = f.read().rsplit(')', 1)[1].split()[0]
  except FileNotFoundError:
    return False
  return state not in ('Z', 'X')


def test_sigterm_stops_the_running_step_and_skips_the_rest(tmp_path):
  started = tmp_path / 'started'
  script = f'''
import sys
sys.path.insert(0, {BENCH!r})
import gpu_check
code = ('import time; open(' + repr({str(started)!r}) +
        ', "w").close(); time.sleep(60)')
steps = [gpu_check.Step('sleep', 60, lambda d: [sys.executable, '-c', code],
                        needs_gpu=False),
         gpu_check.Step('after', 60, lambda d: ['true'], needs_gpu=False)]
sys.exit(gpu_check.check(steps, 100, {str(tmp_path)!r}))
'''
  proc = subprocess.Popen([PY, '-c', script], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  for _ in range(400):  # The driver's handlers are set once its step runs.
    if started.exists():
      break
    time.sleep(0.05)
  t0 = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=20)
  assert time.monotonic() - t0 < 6.0
  assert proc.returncode == 130, err
  lines = _lines(out)
  assert [r['step'] for r in lines] == ['sleep', 'after', 'summary']
  assert lines[0]['error'] == 'stopped by signal 15'
  assert lines[1] == {'step': 'after', 'skipped': 'signal 15'}
  assert lines[2]['ok'] is False
  assert (tmp_path / 'sleep.stdout').exists()


def test_cli_on_a_cpu_runs_env_and_skips_the_gpu_steps(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [PY, os.path.join(BENCH, 'gpu_check.py'), '--only=env,bench_r18',
       '--total_s=60', f'--out_dir={tmp_path}'],
      capture_output=True, text=True, timeout=90, env=env, cwd=ROOT)
  assert result.returncode == 1, result.stderr[-2000:]
  lines = _lines(result.stdout)
  assert [r['step'] for r in lines] == ['env', 'bench_r18', 'summary']
  env_rec = lines[0]
  assert env_rec['ok'] and env_rec['platform'] == 'cpu'
  assert env_rec['peak_tflops_bf16'] is None and env_rec['device_count'] >= 1
  assert lines[1]['skipped'].startswith('no gpu')
  assert lines[2]['skipped'] == ['bench_r18']
  assert _lines((tmp_path / 'gpu_check.jsonl').read_text()) == lines


def test_the_commands_it_would_run_still_parse(capsys):
  """--dry_run: the train_bench flags parse, the tests and configs exist."""
  import train_bench  # pylint: disable=g-import-not-at-top
  assert gpu_check.main(['--dry_run']) == 0
  steps = {r['step']: r for r in _lines(capsys.readouterr().out)}
  assert list(steps) == list(gpu_check.STEPS)
  for name in ('bench_r18', 'bench_r50', 'augment_share'):
    argv = steps[name]['argv']
    assert argv[1] == 'bench/train_bench.py'
    args = train_bench._parse_args(argv[2:])  # pylint: disable=protected-access
    assert args.dtype == 'bfloat16'
  assert train_bench._parse_args(steps['bench_r50']['argv'][2:]).fit_batch  # pylint: disable=protected-access
  for node in gpu_check.TESTS + gpu_check.QUICK_TESTS:
    path, _, test = node.partition('::')
    with open(os.path.join(ROOT, path)) as f:
      assert not test or re.search(rf'^def {test}\(', f.read(), re.M), node
  assert os.path.exists(os.path.join(ROOT, steps['demo']['argv'][2].split(
      '=')[1]))
  assert sum(s['cap_s'] for s in steps.values()) >= 480  # The deadline binds.


def test_fit_batch_halves_on_out_of_memory(monkeypatch):
  """train_bench --fit_batch: the largest batch from the given one down
  that does not run out of memory; other errors are not retried."""
  import types  # pylint: disable=g-import-not-at-top
  import train_bench  # pylint: disable=g-import-not-at-top
  seen = []

  def fake_run_case(case, args, mesh, peak):
    del case, mesh, peak
    seen.append(args.batch_r50)
    if args.batch_r50 > 128:
      raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                         'allocate 123 bytes.')
    return {'global_batch': args.batch_r50}

  monkeypatch.setattr(train_bench, 'run_case', fake_run_case)
  mesh = types.SimpleNamespace(size=2)
  args = train_bench._parse_args(['--batch_r50=512', '--fit_batch'])  # pylint: disable=protected-access
  record = train_bench.fitted_run('r50_224', args, mesh, None)
  assert seen == [512, 256, 128] and args.batch_r50 == 512
  assert record['batch_fit']['tried'] == [512, 256, 128]
  assert record['batch_fit']['fits'] == 128
  assert 'RESOURCE_EXHAUSTED' in record['batch_fit']['last_error']
  assert accel.is_out_of_memory('XlaRuntimeError: RESOURCE_EXHAUSTED: x')
  assert not accel.is_out_of_memory('INVALID_ARGUMENT: shapes')
  args.fit_batch = False
  seen.clear()
  with pytest.raises(RuntimeError, match='RESOURCE_EXHAUSTED'):
    train_bench.fitted_run('r50_224', args, mesh, None)
  assert seen == [512]


def test_a_failing_or_missing_command_is_one_line_not_a_crash(tmp_path):
  steps = [_py_step('fails', 'import sys; sys.exit(3)'),
           gpu_check.Step('missing', 30, lambda d: [str(tmp_path / 'nothing')],
                          needs_gpu=False),
           _py_step('garbled', 'print("not json")')]
  steps[2].parse = lambda out, d: gpu_check.bench_summary(
      gpu_check.last_json(out), 'r18_32', None)
  records = []
  gpu_check.run_steps(steps, 60, records.append)
  assert records[0]['error'] == 'exit code 3' and not records[0]['ok']
  assert records[1]['error'].startswith('could not start')
  assert records[2]['error'].startswith('unreadable output')
  assert all(set(r) >= {'step', 'ok', 'seconds', 'stderr_tail'}
             for r in records)
