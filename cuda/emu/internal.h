// What the emulator's own files share (cuda/emu/*.cpp); not for kernels.
#pragma once
#include <string>

#include "dq_emu.h"

namespace dq_emu {

constexpr int kMaxThreads = 1024;               // per block, as on every GPU since Kepler
constexpr size_t kMaxSharedBytes = 227 * 1024;  // per block, an H100's opt-in maximum

// Records e as the thread's last error (cudaGetLastError) with a detail
// printed to stderr and kept for last_detail().
void set_error(cudaError_t e, const std::string& detail);
const char* where_name(Where w);
bool valid_stream(cudaStream_t s);
int device_count();

}  // namespace dq_emu
