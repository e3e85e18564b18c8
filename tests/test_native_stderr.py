"""Native stderr: image decoders' lines to the workdir, everything else out."""

import io
import os
import signal
import subprocess
import sys
import textwrap

from simclr_jax import native_stderr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_decoder_messages_are_recognised():
  for line in ('Corrupt JPEG data: 12 extraneous bytes before marker 0xd9',
               'Premature end of JPEG file', 'Input file read error',
               'Unsupported marker type 0x96', 'Not a JPEG file: starts with '
               '0x00 0x00', 'libpng warning: iCCP: known incorrect sRGB',
               'E0000 00:00:1796649003.032125   30946 jpeg_mem.cc:331] '
               'Premature end of JPEG data. Stopped at line 14/48'):
    assert native_stderr.is_decoder_message(line + '\n'), line
  for line in ('F external/xla/xla/service/cpu/foo.cc:12] Check failed',
               'E0000 00:00:1.0 1 cuda_dnn.cc:8] jpeg_mem.cc: not a source',
               'Fatal Python error: Segmentation fault', 'step 3/10 | loss 1',
               'error: something', ''):
    assert not native_stderr.is_decoder_message(line), line


def test_filter_keeps_other_lines_in_order_and_logs_the_rest(tmp_path):
  text = (b'Corrupt JPEG data: premature end of data segment\n'
          b'W xla: first\n'
          b'Input file read error\n'
          b'W xla: second, no newline at the end')
  out = io.BytesIO()
  log = str(tmp_path / 'decoder.log')
  count = native_stderr.filter_stream(io.BytesIO(text), out, log)
  assert count == 2
  assert out.getvalue() == b'W xla: first\nW xla: second, no newline at the end'
  with open(log, 'rb') as f:
    assert f.read() == (b'Corrupt JPEG data: premature end of data segment\n'
                        b'Input file read error\n')


def test_divert_survives_sigkill_and_keeps_python_stderr_direct(tmp_path):
  log = str(tmp_path / 'decoder.log')
  script = textwrap.dedent(f"""
      import os, signal, sys
      sys.path.insert(0, {ROOT!r})
      from simclr_jax import native_stderr
      assert native_stderr.divert({log!r})
      print('python line', file=sys.stderr, flush=True)
      os.write(2, b'Corrupt JPEG data: bad Huffman code\\n')
      os.write(2, b'native line\\n')
      os.write(2, b'Premature end of JPEG file\\n')
      os.kill(os.getpid(), signal.SIGKILL)
      """)
  result = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == -signal.SIGKILL
  lines = result.stderr.splitlines()
  # Nothing the killed process wrote is lost; the decoders' lines are not
  # on the console but in the log, and one line says where.
  assert 'python line' in lines and 'native line' in lines, lines
  assert lines[-1] == native_stderr.summary(2, log), lines
  assert len(lines) == 3, lines
  with open(log) as f:
    assert f.read().splitlines() == ['Corrupt JPEG data: bad Huffman code',
                                     'Premature end of JPEG file']
