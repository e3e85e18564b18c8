#!/usr/bin/env bash
# The GPU check in one command: installs the project with the CUDA build of
# JAX (setup.py's "cuda" extra) unless JAX already sees a GPU, prints that as
# one JSON line, then runs bench/gpu_check.py with the given arguments.
#   bash bench/gpu_check.sh [--total_s=480] [--peak_tflops=989] ...
# PYTHON picks the interpreter (default python3); INSTALL_TIMEOUT bounds the
# install in seconds (default 300), which is not part of --total_s.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
log="${TMPDIR:-/tmp}/simclr_gpu_check_install.log"
sees_gpu() {
  "$py" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null
}
start=$(date +%s)
if sees_gpu; then
  echo "{\"step\": \"install\", \"ok\": true, \"seconds\": 0, \"note\": \"JAX already sees a GPU: nothing installed\"}"
else
  timeout "${INSTALL_TIMEOUT:-300}" "$py" -m pip install -q -e ".[cuda]" >"$log" 2>&1
  code=$?
  ok=false
  if [ "$code" -eq 0 ] && sees_gpu; then ok=true; fi
  echo "{\"step\": \"install\", \"ok\": $ok, \"seconds\": $(( $(date +%s) - start )), \"command\": \"pip install -e .[cuda]\", \"exit_code\": $code, \"log\": \"$log\"}"
fi
exec "$py" bench/gpu_check.py "$@"
