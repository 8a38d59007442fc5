// Hostile inputs (issue 26): sizes read from a file that overflow or claim
// more than the file holds, and non-finite weights, are refused with one
// line naming the file before anything is allocated or written.
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/dims.h"
#include "core/error.h"
#include "core/io/h5io.h"
#include "core/io/nifti_io.h"
#include "core/io/output_files.h"
#include "core/nn/checkpoint.h"
#include "core/qsm/refine.h"
#include "tests/test_util.h"
#include "tests/train_util.h"

namespace {

using namespace dq::test;
using Catch::Matchers::Contains;

const std::string kInfer = (fs::path(DEEPQSM_BINARY).parent_path() / "deepqsm-infer").string();

// A NIfTI-2 file (540-byte header, data at 544) with the given int64 dims,
// float32 voxels and `payload` bytes of zeros after the header.
void write_nifti2(const std::string& path, const std::vector<int64_t>& dims, size_t payload) {
  std::vector<unsigned char> b(544 + payload, 0);
  const auto put = [&](size_t at, const void* v, size_t n) { std::memcpy(b.data() + at, v, n); };
  const int32_t sizeof_hdr = 540;
  put(0, &sizeof_hdr, 4);
  const char magic[8] = {'n', '+', '2', '\0', '\r', '\n', '\032', '\n'};
  put(4, magic, 8);
  const int16_t datatype = 16, bitpix = 32;  // NIFTI_TYPE_FLOAT32
  put(12, &datatype, 2);
  put(14, &bitpix, 2);
  int64_t dim[8] = {static_cast<int64_t>(dims.size()), 1, 1, 1, 1, 1, 1, 1};
  for (size_t i = 0; i < dims.size(); ++i) dim[i + 1] = dims[i];
  put(16, dim, sizeof dim);
  const double pixdim[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  put(104, pixdim, sizeof pixdim);
  const int64_t vox_offset = 544;
  put(168, &vox_offset, 8);
  const double slope = 1.0;
  put(176, &slope, 8);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const dq::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("bounded_product refuses negative sizes and overflow at any factor", "[hardening]") {
  const int64_t big = int64_t{1} << 62;
  const int64_t wraps[] = {2, 2, big + 2};  // 2^64 + 8: wrapped, the product was 8
  CHECK(dq::bounded_product(wraps, 3, std::numeric_limits<int64_t>::max()) == -1);
  const int64_t neg[] = {4, -1, 4};
  CHECK(dq::bounded_product(neg, 3, 1000) == -1);
  const int64_t ok[] = {4, 5, 6};
  CHECK(dq::bounded_product(ok, 3, 120) == 120);
  CHECK(dq::bounded_product(ok, 3, 119) == -1);
  const int64_t zero[] = {0, big, big};  // an empty shape is 0, not an overflow
  CHECK(dq::bounded_product(zero, 3, 10) == 0);
}

TEST_CASE("NIfTI-2 dims whose product overflows are refused, not wrapped", "[hardening]") {
  TempDir dir("deepqsm-hard");
  const int64_t big = int64_t{1} << 62;
  // Each wrapped to a small or zero voxel count before: 8 (SIGSEGV in
  // `deepqsm invert`), 0 ("no voxel is inside the mask"), or a huge vector.
  const std::vector<std::vector<int64_t>> forged = {{2, 2, big + 2},
                                                    {int64_t{1} << 31, int64_t{1} << 31, 4},
                                                    {8, (int64_t{1} << 61) + 1, 1},
                                                    {1, 1, big + 1}};
  for (const auto& dims : forged) {
    const std::string path = dir.file("forged.nii");
    write_nifti2(path, dims, 64);
    INFO(dims[0] << "x" << dims[1] << "x" << dims[2]);
    CHECK_THAT(error_of([&] { dq::read_nifti(path); }),
               Contains("forged.nii") && Contains("more voxels than any file can hold"));
  }
}

TEST_CASE("deepqsm invert and deepqsm-infer end with one line on a wrapping NIfTI-2 header",
          "[hardening]") {
  TempDir dir("deepqsm-hard");
  const std::string path = dir.file("wrap.nii");
  write_nifti2(path, {2, 2, (int64_t{1} << 62) + 2}, 64);
  for (const std::string& cmd :
       {std::string(DEEPQSM_BINARY) + "' invert tkd '" + path, kInfer + "' '" + path}) {
    const Run r = run_program(dir, cmd, "-o '" + dir.file("chi.nii") + "'");
    INFO(cmd << "\nstderr: " << r.err);
    REQUIRE(r.exited());  // was SIGSEGV
    CHECK(r.code() == 1);
    CHECK_THAT(r.err, Contains("wrap.nii") && Contains("more voxels than any file can hold"));
    CHECK_FALSE(fs::exists(dir.file("chi.nii")));
  }
}

TEST_CASE("a .nii.gz whose header claims more than gzip can expand to is refused before reading",
          "[hardening]") {
  TempDir dir("deepqsm-hard");
  const std::string raw = dir.file("big.nii");
  write_nifti2(raw, {1000, 1000, 1000}, 64);  // 4 GB claimed, 64 bytes present
  REQUIRE(std::system(("gzip -f '" + raw + "'").c_str()) == 0);
  CHECK_THAT(error_of([&] { dq::read_nifti(raw + ".gz"); }),
             Contains("big.nii.gz") && Contains("more than a gzip file of"));
}

TEST_CASE("HDF5 datasets whose shape passes what the file can hold are refused", "[hardening]") {
  TempDir dir("deepqsm-hard");
  const std::string path = dir.file("huge.h5");
  {
    // Chunked and never written: HDF5 stores no data, the shape says 2^62 floats.
    const hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hsize_t dims[2] = {hsize_t{1} << 31, hsize_t{1} << 31}, chunk[2] = {1, 1024};
    const hid_t space = H5Screate_simple(2, dims, nullptr);
    const hid_t plist = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(plist, 2, chunk);
    const hid_t d = H5Dcreate2(f, "x", H5T_IEEE_F32LE, space, H5P_DEFAULT, plist, H5P_DEFAULT);
    REQUIRE(d >= 0);
    H5Dclose(d);
    H5Pclose(plist);
    H5Sclose(space);
    H5Fclose(f);
  }
  dq::H5File f(path, dq::H5File::Mode::read);
  CHECK_THAT(error_of([&] { f.read_floats("x"); }),
             Contains("huge.h5") && Contains("'x'") && Contains("more than a file of"));
  CHECK_THAT(
      error_of([&] {
        dq::checked_dataset_elements("p.h5", "field", {int64_t{1} << 40, 64, 64, 64}, 4, 1 << 20);
      }),
      Contains("p.h5") && Contains("'field'"));
}

namespace {

// A small valid checkpoint, then `edit` applied to it with the HDF5 API.
std::string edited_checkpoint(const TempDir& dir, const std::function<void(hid_t)>& edit) {
  dq::UNetConfig cfg;
  cfg.depth = 2;
  cfg.base_filters = 2;
  dq::UNet net(cfg);
  const dq::Shape flat{net.layout().total()};
  dq::Tensor p = dq::Tensor::zeros(flat), m = dq::Tensor::zeros(flat), v = dq::Tensor::zeros(flat);
  net.init_he(p, 5);
  const std::string path = dir.file("ck.h5");
  dq::save_checkpoint(path, net, p, &m, &v, 3, "{}");
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  REQUIRE(f >= 0);
  edit(f);
  H5Fclose(f);
  return path;
}

void set_int_attr(hid_t f, const char* key, int64_t value) {
  const hid_t a = H5Aopen(f, key, H5P_DEFAULT);
  REQUIRE(a >= 0);
  REQUIRE(H5Awrite(a, H5T_NATIVE_INT64, &value) >= 0);
  H5Aclose(a);
}

}  // namespace

TEST_CASE("a checkpoint's model outside what deepqsm builds is refused with its name",
          "[hardening]") {
  TempDir dir("deepqsm-hard");
  // depth 40 asked UNet for 2^39-wide layers; 2^32 + 2 used to pass as 2.
  for (const int64_t depth : {int64_t{40}, int64_t{7}, (int64_t{1} << 32) + 2}) {
    const std::string path =
        edited_checkpoint(dir, [&](hid_t f) { set_int_attr(f, "depth", depth); });
    CHECK_THAT(
        error_of([&] { dq::load_checkpoint(path); }),
        Contains("ck.h5") && Contains("outside what deepqsm builds") && Contains("depth 2..6"));
  }
  const std::string wide =
      edited_checkpoint(dir, [&](hid_t f) { set_int_attr(f, "base_filters", 1 << 20); });
  CHECK_THAT(error_of([&] { dq::load_checkpoint(wide); }),
             Contains("ck.h5") && Contains("base_filters 1..1024"));
}

TEST_CASE("non-finite weights are never written and never loaded", "[hardening]") {
  TempDir dir("deepqsm-hard");
  dq::UNetConfig cfg;
  cfg.depth = 2;
  cfg.base_filters = 2;
  dq::UNet net(cfg);
  const dq::Shape flat{net.layout().total()};
  dq::Tensor p = dq::Tensor::zeros(flat), m = dq::Tensor::zeros(flat), v = dq::Tensor::zeros(flat);
  net.init_he(p, 5);
  CHECK(dq::first_non_finite(net, p, &m, &v).empty());
  dq::Tensor bad = dq::Tensor::zeros(flat);  // (a Tensor copy shares its storage)
  std::copy(p.f32(), p.f32() + p.numel(), bad.f32());
  bad.f32()[net.layout()[1].offset] = std::numeric_limits<float>::quiet_NaN();
  CHECK(dq::first_non_finite(net, bad) == net.layout()[1].name + "[0] = nan");
  const std::string path = dir.file("nan.h5");
  CHECK_THAT(
      error_of([&] { dq::save_checkpoint(path, net, bad, &m, &v, 9, "{}"); }),
      Contains("nan.h5") && Contains("not written") && Contains("step 9") && Contains("= nan"));
  CHECK_FALSE(fs::exists(path));
  dq::Tensor inf_v = dq::Tensor::zeros(flat);
  inf_v.f32()[2] = std::numeric_limits<float>::infinity();
  CHECK_THAT(error_of([&] { dq::save_checkpoint(path, net, p, &m, &inf_v, 9, "{}"); }),
             Contains("adam/v[2] = inf"));

  // A file written by an older build (or edited) with a NaN weight: every
  // reader (deepqsm-infer, export, --resume, init_from) goes through here.
  const std::string nan_file = edited_checkpoint(dir, [&](hid_t f) {
    const std::string name = "params/" + net.layout()[0].name;
    const hid_t d = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
    REQUIRE(d >= 0);
    std::vector<float> values(static_cast<size_t>(net.layout()[0].shape.numel()), 0.5f);
    values[3] = -std::numeric_limits<float>::infinity();
    REQUIRE(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) >= 0);
    H5Dclose(d);
  });
  for (const bool weights_only : {true, false})
    CHECK_THAT(error_of([&] { dq::load_checkpoint(nan_file, weights_only); }),
               Contains("ck.h5") && Contains("not finite") && Contains("[3] = -inf"));
}

TEST_CASE("a diverging refinement stops with the iteration and the values", "[hardening]") {
  CHECK(dq::refine_diverged_at({1.0, 0.5, 0.7, 0.2}) == 0);
  CHECK(dq::refine_diverged_at({1.0, 0.5, 2e3, 0.2}) == 2);
  CHECK(dq::refine_diverged_at({1.0, std::nan(""), 0.2}) == 1);
  CHECK(dq::refine_diverged_at({0.0, 0.0, 0.0}) == 0);
  CHECK(dq::refine_diverged_at({0.0, 1e-30, 0.0}) == 0);  // no scale to judge a rise by

  const dq::Dims3 d{16, 16, 16};
  const auto n = static_cast<size_t>(d.numel());
  std::vector<float> field(n), net(n), chi(n);
  for (size_t i = 0; i < n; ++i) {
    field[i] = 0.01f * static_cast<float>((i * 37) % 11) - 0.05f;
    net[i] = 0.02f * static_cast<float>((i * 13) % 7) - 0.06f;
  }
  // alpha 1e30 is inside the accepted range; its J went from 4e31 to 4e40
  // and deepqsm-infer wrote a constant map with exit status 0.
  for (const auto& [tv, lambda] : {std::pair{1e30, 1e-3}, std::pair{5e-4, 1e30}}) {
    dq::RefineOptions o;
    o.iterations = 5;
    o.tv = tv;
    o.lambda = lambda;
    CHECK_THAT(
        error_of([&] {
          dq::refine_chi(field.data(), net.data(), nullptr, d, {1, 1, 1}, {0, 0, 1}, o, chi.data());
        }),
        Contains("diverged at iteration 1") && Contains("objective went from"));
  }
  dq::RefineOptions fine;
  fine.iterations = 5;
  fine.tv = dq::kRefineTvAlpha;
  fine.lambda = dq::kRefineTvLambda;
  std::vector<double> trace;
  dq::refine_chi(field.data(), net.data(), nullptr, d, {1, 1, 1}, {0, 0, 1}, fine, chi.data(),
                 &trace);
  CHECK(trace.back() < trace.front());
}

TEST_CASE("deepqsm-infer refuses refinement counts and paddings it cannot finish", "[hardening]") {
  TempDir dir("deepqsm-hard");
  const std::string field = dir.file("f.nii");
  REQUIRE(run_program(dir, DEEPQSM_BINARY, "phantom --size 16 -o '" + field + "'").code() == 0);
  const Run many = run_program(
      dir, kInfer, "'" + field + "' -o '" + dir.file("c.nii") + "' --refine 1000000000");
  CHECK(many.code() == 1);
  CHECK_THAT(many.err, Contains("--refine must be 0 to 1000"));
  // 16 + 2 x 512 = 1040^3 voxels: ~65 GiB for the refinement's arrays,
  // refused before the network runs.
  const Run wide =
      run_program(dir, kInfer, "'" + field + "' -o '" + dir.file("c.nii") + "' --refine-pad 512");
  if (wide.code() == 1) {
    CHECK_THAT(wide.err, Contains("--refine on 1040x1040x1040 voxels") && Contains("GiB"));
    CHECK_FALSE(fs::exists(dir.file("c.nii")));
  } else {
    WARN("this machine has more than 65 GiB available; the estimate was not exercised");
  }
}

TEST_CASE("training that diverges writes no checkpoint with non-finite weights", "[hardening]") {
  dq::TrainConfig cfg = dq::test::tiny_run("deepqsm-hard-diverge");
  cfg.optim.lr = 3e38f;  // accepted (> 0), each Adam update moves a weight by up to lr
  cfg.steps = 3;
  cfg.checkpoint_every = 1;
  const std::string err = error_of([&] { dq::run_training(cfg, dq::test::quiet()); });
  CHECK_THAT(err, Contains("training diverged") || Contains("training loss became"));
  CHECK_THAT(err, Contains("step"));
  for (const auto& e : fs::directory_iterator(cfg.out_dir))
    if (e.path().extension() == ".h5") {
      INFO(e.path());
      CHECK_NOTHROW(dq::load_checkpoint(e.path().string()));
    }
  fs::remove_all(cfg.out_dir);
}

TEST_CASE("outputs replace only regular files: links, FIFOs and devices are refused",
          "[hardening]") {
  TempDir dir("deepqsm-hard");
  const std::string target = dir.write("target.nii", "keep me");
  const std::string link = dir.file("link.nii");
  fs::create_symlink(target, link);
  const std::string fifo = dir.file("fifo.nii");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const float data[8] = {};
  for (const auto& [path, what] : {std::pair{link, "symbolic link"}, std::pair{fifo, "FIFO"},
                                   std::pair{std::string("/dev/null"), "character device"}}) {
    INFO(path);
    CHECK_THAT(error_of([&] { dq::check_replaceable(path); }), Contains(path) && Contains(what));
    // The writers all go through PendingFile: NIfTI here, PNG, HDF5 and
    // checkpoints alike.
    CHECK_THAT(error_of([&] { dq::PendingFile f(path); }), Contains(what));
    if (path.size() > 4 && path.compare(path.size() - 4, 4, ".nii") == 0) {
      CHECK_THAT(error_of([&] {
                   dq::write_nifti_new(path, data, 2, 2, 2, {1, 1, 1});
                 }),
                 Contains(what));
      CHECK_THAT(error_of([&] { dq::check_nifti_output(path, "--output"); }), Contains(what));
    }
  }
  CHECK(fs::is_symlink(link));
  CHECK(slurp(target) == "keep me");
  CHECK(fs::is_fifo(fifo));
  struct stat st {};
  REQUIRE(::stat("/dev/null", &st) == 0);
  CHECK(S_ISCHR(st.st_mode));
  // Through the binary: exit 1, nothing replaced.
  const Run r = run_program(dir, DEEPQSM_BINARY, "phantom --size 16 -o '" + link + "'");
  CHECK(r.code() == 1);
  CHECK_THAT(r.err, Contains("symbolic link"));
  CHECK(fs::is_symlink(link));
}

TEST_CASE("stale temporaries of dead processes are removed by the next writer in the folder",
          "[hardening]") {
  TempDir dir("deepqsm-hard");
  // A pid that cannot be running: above any pid_max. This machine's tag:
  // ".dqtmp-<host>-", the marker without this process's pid.
  const std::string dead = "999999999";
  const std::string mark = dq::temporary_marker();
  const std::string tag = mark.substr(0, mark.rfind('-') + 1);
  const std::string old_ck = dir.write("checkpoint-000100.h5" + tag + dead, "x");
  const std::string old_nii = dir.write("chi" + tag + dead + ".nii.gz", "x");
  const std::string fresh = dir.write("field.nii" + tag + dead, "x");
  const std::string mine = dir.write("other.h5" + mark, "x");
  // Names of the user's that the old pattern (".tmp<N>[.nii[.gz]]") took
  // for temporaries and deleted; and another machine's temporary on a
  // shared disk.
  const std::string user = dir.write("notes.tmp" + dead + ".txt", "x");
  const std::string user_nii = dir.write("scan.tmp" + dead + ".nii", "x");
  const std::string user_plain = dir.write("notes.tmp4000000", "x");
  const std::string other_host = dir.write("x.h5.dqtmp-not-this-host-" + dead, "x");
  const std::string alive = dir.write("a.h5" + tag + "1", "x");  // pid 1 always runs
  const auto old =
      fs::file_time_type::clock::now() - std::chrono::seconds(dq::kStaleTemporarySeconds + 60);
  for (const std::string& p : {old_ck, old_nii, mine, user, user_nii, user_plain, other_host, alive})
    fs::last_write_time(p, old);
  const float data[8] = {};
  dq::write_nifti_new(dir.file("out.nii"), data, 2, 2, 2, {1, 1, 1});
  CHECK_FALSE(fs::exists(old_ck));
  CHECK_FALSE(fs::exists(old_nii));
  CHECK(fs::exists(fresh));  // written recently: maybe another machine's
  CHECK(fs::exists(mine));   // this process's own
  CHECK(fs::exists(user));   // not one of our names
  CHECK(fs::exists(user_nii));
  CHECK(fs::exists(user_plain));
  CHECK(fs::exists(other_host));
  CHECK(fs::exists(alive));
  CHECK(fs::exists(dir.file("out.nii")));
}

TEST_CASE("odd fields and masks are refused or warned about, naming the right file",
          "[hardening]") {
  TempDir dir("deepqsm-hard");
  const std::string field = dir.file("f.nii"), mask = dir.file("m.nii");
  REQUIRE(
      run_program(dir, DEEPQSM_BINARY, "phantom --size 16 -o '" + field + "' --mask '" + mask + "'")
          .code() == 0);
  dq::Volume f = dq::read_nifti(field);
  // An empty mask was reported as "f.nii: no voxel is inside the mask".
  std::vector<float> zeros(static_cast<size_t>(f.numel()), 0.0f);
  const std::string empty = dir.file("empty.nii");
  dq::write_nifti(empty, f, zeros.data());
  const std::string out = dir.file("c.nii");
  for (const std::string& cmd :
       {kInfer + "' '" + field, std::string(DEEPQSM_BINARY) + "' invert tkd '" + field}) {
    const Run r = run_program(dir, cmd, "--mask '" + empty + "' -o '" + out + "'");
    INFO(cmd << "\n" << r.err);
    CHECK(r.code() == 1);
    CHECK_THAT(r.err, Contains("empty.nii: the mask is empty"));
  }
  // A mask shifted by 5 mm (same voxels): used as stored, with a warning.
  dq::Volume shifted = dq::read_nifti(mask);
  CHECK(dq::voxel_size_mismatch(f, "the field", shifted, "the mask").empty());
  REQUIRE(f.sform_code > 0);  // write_nifti_new sets both affines
  shifted.sform[3] += 5.0;
  CHECK_THAT(dq::voxel_size_mismatch(f, "the field", shifted, "the mask"),
             Contains("the mask is placed differently from the field") && Contains("5 mm"));
  // A 1x1x1 "volume" is refused; a 2-D image runs with a warning.
  dq::Volume one;
  one.nx = one.ny = one.nz = 1;
  CHECK_THAT(error_of([&] { dq::field_grid_warning(one, "one.nii"); }),
             Contains("one.nii: the grid is 1x1x1"));
  dq::Volume flat;
  flat.nx = flat.ny = 32;
  flat.nz = 1;
  CHECK_THAT(dq::field_grid_warning(flat, "slice.nii"), Contains("slice.nii is a 2-D image"));
  const float voxel[1] = {0.5f};
  const std::string single = dir.file("single.nii");
  dq::write_nifti_new(single, voxel, 1, 1, 1, {1, 1, 1});
  const Run r = run_program(dir, kInfer, "'" + single + "' -o '" + out + "'");
  CHECK(r.code() == 1);
  CHECK_THAT(r.err, Contains("single.nii: the grid is 1x1x1"));
  // A field whose values all vanish in ppm (subnormal Hz values).
  std::vector<float> tiny(static_cast<size_t>(f.numel()), 1e-44f);
  const std::string faint = dir.file("faint.nii");
  dq::write_nifti(faint, f, tiny.data());
  const Run u = run_program(dir, kInfer, "'" + faint + "' -o '" + out + "' --units hz --b0 3");
  CHECK(u.code() == 1);
  CHECK_THAT(u.err, Contains("faint.nii: the field underflows to 0 in ppm"));
  CHECK_FALSE(fs::exists(out));
}

TEST_CASE("resuming with a damaged newest checkpoint names the older one that loads",
          "[hardening]") {
  dq::TrainConfig cfg = dq::test::tiny_run("deepqsm-hard-resume");
  cfg.steps = 2;
  cfg.checkpoint_every = 1;
  cfg.keep_checkpoints = 5;
  dq::run_training(cfg, dq::test::quiet());
  const std::string newest = (fs::path(cfg.out_dir) / "checkpoint-00000002.h5").string();
  REQUIRE(fs::exists(newest));
  fs::remove(newest);
  std::ofstream(newest) << "damaged";
  dq::TrainOptions opt = dq::test::quiet();
  opt.resume = true;
  cfg.steps = 3;
  const std::string err = error_of([&] { dq::run_training(cfg, opt); });
  CHECK_THAT(err, Contains("checkpoint-00000002.h5") && Contains("the older") &&
                      Contains("checkpoint-00000001.h5") && Contains(".damaged"));
  fs::remove_all(cfg.out_dir);
}

// Inputs the fuzzers (scripts/fuzz.sh) crashed on, kept in their corpora.
TEST_CASE("inputs the fuzzers found end in one error line", "[hardening][fuzz]") {
  const std::string corpus = std::string(DEEPQSM_SOURCE_DIR) + "/tests/fuzz/corpus/";
  // NIfTI-2 dim[0] = 4244635645: nifti_image_read overflowed its stack.
  CHECK_THAT(error_of([&] { dq::read_nifti(corpus + "nifti/crash-dim0-stack-overflow.nii"); }),
             Contains("crash-dim0-stack-overflow.nii") && Contains("dim[0]"));
  // dim[0] = 2^56, which is 1 byte-swapped, but sizeof_hdr says native order.
  CHECK_THAT(
      error_of([&] { dq::read_nifti(corpus + "nifti/crash-dim0-swapped-stack-overflow.nii"); }),
      Contains("crash-dim0-swapped-stack-overflow.nii") && Contains("dim[0]"));
  // A damaged HDF5 metadata block makes libhdf5 itself ask malloc for 3 PB;
  // malloc says no and HDF5 fails cleanly (AddressSanitizer reports the
  // request as a crash unless allocator_may_return_null=1, as fuzz.sh sets).
  const std::string h5 = corpus + "checkpoint/crash-hdf5-huge-metadata-alloc.h5";
  CHECK_THAT(error_of([&] { dq::load_checkpoint(h5); }),
             Contains("crash-hdf5-huge-metadata-alloc.h5"));
  // A string attribute whose stored bytes are fewer than its type's size:
  // H5Aread copied past libhdf5's own 23-byte buffer (AddressSanitizer:
  // heap-buffer-overflow in H5A__read); now refused before the read.
  const std::string attr = corpus + "checkpoint/crash-hdf5-attr-short-storage.h5";
  CHECK_THAT(error_of([&] { dq::load_checkpoint(attr); }),
             Contains("crash-hdf5-attr-short-storage.h5") && Contains("bytes stored where its type needs"));
}

TEST_CASE("a run whose inputs fail set-up leaves no output folder behind", "[hardening]") {
  TempDir dir("deepqsm-hard");
  dq::TrainConfig cfg = dq::test::tiny_run("deepqsm-hard-nofolder");
  // A patch file of 8^3 patches for a recipe of 16^3 ones: refused in
  // prepare_data, after the folder and its log were made.
  const std::string patches =
      std::string(DEEPQSM_SOURCE_DIR) + "/tests/fuzz/corpus/checkpoint/patches-tiny.h5";
  cfg.source = "hdf5";
  cfg.patch_file = patches;
  const std::string err = error_of([&] { dq::run_training(cfg, dq::test::quiet()); });
  CHECK_THAT(err, Contains("patches-tiny.h5") && Contains("shape"));
  CHECK_FALSE(fs::exists(cfg.out_dir));
  // A folder that existed before is left as it was.
  fs::create_directories(cfg.out_dir);
  error_of([&] { dq::run_training(cfg, dq::test::quiet()); });
  CHECK(fs::is_directory(cfg.out_dir));
  fs::remove_all(cfg.out_dir);
}

TEST_CASE("synth refuses a volume count whose patch file cannot fit the disk", "[hardening]") {
  TempDir dir("deepqsm-hard");
  const std::string config = std::string(DEEPQSM_SOURCE_DIR) + "/configs/test-tiny.json";
  // 2^40 volumes x 4 patches x 16^3 x 2 x 4 bytes: 2^57 bytes.
  const Run r = run_program(dir, DEEPQSM_BINARY,
                            "synth --config '" + config + "' --volumes 1099511627776 --out '" +
                                dir.file("p.h5") + "' --quiet");
  CHECK(r.code() == 1);
  CHECK_THAT(r.err, Contains("GiB free") && Contains("lower --volumes"));
  CHECK_FALSE(fs::exists(dir.file("p.h5")));
}
