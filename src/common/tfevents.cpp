// TensorBoard event files: see tfevents.h (Note [Event file format]).
#include "common/tfevents.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "common/error.h"
#include "common/files.h"

namespace sy {
namespace {

std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}

// Protobuf wire format, the three wire types an Event needs.
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_key(std::string& out, uint32_t field, WireType type) {
  put_varint(out, field << 3 | type);
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void put_double(std::string& out, uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  put_key(out, field, kFixed64);
  put_le(out, bits, 8);
}

void put_float(std::string& out, uint32_t field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  put_key(out, field, kFixed32);
  put_le(out, bits, 4);
}

void put_int64(std::string& out, uint32_t field, int64_t v) {
  put_key(out, field, kVarint);
  put_varint(out, static_cast<uint64_t>(v));  // negative: ten bytes, as protobuf's int64
}

void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

// Event fields (Note [Event file format]).
constexpr uint32_t kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5;
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1, kValueSimpleValue = 2;

std::string event_header(int64_t step) {
  const double wall_time =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::string event;
  put_double(event, kEventWallTime, wall_time);
  put_int64(event, kEventStep, step);
  return event;
}

// This host's name as a file-name part ('/' cannot be in one).
std::string host_for_file_name() {
  std::string h = host_name();
  for (char& c : h) {
    if (c == '/') c = '_';
  }
  return h;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc32c_table();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

TfEventsWriter::TfEventsWriter(const std::string& dir) {
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  const std::string base = dir + "/events.out.tfevents." + std::to_string(seconds) + "." +
                           host_for_file_name() + "." + std::to_string(::getpid());
  // O_EXCL: never append to or truncate another writer's file.
  int fd = -1;
  for (int n = 0; fd < 0; ++n) {
    path_ = n == 0 ? base : base + "." + std::to_string(n);
    fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    SY_CHECK(fd >= 0 || (errno == EEXIST && n < 1000), "cannot create TensorBoard events file '",
             path_, "': ", std::strerror(errno));
  }
  file_ = ::fdopen(fd, "wb");
  if (file_ == nullptr) {
    const int err = errno;
    ::close(fd);
    SY_THROW("cannot open TensorBoard events file '", path_, "': ", std::strerror(err));
  }
  std::string event = event_header(0);
  put_bytes(event, kEventFileVersion, "brain.Event:2");
  write_event(event);
  flush();
}

TfEventsWriter::~TfEventsWriter() {
  if (file_ != nullptr) std::fclose(file_);  // flushes; errors here have nowhere to go
}

void TfEventsWriter::scalar(const std::string& tag, int64_t step, double value) {
  std::string summary_value;
  put_bytes(summary_value, kValueTag, tag);
  put_float(summary_value, kValueSimpleValue, static_cast<float>(value));
  std::string summary;
  put_bytes(summary, kSummaryValue, summary_value);
  std::string event = event_header(step);
  put_bytes(event, kEventSummary, summary);
  write_event(event);
}

void TfEventsWriter::flush() {
  SY_CHECK(std::fflush(file_) == 0, "cannot write TensorBoard events file '", path_,
           "': ", std::strerror(errno));
}

void TfEventsWriter::write_event(const std::string& event) {
  std::string record;
  put_le(record, event.size(), 8);
  put_le(record, masked_crc32c(record.data(), 8), 4);
  record += event;
  put_le(record, masked_crc32c(event.data(), event.size()), 4);
  SY_CHECK(std::fwrite(record.data(), 1, record.size(), file_) == record.size(),
           "cannot write TensorBoard events file '", path_, "': ", std::strerror(errno));
}

}  // namespace sy
