// A reader of TensorBoard event files for the tests, written from the format's specification
// (TFRecord framing and the tensorflow.Event protobuf, as summarized below) and not from
// src/common/tfevents.cpp: it shares no code with the writer, so a test that reads back what the
// writer wrote checks the writer against the format, not against itself. Used by
// tests/common/tfevents_test.cpp and tests/train/tensorboard_test.cpp.
//
// TFRecord: uint64 length (little endian), uint32 masked CRC-32C of those 8 bytes, the payload,
// uint32 masked CRC-32C of the payload; masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8.
// CRC-32C here is the bitwise form (reflected polynomial 0x82F63B78, one bit at a time).
// Payload: Event{double wall_time = 1; int64 step = 2; string file_version = 3;
// Summary summary = 5}, Summary{repeated Value value = 1}, Value{string tag = 1;
// float simple_value = 2}. Any other field is skipped by its wire type.
#pragma once

#include <dirent.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sy {
namespace tfrecord {

// CRC-32C one bit at a time (no table): the definition, not the fast form.
inline uint32_t crc32c_bitwise(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) {
    crc ^= p[i];
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return crc ^ 0xFFFFFFFFu;
}

inline uint32_t mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

inline uint64_t read_le(const std::string& bytes, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t{static_cast<unsigned char>(bytes[at + i])} << (8 * i);
  return v;
}

// The payloads of a TFRecord file's records, in order. Throws std::runtime_error on a
// truncated record or a CRC that does not match (of the length or of the payload).
inline std::vector<std::string> read_records(const std::string& bytes) {
  std::vector<std::string> records;
  size_t at = 0;
  while (at < bytes.size()) {
    if (bytes.size() - at < 12) throw std::runtime_error("truncated record header");
    const uint64_t length = read_le(bytes, at, 8);
    const auto length_crc = static_cast<uint32_t>(read_le(bytes, at + 8, 4));
    if (mask(crc32c_bitwise(bytes.data() + at, 8)) != length_crc) {
      throw std::runtime_error("length CRC mismatch at offset " + std::to_string(at));
    }
    at += 12;
    if (bytes.size() - at < length + 4) throw std::runtime_error("truncated record payload");
    const std::string payload = bytes.substr(at, length);
    const auto payload_crc = static_cast<uint32_t>(read_le(bytes, at + length, 4));
    if (mask(crc32c_bitwise(payload.data(), payload.size())) != payload_crc) {
      throw std::runtime_error("payload CRC mismatch at offset " + std::to_string(at));
    }
    records.push_back(payload);
    at += length + 4;
  }
  return records;
}

// One protobuf field: its number and wire type, and its value (varint, fixed32/64 bits as an
// integer, or the bytes of a length-delimited field).
struct Field {
  uint32_t number = 0;
  int wire_type = 0;
  uint64_t bits = 0;
  std::string bytes;
};

inline uint64_t read_varint(const std::string& m, size_t& at) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (at >= m.size()) throw std::runtime_error("truncated varint");
    const auto byte = static_cast<unsigned char>(m[at++]);
    v |= uint64_t{byte & 0x7Fu} << shift;
    if ((byte & 0x80u) == 0) return v;
  }
  throw std::runtime_error("varint longer than 10 bytes");
}

inline std::vector<Field> decode_message(const std::string& m) {
  std::vector<Field> fields;
  size_t at = 0;
  while (at < m.size()) {
    Field f;
    const uint64_t key = read_varint(m, at);
    f.number = static_cast<uint32_t>(key >> 3);
    f.wire_type = static_cast<int>(key & 7);
    switch (f.wire_type) {
      case 0: f.bits = read_varint(m, at); break;
      case 1:
      case 5: {
        const int n = f.wire_type == 1 ? 8 : 4;
        if (m.size() - at < static_cast<size_t>(n)) throw std::runtime_error("truncated fixed");
        f.bits = read_le(m, at, n);
        at += n;
        break;
      }
      case 2: {
        const uint64_t n = read_varint(m, at);
        if (m.size() - at < n) throw std::runtime_error("truncated length-delimited field");
        f.bytes = m.substr(at, n);
        at += n;
        break;
      }
      default: throw std::runtime_error("unknown wire type " + std::to_string(f.wire_type));
    }
    fields.push_back(std::move(f));
  }
  return fields;
}

struct Value {
  std::string tag;
  bool has_simple_value = false;
  float simple_value = 0;
};

struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  bool has_summary = false;
  std::vector<Value> values;
};

inline Event decode_event(const std::string& payload) {
  Event e;
  for (const Field& f : decode_message(payload)) {
    if (f.number == 1 && f.wire_type == 1) {
      std::memcpy(&e.wall_time, &f.bits, 8);
    } else if (f.number == 2 && f.wire_type == 0) {
      e.step = static_cast<int64_t>(f.bits);
    } else if (f.number == 3 && f.wire_type == 2) {
      e.file_version = f.bytes;
    } else if (f.number == 5 && f.wire_type == 2) {
      e.has_summary = true;
      for (const Field& sf : decode_message(f.bytes)) {
        if (sf.number != 1 || sf.wire_type != 2) continue;
        Value v;
        for (const Field& vf : decode_message(sf.bytes)) {
          if (vf.number == 1 && vf.wire_type == 2) {
            v.tag = vf.bytes;
          } else if (vf.number == 2 && vf.wire_type == 5) {
            const auto bits = static_cast<uint32_t>(vf.bits);
            std::memcpy(&v.simple_value, &bits, 4);
            v.has_simple_value = true;
          }
        }
        e.values.push_back(v);
      }
    }
  }
  return e;
}

inline std::string read_binary_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline std::vector<Event> read_events(const std::string& path) {
  std::vector<Event> events;
  for (const std::string& r : read_records(read_binary_file(path))) {
    events.push_back(decode_event(r));
  }
  return events;
}

// The events files of `dir` (names containing "tfevents", as TensorBoard finds them), sorted.
inline std::vector<std::string> events_files(const std::string& dir) {
  std::vector<std::string> files;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) throw std::runtime_error("cannot list " + dir);
  while (const dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (name.find("tfevents") != std::string::npos) files.push_back(dir + "/" + name);
  }
  ::closedir(d);
  std::sort(files.begin(), files.end());
  return files;
}

// Every simple_value of `events`, in file order: (tag, step, value).
struct Scalar {
  std::string tag;
  int64_t step = 0;
  float value = 0;
};

inline std::vector<Scalar> scalars(const std::vector<Event>& events) {
  std::vector<Scalar> out;
  for (const Event& e : events) {
    for (const Value& v : e.values) {
      if (v.has_simple_value) out.push_back({v.tag, e.step, v.simple_value});
    }
  }
  return out;
}

}  // namespace tfrecord
}  // namespace sy
