"""The image decoders' own stderr lines, kept in the workdir instead of the console.

libjpeg (inside TensorFlow's `decode_jpeg`) and libpng print to the C
library's stderr, file descriptor 2, from tf.data's threads, for every file
that fails to decode and for many damaged files that decode: "Corrupt JPEG
data: ...", "Premature end of JPEG file", "Input file read error", several
a file. Python cannot catch them: they never pass through `sys.stderr`.

`divert(log_path)` (main.py calls it first thing) gives file descriptor 2 to
a small filter process and points `sys.stderr` (progress, warnings, errors)
at the real stderr again, so Python's own lines go straight out as before.
What native code writes to descriptor 2 goes through the filter: lines
that are messages of the image decoders (`is_decoder_message`) are appended
to `log_path` and counted, every other line (XLA, TensorFlow, a crash
report) is passed on at once. At its end the filter says in one line how
many decoder messages went to the file. The filter is its own process in its
own session: a parent killed with SIGKILL or Ctrl-C still gets every line it
wrote out, because the filter reads until the pipe is closed.

This module imports only the standard library (it runs as the filter's
script, `python -I native_stderr.py LOG_PATH`).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

# Messages of libjpeg(-turbo) (its jerror.h table) and libpng, as they are
# printed: a message is a line that starts with one of these.
DECODER_MESSAGE_STARTS = (
    'Corrupt JPEG data', 'Premature end of JPEG file', 'Input file read error',
    'Unsupported marker type', 'Unsupported JPEG process',
    'Invalid JPEG file structure', 'Not a JPEG file', 'Bogus marker length',
    'Bogus Huffman table definition', 'Huffman table 0x', 'Bogus DQT index',
    'Bogus DHT index', 'Bogus DAC index', 'Bogus DAC value',
    'Quantization table 0x', 'Invalid component ID', 'Invalid SOS parameters',
    'Invalid progressive parameters', 'Inconsistent progression sequence',
    'Bogus sampling factors', 'Sampling factors too large',
    'Empty JPEG image', 'Empty input buffer', 'Unsupported color conversion',
    'Unsupported JPEG data precision', 'Maximum supported image dimension',
    'Image too big', 'Invalid crop request', 'Arithmetic table 0x',
    'Bogus JPEG colorspace', 'Bogus input colorspace', 'Bogus message code',
    'Unknown Adobe color transform code', 'Invalid scan script',
    'Scan script does not transmit all data', 'Missing Huffman code table',
    'Huffman code size table overflow', 'DCT coefficient out of range',
    'Wrong JPEG library version', 'Improper call to JPEG library',
    'Application transferred too many scanlines',
    'Requested features are incompatible', 'Fractional sampling not implemented',
    'Warning: unknown JFIF revision', 'Warning: thumbnail image size',
    'Component index', 'Bogus virtual array access',
    'libpng warning', 'libpng error',
)


# TensorFlow's own log lines about damaged images come from its wrappers of
# the decoders, e.g. 'E0000 00:00:1796649003.03 30946 jpeg_mem.cc:331]
# Premature end of JPEG data. Stopped at line 14/48' (one a truncated JPEG).
DECODER_SOURCES = ('jpeg_mem.cc:', 'jpeg_handle.cc:', 'png_io.cc:',
                   'gif_io.cc:')

LOG_NAME = 'decoder_messages.log'  # In the workdir (main.py).


def is_decoder_message(line: str) -> bool:
  """Whether one line of native stderr is a message of an image decoder.

  A message of libjpeg or libpng, or a log line of TensorFlow's decoder
  wrappers (its source file named before the first ']').
  """
  text = line.strip()
  if text.startswith(DECODER_MESSAGE_STARTS):
    return True
  head = text.split(']', 1)[0] if ']' in text else ''
  return text[:1] in 'IWEF' and any(s in head for s in DECODER_SOURCES)


def summary(count: int, log_path: str) -> str:
  return (f'simclr_jax: {count} message(s) of the image decoders (libjpeg, '
          f'libpng) about damaged files went to {log_path}')


def filter_stream(source: io.BufferedReader, out: io.BufferedWriter,
                  log_path: str) -> int:
  """Copies `source` to `out` line by line, decoder messages to `log_path`.

  Returns how many decoder messages there were. The log is opened on the
  first one (append mode); if it cannot be written they are dropped
  (counted).
  """
  log = None
  count = 0
  for raw in iter(source.readline, b''):
    text = raw.decode('utf-8', 'replace')
    if not is_decoder_message(text):
      out.write(raw)
      out.flush()
      continue
    count += 1
    if log is None:
      try:
        log = open(log_path, 'ab')
      except OSError:
        log = False
    if log:
      log.write(raw if raw.endswith(b'\n') else raw + b'\n')
      log.flush()
  if log:
    log.close()
  return count


def divert(log_path: str) -> bool:
  """Routes native writes to stderr through the filter (see the module doc).

  Python's `sys.stderr` keeps writing to the real stderr (a terminal stays
  a terminal for the progress line). Returns False, changing nothing, where
  it does not apply (not POSIX, descriptor 2 closed, or the filter cannot
  start).
  """
  if os.name != 'posix':
    return False
  try:
    real = os.dup(2)
  except OSError:
    return False
  try:
    proc = subprocess.Popen(
        [sys.executable, '-I', os.path.abspath(__file__), log_path],
        stdin=subprocess.PIPE, stdout=real, stderr=real,
        start_new_session=True, close_fds=True)
  except OSError:
    os.close(real)
    return False
  sys.stderr.flush()
  os.dup2(proc.stdin.fileno(), 2)
  proc.stdin.close()  # Descriptor 2 is now the pipe's only writer here.
  sys.stderr = open(real, 'w', buffering=1, encoding=sys.stderr.encoding,
                    errors='backslashreplace', closefd=False)
  return True


def _main(argv: list[str]) -> int:
  log_path = argv[1]
  count = filter_stream(sys.stdin.buffer, sys.stdout.buffer, log_path)
  if count:
    sys.stdout.write(summary(count, log_path) + '\n')
    sys.stdout.flush()
  return 0


if __name__ == '__main__':
  sys.exit(_main(sys.argv))
