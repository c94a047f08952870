#include "common/files.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/error.h"

namespace sy {
namespace {

thread_local std::string g_failed_path;  // the entry nftw could not remove
thread_local int g_failed_errno = 0;

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  if (::remove(path) != 0) {
    g_failed_path = path;
    g_failed_errno = errno;
    return 1;  // stops the walk
  }
  return 0;
}

}  // namespace

void remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0 && errno == ENOENT) return;
  g_failed_path.clear();
  // Depth first (children before their folder), not following symbolic links.
  const int rc = ::nftw(path.c_str(), remove_entry, /*nopenfd=*/16, FTW_DEPTH | FTW_PHYS);
  if (rc != 0) {
    const std::string what = g_failed_path.empty() ? path : g_failed_path;
    SY_THROW("cannot remove '", what,
             "': ", std::strerror(g_failed_path.empty() ? errno : g_failed_errno));
  }
}

namespace {

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}

// Closes the descriptor on every path out.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

uint32_t crc32(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

void sync_directory(const std::string& path) {
  Fd dir{::open(path.c_str(), O_RDONLY | O_DIRECTORY)};
  SY_CHECK(dir.fd >= 0, "cannot open folder '", path, "': ", std::strerror(errno));
  // Some file systems do not support fsync on folders (EINVAL); the rename is still atomic.
  SY_CHECK(::fsync(dir.fd) == 0 || errno == EINVAL, "cannot sync folder '", path,
           "': ", std::strerror(errno));
}

namespace {

// Test hook (docs/testing.md#injected-write-failures): with SWITCHYARD_TEST_FAIL_WRITE set to a
// non-empty text, writing a file whose path contains it fails with ENOSPC after half of its
// bytes, as on a full disk.
bool write_fails_by_request(const std::string& path) {
  const char* part = std::getenv("SWITCHYARD_TEST_FAIL_WRITE");
  return part != nullptr && part[0] != '\0' && path.find(part) != std::string::npos;
}

}  // namespace

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  const std::string tmp = path + ".tmp";
  {
    Fd out{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
    SY_CHECK(out.fd >= 0, "cannot create '", tmp, "': ", std::strerror(errno));
    const char* p = static_cast<const char*>(data);
    size_t left = size;
    if (write_fails_by_request(path)) {
      const ssize_t n = ::write(out.fd, p, size / 2);
      (void)n;
      SY_THROW("cannot write '", tmp, "': ", std::strerror(ENOSPC),
               " (injected by SWITCHYARD_TEST_FAIL_WRITE)");
    }
    while (left > 0) {
      const ssize_t n = ::write(out.fd, p, left);
      if (n < 0 && errno == EINTR) continue;
      SY_CHECK(n > 0, "cannot write '", tmp, "': ", std::strerror(errno));
      p += n;
      left -= static_cast<size_t>(n);
    }
    SY_CHECK(::fsync(out.fd) == 0, "cannot sync '", tmp, "': ", std::strerror(errno));
  }
  SY_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '", path,
           "': ", std::strerror(errno));
  const size_t slash = path.find_last_of('/');
  sync_directory(slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash)));
}

std::string read_file(const std::string& path) {
  Fd in{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  SY_CHECK(in.fd >= 0, "cannot open '", path, "': ", std::strerror(errno));
  struct stat st;
  SY_CHECK(::fstat(in.fd, &st) == 0, "cannot stat '", path, "': ", std::strerror(errno));
  SY_CHECK(!S_ISDIR(st.st_mode), "'", path, "' is a folder, expected a file");
  std::string bytes;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(in.fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    SY_CHECK(n >= 0, "cannot read '", path, "': ", std::strerror(errno));
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
  }
  return bytes;
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_directories(const std::string& path, const std::string& what) {
  const std::string named = what.empty() ? "" : what + ": ";
  std::string prefix;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    prefix = path.substr(0, pos);
    if (prefix.empty()) continue;
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      SY_THROW(named, "cannot create folder '", prefix, "': ", std::strerror(errno));
    }
  }
  struct stat st;
  SY_CHECK(::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode), named, "'", path,
           "' exists and is not a folder");
}

std::string expand_home(const std::string& path, const std::string& what) {
  if (path.empty() || path[0] != '~') return path;
  SY_CHECK(path.size() == 1 || path[1] == '/', what, " '", path,
           "': only a leading ~ or ~/ (your home folder) is expanded, not ~user; give the full "
           "path");
  const char* home = std::getenv("HOME");
  SY_CHECK(home != nullptr && home[0] != '\0', what, " '", path,
           "' starts with ~ but HOME is not set: give the full path");
  std::string expanded = home;
  while (expanded.size() > 1 && expanded.back() == '/') expanded.pop_back();
  return expanded + path.substr(1);
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "unknown";
  return buf;
}

}  // namespace sy
