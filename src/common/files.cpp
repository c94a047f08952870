#include "common/files.h"

#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>

#include <cerrno>
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
    SY_THROW("cannot remove '", what, "': ", std::strerror(g_failed_path.empty() ? errno : g_failed_errno));
  }
}

}  // namespace sy
