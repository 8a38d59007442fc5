#!/usr/bin/env bash
# ctest slurm_standin: scripts/slurm/train-multinode.sbatch on the CPU, with
# `mpirun -np 2` standing in for srun and the environment Slurm would set
# (SLURM_JOB_ID, SLURM_JOB_NAME, SLURM_SUBMIT_DIR, SLURM_NTASKS,
# SLURM_CPUS_PER_TASK, SLURM_RESTART_COUNT). The job gets SIGUSR1 mid-run,
# as sbatch --signal=B:USR1@600 sends it before the time limit: it must stop
# with a checkpoint and requeue itself; the requeued start must resume and
# finish, with the weights of an uninterrupted two-rank run (compared through
# their ONNX export, which is byte-for-byte deterministic).
# Usage: standin.sh DEEPQSM WORKDIR. Exit 77 (skipped) without mpirun.
set -euo pipefail
bin=$1
work=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
if ! command -v mpirun >/dev/null 2>&1; then
  echo "SKIP: mpirun is not installed (Debian: openmpi-bin)"
  exit 77
fi
rm -rf "$work"
mkdir -p "$work"
# Enough steps that the run is still going when the signal comes (an idle
# core trains test-tiny at ~300 steps/s).
steps=3000
# Open MPI's mpirun passes the SIGTERM it gets on to the ranks, as srun does.
launch="mpirun -np 2 --oversubscribe --allow-run-as-root"
job() {  # job RESTART_COUNT: one start of the batch script, in the background
  env SLURM_JOB_ID=4242 SLURM_JOB_NAME=standin SLURM_SUBMIT_DIR="$root" SLURM_NTASKS=2 \
      SLURM_CPUS_PER_TASK=1 SLURM_RESTART_COUNT="$1" \
      DEEPQSM_LAUNCHER="$launch" DEEPQSM_BIN="$bin" DEEPQSM_CONFIG="$root/configs/test-tiny.json" \
      DEEPQSM_OUT="$work/run" DEEPQSM_REQUEUE="touch $work/requeued" \
      DEEPQSM_TRAIN_ARGS="--steps $steps --quiet" \
      bash "$root/scripts/slurm/train-multinode.sbatch" >>"$work/job.out" 2>&1 &
  pid=$!
}
fail() { echo "FAIL: $*"; echo "--- job output:"; cat "$work/job.out"; exit 1; }

# The same run, never interrupted, first, into the same folder (the config
# in the export's metadata names it).
$launch "$bin" train --config "$root/configs/test-tiny.json" --out "$work/run" \
  --steps "$steps" --quiet >"$work/straight.out" 2>&1 || fail "the uninterrupted run failed"
"$bin" export "$work/run" --onnx "$work/straight.onnx" >/dev/null
rm -rf "$work/run"

# First start: wait for step 5, then the time-limit warning.
job 0
for _ in $(seq 600); do
  n=$(grep -c '"loss"' "$work/run/log.jsonl" 2>/dev/null || true)
  [ "${n:-0}" -ge 5 ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
kill -USR1 "$pid" || fail "the job ended before the signal"
rc=0; wait "$pid" || rc=$?
[ "$rc" -eq 0 ] || fail "first start exited $rc"
[ -e "$work/requeued" ] || fail "the job did not requeue itself"
grep -q '"stopped by signal"' "$work/run/log.jsonl" || fail "training was not stopped by the signal"
stopped=$(grep '"stopped by signal"' "$work/run/log.jsonl" | sed 's/.*"step":\([0-9]*\).*/\1/')
echo "first start stopped after step $stopped of $steps and requeued"

# The requeued start resumes and finishes without another requeue.
rm "$work/requeued"
job 1
rc=0; wait "$pid" || rc=$?
[ "$rc" -eq 0 ] || fail "the requeued start exited $rc"
[ ! -e "$work/requeued" ] || fail "the finished job requeued itself"
grep -q -- "--resume" "$work/job.out" || fail "the requeued start did not resume"

"$bin" export "$work/run" --onnx "$work/resumed.onnx" >/dev/null
cmp -s "$work/resumed.onnx" "$work/straight.onnx" ||
  fail "the resumed run's weights differ from the uninterrupted run's"
echo "PASS: stopped at step $stopped, requeued, resumed to step $steps; weights identical to an uninterrupted run"
