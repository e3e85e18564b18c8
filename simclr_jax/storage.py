"""Writes to the workdir that fail: a full disk, a size limit, a read-only file system.

A run writes its checkpoints (orbax, from background threads), metrics.jsonl
and TensorBoard events as it goes. When the file system refuses (ENOSPC,
EDQUOT, EFBIG, EROFS, or EACCES/EPERM/EIO inside the workdir) the error
arrives in one of many shapes: an `OSError`, TensorFlow's
`ResourceExhaustedError`, TensorStore's `ValueError` text ("... No space left
on device [os_error_code='28']"), and orbax's threads log each failure with a
traceback before the main thread sees it on its next save.

* `failure(e)`: the (reason, path) of a write failure in `e`'s chain, or None.
* `failure_line(e, workdir)`: the one line main.py prints for it, naming what
  could not be written, the last checkpoint saved (which stays intact: saves
  are atomic) and how to go on.
* `OrbaxWriteReports`: a logging filter that drops orbax's own reports of
  such failures (counted); `checkpoint.create_manager` installs it.

Standard library only.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from typing import Iterator

# errno values that mean "this file system does not take the write".
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
READ_ONLY = (errno.EROFS,)
# These also arise for reads elsewhere: a write failure only inside the workdir.
DENIED = (errno.EACCES, errno.EPERM, errno.EIO)
WRITE_ERRNOS = NO_ROOM + READ_ONLY + DENIED

_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
_OS_CODE = re.compile(r"os_error_code='(\d+)'")
_TMP_STEP = re.compile(r'(\d+)\.orbax-checkpoint-tmp')


def _chain(e: BaseException) -> Iterator[BaseException]:
  """`e`, its causes and contexts (each once)."""
  seen = set()
  todo = [e]
  while todo:
    x = todo.pop(0)
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    yield x
    todo += [x.__cause__, x.__context__]


def _reason(code: int) -> str:
  return f'{os.strerror(code)} (errno {code})'


def failure(e: BaseException) -> tuple[int, str | None] | None:
  """(errno, path or None) of the first write failure in `e`'s chain, or None.

  Recognises an `OSError` with one of `WRITE_ERRNOS`, and the texts of
  TensorFlow's and TensorStore's errors that carry one (its message, or
  TensorStore's `os_error_code`).
  """
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in WRITE_ERRNOS:
      return x.errno, (os.fsdecode(x.filename) if x.filename else None)
    text = str(x)
    match = _OS_CODE.search(text)
    codes = [int(match.group(1))] if match else []
    codes += [c for c in WRITE_ERRNOS if os.strerror(c) in text]
    for code in codes:
      if code in WRITE_ERRNOS:
        paths = _QUOTED_PATH.findall(text) or re.findall(r'(/\S+?)[;:,]?\s',
                                                         text + ' ')
        return code, (paths[-1] if paths else None)
  return None


def saved_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints in `workdir/checkpoints` (sorted)."""
  try:
    names = os.listdir(os.path.join(workdir, 'checkpoints'))
  except OSError:
    return []
  return sorted(int(n) for n in names if n.isdigit())


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.abspath(path), os.path.abspath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _what(path: str | None, workdir: str) -> str:
  """What was being written: 'the checkpoint of step 12', 'metrics.jsonl'..."""
  if not path:
    return 'to the workdir'
  step = _TMP_STEP.search(path)
  if step:
    return f'the checkpoint of step {step.group(1)}'
  if _inside(path, workdir):
    return os.path.relpath(path, os.path.abspath(workdir))
  return path


def failure_line(e: BaseException, workdir: str) -> str | None:
  """The one line for a write failure in `e` (see the module doc), or None.

  EACCES, EPERM and EIO count only for a path inside `workdir` (elsewhere
  they are failures to read data, told where they happen).
  """
  found = failure(e)
  if found is None:
    return None
  code, path = found
  if code in DENIED and not (path and _inside(path, workdir)):
    return None
  steps = saved_steps(workdir)
  kept = (f'the last checkpoint saved, step {steps[-1]}, is intact'
          if steps else 'no checkpoint was saved')
  fix = ('make room' if code in NO_ROOM else 'make it writable')
  return (f'cannot write {_what(path, workdir)} in {workdir}: '
          f'{_reason(code)}; {kept}; {fix} and run the same command to '
          'resume')


class OrbaxWriteReports(logging.Filter):
  """Drops orbax's and asyncio's log records of write failures; counts them.

  orbax's background save threads log each failure (with a traceback)
  before the main thread's next save or wait raises it, and asyncio reports
  the failed writes nobody awaited ('Future exception was never
  retrieved'); the raise is told in one line (`failure_line`), so these are
  repeats.
  """

  def __init__(self):
    super().__init__()
    self.dropped = 0

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if record.name == 'asyncio' or f'{os.sep}orbax{os.sep}' in (
        record.pathname or ''):
      if exc is not None and failure(exc) is not None:
        self.dropped += 1
        return False
    if f'{os.sep}orbax{os.sep}' not in (record.pathname or ''):
      return True
    text = record.getMessage()
    if any(os.strerror(c) in text for c in WRITE_ERRNOS) or (
        _OS_CODE.search(text)):
      self.dropped += 1
      return False
    return True


_REPORTS: OrbaxWriteReports | None = None


def drop_orbax_write_reports() -> OrbaxWriteReports:
  """Installs (once) the filter and the hooks that drop repeated reports.

  The filter goes on absl's logger (orbax logs through it) and asyncio's;
  sys.excepthook and sys.unraisablehook drop TensorStore's late
  'Event loop is closed' reports (`_closed_loop_report`).
  """
  global _REPORTS
  if _REPORTS is None:
    _REPORTS = OrbaxWriteReports()
    for name in ('absl', 'asyncio'):
      logging.getLogger(name).addFilter(_REPORTS)
    _install_hooks()
  return _REPORTS


def _closed_loop_report(exc: BaseException | None) -> bool:
  """Whether `exc` is asyncio's 'Event loop is closed' of a late callback.

  TensorStore completes the other writes of a failed save after orbax's
  event loop is gone; each completion's `call_soon_threadsafe` then raises
  this, and TensorStore prints it with a traceback (one a pending write).
  """
  if not isinstance(exc, RuntimeError) or str(exc) != 'Event loop is closed':
    return False
  tb = exc.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is None or 'asyncio' in tb.tb_frame.f_code.co_filename


def _install_hooks() -> None:
  """sys.excepthook and sys.unraisablehook, minus closed-loop reports."""
  import sys  # pylint: disable=g-import-not-at-top
  previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if _closed_loop_report(value):
      _REPORTS.dropped += 1
      return
    previous_except(kind, value, tb)

  def unraisablehook(unraisable):
    if _closed_loop_report(unraisable.exc_value):
      _REPORTS.dropped += 1
      return
    previous_unraisable(unraisable)

  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
