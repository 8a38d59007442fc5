// A minimal TensorBoard event-file writer for scalar curves, with no
// protobuf or TensorFlow dependency. `tensorboard --logdir OUT/tb` reads it.
//
// File: "events.out.tfevents.<unix seconds>.<host>" in the given folder, a
// sequence of TFRecords:
//   uint64 length (little endian), uint32 masked_crc32c(length bytes),
//   byte data[length],             uint32 masked_crc32c(data)
// with masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8, c = CRC-32C.
// Each record is a protobuf tensorflow.Event, encoded by hand:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
//             Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// The first record carries file_version "brain.Event:2", as TensorFlow's
// writer does; every later one a summary with scalar values.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace dq {

uint32_t crc32c(const void* data, size_t n);
uint32_t masked_crc32c(const void* data, size_t n);

class TensorBoardWriter {
 public:
  // Creates `dir` if needed and opens a new event file in it.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  const std::string& path() const { return path_; }
  // One Event at `step` holding every (tag, value) pair; flushed at once so
  // a live TensorBoard sees it and a killed run keeps it.
  void scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Encoders exposed for the tests, which decode what the writer produced.
std::string encode_scalar_event(double wall_time, int64_t step,
                                const std::vector<std::pair<std::string, double>>& values);
std::string encode_version_event(double wall_time);

}  // namespace dq
