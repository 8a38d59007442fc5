// The NCCL communicator's entry points in the builds without NCCL
// (DEEPQSM_GPU=emu or off; comm_nccl.cpp is the real one): GPU ranks need a
// DEEPQSM_GPU=cuda build, and each entry point says so. CPU ranks (MPI) are
// unaffected.
#include "core/error.h"
#include "train/comm.h"

namespace dq {

namespace {
[[noreturn]] void absent(const char* what) {
  fail(what, ": training on GPUs needs NCCL, which this build (DEEPQSM_GPU=",
#if defined(DEEPQSM_GPU_OFF)
       "off, built without CUDA",
#else
       "emu",
#endif
       ") does not have; train on the CPU (train.device \"cpu\") or build with DEEPQSM_GPU=cuda");
}
}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(int, int, int, const void*, size_t) {
  absent("the NCCL communicator");
}
int nccl_select_device(int, int) { absent("selecting a GPU for NCCL"); }
size_t nccl_unique_id_bytes() { absent("the NCCL unique id"); }
void nccl_new_unique_id(void*) { absent("the NCCL unique id"); }

}  // namespace dq
