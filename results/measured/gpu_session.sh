#!/usr/bin/env bash
# The GPU measurements issues 3 and 4 still need, split into parts that each fit one 10-minute device call.
# Run from the repository root on the GPU machine; each part appends what it prints to $OUT/<part>.txt
# (the device tool's $OUT, else results/gpu-session/), so the figures come back with the command that made them.
#
# In this order (30 minutes of device time do not cover all; the first part closes an issue):
#   bash results/measured/gpu_session.sh aa                     # issue 4: AutoAttack standard at 11 lambdas;
#                                                               # resumable, repeat the call until it prints "done"
#   bash results/measured/gpu_session.sh bench                  # eager images/s: pgd_at, oat, float at 128 and 512
#   bash results/measured/gpu_session.sh compiled float 128     # --compile reduce-overhead, one method and batch
#                                                               # (inductor compiles in the warm-up epoch: minutes)
#
# The aa part needs the CIFAR-10 subset in .data/cifar10-subset (see ../shared/data/README.md) and pyautoattack
# importable (PYTHONPATH=$PWD/.pyaa with the wheel unpacked there). It resumes from results/gpu-aa (ignored by
# git, so kept on a machine that stays warm between back-to-back calls; the checkpoint, 0.3 GB, is too big to
# carry to a fresh one); the run's tables and finished lambdas are copied to $OUT each time.
set -euo pipefail
out=${OUT:-results/gpu-session}
mkdir -p "$out"
part=${1:?which part: bench, compiled METHOD BATCH, or aa}
log="$out/$part.txt"
run() { echo "\$ $*" | tee -a "$log"; "$@" 2>&1 | tee -a "$log"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"; } | tee -a "$log"

case "$part" in
  bench)
    run python -m harness.bench --methods pgd_at,oat,float --iters 40
    run python -m harness.bench --methods pgd_at,oat,float --batch-size 512 --iters 20
    ;;
  compiled)
    run python -m harness.bench --methods "${2:?method}" --batch-size "${3:-128}" --iters 40 --compile reduce-overhead
    ;;
  aa)
    # OAT with the scalar encoding is deterministic at every lambda (FLOAT's noise would make lambda >= 0.1
    # random and switch AutoAttack to its rand version); each finished lambda is kept in <job>/partial/
    lambdas=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1
    status=0
    timeout -k 30 "${AA_SECONDS:-540}" python run_all.py --preset paper --methods oat --opt encoding=scalar \
      --dataset npz --data-root .data/cifar10-subset --epochs 10 --lambdas "$lambdas" --aa standard \
      --eval-n 1000 --no-report --no-progress --out results/gpu-aa 2>&1 | tee -a "$log" || status=$?
    dest=$(cd "$out" && pwd)/gpu-aa
    mkdir -p "$dest" results/gpu-aa
    # neither checkpoints nor the temporary files of writes that the timeout interrupted
    (cd results/gpu-aa && find . -type f ! -name '*.pt' ! -name '*.tmp' -exec cp --parents {} "$dest/" \;)
    case "$status" in
      0) echo done | tee -a "$log" ;;
      124|137) echo "stopped by the time limit: call again, it resumes" | tee -a "$log" ;;
      *) echo "failed ($status): see $log" | tee -a "$log"; exit "$status" ;;
    esac
    ;;
  *)
    echo "unknown part $part: bench, compiled METHOD BATCH, or aa" >&2
    exit 2
    ;;
esac
