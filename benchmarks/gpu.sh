#!/usr/bin/env bash
# The GPU checks of issue 20, in at most 5 minutes, on a host that has its own Python, torch and transformers (no
# package index) and this source tree with the zoo (git ls-files: about 35 MiB):
#   1. the versions it runs on;
#   2. the `gpu` tests (tests/unit/test_gpu.py: the CUDA path gives the CPU's numbers);
#   3. the benches with --device cuda, quick sizes (sigma, gradients + integrated gradients vs Captum);
# then one table. Without CUDA it says so, runs the tests (they skip) and skips the benches; exit status 0.
#   PYTHON=/path/to/python benchmarks/gpu.sh
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

"$PY" - <<'PY' | tee "$out/versions"
import platform, torch, transformers
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}  torch {torch.__version__}  transformers {transformers.__version__}  "
      f"CUDA {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}")
PY
cuda="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')"

timeout 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/unit/test_gpu.py 2>&1 | tail -n 3 > "$out/tests"
tests_status=${PIPESTATUS[0]}

if [ "$cuda" = 1 ]; then
  timeout 170 "$PY" -m benchmarks --quick --device cuda sigma gradients > "$out/bench" 2>&1
  bench_status=$?
else
  echo "CUDA not available: the gpu tests skip and the benches do not run" > "$out/bench"
  bench_status=0
fi

echo
echo "=== issue 20 GPU check ==="
printf '%-10s %s\n' "host" "$(cat "$out/versions")"
printf '%-10s %s (exit %s)\n' "gpu tests" "$(tail -n 1 "$out/tests")" "$tests_status"
echo "benches    (exit $bench_status)"
sed 's/^/  /' "$out/bench"
[ "$cuda" = 1 ] || exit 0
[ "$tests_status" = 0 ] && [ "$bench_status" = 0 ]
