// The NCCL communicator (train/comm.h): one process per GPU, tensors reduced
// on the device, on a stream of its own. The unique id arrives from the
// caller (over MPI or a file), so this file needs neither MPI nor a launcher.
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>

#include "core/error.h"
#include "cuda/check.h"
#include "cuda/device.h"
#include "cuda/nn/cuda_backend.h"
#include "train/comm.h"

#define DQ_NCCL(call)                                                                  \
  do {                                                                                 \
    ncclResult_t r_ = (call);                                                          \
    if (r_ != ncclSuccess)                                                             \
      ::dq::fail(__FILE__, ":", __LINE__, ": ", #call, ": ", ncclGetErrorString(r_));  \
  } while (0)

namespace dq {

namespace {

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(int rank, int size, int local_rank, const ncclUniqueId& id)
      : rank_(rank), size_(size) {
    device_ = nccl_select_device(rank, local_rank);
    try {
      DQ_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      DQ_CUDA(cudaEventCreateWithFlags(&written_, cudaEventDisableTiming));
      DQ_CUDA(cudaEventCreateWithFlags(&reduced_, cudaEventDisableTiming));
      DQ_CUDA(cudaMalloc(&scratch_, kScratchBytes));
      DQ_CUDA(cudaMemset(scratch_, 0, kScratchBytes));
      DQ_NCCL(ncclCommInitRank(&comm_, size, id, rank));
    } catch (...) {
      release();
      throw;
    }
  }
  ~NcclCommunicator() override {
    // ncclCommDestroy waits for every rank to destroy too; while an
    // exception unwinds (this rank failed, the others wait in a collective)
    // that would hang, so the communicator is abandoned to the process exit.
    if (comm_ && std::uncaught_exceptions() == 0) ncclCommDestroy(comm_);
    release();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override {
    return "nccl, " + std::to_string(size_) + (size_ == 1 ? " rank" : " ranks") + ", GPU " +
           std::to_string(device_);
  }

  void allreduce_mean(Tensor& buf) override {
    DQ_CHECK(buf.device() == Device::cuda, "the NCCL communicator reduces device buffers only");
    // The gradient was written by the backend on its own stream; waiting for
    // the device makes it complete before NCCL reads it on ours.
    DQ_CUDA(cudaDeviceSynchronize());
    DQ_NCCL(ncclAllReduce(buf.raw(), buf.raw(), static_cast<size_t>(buf.numel()), ncclFloat,
                          ncclAvg, comm_, stream_));
    wait_until_done(stream_, "all-reduce");
  }
  void start_mean(Backend& be, Tensor& buf, int64_t offset, int64_t count) override {
    DQ_CHECK(buf.device() == Device::cuda, "the NCCL communicator reduces device buffers only");
    DQ_CHECK(offset >= 0 && count >= 0 && offset + count <= buf.numel(), "start_mean: range [",
             offset, ", ", offset + count, ") outside a buffer of ", buf.numel());
    // The range is final once the kernels queued so far on the backend's
    // stream have run; our stream waits for exactly those, and the backend
    // goes on differentiating earlier layers meanwhile. Re-recording one
    // event is safe: a wait binds to the record that precedes it.
    DQ_CUDA(cudaEventRecord(written_, cuda_stream(be)));
    DQ_CUDA(cudaStreamWaitEvent(stream_, written_, 0));
    float* p = static_cast<float*>(buf.raw()) + offset;
    DQ_NCCL(ncclAllReduce(p, p, static_cast<size_t>(count), ncclFloat, ncclAvg, comm_, stream_));
  }
  void wait_all(Backend& be) override {
    // The backend's stream (Adam, the loss download) waits for every
    // reduction queued on ours. The host waits too, watching NCCL's error
    // state: were it to block in the loss download instead, a dead peer
    // would hang it there for good.
    DQ_CUDA(cudaEventRecord(reduced_, stream_));
    DQ_CUDA(cudaStreamWaitEvent(cuda_stream(be), reduced_, 0));
    wait_until_done(stream_, "gradient all-reduce");
  }
  void broadcast(Tensor& buf, int root) override {
    DQ_CHECK(buf.device() == Device::cuda, "the NCCL communicator broadcasts device buffers only");
    DQ_CUDA(cudaDeviceSynchronize());
    DQ_NCCL(ncclBroadcast(buf.raw(), buf.raw(), buf.nbytes(), ncclChar, root, comm_, stream_));
    wait_until_done(stream_, "broadcast");
  }
  void broadcast_bytes(void* data, size_t n, int root) override {
    char* p = static_cast<char*>(data);
    for (size_t off = 0; off < n; off += kScratchBytes) {
      const size_t len = std::min(kScratchBytes, n - off);
      if (rank_ == root)
        DQ_CUDA(cudaMemcpyAsync(scratch_, p + off, len, cudaMemcpyHostToDevice, stream_));
      DQ_NCCL(ncclBroadcast(scratch_, scratch_, len, ncclChar, root, comm_, stream_));
      DQ_CUDA(cudaMemcpyAsync(p + off, scratch_, len, cudaMemcpyDeviceToHost, stream_));
      wait_until_done(stream_, "broadcast");
    }
  }
  void barrier() override {
    // NCCL has no barrier; a one-element all-reduce completes only when every
    // rank has joined it.
    DQ_NCCL(ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, comm_, stream_));
    wait_until_done(stream_, "barrier");
  }
  [[noreturn]] void abort(int code) override {
    // No ncclCommAbort: since NCCL 2.16 it waits for the node's other ranks
    // to abort as well, and they sit in a collective waiting for this one.
    // Ending the process releases everything; the launcher (mpirun, srun or
    // --gpus) then ends the others.
    std::_Exit(code);
  }

 private:
  // cudaStreamSynchronize, except that it watches the communicator: when a
  // peer dies or the network fails, NCCL records an asynchronous error and
  // its kernels never finish, so a plain synchronise would hang forever.
  // This rank then stops with the error instead (and the launcher ends the
  // others). Polls every 20 us: far below a training step.
  void wait_until_done(cudaStream_t s, const char* what) {
    for (;;) {
      const cudaError_t e = cudaStreamQuery(s);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) DQ_CUDA(e);
      ncclResult_t async = ncclSuccess;
      DQ_NCCL(ncclCommGetAsyncError(comm_, &async));
      if (async != ncclSuccess && async != ncclInProgress)
        fail("NCCL ", what, " failed on rank ", rank_, " of ", size_, ": ",
             ncclGetErrorString(async), " (another rank died or the network failed)");
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  void release() {
    if (scratch_) cudaFree(scratch_);
    if (reduced_) cudaEventDestroy(reduced_);
    if (written_) cudaEventDestroy(written_);
    if (stream_) cudaStreamDestroy(stream_);
    scratch_ = nullptr;
    reduced_ = written_ = nullptr;
    stream_ = nullptr;
  }

  static constexpr size_t kScratchBytes = size_t{1} << 20;
  int rank_ = 0, size_ = 1, device_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t written_ = nullptr;  // the backend's stream reached a start_mean
  cudaEvent_t reduced_ = nullptr;  // our stream reached a wait_all
  void* scratch_ = nullptr;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

int nccl_select_device(int rank, int local_rank) {
  // No driver reads as no device: one plain message, not the runtime's code.
  const int devices = cuda_device_count();
  if (devices == 0)
    fail("train.device \"gpu\": no CUDA device is visible to rank ", rank,
         " (no GPU, no NVIDIA driver, or CUDA_VISIBLE_DEVICES empty)");
  // NCCL refuses two ranks on one GPU ("duplicate GPU"), so say it plainly.
  if (local_rank >= devices)
    fail("rank ", rank, " is process ", local_rank + 1, " on its node, but only ", devices,
         devices == 1 ? " GPU is" : " GPUs are",
         " visible there (CUDA_VISIBLE_DEVICES); start at most one rank per GPU (--gpus ",
         devices, ")");
  DQ_CUDA(cudaSetDevice(local_rank));
  return local_rank;
}

size_t nccl_unique_id_bytes() { return sizeof(ncclUniqueId); }

void nccl_new_unique_id(void* out) {
  ncclUniqueId id;
  DQ_NCCL(ncclGetUniqueId(&id));
  std::memcpy(out, &id, sizeof id);
}

std::unique_ptr<Communicator> make_nccl_communicator(int rank, int size, int local_rank,
                                                     const void* unique_id, size_t id_bytes) {
  DQ_CHECK(id_bytes == sizeof(ncclUniqueId), "NCCL unique id of ", id_bytes, " bytes");
  ncclUniqueId id;
  std::memcpy(&id, unique_id, sizeof id);
  return std::make_unique<NcclCommunicator>(rank, size, local_rank, id);
}

}  // namespace dq
