// TensorBoard event files (`events.out.tfevents.*`): the scalars the trainer writes beside
// metrics.jsonl when train.tensorboard is set, so `tensorboard --logdir runs/` shows every run.
// Plain C++: the two encodings an event file needs, TFRecord framing with CRC-32C and the few
// protobuf fields of tensorflow.Event, are written by hand (Note [Event file format]), so the
// project needs neither TensorFlow nor protobuf.
//
// Note [Event file format]: an event file is a sequence of TFRecords, each
//
//   uint64 length                     little endian, the payload's size in bytes
//   uint32 masked_crc32c(length)      of those 8 bytes, little endian
//   byte   payload[length]            one serialized tensorflow.Event
//   uint32 masked_crc32c(payload)     little endian
//
// with CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial value and final xor
// 0xFFFFFFFF; crc32c("123456789") = 0xE3069283) masked as ((crc >> 15) | (crc << 17)) +
// 0xa282ead8. The payload is protobuf wire format (varint keys `field << 3 | wire_type`) of
//
//   Event          { double wall_time = 1;  // fixed64, seconds since the Unix epoch
//                    int64 step = 2;        // varint
//                    string file_version = 3;
//                    Summary summary = 5; }
//   Summary        { repeated Value value = 1; }
//   Summary.Value  { string tag = 1; float simple_value = 2; }  // simple_value: fixed32
//
// The first record of a file is Event{wall_time, step 0, file_version "brain.Event:2"}; every
// scalar is then one Event{wall_time, step, summary{value{tag, simple_value}}}. TensorBoard
// reads every events file of a folder in name order as one run, so a resumed run simply adds a
// file. tests/common/tfrecord_reader.h reads the format back, written from this description
// alone.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace sy {

// CRC-32C (Castagnoli), continuing from `crc` (0 to start); and its TFRecord mask.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
inline uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

class TfEventsWriter {
 public:
  // Creates `dir`/events.out.tfevents.<unix seconds>.<hostname>.<pid> (with a ".<n>" suffix
  // when that name is taken: a second writer of the process in the same second) in the existing
  // folder `dir` and writes the file_version event. Throws sy::Error naming the file when it
  // cannot be created or written.
  explicit TfEventsWriter(const std::string& dir);
  ~TfEventsWriter();  // flushes; never throws
  TfEventsWriter(const TfEventsWriter&) = delete;
  TfEventsWriter& operator=(const TfEventsWriter&) = delete;

  // One Event{now, step, summary{value{tag, simple_value = float(value)}}}. Non-finite values
  // are written as they are (TensorBoard shows NaN and Inf). Buffered until flush().
  void scalar(const std::string& tag, int64_t step, double value);
  // Hands the buffered records to the operating system; throws naming the file on failure.
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_event(const std::string& event);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace sy
