#!/usr/bin/env bash
# libFuzzer on deepqsm's file readers (issue 26): the NIfTI-1/2 reader, the
# HDF5 checkpoint reader (and the dataset reads a patch file gets), and the
# strict JSON training config. Each harness is tests/fuzz/fuzz_<name>.cpp,
# its seed corpus tests/fuzz/corpus/<name>/ (small files from the tests).
#
#   bash scripts/fuzz.sh SECONDS    replay the seeds, then fuzz each harness
#                                   for SECONDS (CI: 20, FUZZ_SEED=1); 0 only
#                                   replays; FUZZ_REPLAY_ONLY="checkpoint"
#                                   only replays the harnesses named
#
# Built with clang (Debian's clang and libclang-rt-14-dev, scripts/setup.sh),
# AddressSanitizer and UndefinedBehaviorSanitizer, into build-fuzz/ (the
# library sources compiled once per change). New inputs go to
# build-fuzz/corpus/<name>/, crashes to build-fuzz/crashes/; a crash fails
# the script: turn it into a test in tests/test_hardening.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:?usage: scripts/fuzz.sh SECONDS}
out=${FUZZ_DIR:-build-fuzz}
cxx=${FUZZ_CXX:-clang++}
mkdir -p "$out/obj" "$out/crashes"

flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -I. -I/usr/include/nifti
       -I/usr/include/hdf5/serial -fsanitize=address,undefined -fno-sanitize-recover=undefined)
# What the three readers reach; nothing of CUDA, the backends or the trainer.
sources=(core/parallel.cpp core/io/*.cpp core/nn/checkpoint.cpp core/nn/params.cpp
         core/nn/tensor.cpp core/nn/unet.cpp core/nn/loss_scale.cpp core/nn/op_checks.cpp
         train/config.cpp synth/recipe.cpp synth/recipe_json.cpp)
objs=()
for s in "${sources[@]}"; do
  o="$out/obj/${s//\//_}.o"
  if [ ! -e "$o" ] || [ "$s" -nt "$o" ] || [ -n "$(find core train synth -name '*.h' -newer "$o" -print -quit)" ]; then
    "$cxx" "${flags[@]}" -fsanitize=fuzzer-no-link -c "$s" -o "$o"
  fi
  objs+=("$o")
done
libs=(-lhdf5_serial -lnifti2 -lznz -lpng -lz -lpthread)
# libhdf5 (not instrumented) asks malloc for petabytes on some damaged files
# and handles the refusal; it also leaks on its error paths. Neither is ours,
# and both would stop every run, so: malloc may fail, leaks are not checked.
export ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=0}

status=0
for name in nifti checkpoint config; do
  bin="$out/fuzz_$name"
  "$cxx" "${flags[@]}" -fsanitize=fuzzer "tests/fuzz/fuzz_$name.cpp" "${objs[@]}" "${libs[@]}" -o "$bin"
  mkdir -p "$out/corpus/$name"
  opts=(-artifact_prefix="$out/crashes/$name-" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1)
  # Replay: every seed must pass as it is.
  if ! "$bin" "${opts[@]}" -runs=0 "tests/fuzz/corpus/$name" >"$out/$name-replay.log" 2>&1; then
    echo "fuzz.sh: $name: a seed fails; see $out/$name-replay.log" >&2
    status=1
    continue
  fi
  [ "$seconds" -gt 0 ] || { echo "fuzz.sh: $name: seeds replayed"; continue; }
  # FUZZ_REPLAY_ONLY (names, space-separated; CI: checkpoint): only replay.
  if [[ " ${FUZZ_REPLAY_ONLY:-} " == *" $name "* ]]; then
    echo "fuzz.sh: $name: seeds replayed (FUZZ_REPLAY_ONLY: not fuzzed)"
    continue
  fi
  run=(-max_total_time="$seconds")
  # FUZZ_SEED (CI: 1) makes the inputs tried the same on every run.
  [ -n "${FUZZ_SEED:-}" ] && run+=(-seed="$FUZZ_SEED")
  # libhdf5 loops on some damaged files (core/nn/checkpoint.cpp's
  # ReadWatchdog ends such a read after 120 s): those inputs time out, are
  # kept in crashes/ as timeout-*, and the fuzzing goes on (fork mode).
  [ "$name" = checkpoint ] && run+=(-fork=1 -ignore_timeouts=1)
  if ! nice -n 10 "$bin" "${opts[@]}" "${run[@]}" "$out/corpus/$name" \
      "tests/fuzz/corpus/$name" >"$out/$name.log" 2>&1; then
    echo "fuzz.sh: $name: crash; see $out/$name.log and $out/crashes/" >&2
    status=1
  fi
  execs=$( (grep -o '^#[0-9]*' "$out/$name.log" || echo '#?') | tr -d '#' | sort -n | tail -1)
  echo "fuzz.sh: $name: $execs executions in ${seconds} s;" \
       "$(ls "$out/crashes" | grep -c "^$name-crash" || true) crashes," \
       "$(ls "$out/crashes" | grep -c "^$name-timeout" || true) timeouts in $out/crashes"
done
exit $status
