// The CPU backend: oneDNN for convolutions, transposed convolutions and
// max-pooling; plain loops for the rest.
// fp32 only. It is the reference every other backend is tested against, and
// the CPU fallback for inference.
#pragma once
#include <memory>

#include "core/nn/backend.h"

namespace dq {

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace dq
