// Reading the corpus file, the train/validation split and batch sampling (see dataset.h).
//
// Note [Split boundary]: with n tokens, the validation split is the last
// floor(n * val_fraction) tokens, so val_begin = n - floor(n * val_fraction) and the train split
// is tokens[0, val_begin). A tolerance of 1e-9 is added before the floor so that fractions that
// are not exact in binary still split as written (100 tokens at 0.29 give 29 validation tokens,
// not 28). Blocks never straddle the boundary: a block and its shifted target both lie inside
// one split, so validation loss never sees a training token and vice versa.
#include "data/dataset.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <torch/torch.h>

#include "common/error.h"

namespace sy {

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  SY_CHECK(!std::filesystem::is_directory(path, ec), "data file '", path, "' is a directory");
  std::ifstream in(path, std::ios::binary);
  SY_CHECK(in, "cannot read data file '", path, "': ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  SY_CHECK(!in.bad(), "cannot read data file '", path, "': read error");
  std::string text = ss.str();
  SY_CHECK(!text.empty(), "data file '", path, "' is empty");
  return text;
}

TokenDataset::TokenDataset(std::vector<int64_t> tokens, double val_fraction, int64_t block_size,
                           const std::string& source)
    : tokens_(std::move(tokens)), block_size_(block_size) {
  SY_CHECK(val_fraction > 0 && val_fraction < 1, source, ": data.val_fraction (", val_fraction,
           ") must be in (0, 1)");
  SY_CHECK(block_size >= 1, source, ": model.block_size (", block_size, ") must be at least 1");
  const auto n = static_cast<int64_t>(tokens_.size());
  // Note [Split boundary].
  const auto num_val =
      static_cast<int64_t>(std::floor(static_cast<double>(n) * val_fraction + 1e-9));
  val_begin_ = n - num_val;
  const int64_t need = block_size + 1;  // one block plus its shifted target
  SY_CHECK(val_begin_ >= need, source, " has ", n, " tokens: the train split (", val_begin_,
           ") is shorter than model.block_size + 1 (", need, ")");
  SY_CHECK(num_val >= need, source, " has ", n, " tokens: the validation split (", num_val,
           ") is shorter than model.block_size + 1 (", need, "); use more data or a larger ",
           "data.val_fraction (", val_fraction, ")");
}

int64_t TokenDataset::num_tokens(Split split) const {
  return split == Split::kTrain ? val_begin_ : static_cast<int64_t>(tokens_.size()) - val_begin_;
}

Batch TokenDataset::sample(Split split, int64_t batch_size, std::mt19937_64& rng) const {
  SY_CHECK(batch_size >= 1, "batch size (", batch_size, ") must be at least 1");
  const int64_t T = block_size_;
  const int64_t begin = split == Split::kTrain ? 0 : val_begin_;
  // Offsets within the split lie in [0, split_len - T - 1], so y's last token o + T is inside it.
  // `rng() % range` (not a std distribution) gives the same offsets on every standard library.
  const auto range = static_cast<uint64_t>(num_tokens(split) - T);

  const auto opts = torch::TensorOptions().dtype(torch::kInt64).device(torch::kCPU);
  Batch b{torch::empty({batch_size, T}, opts), torch::empty({batch_size, T}, opts)};
  int64_t* x = b.x.data_ptr<int64_t>();
  int64_t* y = b.y.data_ptr<int64_t>();
  const size_t row_bytes = static_cast<size_t>(T) * sizeof(int64_t);
  for (int64_t i = 0; i < batch_size; ++i) {
    const int64_t o = begin + static_cast<int64_t>(rng() % range);
    std::memcpy(x + i * T, tokens_.data() + o, row_bytes);
    std::memcpy(y + i * T, tokens_.data() + o + 1, row_bytes);
  }
  return b;
}

}  // namespace sy
