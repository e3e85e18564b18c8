"""The fault-injection bench, in small: `bench/faults.py --quick` runs a real
pretraining through main.py and, on one workdir, kills it with SIGKILL while
it saves a checkpoint, stops it with SIGTERM, fills its file-size limit
during a save and zeroes a file of its latest checkpoint, restarting after
each; the run must end bit-identical to an uninterrupted one, each fault
told in one line. About 1.5 minutes on 2 cores; the full count (20 kills,
tmpfs, read-only workdir, every kind of damage) is the bench's own run."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_fault_bench_recovers_every_fault_bit_identical():
  result = subprocess.run(
      [sys.executable, 'bench/faults.py', '--quick'], cwd=ROOT,
      capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  record = json.loads(result.stdout.strip().splitlines()[-1])
  totals, cases = record['totals'], record['cases']
  assert totals['faults_injected'] == 4, record
  assert totals['recovered'] == 4, result.stderr[-4000:]
  assert totals['final_bytes_differing'] == 0
  assert totals['final_steps_differing'] == 0
  assert totals['tmp_bytes_left'] == 0 and not totals['cases_in_error']
  kill = cases['kill9']
  assert kill['by_moment']['save'] == 1  # Landed while a save was written.
  # Back to the checkpoint before the one being written: one period (2
  # steps), plus any step finished while that save was in flight.
  every = record['run']['checkpoint_every_steps']
  assert every <= kill['steps_lost_per_kill']['max'] <= 2 * every
  assert cases['sigterm']['steps_lost'] == 0
  full = cases['disk_full_rlimit']
  assert full['exit_status'] == 1 and full['stderr_lines'] == 1
  assert 'File too large' in full['line'] and 'is intact' in full['line']
  assert full['resumed_from'] == full['checkpoint_before_fault']
  damaged = cases['damaged_file_zeroed']
  assert damaged['stderr_lines'] == 1 and 'is damaged' in damaged['line']
