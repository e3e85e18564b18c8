"""A workdir belongs to one run: lock, damaged checkpoints, changed configs,
unwritable workdirs, signals and undecodable images, each through main.py as
a user meets them, each told in a few lines: stderr holds at most
`MAX_NOISE` lines besides progress (no traceback floods from orbax's reads
or libjpeg).

Slow-ish (each case starts main.py; about a minute in all on 2 cores): the
runs share JAX's persistent compilation cache.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    '--config=configs/demo.py',
    '--config.image_size=8', '--config.data.resize_to=8',
    '--config.model.base_width=4', '--config.model.proj_out_dim=8',
    '--config.train.global_batch_size=32',
    '--config.train.checkpoint_every_steps=2',
    '--config.train.log_every_steps=2',
    '--config.eval.linear_probe=false',
]


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  env = dict(os.environ)
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['JAX_COMPILATION_CACHE_DIR'] = str(tmp_path_factory.mktemp('jax_cache'))
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


MAX_NOISE = 5
PROGRESS = re.compile(r'^(\[[#.]+\] )?step \d+/\d+ ')


def _noise(stderr):
  """The lines of `stderr` that are not progress lines."""
  return [l for l in stderr.replace('\r', '\n').splitlines()
          if l.strip() and not PROGRESS.match(l)]


def _few_lines(stderr):
  noise = _noise(stderr)
  assert len(noise) <= MAX_NOISE, '\n'.join(noise[:40])
  assert 'Traceback' not in stderr, stderr[-3000:]
  return noise


def _args(workdir, steps, *extra):
  return [sys.executable, 'main.py', f'--workdir={workdir}', *TINY,
          f'--config.train.num_steps={steps}', *extra]


def _run(env, workdir, steps, *extra, timeout=300):
  return subprocess.run(_args(workdir, steps, *extra), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _start(env, workdir, steps, *extra):
  return subprocess.Popen(_args(workdir, steps, *extra), cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _one_error_line(result):
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith('error: ')]
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr
  _few_lines(result.stderr)
  return errors[0]


def _steps_saved(workdir):
  path = os.path.join(workdir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.05)
  return False


def test_second_run_refused_and_stale_lock_does_not_block(env, tmp_path):
  workdir = str(tmp_path / 'w')
  first = _start(env, workdir, 10_000)
  try:
    assert _wait_for(lambda: os.path.isdir(os.path.join(workdir, 'checkpoints'))
                     and _steps_saved(workdir), first)
    second = _run(env, workdir, 10_000)
    line = _one_error_line(second)
    assert 'in use by another run' in line and f'pid {first.pid}' in line
  finally:
    first.kill()  # SIGKILL: the lock is left behind, but not held.
    first.communicate()
  assert os.path.exists(os.path.join(workdir, 'run.lock'))
  # A new run is not blocked by the dead run's lock file.
  resumed = _run(env, workdir, _steps_saved(workdir)[-1] + 2,
                 '--config.train.allow_config_change=true')
  assert resumed.returncode == 0, resumed.stderr[-3000:]


def _largest_file(folder):
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def test_damaged_latest_checkpoint_resumes_from_previous(env, tmp_path):
  workdir = str(tmp_path / 'w')
  assert _run(env, workdir, 6).returncode == 0
  assert _steps_saved(workdir)[-2:] == [4, 6]
  # The largest file holds many arrays: orbax's concurrent reads of all of
  # them fail, which used to print dozens of tracebacks.
  os.remove(_largest_file(os.path.join(workdir, 'checkpoints', '6')))
  result = _run(env, workdir, 6)
  assert result.returncode == 0, result.stderr[-3000:]
  noise = _few_lines(result.stderr)
  assert len(noise) == 1 and 'checkpoint of step 6 is damaged' in noise[0]
  assert os.path.join(workdir, 'damaged_checkpoints', '6') in noise[0]
  assert 'resuming at step 4' in result.stdout
  assert _steps_saved(workdir)[-1] == 6
  assert os.listdir(os.path.join(workdir, 'damaged_checkpoints')) == ['6']
  # An evaluation reading a damaged checkpoint (init_from) is one line too.
  os.remove(os.path.join(workdir, 'checkpoints', '6', 'default', '_METADATA'))
  linear = _run(env, str(tmp_path / 'linear'), 6, '--config.mode=linear_eval',
                f'--config.init_from={workdir}')
  line = _one_error_line(linear)
  assert f'the checkpoint of {workdir!r} cannot be read' in line, line
  assert '_METADATA' in line, line


def test_changed_batch_size_on_resume_is_refused(env, tmp_path):
  workdir = str(tmp_path / 'w')
  first = _start(env, workdir, 10_000)
  try:
    assert _wait_for(lambda: os.path.isdir(os.path.join(workdir, 'checkpoints'))
                     and _steps_saved(workdir), first)
  finally:
    first.kill()
    first.communicate()
  changed = _run(env, workdir, 10_000, '--config.train.global_batch_size=64')
  line = _one_error_line(changed)
  assert 'train.global_batch_size 32 -> 64' in line
  # Free fields (logging, checkpoints, devices) may change.
  free = _run(env, workdir, _steps_saved(workdir)[-1] + 2,
              '--config.train.allow_config_change=true',
              '--config.train.log_every_steps=1')
  assert free.returncode == 0, free.stderr[-3000:]
  history = sorted(os.listdir(os.path.join(workdir, 'config_history')))
  assert len(history) == 2 and history[0].startswith('000-step0')


def test_unwritable_workdir_is_one_line(env, tmp_path):
  result = _run(env, '/proc/no_such_dir/w', 2)
  assert 'cannot create or write the workdir' in _one_error_line(result)


def test_signals_acknowledged_at_once_second_stops_now(env, tmp_path):
  workdir = str(tmp_path / 'w')
  proc = _start(env, workdir, 10_000)
  err = []
  reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
  reader.start()
  try:
    assert _wait_for(lambda: os.path.isdir(os.path.join(workdir, 'checkpoints'))
                     and _steps_saved(workdir), proc)
    proc.send_signal(signal.SIGTERM)
    # The acknowledgement comes at once (not at the end of the step); the
    # second signal, sent while the first is being handled, stops the run now.
    assert _wait_for(lambda: any('SIGTERM received' in l for l in err), proc,
                     timeout=10), ''.join(err)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    reader.join(timeout=10)
  finally:
    if proc.poll() is None:
      proc.kill()
  text = ''.join(err)
  if proc.returncode == 0:  # The first signal's save finished first.
    assert 'stopped by a signal' in proc.stdout.read()
  else:
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert 'second SIGTERM: stopping now without saving' in text
  assert 'SIGTERM received: saving a checkpoint at the end of step' in text
  assert len(_noise(text)) <= MAX_NOISE, text[-3000:]


def _undecodable_folder(root, n=40):
  """Class folders of JPEGs with intact markers and junk bodies."""
  from images import damaged_jpeg  # pylint: disable=g-import-not-at-top
  for i in range(n):
    os.makedirs(os.path.join(root, f'c{i % 2}'), exist_ok=True)
    with open(os.path.join(root, f'c{i % 2}', f'{i:03d}.jpg'), 'wb') as f:
      f.write(damaged_jpeg(i))


def _good_folder(root, n):
  """Class folders c0, c1 of small decodable JPEGs."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for i in range(n):
    rng = np.random.default_rng(1000 + i)
    os.makedirs(os.path.join(root, f'c{i % 2}'), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(
        os.path.join(root, f'c{i % 2}', f'g{i:03d}.jpg'), quality=90)


@pytest.mark.parametrize('cache', ['false', 'true'])
def test_folder_where_nothing_decodes_is_one_line(env, tmp_path, cache):
  # Used to spin at step 0 forever (uncached), printing libjpeg lines, or to
  # end in an IndexError (cached).
  data_dir = str(tmp_path / 'junk')
  _undecodable_folder(data_dir)
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/cifar10_folder.py',
       f'--workdir={tmp_path / "w"}', f'--config.data.data_dir={data_dir}',
       f'--config.data.cache={cache}', '--config.model.depth=18',
       '--config.model.base_width=4', '--config.image_size=8',
       '--config.data.resize_to=8', '--config.train.global_batch_size=16',
       '--config.train.num_steps=2'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  line = _one_error_line(result)
  assert 'can be decoded' in line and data_dir in line, line


def test_undecodable_files_among_good_ones_are_counted_not_flooded(
    env, tmp_path):
  """Uncached: libjpeg's lines go to the workdir, the files to a list."""
  import shutil  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / 'mixed')
  _undecodable_folder(data_dir, n=30)
  bad = sorted(os.path.join(d, f) for d, _, fs in os.walk(data_dir)
               for f in fs)
  good_dir = str(tmp_path / 'good')
  _good_folder(good_dir, n=60)
  for c in os.listdir(good_dir):
    for f in os.listdir(os.path.join(good_dir, c)):
      shutil.copy(os.path.join(good_dir, c, f), os.path.join(data_dir, c))
  workdir = str(tmp_path / 'w')
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/cifar10_folder.py',
       f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
       '--config.data.cache=false', '--config.model.depth=18',
       '--config.model.base_width=4', '--config.image_size=8',
       '--config.data.resize_to=8', '--config.train.global_batch_size=16',
       '--config.train.num_steps=4', '--config.eval.linear_probe=false',
       '--config.eval.compare_random_init=false'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-3000:]
  noise = _few_lines(result.stderr)
  listing = os.path.join(workdir, 'undecodable.txt')
  with open(listing) as f:
    listed = sorted(l.split('\t')[0] for l in f.read().splitlines())
  assert set(listed) <= set(bad) and len(listed) == len(set(listed))
  # Training and the final kNN pass together tried every file.
  assert listed == bad
  assert any(f'{len(bad)} undecodable file(s) in all, listed in {listing}'
             in l for l in noise), noise
  log = os.path.join(workdir, 'decoder_messages.log')
  assert any(log in l for l in noise), noise
  with open(log) as f:
    assert f.read().strip()  # libjpeg's own words are kept, not lost.


def test_unprepared_imagenet_gives_manual_advice_in_one_line(env, tmp_path):
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/imagenet.py',
       f'--workdir={tmp_path / "w"}', f'--config.data.data_dir={tmp_path}',
       '--config.train.num_steps=1'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  line = _one_error_line(result)
  assert result.stderr.strip() == line  # No TFDS warning before it.
  assert 'download = True' not in line
  assert 'TFDS cannot download it' in line and 'ILSVRC2012_img_train.tar' in line
  assert (f'tfds build imagenet2012 --data_dir={tmp_path} '
          f'--manual_dir={tmp_path}/downloads/manual') in line
