// Pair files and pair batches (see pairs.h; the embedded pairs are in synthetic.cpp).
#include "data/pairs.h"

#include <cmath>
#include <cstring>

#include <torch/torch.h>

#include "common/error.h"

namespace sy {

std::vector<TextPair> read_pairs_file(const std::string& path, int64_t source_max,
                                      int64_t target_max) {
  const std::string text = read_text_file(path);
  std::vector<TextPair> pairs;
  size_t begin = 0;
  for (int64_t line_no = 1; begin < text.size(); ++line_no) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string where = "pair file '" + path + "' line " + std::to_string(line_no);
    const size_t tab = line.find('\t');
    SY_CHECK(tab != std::string::npos, where, ": expected source<TAB>target, found no TAB");
    SY_CHECK(line.find('\t', tab + 1) == std::string::npos, where,
             ": expected one TAB between source and target, found more");
    TextPair p{line.substr(0, tab), line.substr(tab + 1)};
    SY_CHECK(!p.source.empty() && !p.target.empty(), where, ": the ",
             p.source.empty() ? "source" : "target", " is empty");
    SY_CHECK(static_cast<int64_t>(p.source.size()) <= source_max, where, ": the source has ",
             p.source.size(), " characters, more than model.block_size (", source_max, ")");
    SY_CHECK(static_cast<int64_t>(p.target.size()) <= target_max, where, ": the target has ",
             p.target.size(), " characters, more than model.block_size - 1 (", target_max,
             "; the decoder also predicts the end of the target)");
    pairs.push_back(std::move(p));
  }
  SY_CHECK(!pairs.empty(), "pair file '", path, "' holds no pairs");
  return pairs;
}

PairDataset::PairDataset(std::vector<std::vector<int64_t>> sources,
                         std::vector<std::vector<int64_t>> targets, Seq2SeqIds ids,
                         double val_fraction, int64_t block_size, const std::string& source)
    : sources_(std::move(sources)),
      targets_(std::move(targets)),
      ids_(ids),
      block_size_(block_size) {
  SY_CHECK(sources_.size() == targets_.size(), source, ": ", sources_.size(), " sources and ",
           targets_.size(), " targets");
  for (size_t i = 0; i < sources_.size(); ++i) {
    SY_CHECK(!sources_[i].empty() && static_cast<int64_t>(sources_[i].size()) <= block_size &&
                 static_cast<int64_t>(targets_[i].size()) < block_size,
             source, ": pair ", i, " does not fit model.block_size (", block_size, ")");
  }
  const auto n = static_cast<int64_t>(sources_.size());
  const auto num_val =
      static_cast<int64_t>(std::floor(static_cast<double>(n) * val_fraction + 1e-9));
  val_begin_ = n - num_val;
  SY_CHECK(num_val >= 1 && val_begin_ >= 1, source, " has ", n, " pair(s): data.val_fraction (",
           val_fraction, ") leaves no pair for the train or the validation split");
}

int64_t PairDataset::num_pairs(Split split) const {
  return split == Split::kTrain ? val_begin_ : static_cast<int64_t>(sources_.size()) - val_begin_;
}

int64_t PairDataset::num_tokens(Split split) const {
  const int64_t begin = split == Split::kTrain ? 0 : val_begin_;
  int64_t n = 0;
  for (int64_t i = begin; i < begin + num_pairs(split); ++i) {
    n += static_cast<int64_t>(sources_[i].size() + targets_[i].size());
  }
  return n;
}

Batch PairDataset::sample(Split split, int64_t batch_size, std::mt19937_64& rng) const {
  SY_CHECK(batch_size >= 1, "batch size (", batch_size, ") must be at least 1");
  const int64_t T = block_size_;
  const int64_t begin = split == Split::kTrain ? 0 : val_begin_;
  const auto range = static_cast<uint64_t>(num_pairs(split));
  const auto opts = torch::TensorOptions().dtype(torch::kInt64);
  Batch b{torch::full({batch_size, 2 * T}, ids_.pad, opts),
          torch::full({batch_size, T}, kIgnoreTarget, opts), at::Tensor()};
  int64_t* x = b.x.data_ptr<int64_t>();
  int64_t* y = b.y.data_ptr<int64_t>();
  for (int64_t i = 0; i < batch_size; ++i) {
    const auto p = static_cast<size_t>(begin + static_cast<int64_t>(rng() % range));
    const std::vector<int64_t>& src = sources_[p];
    const std::vector<int64_t>& tgt = targets_[p];
    int64_t* row = x + i * 2 * T;
    std::memcpy(row, src.data(), src.size() * sizeof(int64_t));
    row[T] = ids_.bos;
    std::memcpy(row + T + 1, tgt.data(), tgt.size() * sizeof(int64_t));
    std::memcpy(y + i * T, tgt.data(), tgt.size() * sizeof(int64_t));
    y[i * T + static_cast<int64_t>(tgt.size())] = ids_.eos;
  }
  return b;
}

}  // namespace sy
