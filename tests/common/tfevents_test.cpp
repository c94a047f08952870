// TensorBoard event files (src/common/tfevents.h): what TfEventsWriter writes, read back by the
// independent reader of tfrecord_reader.h (its own bitwise CRC-32C and protobuf decoder, from
// the format's specification): CRC-32C against its published check values, the file name and
// first event, scalars of several tags and steps with exact float values, a corrupted byte
// failing the CRC check, flushing, and errors that name the file.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "common/files.h"
#include "common/tfevents.h"
#include "tfrecord_reader.h"
#include "temp_folder.h"

namespace sy {
namespace {

using sy::testing::TempFolder;

uint32_t float_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

TEST(TfEvents, Crc32cCheckValues) {
  // CRC-32C/ISCSI check value, and the test vectors of RFC 3720 (B.4), for the reader's bitwise
  // CRC and the writer's table-driven one.
  const std::string digits = "123456789";
  std::string zeros(32, '\0'), ones(32, '\xFF'), ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  const std::vector<std::pair<std::string, uint32_t>> vectors = {
      {digits, 0xE3069283u}, {zeros, 0x8A9136AAu}, {ones, 0x62A8AB43u}, {ascending, 0x46DD794Eu}};
  for (const auto& [bytes, crc] : vectors) {
    EXPECT_EQ(tfrecord::crc32c_bitwise(bytes.data(), bytes.size()), crc);
    EXPECT_EQ(crc32c(bytes.data(), bytes.size()), crc);
  }
  // Continuing a CRC over two pieces equals the CRC of the whole.
  EXPECT_EQ(crc32c(digits.data() + 4, 5, crc32c(digits.data(), 4)), 0xE3069283u);
}

struct Written {
  std::string tag;
  int64_t step;
  double value;
};

TEST(TfEvents, ScalarsReadBackExactlyInOrder) {
  const TempFolder folder("tfevents");
  const std::string& dir = folder.path();
  const double before = now_seconds();
  const std::vector<Written> written = {
      {"train/loss", 1, 4.1743876934051514},
      {"train/lr", 1, 3e-4},
      {"train/loss", 2, 0.1},  // not a float: written as float(0.1)
      {"eval/val_loss", 2, -1.25},
      {"tiny", 3, 1e-30},
      {"denormal", 3, 1e-45},  // the smallest float denormal
      {"expert_load/layer00/expert007", 300, 0.125},
      {"big_step", int64_t{1} << 40, 123456789.0},
      {"negative_step", -1, 7.0},
      {"nan", 4, std::nan("")},
      {"inf", 4, -std::numeric_limits<double>::infinity()},
      {"train/loss", 5, 2.5}};
  std::string path;
  {
    TfEventsWriter writer(dir);
    path = writer.path();
    for (const Written& w : written) writer.scalar(w.tag, w.step, w.value);
    writer.flush();
  }
  const double after = now_seconds();

  // The name TensorBoard looks for, ending in the host and the process id.
  const std::vector<std::string> files = tfrecord::events_files(dir);
  ASSERT_EQ(files, std::vector<std::string>{path});
  const std::string name = path.substr(dir.size() + 1);
  EXPECT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
  const std::string pid_suffix = "." + std::to_string(::getpid());
  ASSERT_GT(name.size(), pid_suffix.size());
  EXPECT_EQ(name.substr(name.size() - pid_suffix.size()), pid_suffix) << name;

  const std::vector<tfrecord::Event> events = tfrecord::read_events(path);
  ASSERT_EQ(events.size(), written.size() + 1);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_EQ(events[0].step, 0);
  EXPECT_FALSE(events[0].has_summary);
  for (const tfrecord::Event& e : events) {
    EXPECT_GE(e.wall_time, before - 1);
    EXPECT_LE(e.wall_time, after + 1);
  }
  for (size_t i = 0; i < written.size(); ++i) {
    SCOPED_TRACE(written[i].tag);
    const tfrecord::Event& e = events[i + 1];
    EXPECT_TRUE(e.file_version.empty());
    EXPECT_EQ(e.step, written[i].step);
    ASSERT_EQ(e.values.size(), 1u);
    EXPECT_EQ(e.values[0].tag, written[i].tag);
    ASSERT_TRUE(e.values[0].has_simple_value);
    const float expected = static_cast<float>(written[i].value);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(e.values[0].simple_value));
    } else {
      EXPECT_EQ(float_bits(e.values[0].simple_value), float_bits(expected))
          << e.values[0].simple_value << " vs " << expected;
    }
  }
  EXPECT_GT(tfrecord::scalars(events)[5].value, 0.0f);  // the denormal did not flush to zero
}

TEST(TfEvents, CorruptedByteFailsTheCrcCheck) {
  const TempFolder folder("tfevents");
  const std::string& dir = folder.path();
  std::string path;
  {
    TfEventsWriter writer(dir);
    path = writer.path();
    writer.scalar("train/loss", 10, 3.25);
  }
  const std::string good = tfrecord::read_binary_file(path);
  ASSERT_EQ(tfrecord::read_records(good).size(), 2u);
  // Every single flipped bit, in a length, a CRC or a payload, is caught; so is a cut file.
  for (size_t at = 0; at < good.size(); ++at) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    EXPECT_THROW(tfrecord::read_records(bad), std::runtime_error) << "byte " << at;
  }
  EXPECT_THROW(tfrecord::read_records(good.substr(0, good.size() - 1)), std::runtime_error);
  EXPECT_THROW(tfrecord::read_records(good.substr(0, 5)), std::runtime_error);
}

TEST(TfEvents, FlushedRecordsAreInTheFileWhileWriting) {
  const TempFolder folder("tfevents");
  const std::string& dir = folder.path();
  TfEventsWriter writer(dir);
  // The file_version event is on disk as soon as the writer exists.
  EXPECT_EQ(tfrecord::read_events(writer.path()).size(), 1u);
  writer.scalar("a", 1, 1.0);
  writer.scalar("b", 1, 2.0);
  writer.flush();
  const std::vector<tfrecord::Event> events = tfrecord::read_events(writer.path());
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].values.at(0).tag, "b");
}

TEST(TfEvents, TwoWritersInOneFolderWriteTwoFiles) {
  const TempFolder folder("tfevents");
  const std::string& dir = folder.path();
  {
    TfEventsWriter first(dir), second(dir);
    EXPECT_NE(first.path(), second.path());
    first.scalar("x", 1, 1.0);
    second.scalar("x", 2, 2.0);
  }
  const std::vector<std::string> files = tfrecord::events_files(dir);
  ASSERT_EQ(files.size(), 2u);
  for (const std::string& f : files) EXPECT_EQ(tfrecord::read_events(f).size(), 2u) << f;
}

TEST(TfEvents, UnwritableFolderThrowsNamingThePath) {
  const TempFolder folder("tfevents");
  const std::string& dir = folder.path();
  // A folder that does not exist, and a "folder" that is a file (fails even for root, unlike a
  // folder without write permission).
  const std::string file = dir + "/plain_file";
  std::ofstream(file) << "x";
  for (const std::string& bad : {dir + "/no/such/folder", file}) {
    try {
      TfEventsWriter writer(bad);
      ADD_FAILURE() << "no error for " << bad;
    } catch (const Error& e) {
      EXPECT_NE(e.message().find(bad + "/events.out.tfevents."), std::string::npos) << e.message();
    }
  }
}

}  // namespace
}  // namespace sy
