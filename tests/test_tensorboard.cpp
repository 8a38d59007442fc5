// The TensorBoard writer (train/tensorboard.h): CRC-32C against its
// published check value, and event files decoded back record by record
// (TFRecord framing, masked CRCs, the hand-encoded protobuf Event).
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "train/tensorboard.h"

using namespace dq;

namespace {

// A minimal protobuf reader: enough for Event / Summary / Value.
struct Reader {
  const std::string& s;
  size_t pos = 0;
  bool done() const { return pos >= s.size(); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      REQUIRE(pos < s.size());
      const auto b = static_cast<unsigned char>(s[pos++]);
      v |= uint64_t{b & 0x7Fu} << shift;
      if (!(b & 0x80)) return v;
    }
  }
  template <typename T>
  T fixed() {
    REQUIRE(pos + sizeof(T) <= s.size());
    T v;
    std::memcpy(&v, s.data() + pos, sizeof v);
    pos += sizeof v;
    return v;
  }
  std::string bytes() {
    const size_t n = static_cast<size_t>(varint());
    REQUIRE(pos + n <= s.size());
    std::string out = s.substr(pos, n);
    pos += n;
    return out;
  }
};

struct Event {
  double wall_time = 0;
  int64_t step = -1;
  std::string file_version;
  std::map<std::string, float> values;
};

Event decode_event(const std::string& data) {
  Event e;
  Reader r{data};
  while (!r.done()) {
    const uint64_t tag = r.varint();
    switch (tag) {
      case (1 << 3) | 1: e.wall_time = r.fixed<double>(); break;
      case (2 << 3) | 0: e.step = static_cast<int64_t>(r.varint()); break;
      case (3 << 3) | 2: e.file_version = r.bytes(); break;
      case (5 << 3) | 2: {
        const std::string summary = r.bytes();
        Reader sr{summary};
        while (!sr.done()) {
          REQUIRE(sr.varint() == ((1 << 3) | 2));
          const std::string value = sr.bytes();
          Reader vr{value};
          std::string name;
          float x = 0;
          while (!vr.done()) {
            const uint64_t vt = vr.varint();
            if (vt == ((1 << 3) | 2))
              name = vr.bytes();
            else if (vt == ((2 << 3) | 5))
              x = vr.fixed<float>();
            else
              FAIL("unexpected field in Summary.Value: tag " << vt);
          }
          e.values[name] = x;
        }
        break;
      }
      default: FAIL("unexpected field in Event: tag " << tag);
    }
  }
  return e;
}

// Splits a TFRecord file, checking both masked CRCs of every record.
std::vector<std::string> read_records(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> records;
  size_t pos = 0;
  while (pos < file.size()) {
    REQUIRE(pos + 12 <= file.size());
    uint64_t len;
    uint32_t len_crc, data_crc;
    std::memcpy(&len, file.data() + pos, 8);
    std::memcpy(&len_crc, file.data() + pos + 8, 4);
    CHECK(len_crc == masked_crc32c(file.data() + pos, 8));
    REQUIRE(pos + 12 + len + 4 <= file.size());
    records.push_back(file.substr(pos + 12, len));
    std::memcpy(&data_crc, file.data() + pos + 12 + len, 4);
    CHECK(data_crc == masked_crc32c(records.back().data(), records.back().size()));
    pos += 12 + len + 4;
  }
  return records;
}

}  // namespace

TEST_CASE("CRC-32C matches its check value", "[tensorboard]") {
  // The standard check value of CRC-32C (RFC 3720, appendix B.4) for "123456789".
  CHECK(crc32c("123456789", 9) == 0xE3069283u);
  CHECK(crc32c("", 0) == 0u);
}

TEST_CASE("Event files decode to the scalars written", "[tensorboard]") {
  const auto dir = std::filesystem::temp_directory_path() / "deepqsm-test-tensorboard";
  std::filesystem::remove_all(dir);
  std::string path;
  {
    TensorBoardWriter w(dir.string());
    path = w.path();
    w.scalars(1, {{"train/loss", 0.25}, {"train/samples_per_s", 12.5}});
    w.scalars(300, {{"val/mse", 1.5e-4}});
  }
  CHECK(std::filesystem::path(path).filename().string().rfind("events.out.tfevents.", 0) == 0);
  const std::vector<std::string> records = read_records(path);
  REQUIRE(records.size() == 3);
  const Event first = decode_event(records[0]);
  CHECK(first.file_version == "brain.Event:2");
  CHECK(first.wall_time > 1.5e9);
  const Event a = decode_event(records[1]), b = decode_event(records[2]);
  CHECK(a.step == 1);
  CHECK(a.values.size() == 2);
  CHECK(a.values.at("train/loss") == 0.25f);
  CHECK(a.values.at("train/samples_per_s") == 12.5f);
  CHECK(b.step == 300);
  CHECK(b.values.at("val/mse") == static_cast<float>(1.5e-4));
  CHECK(b.wall_time >= a.wall_time);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Large steps and long tags encode as protobuf varints", "[tensorboard]") {
  const std::string tag(200, 'x');  // longer than 127 bytes: a two-byte length
  const Event e = decode_event(encode_scalar_event(1.0, int64_t{1} << 40, {{tag, -3.0}}));
  CHECK(e.step == int64_t{1} << 40);
  CHECK(e.values.at(tag) == -3.0f);
}
