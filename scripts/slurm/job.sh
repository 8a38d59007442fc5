# The core of the Slurm batch scripts (train-1node.sbatch, train-multinode.sbatch;
# docs/cluster.md): one training run that outlives the job's time limit.
# Sourced, then `deepqsm_job [LAUNCHER ...] -- [TRAIN OPTION ...]` runs
#   LAUNCHER... $DEEPQSM_BIN train --config $DEEPQSM_CONFIG --out $DEEPQSM_OUT [--resume] TRAIN OPTION...
# with --resume whenever the run folder already holds a checkpoint (a
# requeued job starts the script again from the top).
#
# SIGUSR1 (sbatch --signal=B:USR1@SECONDS: the time limit is near) is passed
# on as SIGTERM, on which every rank finishes its step, rank 0 writes the
# checkpoint and all exit 143 (train/stop_signals.h); the job then requeues
# itself ($DEEPQSM_REQUEUE, default `scontrol requeue $SLURM_JOB_ID`) and
# the next start resumes, bit-identical to an uninterrupted run. SIGTERM
# (scancel, preemption, the limit itself) is not passed on: Slurm sends it
# to every process of the job itself, and a second SIGTERM means "stop now,
# without the checkpoint" to deepqsm; the shell just waits for the run to
# stop and does not requeue it.
#
# Settings (environment, all optional):
#   DEEPQSM_BIN     the deepqsm binary (default build/deepqsm)
#   DEEPQSM_CONFIG  the training config (default configs/deepqsm-paper.json)
#   DEEPQSM_OUT     the run folder: checkpoints, log.jsonl, tb/ (default runs/$SLURM_JOB_NAME)
#   DEEPQSM_REQUEUE the command that requeues this job
#   DEEPQSM_MAX_RESTARTS  requeue at most this often (default 50; SLURM_RESTART_COUNT counts)

deepqsm_job() {
  local launcher=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do launcher+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  local bin=${DEEPQSM_BIN:-build/deepqsm}
  local config=${DEEPQSM_CONFIG:-configs/deepqsm-paper.json}
  local out=${DEEPQSM_OUT:-runs/${SLURM_JOB_NAME:-deepqsm}}
  local requeue=${DEEPQSM_REQUEUE:-scontrol requeue ${SLURM_JOB_ID:-}}
  local restarts=${SLURM_RESTART_COUNT:-0} max=${DEEPQSM_MAX_RESTARTS:-50}
  local resume=()
  [ -e "$out/checkpoint.h5" ] && resume=(--resume)
  echo "deepqsm job ${SLURM_JOB_ID:-?} start $((restarts + 1)) on ${SLURM_JOB_NODELIST:-$(hostname)}," \
       "${SLURM_NTASKS:-1} task(s): ${resume[*]:-fresh run} in $out" \
       "(log $out/log.jsonl, TensorBoard $out/tb)"

  _dq_time_up=0
  _dq_pid=
  # (|| true: under set -e a failing kill, the run having just ended, would end the job.)
  trap '_dq_time_up=1; [ -z "$_dq_pid" ] || kill -TERM "$_dq_pid" 2>/dev/null || true' USR1
  trap ':' TERM
  ${launcher[@]+"${launcher[@]}"} "$bin" train --config "$config" --out "$out" \
    ${resume[@]+"${resume[@]}"} "$@" &
  _dq_pid=$!
  # A trapped signal interrupts `wait` (status > 128) while the run goes on
  # checkpointing: wait again until it has really ended. A status > 128 may
  # be such an interruption with the run ending meanwhile (then one more
  # `wait` gives its real status: a run that finished just before the signal
  # is not requeued) or the run's own exit 143 (then `wait` says 127: no
  # such child any more).
  local rc=0 again
  while :; do
    rc=0
    wait "$_dq_pid" || rc=$?
    [ "$rc" -gt 128 ] && kill -0 "$_dq_pid" 2>/dev/null && continue
    if [ "$rc" -gt 128 ]; then
      again=0
      wait "$_dq_pid" 2>/dev/null || again=$?
      [ "$again" -ne 127 ] && rc=$again
    fi
    break
  done
  trap - USR1 TERM

  if [ "$rc" -eq 0 ]; then
    echo "deepqsm job: training finished; model: $bin export $out -o model.h5"
    return 0
  fi
  # Requeued only after the clean stop: every rank finished its step, rank 0
  # wrote the checkpoint and then the "stopped by signal" line as the log's
  # last (srun passes on the ranks' exit 143; mpirun makes it 1, so the log
  # decides). Any other failure after the warning (out of memory, an NCCL
  # error) is reported, not hidden by a requeue from an older checkpoint.
  local clean=0
  [ -f "$out/log.jsonl" ] && [[ "$(tail -n 1 "$out/log.jsonl")" == *'"stopped by signal"'* ]] && clean=1
  if [ "$_dq_time_up" -eq 1 ] && [ "$clean" -eq 1 ] && [ -e "$out/checkpoint.h5" ]; then
    if [ "$restarts" -ge "$max" ]; then
      echo "deepqsm job: stopped at the time limit, but already restarted $restarts times" \
           "(DEEPQSM_MAX_RESTARTS $max): not requeued; resubmit to continue" >&2
      return 1
    fi
    echo "deepqsm job: stopped before the time limit with a checkpoint; requeueing: $requeue"
    $requeue
    return 0
  fi
  echo "deepqsm job: training failed (exit $rc)" >&2
  return "$rc"
}
