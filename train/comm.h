// The data-parallel communicator: one process per device, ranks 0 .. size-1.
// The trainer splits each global batch over the ranks and, after the
// backward pass, averages the flat gradient buffer (core/params.h) with ONE
// all-reduce, so every rank applies the same Adam step to the same weights.
//
// Implementations:
//   single  one process, no library: allreduce_mean and broadcast are no-ops.
//   mpi     CPU ranks started by mpirun/srun; MPI_Allreduce on host buffers.
//           This is how the data-parallel logic is tested without GPUs.
//   nccl    GPU ranks; NCCL on device buffers. The NCCL unique id reaches the
//           ranks over MPI (mpirun/srun) or through a file written by the
//           parent of `deepqsm train --gpus N` (spawn_local_ranks). MPI never
//           carries tensors in that case.
//
// Every rank must hold bit-identical weights. MPI and NCCL both compute each
// reduced element once and distribute it (or combine in an order that IEEE
// commutativity makes rank-independent), and the trainer checks the weights'
// checksum across ranks at every checkpoint, so a divergence is caught.
//
// Overlap with backward: the U-Net writes gradients from the head down to
// enc0, i.e. from the end of the flat buffer towards its start, so the
// buffer can be reduced in tail-first buckets while earlier layers are still
// being differentiated (NCCL on its own stream). UNet::backward has no
// per-layer hook yet, so today the whole buffer is reduced in one call after
// backward; the interface takes a contiguous range so that bucketing needs
// no change here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"

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
// for all, and returns the first non-zero exit status (after ending the
// other children, so one failure does not leave them blocked in NCCL).
int spawn_local_ranks(int n);

// Implemented in comm_nccl.cpp; used by make_communicator.
std::unique_ptr<Communicator> make_nccl_communicator(int rank, int size, int local_rank,
                                                     const void* unique_id, size_t id_bytes);
size_t nccl_unique_id_bytes();
void nccl_new_unique_id(void* out);

}  // namespace dq
