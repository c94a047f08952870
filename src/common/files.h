// File-system helpers that avoid std::filesystem where it is unsafe to call.
//
// Note [No std::filesystem::remove_all]: PyTorch's pip wheels (seen with LibTorch 2.11) export
// their own copy of some std::filesystem symbols from libtorch.so, and since libtorch.so is
// loaded before libstdc++, a call of std::filesystem::remove_all binds to that copy and
// segfaults on a non-empty folder. remove_tree() does the same job with POSIX nftw().
#pragma once

#include <string>

namespace sy {

// Removes `path` and everything below it (like `rm -rf`); a missing path is not an error.
// Throws sy::Error naming the first entry that could not be removed.
void remove_tree(const std::string& path);

}  // namespace sy
