"""Image files that fail to decode: recorded, listed once, counted.

NumPy and the standard library only. A `DecodeFailures` belongs to one
source and holds which of its files (indices into its path list) are known
not to decode, so that none is decoded again. They are listed, one path a
line, in `<workdir>/undecodable.txt` once a run has called `list_in(workdir)`
(train.py and evaluate/runs.py do when they lock the workdir); the console
gets the first one by name and then a count at most every
`COUNT_EVERY_SECONDS`, never a line per file. `DataError` is the one-line
error of data that cannot be used at all (every image fails): a
`config_lib.ConfigError`, so main.py prints it as one line and exits with
status 2.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Sequence

import numpy as np
from absl import logging

from simclr_jax import config_lib

# Decode failures in a row, with no image decoded yet, after which a source
# is declared unreadable (rather than trying every file of a folder of junk).
GIVE_UP_AFTER = 16
# File names a summary line shows.
NAMES_SHOWN = 3
# At most one console line about new undecodable files in this many seconds.
COUNT_EVERY_SECONDS = 60.0
LIST_NAME = 'undecodable.txt'

_lock = threading.Lock()
_list_path: str | None = None  # Set by list_in(workdir).
_listed: set[str] = set()  # The files in the list (this run and earlier ones).
_console = {}


def _reset_console() -> None:
  _console.update(last=-float('inf'), unreported=0, total=0)


_reset_console()


def list_in(workdir: str | None) -> str | None:
  """From now on, undecodable files are listed in `workdir/undecodable.txt`.

  One line a file, `path<TAB>what happens to it`, each file once even over
  resumed runs. Also restarts the console's count. None stops listing.
  Returns the list's path.
  """
  global _list_path
  with _lock:
    _reset_console()
    _listed.clear()
    _list_path = None if workdir is None else os.path.join(
        os.path.abspath(workdir), LIST_NAME)
    if _list_path is not None and os.path.isfile(_list_path):
      with open(_list_path, errors='replace') as f:
        _listed.update(line.split('\t')[0] for line in f.read().splitlines())
  return _list_path


def report_total() -> None:
  """Ends a run's console count: one line with the total, if any went untold."""
  with _lock:
    unreported, total = _console['unreported'], _console['total']
    _console['unreported'] = 0
  if unreported:
    logging.warning('%d undecodable file(s) in all%s', total, _where())


def _where() -> str:
  """', listed in PATH' for a message, or '' when nothing is listed."""
  return f', listed in {_list_path}' if _list_path else ''


def list_files(names: Sequence[str], action: str) -> str:
  """Adds the files not yet listed to the list, without a console line.

  Returns ', listed in PATH' for a message (or '' when nothing is listed).
  """
  with _lock:
    new = [n for n in names if n not in _listed]
    _listed.update(new)
    if _list_path is not None and new:
      try:
        with open(_list_path, 'a') as f:
          f.writelines(f'{n}\t{action}\n' for n in new)
      except OSError:
        pass  # An unwritable workdir is reported where it is written.
  return _where()


def _report(names: Sequence[str], action: str) -> None:
  """Lists `names` and tells the console: the first by name, then counts."""
  where = list_files(names, action)
  with _lock:
    first = _console['total'] == 0
    _console['total'] += len(names)
    _console['unreported'] += len(names)
    now = time.monotonic()
    if not first and now - _console['last'] < COUNT_EVERY_SECONDS:
      return
    _console['last'], unreported = now, _console['unreported']
    _console['unreported'] = 0
    total = _console['total']
  if first:
    logging.warning('cannot decode %s: %s (%d undecodable file(s) so far%s; '
                    'more are counted here at most every %.0f s)', names[0],
                    action, total, where, COUNT_EVERY_SECONDS)
  else:
    logging.warning('%d undecodable file(s) so far (%d new)%s', total,
                    unreported, where)


class DataError(config_lib.ConfigError):
  """The data cannot be used, e.g. none of its images decodes (one line)."""


def examples(names: Sequence[str], total: int) -> str:
  """'a, b, c' or 'a, b, c and 7 more' of `total` named things."""
  shown = ', '.join(str(n) for n in names[:NAMES_SHOWN])
  more = total - min(len(names), NAMES_SHOWN)
  return shown + (f' and {more} more' if more > 0 else '')


def unreadable_records(e: Exception, what: str) -> DataError:
  """The one line of record files that cannot be read (a damaged TFRecord)."""
  cause = (str(getattr(e, 'message', '') or e).strip().splitlines() or [''])[0]
  # TensorFlow's wrapping: '{{function_node ...}} what [Op:IteratorGetNext]'.
  cause = re.sub(r'\{\{[^}]*\}\}\s*|\s*\[Op:.*$', '', cause)
  return DataError(
      f'the files of {what} cannot be read ({type(e).__name__}: '
      f'{cause[:200]}): they are damaged or incomplete; prepare the dataset '
      'again (for TFDS: delete its folder under data_dir and build it anew)')


def nothing_decodes(total: int, what: str, names: Sequence[str]) -> DataError:
  """The one-line error of `total` images of `what` of which none decodes.

  `names`: the files that were tried (some are shown).
  """
  return DataError(f'none of the {total} images of {what} can be decoded '
                   f'({examples(names, len(names))})')


def stop_error(names: Sequence[str]) -> DataError:
  """The one line of data.on_undecodable = 'stop': the images named."""
  return DataError(
      f'cannot decode {examples(names, len(names))} (data.on_undecodable = '
      "'stop'; with 'skip' such images are listed in undecodable.txt and left "
      'out)')


def undecodable(names: Sequence[str], action: str, stop: bool) -> None:
  """Images that failed to decode: listed and counted, or (`stop`) an error.

  Args:
    names: the files or records ('cifar10:train[17]'), each told once.
    action: what happens to them ('left out of the 'eval' split', ...).
    stop: data.on_undecodable == 'stop'.

  Raises:
    DataError: `stop`, naming them.
  """
  if not names:
    return
  if stop:
    raise stop_error(names)
  _report(list(names), action)


class DecodeFailures:
  """The files of a source that do not decode, by index into its paths.

  `record` is called from the thread that assembles batches (or evaluates);
  `is_bad` may be read from tf.data's generator threads at the same time.
  """

  def __init__(self, names: np.ndarray, stop: bool = False):
    """`names`: (N,) object array, the file of each index (for messages).

    `stop`: data.on_undecodable == 'stop': `record` raises `DataError`.
    """
    self.names = names
    self.stop = stop
    self.bad = np.zeros(len(names), bool)
    self._lock = threading.Lock()

  @property
  def count(self) -> int:
    return int(self.bad.sum())

  def bad_names(self) -> list[str]:
    return [str(self.names[i]) for i in np.flatnonzero(self.bad)]

  def record(self, indices: Sequence[int], action: str) -> None:
    """Marks files bad, lists the new ones and counts them on the console.

    Args:
      indices: file indices that failed to decode.
      action: what happens to them ('replaced in its batch', ...).

    Raises:
      DataError: data.on_undecodable is 'stop' and a file is new.
    """
    with self._lock:
      new = [int(i) for i in indices if not self.bad[i]]
      self.bad[new] = True
    undecodable([str(self.names[i]) for i in new], action, self.stop)
