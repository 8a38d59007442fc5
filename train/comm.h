// The data-parallel communicator: one process per device, ranks 0 .. size-1.
// The trainer splits each global batch over the ranks and averages the flat
// gradient buffer (core/nn/params.h) over them, so every rank applies the same
// Adam step to the same weights.
//
// Implementations:
//   single  one process, no library: every collective is a no-op.
//   mpi     CPU ranks started by mpirun/srun; MPI_Allreduce on host buffers,
//           MPI_Iallreduce for the asynchronous ranges. This is how the
//           data-parallel logic is tested without GPUs.
//   nccl    GPU ranks; NCCL on device buffers, on the communicator's own
//           stream. The NCCL unique id reaches the ranks over MPI
//           (mpirun/srun) or through a file written by the parent of
//           `deepqsm train --gpus N` (spawn_local_ranks). MPI never carries
//           tensors in that case.
//
// Every rank must hold bit-identical weights. MPI and NCCL both compute each
// reduced element once and distribute it (or combine in an order that IEEE
// commutativity makes rank-independent), and the trainer checks the weights'
// checksum across ranks at every checkpoint, so a divergence is caught.
//
// Overlap with backward (train.allreduce_overlap, on by default): the U-Net
// writes gradients from the head down to enc0, i.e. from the end of the flat
// buffer towards its start, and UNet::backward reports each final tail
// (on_ready(k): [k, total) is final). The trainer starts the mean of every
// train.allreduce_bucket_kb of final tail with start_mean while earlier
// layers are still being differentiated, and calls wait_all before Adam:
//   mpi    MPI_Iallreduce per range; start_mean also tests the earlier
//          requests, since Open MPI moves non-blocking collectives on only
//          inside MPI calls; wait_all waits for all, then divides by size.
//   nccl   start_mean records an event on the backend's stream and makes the
//          communication stream wait for it (NCCL must not read gradients
//          the backward kernels have not written yet), then queues
//          ncclAllReduce(avg) there; wait_all makes the backend's stream
//          wait for the communication stream, so Adam sees the means, and
//          the host waits for them while polling NCCL's asynchronous error
//          state (a dead peer then stops this rank with a message rather
//          than hanging it in the loss download). start_mean never blocks.
//   single nothing (the trainer does not bucket with one rank).
// Each element is still reduced once, by the same operation, so the result
// is bit-identical to the one-call allreduce_mean with 2 ranks (a + b is
// commutative; tested under mpirun). With more ranks MPI and NCCL may pick
// per message size algorithms that add in another order, which changes the
// last bits (identically on every rank) but not the invariant above.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/nn/backend.h"
#include "core/nn/tensor.h"

namespace dq {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "mpi, 2 ranks"

  // buf (on the device the communicator serves) becomes the element-wise
  // mean over the ranks, in place.
  virtual void allreduce_mean(Tensor& buf) = 0;
  // Starts the mean over the ranks of buf[offset, offset + count), in place,
  // and returns without waiting for it. `be` is the backend whose queued
  // work writes buf: the reduction reads the range only after that work.
  // The range must not be touched until wait_all; every rank must start the
  // same ranges in the same order.
  virtual void start_mean(Backend& be, Tensor& buf, int64_t offset, int64_t count) = 0;
  // Completes every started mean: afterwards the host (mpi) or any op later
  // queued on be (nccl) sees the averaged values.
  virtual void wait_all(Backend& be) = 0;
  // buf on every rank becomes root's buf.
  virtual void broadcast(Tensor& buf, int root) = 0;
  // Host bytes from root to every rank (small control data: checksums).
  virtual void broadcast_bytes(void* data, size_t n, int root) = 0;
  virtual void barrier() = 0;
  // Ends every rank's process after a rank-local failure, which would
  // otherwise leave the others waiting in a collective forever.
  [[noreturn]] virtual void abort(int code) = 0;
};

// The communicator for this process: NCCL when `device` is "gpu", MPI when
// the process was started by an MPI launcher (mpirun, srun) on the CPU, and
// the single-process one otherwise. Also binds the process to its GPU
// (local rank modulo the visible devices) before NCCL is set up.
std::unique_ptr<Communicator> make_communicator(const std::string& device);

// True when an MPI launcher started this process (its environment says so);
// MPI is initialised only then, so plain runs never pay for it.
bool launched_by_mpi();

// Set by spawn_local_ranks in each child: rank, world size and the file
// holding the NCCL unique id.
constexpr const char* kRankEnv = "DEEPQSM_RANK";
constexpr const char* kWorldEnv = "DEEPQSM_WORLD_SIZE";
constexpr const char* kNcclIdEnv = "DEEPQSM_NCCL_ID_FILE";

// `deepqsm train --gpus N` on one node without MPI: writes a fresh NCCL
// unique id to a private file, re-executes this binary (/proc/self/exe with
// the same arguments) N times with kRankEnv/kWorldEnv/kNcclIdEnv set, waits
// for all, and returns the first non-zero exit status (after killing the
// other children, so one failure does not leave them blocked in NCCL).
// SIGTERM or SIGINT to the parent is forwarded once as SIGTERM, on which
// the ranks stop together after the same step with a checkpoint.
int spawn_local_ranks(int n);
// The process part of spawn_local_ranks, for any program: runs n copies of
// `exe` with argv `args` (args[0] is the name), rank r's environment this
// process's plus kRankEnv=r, kWorldEnv=n and `extra_env` ("KEY=value"),
// and supervises them as described above: a second SIGTERM/SIGINT to this
// process escalates to SIGKILL, a rank that ends with a non-zero status
// other than a forwarded stop (exit 128 + SIGTERM/SIGINT) gets the others
// SIGKILLed. Returns the first non-zero status (128 + signal for a rank
// killed by one), 0 when all succeed.
int run_rank_processes(const std::string& exe, const std::vector<std::string>& args, int n,
                       const std::vector<std::string>& extra_env);

// Implemented in comm_nccl.cpp; used by make_communicator.
std::unique_ptr<Communicator> make_nccl_communicator(int rank, int size, int local_rank,
                                                     const void* unique_id, size_t id_bytes);
// Makes GPU `local_rank` current for this rank, failing with a clear message
// when the node has fewer visible GPUs than ranks; returns the device.
int nccl_select_device(int rank, int local_rank);
size_t nccl_unique_id_bytes();
void nccl_new_unique_id(void* out);

}  // namespace dq
