// Reading the corpus file, the train/validation split and batch sampling (see dataset.h).
//
// Note [Split boundary]: with n tokens, the validation split is the last
// floor(n * val_fraction) tokens, so val_begin = n - floor(n * val_fraction) and the train split
// is tokens[0, val_begin). A tolerance of 1e-9 is added before the floor so that fractions that
// are not exact in binary still split as written (100 tokens at 0.29 give 29 validation tokens,
// not 28). Blocks never straddle the boundary: a block and its shifted target both lie inside
// one split, so validation loss never sees a training token and vice versa.
#include "data/dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <torch/torch.h>

#include "common/error.h"

namespace sy {

int64_t first_invalid_utf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    // The length of the sequence and the range of its second byte (RFC 3629's table), which rules
    // out overlong forms, surrogates and code points above U+10FFFF.
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return static_cast<int64_t>(i);
    }
    if (i + len > n || s[i + 1] < lo || s[i + 1] > hi) return static_cast<int64_t>(i);
    for (size_t k = 2; k < len; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return static_cast<int64_t>(i);
    }
    i += len;
  }
  return -1;
}

std::string read_text_file(const std::string& path) {
  struct stat st {};
  SY_CHECK(::stat(path.c_str(), &st) == 0, "cannot read data file '", path,
           "': ", std::strerror(errno));
  SY_CHECK(!S_ISDIR(st.st_mode), "data file '", path, "' is a directory");
  // Checked before opening: opening a FIFO would wait for a writer.
  SY_CHECK(S_ISREG(st.st_mode), "data file '", path, "' is not a regular file (",
           S_ISFIFO(st.st_mode) ? "a FIFO" : "a device or socket", ")");
  std::ifstream in(path, std::ios::binary);
  SY_CHECK(in, "cannot read data file '", path, "': ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  SY_CHECK(!in.bad(), "cannot read data file '", path, "': read error");
  std::string text = ss.str();
  SY_CHECK(!text.empty(), "data file '", path, "' is empty");
  const int64_t bad = first_invalid_utf8(text);
  if (bad >= 0) {
    char byte[8];
    std::snprintf(byte, sizeof(byte), "0x%02x", static_cast<unsigned char>(text[bad]));
    SY_THROW("data file '", path, "' is not UTF-8 text: the byte sequence at byte offset ", bad,
             " (", byte, ") is not valid UTF-8; a text corpus must be UTF-8 (token ids belong ",
             "in a uint16/uint32 token file)");
  }
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

TaskMixture::TaskMixture(std::vector<std::unique_ptr<TokenSource>> tasks,
                         std::vector<double> weights)
    : tasks_(std::move(tasks)) {
  SY_CHECK(!tasks_.empty() && tasks_.size() == weights.size(), "TaskMixture: ", tasks_.size(),
           " tasks and ", weights.size(), " weights");
  double total = 0;
  for (double w : weights) total += w;
  SY_CHECK(total > 0, "TaskMixture: the task weights sum to ", total);
  double running = 0;
  for (double w : weights) {
    running += w;
    cumulative_.push_back(running / total);
  }
}

int64_t TaskMixture::num_tokens(Split split) const {
  int64_t n = 0;
  for (const auto& t : tasks_) n += t->num_tokens(split);
  return n;
}

Batch TaskMixture::sample_task(int64_t task, Split split, int64_t batch_size,
                               std::mt19937_64& rng) const {
  SY_CHECK(task >= 0 && task < num_tasks(), "TaskMixture: no task ", task);
  Batch b = tasks_[static_cast<size_t>(task)]->sample(split, batch_size, rng);
  b.task = torch::full({batch_size}, task, torch::TensorOptions().dtype(torch::kInt64));
  return b;
}

Batch TaskMixture::sample(Split split, int64_t batch_size, std::mt19937_64& rng) const {
  SY_CHECK(batch_size >= 1, "batch size (", batch_size, ") must be at least 1");
  std::vector<at::Tensor> xs, ys;
  at::Tensor task = torch::empty({batch_size}, torch::TensorOptions().dtype(torch::kInt64));
  for (int64_t i = 0; i < batch_size; ++i) {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // in [0, 1)
    size_t t = 0;
    while (t + 1 < cumulative_.size() && !(u < cumulative_[t])) ++t;
    Batch one = tasks_[t]->sample(split, 1, rng);
    xs.push_back(one.x);
    ys.push_back(one.y);
    task.data_ptr<int64_t>()[i] = static_cast<int64_t>(t);
  }
  return {torch::cat(xs), torch::cat(ys), task};
}

Batch mask_for_mlm(const Batch& b, int64_t per_row, int64_t mask_id, int64_t vocab,
                   std::mt19937_64& rng) {
  const int64_t B = b.x.size(0), T = b.x.size(1);
  SY_CHECK(per_row >= 1 && per_row <= T, "masked LM: ", per_row, " masked positions in a row of ",
           T);
  Batch out{b.x.clone(), at::full_like(b.x, kIgnoreTarget), b.task};
  int64_t* x = out.x.data_ptr<int64_t>();
  int64_t* y = out.y.data_ptr<int64_t>();
  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = t;
    for (int64_t i = 0; i < per_row; ++i) {  // partial Fisher-Yates: the first per_row positions
      const auto j = i + static_cast<int64_t>(rng() % static_cast<uint64_t>(T - i));
      std::swap(pos[static_cast<size_t>(i)], pos[static_cast<size_t>(j)]);
      const int64_t at = r * T + pos[static_cast<size_t>(i)];
      y[at] = x[at];
      const uint64_t u = rng() % 10;  // 0-7: mask, 8: random token, 9: keep
      if (u < 8) {
        x[at] = mask_id;
      } else if (u == 8) {
        x[at] = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
      }
    }
  }
  return out;
}

namespace {

// One read-only memory mapping of a whole file, unmapped on destruction.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    SY_CHECK(fd >= 0, "cannot open token file '", path, "': ", std::strerror(errno));
    struct stat st;
    const int rc = ::fstat(fd, &st);
    const int err = errno;
    if (rc != 0 || S_ISDIR(st.st_mode)) {
      ::close(fd);
      SY_THROW("token file '", path, "' ",
               rc != 0 ? std::string("cannot be read: ") + std::strerror(err)
                       : std::string("is a directory"));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      const int map_err = errno;
      ::close(fd);
      SY_CHECK(p != MAP_FAILED, "cannot map token file '", path, "': ", std::strerror(map_err));
      data_ = static_cast<const unsigned char*>(p);
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<unsigned char*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
};

// Token i of a little-endian uint16/uint32 array (x86 and ARM are little-endian; memcpy keeps
// unaligned access defined).
inline int64_t token_at(const unsigned char* p, int bytes, int64_t i) {
  if (bytes == 2) {
    uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, p + 4 * i, 4);
  return v;
}

class TokenFile : public TokenSource {
 public:
  TokenFile(const std::string& path, const std::string& val_path, int bytes, double val_fraction,
            int64_t block_size, int64_t vocab_size)
      : bytes_(bytes), block_size_(block_size) {
    SY_CHECK(bytes == 2 || bytes == 4, "token files hold uint16 or uint32 ids, not ", bytes,
             "-byte ones");
    train_ = open(path, vocab_size);
    const int64_t need = block_size + 1;
    const int64_t n = count(*train_);
    if (val_path.empty()) {
      // Note [Split boundary], as for text.
      const auto num_val =
          static_cast<int64_t>(std::floor(static_cast<double>(n) * val_fraction + 1e-9));
      train_begin_ = 0;
      train_end_ = n - num_val;
      val_begin_ = train_end_;
      val_end_ = n;
      val_file_ = train_.get();
      SY_CHECK(num_val >= need, "token file '", path, "' has ", n,
               " tokens: the validation split (", num_val,
               ") is shorter than model.block_size + 1 (", need, "); use more data, a ",
               "larger data.val_fraction, or data.val_path");
    } else {
      val_ = open(val_path, vocab_size);
      val_file_ = val_.get();
      train_begin_ = 0;
      train_end_ = n;
      val_begin_ = 0;
      val_end_ = count(*val_);
      SY_CHECK(val_end_ >= need, "token file '", val_path, "' (data.val_path) has ", val_end_,
               " tokens, fewer than model.block_size + 1 (", need, ")");
    }
    SY_CHECK(train_end_ - train_begin_ >= need, "token file '", path, "' has ", n,
             " tokens: the train split (", train_end_ - train_begin_,
             ") is shorter than model.block_size + 1 (", need, ")");
  }

  int64_t num_tokens(Split split) const override {
    return split == Split::kTrain ? train_end_ - train_begin_ : val_end_ - val_begin_;
  }

  Batch sample(Split split, int64_t batch_size, std::mt19937_64& rng) const override {
    SY_CHECK(batch_size >= 1, "batch size (", batch_size, ") must be at least 1");
    const int64_t T = block_size_;
    const MappedFile& f = split == Split::kTrain ? *train_ : *val_file_;
    const int64_t begin = split == Split::kTrain ? train_begin_ : val_begin_;
    const auto range = static_cast<uint64_t>(num_tokens(split) - T);
    const auto opts = torch::TensorOptions().dtype(torch::kInt64).device(torch::kCPU);
    Batch b{torch::empty({batch_size, T}, opts), torch::empty({batch_size, T}, opts)};
    int64_t* x = b.x.data_ptr<int64_t>();
    int64_t* y = b.y.data_ptr<int64_t>();
    for (int64_t i = 0; i < batch_size; ++i) {
      const int64_t o = begin + static_cast<int64_t>(rng() % range);
      for (int64_t t = 0; t < T; ++t) {
        x[i * T + t] = token_at(f.data(), bytes_, o + t);
        y[i * T + t] = token_at(f.data(), bytes_, o + t + 1);
      }
    }
    return b;
  }

 private:
  int64_t count(const MappedFile& f) const { return static_cast<int64_t>(f.size()) / bytes_; }

  std::unique_ptr<MappedFile> open(const std::string& path, int64_t vocab_size) const {
    auto f = std::make_unique<MappedFile>(path);
    SY_CHECK(f->size() > 0, "token file '", path, "' is empty");
    SY_CHECK(f->size() % static_cast<size_t>(bytes_) == 0, "token file '", path, "' has ",
             f->size(), " bytes, not a whole number of ", bytes_, "-byte tokens (data.format uint",
             8 * bytes_, "): is it a file of ", bytes_ == 2 ? "uint32" : "uint16", " ids?");
    // Every id below the vocabulary: a bad id would otherwise index past the embedding table.
    const int64_t n = count(*f);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = token_at(f->data(), bytes_, i);
      SY_CHECK(id < vocab_size, "token file '", path, "': token ", i, " (byte offset ", i * bytes_,
               ") is ", id, ", not below model.vocab_size (", vocab_size, ")");
    }
    return f;
  }

  int bytes_;
  int64_t block_size_;
  std::unique_ptr<MappedFile> train_, val_;
  const MappedFile* val_file_ = nullptr;
  int64_t train_begin_ = 0, train_end_ = 0, val_begin_ = 0, val_end_ = 0;
};

class RandomTokens : public TokenSource {
 public:
  RandomTokens(int64_t vocab_size, int64_t block_size)
      : vocab_(vocab_size), block_size_(block_size) {
    SY_CHECK(vocab_size >= 1, "random tokens need model.vocab_size >= 1, got ", vocab_size);
  }
  int64_t num_tokens(Split) const override { return -1; }
  Batch sample(Split, int64_t batch_size, std::mt19937_64& rng) const override {
    SY_CHECK(batch_size >= 1, "batch size (", batch_size, ") must be at least 1");
    // One sequence of T + 1 tokens per row; y is x shifted by one, as for real data.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(rng());
    const at::Tensor seq = at::randint(0, vocab_, {batch_size, block_size_ + 1}, gen, at::kLong);
    return Batch{seq.narrow(1, 0, block_size_).contiguous(),
                 seq.narrow(1, 1, block_size_).contiguous()};
  }

 private:
  int64_t vocab_, block_size_;
};

}  // namespace

std::unique_ptr<TokenSource> open_token_file(const std::string& path, const std::string& val_path,
                                             int bytes_per_token, double val_fraction,
                                             int64_t block_size, int64_t vocab_size) {
  return std::make_unique<TokenFile>(path, val_path, bytes_per_token, val_fraction, block_size,
                                     vocab_size);
}

std::unique_ptr<TokenSource> random_tokens(int64_t vocab_size, int64_t block_size) {
  return std::make_unique<RandomTokens>(vocab_size, block_size);
}

}  // namespace sy
