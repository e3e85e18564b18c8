"""Console progress and metrics.jsonl."""

import io
import json

from simclr_jax import reporting


def test_progress_off_a_terminal_prints_only_logging_steps():
  stream = io.StringIO()
  progress = reporting.Progress(100, stream=stream)
  progress.update(1)
  progress.update(2, {'loss': 3.0})
  assert stream.getvalue() == ''
  progress.update(25, {'loss': 4.25}, 512.0, force=True)
  progress.close()
  lines = stream.getvalue().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith('step 25/100 | loss 4.2500 | 512 img/s | ')
  assert lines[0].endswith(' left')


def test_progress_disabled_prints_nothing():
  stream = io.StringIO()
  progress = reporting.Progress(10, stream=stream, enabled=False)
  progress.update(10, {'loss': 1.0}, 1.0, force=True)
  assert stream.getvalue() == ''


def test_metrics_jsonl_round_trip(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  writer = reporting.MetricsWriter(str(tmp_path), enabled=True, tensorboard=False)
  writer.write(1, {'loss': np.float32(2.5), 'acc': np.asarray(0.25)})
  writer.write(2, {'probe_accuracy': 0.5}, final=True)
  writer.close()
  records = reporting.read_metrics(str(tmp_path))
  assert records == [{'step': 1, 'loss': 2.5, 'acc': 0.25},
                     {'step': 2, 'probe_accuracy': 0.5, 'final': True}]
  with open(tmp_path / 'metrics.jsonl') as f:
    assert all(json.loads(line) for line in f)


def test_metrics_writer_disabled_writes_nothing(tmp_path):
  writer = reporting.MetricsWriter(str(tmp_path / 'w'), enabled=False)
  record = writer.write(3, {'loss': 1.0})
  assert record == {'step': 3, 'loss': 1.0}
  assert reporting.read_metrics(str(tmp_path / 'w')) == []


def test_earlier_train_seconds_is_the_last_recorded_total(tmp_path):
  assert reporting.earlier_train_seconds(str(tmp_path)) == 0.0
  w = reporting.MetricsWriter(str(tmp_path), enabled=True)
  w.write(10, {'loss': 1.0})
  w.write(20, {}, preempted=True, train_seconds=12.5)
  w.write(30, {'loss': 0.5})  # A later invocation, killed: no total.
  w.close()
  assert reporting.earlier_train_seconds(str(tmp_path)) == 12.5
