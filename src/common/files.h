// File-system helpers that avoid std::filesystem where it is unsafe to call.
//
// Note [No std::filesystem::remove_all]: PyTorch's pip wheels (seen with LibTorch 2.11) export
// their own copy of some std::filesystem symbols from libtorch.so, and since libtorch.so is
// loaded before libstdc++, a call of std::filesystem::remove_all binds to that copy and
// segfaults on a non-empty folder. remove_tree() does the same job with POSIX nftw().
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sy {

// Removes `path` and everything below it (like `rm -rf`); a missing path is not an error.
// Throws sy::Error naming the first entry that could not be removed.
void remove_tree(const std::string& path);

// CRC-32 (IEEE 802.3, as zlib and `gzip -l`), continuing from `crc` (0 to start).
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

// Writes `size` bytes to `path` so that a crash at any moment leaves either the old file or the
// complete new one: write to `path.tmp`, fsync, rename over `path`, fsync the folder. Throws
// naming the file and the system error.
void write_file_atomic(const std::string& path, const void* data, size_t size);
inline void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_file_atomic(path, bytes.data(), bytes.size());
}

// The whole file; throws naming it when it cannot be opened or read.
std::string read_file(const std::string& path);

// fsync of a folder: makes renames and new entries in it durable.
void sync_directory(const std::string& path);

// Whether `path` names something (stat(), so a link to nothing does not), and whether a folder.
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);

// Creates `path` and its missing parents (mkdir -p); throws naming the path, after `what` (the
// key or flag that gave it, e.g. "train.out_dir") when given.
void make_directories(const std::string& path, const std::string& what = "");

// `path` with a leading `~` or `~/` replaced by $HOME (a folder named `~` is never created by
// mistake); other paths unchanged. `what` names the path in errors ("train.out_dir", "--run"):
// an error when HOME is unset or empty, or for `~user/...` (not expanded).
std::string expand_home(const std::string& path, const std::string& what);

// This host's name (gethostname), "unknown" when it has none.
std::string host_name();

}  // namespace sy
