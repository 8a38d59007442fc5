// cuFFT's 3-D real transforms on FFTW (single precision). The layouts are
// the same: row-major (nx slowest, nz fastest), the half spectrum
// nx x ny x (nz/2 + 1) complex values of two floats; neither direction
// normalises. Plans are made at the first execution, on the call's own
// arrays (FFTW_ESTIMATE touches no data), one per in-place/out-of-place use.
#include "cufft.h"

#include <fftw3.h>

#include <map>
#include <mutex>
#include <string>

#include "cuda/emu/internal.h"

namespace {

struct Plan {
  int n[3];
  cufftType type;
  fftwf_plan in_place = nullptr, out_of_place = nullptr;
};
struct Plans {
  std::mutex mu;
  std::map<cufftHandle, Plan> plans;
  int next = 1;
};
Plans& plans() {
  static Plans* p = new Plans;  // plans may outlive other statics at exit
  return *p;
}

cufftResult check_device(const char* call, const void* p, size_t bytes) {
  const dq_emu::Where w = dq_emu::where(p, bytes);
  if (w == dq_emu::Where::device) return CUFFT_SUCCESS;
  dq_emu::set_error(cudaErrorInvalidValue, std::string(call) + ": a buffer of " +
                                               std::to_string(bytes) + " bytes is " +
                                               dq_emu::where_name(w));
  cudaGetLastError();  // cuFFT reports through its own result, not the runtime's last error
  return CUFFT_INVALID_VALUE;
}

cufftResult exec(cufftHandle h, cufftType want, void* in, void* out) {
  Plans& ps = plans();
  std::lock_guard<std::mutex> lock(ps.mu);
  auto it = ps.plans.find(h);
  if (it == ps.plans.end()) return CUFFT_INVALID_PLAN;
  Plan& p = it->second;
  if (p.type != want) return CUFFT_INVALID_TYPE;
  const size_t rows = static_cast<size_t>(p.n[0]) * p.n[1], half = p.n[2] / 2 + 1;
  const size_t real_bytes = rows * p.n[2] * sizeof(float), complex_bytes = rows * half * 8;
  const bool r2c = want == CUFFT_R2C;
  const bool inplace = in == out;
  // In place, the real rows are padded to 2 * (nz/2 + 1) floats, as in cuFFT.
  const size_t rb = inplace ? complex_bytes : real_bytes;
  if (cufftResult r = check_device(r2c ? "cufftExecR2C input" : "cufftExecC2R input", in,
                                   r2c ? rb : complex_bytes))
    return r;
  if (cufftResult r = check_device(r2c ? "cufftExecR2C output" : "cufftExecC2R output", out,
                                   r2c ? complex_bytes : rb))
    return r;
  fftwf_plan& f = inplace ? p.in_place : p.out_of_place;
  if (!f) {
    const unsigned flags = FFTW_ESTIMATE | FFTW_UNALIGNED;
    if (inplace) {
      // The padded real layout: an advanced plan whose real rows have the stride of the spectrum's.
      const int nembed_r[3] = {p.n[0], p.n[1], 2 * static_cast<int>(half)};
      const int nembed_c[3] = {p.n[0], p.n[1], static_cast<int>(half)};
      f = r2c ? fftwf_plan_many_dft_r2c(3, p.n, 1, static_cast<float*>(in), nembed_r, 1, 0,
                                        static_cast<fftwf_complex*>(out), nembed_c, 1, 0, flags)
              : fftwf_plan_many_dft_c2r(3, p.n, 1, static_cast<fftwf_complex*>(in), nembed_c, 1, 0,
                                        static_cast<float*>(out), nembed_r, 1, 0, flags);
    } else {
      f = r2c ? fftwf_plan_dft_r2c_3d(p.n[0], p.n[1], p.n[2], static_cast<float*>(in),
                                      static_cast<fftwf_complex*>(out), flags)
              : fftwf_plan_dft_c2r_3d(p.n[0], p.n[1], p.n[2], static_cast<fftwf_complex*>(in),
                                      static_cast<float*>(out), flags);
    }
    if (!f) return CUFFT_SETUP_FAILED;
  }
  if (r2c)
    fftwf_execute_dft_r2c(f, static_cast<float*>(in), static_cast<fftwf_complex*>(out));
  else
    fftwf_execute_dft_c2r(f, static_cast<fftwf_complex*>(in), static_cast<float*>(out));
  return CUFFT_SUCCESS;
}

}  // namespace

cufftResult cufftPlan3d(cufftHandle* plan, int nx, int ny, int nz, cufftType type) {
  if (nx < 2 || ny < 2 || nz < 2) return CUFFT_INVALID_SIZE;
  if (type != CUFFT_R2C && type != CUFFT_C2R) return CUFFT_NOT_IMPLEMENTED;
  if (dq_emu::device_count() == 0) return CUFFT_INVALID_DEVICE;
  static std::once_flag once;
  std::call_once(once, [] { fftwf_make_planner_thread_safe(); });
  Plans& ps = plans();
  std::lock_guard<std::mutex> lock(ps.mu);
  *plan = ps.next++;
  ps.plans[*plan] = Plan{{nx, ny, nz}, type};
  return CUFFT_SUCCESS;
}

cufftResult cufftSetStream(cufftHandle plan, cudaStream_t s) {
  Plans& ps = plans();
  std::lock_guard<std::mutex> lock(ps.mu);
  if (!ps.plans.count(plan)) return CUFFT_INVALID_PLAN;
  return dq_emu::valid_stream(s) ? CUFFT_SUCCESS : CUFFT_INVALID_VALUE;
}

cufftResult cufftExecR2C(cufftHandle plan, cufftReal* in, cufftComplex* out) {
  return exec(plan, CUFFT_R2C, in, out);
}
cufftResult cufftExecC2R(cufftHandle plan, cufftComplex* in, cufftReal* out) {
  return exec(plan, CUFFT_C2R, in, out);
}

cufftResult cufftDestroy(cufftHandle plan) {
  Plans& ps = plans();
  std::lock_guard<std::mutex> lock(ps.mu);
  auto it = ps.plans.find(plan);
  if (it == ps.plans.end()) return CUFFT_INVALID_PLAN;
  if (it->second.in_place) fftwf_destroy_plan(it->second.in_place);
  if (it->second.out_of_place) fftwf_destroy_plan(it->second.out_of_place);
  ps.plans.erase(it);
  return CUFFT_SUCCESS;
}
