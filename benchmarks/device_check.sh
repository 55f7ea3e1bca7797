#!/usr/bin/env bash
# The GPU checks of issue 13 as one command, for a session that is lent a CUDA machine
# (the workplace's `device` tool). It runs the CUDA tests, then the device benchmark, and
# writes everything under $OUT (or ./device_out): pytest's log, the benchmark's JSON and log.
#
# The device image has Python 3.12 with torch (CUDA), e3nn, scipy, matplotlib, tqdm, pytest,
# but not ASE. Fetch ASE here first (vesin-torch is optional: without it the device graphs use
# the dense search at every size):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl ase==3.26.0
#
# then run, through the device tool, with `.whl` carried and a timeout that leaves room:
#
#   bash benchmarks/device_check.sh            # tests (~1 min) + benchmark (budget: BENCH_S)
#
# Record the numbers in benchmarks/README.md ("Device engine") and give the machine back.
set -uo pipefail

OUT="${OUT:-device_out}"
mkdir -p "$OUT"
BENCH_S="${BENCH_S:-420}"   # seconds for the benchmark; the whole call must fit in 600
DEVICE="${DEVICE:-cuda}"    # a dry run here: DEVICE=cpu BENCH_ARGS="--quick --relax-count 4"
BENCH_ARGS="${BENCH_ARGS:-}"

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:$PWD/tests:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1

command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# 1. CUDA equals CPU on the fixtures; device graphs and the engine run on CUDA
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"
tests_rc=${PIPESTATUS[0]}

# 2. the benchmark: relaxation first (the targets), then throughput, latency, precision
# shellcheck disable=SC2086
timeout "$BENCH_S" python3 benchmarks/bench_device.py --device "$DEVICE" $BENCH_ARGS \
    --only relax throughput latency precision --loop-count 10 --rounds 1 \
    --json "$OUT/bench_device.json" 2>&1 \
    | tee "$OUT/bench_device.log"
bench_rc=${PIPESTATUS[0]}

echo "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
