#!/usr/bin/env bash
# The GPU measurements issues 3 and 4 still need, in parts that each fit one 10-minute device call.
# Run from the repository root; each part appends what it prints to $OUT/<part>.txt (the device tool's $OUT,
# else results/gpu-session/), so the figures come back with the command that made them.
#
# A task that is lent a GPU has 15 minutes of device time in all (machine start included), so in this order:
#   bash results/measured/gpu_session.sh prepare        # HERE, not on the GPU: .data/cifar10-subset and .pyaa
#   device run, carry [".data", ".pyaa"], timeout_s 600:
#     PYTHONPATH=$PWD/.pyaa bash results/measured/gpu_session.sh aa   # issue 4: AutoAttack standard at 11
#                                                    # lambdas; resumable: if it did not print "done", call it
#                                                    # again at once (the machine goes back after 30 s idle),
#                                                    # with AA_SECONDS=<status's budget_left_s - 60>
#                                                    # (once it is done, in the same call if 120 s are left,
#                                                    # the batch-128 bench below, eager and then with
#                                                    # --compile cudagraphs; THEN_BENCH=0: not)
#   then, with the time left:
#     bash results/measured/gpu_session.sh bench      # issue 3: images/s of pgd_at, oat, float at 128 and 512,
#                                                    # eager and --compile cudagraphs (traced in seconds)
#     bash results/measured/gpu_session.sh compiled float 128   # --compile reduce-overhead (compiles: minutes;
#                                                    # "compiled float 128 cudagraphs": another mode)
#     bash results/measured/gpu_session.sh tests      # tests/test_gpu.py (four of its tests never ran on a GPU)
#
# A CPU dry run of aa's flags with a small model (AA_EXTRA's flags override the ones before them):
#   AA_EXTRA="--arch small_cnn --subset 256 --epochs 1 --batch-size 64 --eval-n 20 --device cpu" OUT=/tmp/aa \
#   PYTHONPATH=$PWD/.pyaa bash results/measured/gpu_session.sh aa
# aa resumes from results/gpu-aa (ignored by git, so kept only on a machine that stays warm between
# back-to-back calls; the checkpoint, 0.3 GB, is too big to carry to a fresh one); the run's tables and
# finished lambdas are copied to $OUT each time.
set -euo pipefail
export PYTHONUNBUFFERED=1  # what python printed comes back even from a call that is cut short
out=${OUT:-results/gpu-session}
py=${PYTHON:-python3}   # the GPU machine's python3 holds torch; it may have no "python"
part=${1:?which part: prepare, aa, bench, tests, or compiled METHOD BATCH [MODE]}
if [ "$part" = prepare ]; then
  # the CIFAR-10 subset (18 MB) and pyautoattack's code without its example weights (its wheel: 42 MB), git-ignored
  mkdir -p .data && rm -rf .data/cifar10-subset && cp -r ../shared/data/cifar10-subset .data/
  tmp=$(mktemp -d)
  "$py" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" pyautoattack
  rm -rf .pyaa && mkdir .pyaa && unzip -q "$tmp"/pyautoattack-*.whl -x 'pyautoattack/examples/*' -d .pyaa
  rm -rf "$tmp"
  du -sh .data .pyaa
  exit 0
fi
mkdir -p "$out"
log="$out/$part.txt"
run() { echo "\$ $*" | tee -a "$log"; "$@" 2>&1 | tee -a "$log"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"; } | tee -a "$log"

case "$part" in
  bench)
    run "$py" -m harness.bench --methods pgd_at,oat,float --iters 40
    run "$py" -m harness.bench --methods pgd_at,oat,float --batch-size 512 --iters 20
    # CUDA graphs without inductor: traced in about 30 s per conditioned method on a 2-core CPU (three graphs)
    run "$py" -m harness.bench --methods pgd_at,oat,float --iters 40 --compile cudagraphs
    run "$py" -m harness.bench --methods pgd_at,oat,float --batch-size 512 --iters 20 --compile cudagraphs
    ;;
  tests)
    # tests/test_gpu.py: bf16 and CUDA graphs in training; new, never run on a GPU: CUDA peak memory, FLOAT's
    # noise drawn afresh under replayed CUDA graphs, OAT and FLOAT trained with --compile cudagraphs scoring
    # what eager training scores, a GPU job scored again from its checkpoint
    # the new ones first, so that a call cut short still brings their results back
    new="replayed or cuda_graphs or peak_memory or scored_again"
    run "$py" -m pytest -p no:xdist -q -p no:cacheprovider --durations=0 tests/test_gpu.py -k "$new"
    run "$py" -m pytest -p no:xdist -q -p no:cacheprovider --durations=0 tests/test_gpu.py -k "not ($new)"
    ;;
  compiled)
    run "$py" -m harness.bench --methods "${2:?method}" --batch-size "${3:-128}" --iters 40 --compile "${4:-reduce-overhead}"
    ;;
  aa)
    # OAT with the scalar encoding is deterministic at every lambda (FLOAT's noise would make lambda >= 0.1
    # random and switch AutoAttack to its rand version); each finished lambda is kept in <job>/lambdas/
    lambdas=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1
    dest=$(mkdir -p "$out/gpu-aa" && cd "$out/gpu-aa" && pwd)
    mkdir -p results/gpu-aa
    # neither checkpoints nor the temporary files of interrupted writes; also every 20 s while it runs, so a
    # call that the device tool ends before this script does still brings back the lambdas it finished
    keep() { (cd results/gpu-aa && find . -type f ! -name '*.pt' ! -name '*.tmp' -exec cp --parents {} "$dest/" \;); }
    ( while sleep 20; do keep 2>/dev/null || true; done ) &
    copier=$!
    status=0
    timeout -k 30 "${AA_SECONDS:-540}" "$py" run_all.py --preset paper --methods oat --opt encoding=scalar \
      --dataset npz --data-root .data/cifar10-subset --epochs 10 --lambdas "$lambdas" --aa standard \
      --eval-n 1000 --eval-batch-size 1000 --no-report --no-progress --out results/gpu-aa ${AA_EXTRA:-} 2>&1 | tee -a "$log" || status=$?
    kill "$copier" 2>/dev/null || true
    keep
    case "$status" in
      0) echo done | tee -a "$log"
         # issue 3's eager figures at batch 128 too, while the machine is up, if the call has time for them
         if [ "${THEN_BENCH:-1}" = 1 ] && [ "$SECONDS" -lt "$(( ${AA_SECONDS:-540} - 120 ))" ]; then
           run "$py" -m harness.bench --methods pgd_at,oat,float --iters 30
           # and with CUDA graphs (no inductor), if 120 s are still left
           if [ "$SECONDS" -lt "$(( ${AA_SECONDS:-540} - 120 ))" ]; then
             run "$py" -m harness.bench --methods oat,float,pgd_at --iters 30 --compile cudagraphs
           fi
         fi ;;
      124) echo "stopped at AA_SECONDS=${AA_SECONDS:-540}: call again, it resumes" | tee -a "$log" ;;
      137) echo "killed (30 s after the time limit, or out of memory): call again, it resumes" | tee -a "$log" ;;
      *) echo "failed ($status): see $log" | tee -a "$log"; exit "$status" ;;
    esac
    ;;
  *)
    echo "unknown part $part: prepare, aa, bench, tests, or compiled METHOD BATCH [MODE]" >&2
    exit 2
    ;;
esac
