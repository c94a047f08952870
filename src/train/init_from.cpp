// train.init_from: see init_from.h, Note [Initialising from a run].
#include "train/init_from.h"

#include <sys/stat.h>

#include <torch/torch.h>

#include "common/error.h"
#include "common/files.h"
#include "data/tokenizer.h"
#include "moe/init.h"

namespace sy {
namespace {

// The block a tensor belongs to: its name's prefix ("blocks.3.", or in an encoder_decoder's
// encoder "encoder.blocks.3.") and its layer index, numbered as GPT numbers its MoE layers (the
// encoder's blocks first); layer -1 outside the blocks.
struct BlockOf {
  int64_t layer = -1;
  std::string prefix;
  std::string name() const { return prefix.substr(0, prefix.size() - 1); }  // "blocks.3"
};

BlockOf block_of(const std::string& name, const ModelConfig& model) {
  for (const std::string stack : {"encoder.blocks.", "blocks."}) {
    if (name.rfind(stack, 0) != 0) continue;
    const int64_t i = std::strtoll(name.c_str() + stack.size(), nullptr, 10);
    const bool seq2seq_decoder = stack == "blocks." && model.kind == ModelKind::kEncoderDecoder;
    return {seq2seq_decoder ? model.n_layers + i : i, stack + std::to_string(i) + "."};
  }
  return {};
}

// The tensors of one model.pt, read by name.
class Source {
 public:
  explicit Source(const std::string& path) : path_(path) {
    try {
      archive_.load_from(path);
    } catch (const c10::Error& e) {
      SY_THROW("train.init_from: cannot read model file '", path,
               "': ", e.what_without_backtrace());
    }
  }
  bool has(const std::string& name) {
    at::Tensor t;
    return archive_.try_read(name, t);
  }
  at::Tensor get(const std::string& name, const std::string& why = "") {
    at::Tensor t;
    SY_CHECK(archive_.try_read(name, t), "train.init_from: '", path_, "' has no tensor '", name,
             "'", why);
    return t;
  }
  const std::string& path() const { return path_; }

 private:
  torch::serialize::InputArchive archive_;
  std::string path_;
};

void check_shape(const std::string& path, const std::string& name, const at::Tensor& stored,
                 at::IntArrayRef expected, const std::string& what = "") {
  SY_CHECK(stored.sizes() == expected, "train.init_from: '", path, "': '", name, "'", what,
           " has shape ", stored.sizes(), ", this model's is ", expected);
}

// Source row/expert `from` plus Gaussian noise of 1% of its std, seeded per layer, expert and
// tensor (Note [Initialising from a run]: new experts under new_expert_init copy).
at::Tensor perturbed_copy(const at::Tensor& from, uint64_t seed, int64_t block, int64_t expert,
                          uint64_t tensor_tag) {
  at::Generator gen = make_cpu_generator(mix_seed(
      seed, 0xC0 + tensor_tag, static_cast<uint64_t>(block), static_cast<uint64_t>(expert)));
  const at::Tensor f = from.to(at::kFloat);
  const double scale = f.numel() > 1 ? 0.01 * f.std().item<double>() : 0.0;
  return f + at::randn(f.sizes(), gen, at::kFloat) * scale;
}

uint64_t tag_of(const std::string& name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the tensor's last name component
  for (char c : name.substr(name.rfind('.') + 1))
    h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h & 0xFF;
}

}  // namespace

std::string init_from_path(const std::string& source) {
  struct stat st {};
  SY_CHECK(stat(source.c_str(), &st) == 0, "train.init_from: '", source,
           "' does not exist (expected a finished run's folder or a model.pt file)");
  if (!S_ISDIR(st.st_mode)) return source;
  const std::string path = source + "/model.pt";
  if (path_exists(path)) return path;
  SY_CHECK(!path_exists(source + "/checkpoints"), "train.init_from: '", source,
           "' has no model.pt yet (a run writes it when it ends): continue that run with "
           "--resume, or start from a finished one");
  SY_THROW("train.init_from: '", source,
           "' has no model.pt (expected a finished run's folder or a model.pt file)");
}

InitFromReport init_weights_from(const Config& cfg, const CharTokenizer* tokenizer, GPTImpl& model,
                                 const ParallelGroups& groups) {
  InitFromReport report;
  report.path = init_from_path(cfg.train.init_from);
  // A text run's ids are its characters: the source's must be this corpus's, id for id.
  const std::string vocab = report.path.substr(0, report.path.find_last_of('/') + 1) + "vocab.json";
  if (tokenizer != nullptr && path_exists(vocab)) {
    const CharTokenizer theirs = CharTokenizer::load(vocab);
    SY_CHECK(theirs.chars() == tokenizer->chars(), "train.init_from: the vocabulary of '", vocab,
             "' (", theirs.vocab_size(), " characters) differs from this run's corpus (",
             tokenizer->vocab_size(), " characters): token ids would mean other characters");
  }
  Source src(report.path);
  const std::string& path = report.path;
  const auto seed = static_cast<uint64_t>(cfg.train.seed);
  const bool copy_new = cfg.moe.new_expert_init == NewExpertInit::kCopy;
  std::vector<int64_t> upcycled_blocks;
  torch::NoGradGuard no_grad;

  for (auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    at::Tensor& param = item.value();
    const BlockOf where = block_of(name, cfg.model);
    const int64_t block = where.layer;
    const std::string moe = where.prefix + "moe.";
    const bool source_moe = block >= 0 && src.has(moe + "router.weight");
    if (block >= 0 && name.rfind(where.prefix + "mlp.", 0) == 0) {
      SY_CHECK(!source_moe, "train.init_from: ", where.name(), " is an MoE block in '", path,
               "' and dense in this config (moe.every): an MoE layer cannot become a dense FFN");
    }
    at::Tensor value;
    if (is_expert_parameter(name)) {
      // [local experts, ...]: this rank's experts, by global id.
      const int64_t local = param.size(0);
      const int64_t first = groups.ep_rank * local;
      const int64_t total = local * groups.ep_size;
      const std::string part = name.substr(name.rfind('.') + 1);  // w1 | b1 | w2 | b2
      std::vector<at::Tensor> experts;
      if (src.has(name)) {
        const at::Tensor stored = src.get(name);
        const int64_t e_src = stored.size(0);
        SY_CHECK(e_src <= total, "train.init_from: '", path, "': '", name, "' holds ", e_src,
                 " experts, this model has ", total, " (fewer experts cannot be mapped)");
        check_shape(path, name, stored.select(0, 0), param.select(0, 0).sizes(), " (one expert)");
        for (int64_t j = 0; j < local; ++j) {
          const int64_t g = first + j;
          if (g < e_src) {
            experts.push_back(stored.select(0, g));
          } else if (copy_new) {
            experts.push_back(
                perturbed_copy(stored.select(0, g % e_src), seed, block, g, tag_of(name)));
          } else {
            experts.push_back(param.select(0, j).detach().to(at::kCPU, at::kFloat));
          }
        }
        if (first == 0) report.grown += std::max<int64_t>(0, total - e_src) * (part == "w1");
      } else {
        // Upcycling: the source block's dense FFN, in the experts' [in, out] layout.
        const std::string mlp = where.prefix + "mlp.";
        const std::string why = " (" + where.name() +
                                " is MoE here: its experts come from the source's expert tensor "
                                "or, when it was dense, from its FFN)";
        at::Tensor dense;
        if (part == "w1") dense = src.get(mlp + "fc.weight", why).t();
        else if (part == "w2") dense = src.get(mlp + "proj.weight", why).t();
        else if (part == "b1") dense = src.get(mlp + "fc.bias", why).unsqueeze(0);
        else dense = src.get(mlp + "proj.bias", why).unsqueeze(0);
        check_shape(path, name, dense, param.select(0, 0).sizes(),
                    " (one expert, upcycled from " + mlp + "*)");
        for (int64_t j = 0; j < local; ++j) experts.push_back(dense);
        if (part == "w1") upcycled_blocks.push_back(block);
      }
      value = at::stack(experts);
    } else if (block >= 0 && name.rfind(moe, 0) == 0 && !src.has(name)) {
      // The router (or shared experts) of an upcycled layer, or a shared expert the source lacks.
      ++report.fresh;
      continue;
    } else if (name.rfind("heads.", 0) == 0 && !src.has(name)) {
      // The head of a task the source was not trained with (data.tasks head own).
      ++report.fresh;
      continue;
    } else if (block >= 0 && name.rfind(moe + "router.", 0) == 0 &&
               src.get(name).sizes() != param.sizes()) {
      // A router tensor over the experts (replicated): the source's rows, then the new experts'.
      // The expert dimension is the one where the shapes differ.
      const at::Tensor stored = src.get(name);
      int64_t d = -1;
      for (int64_t i = 0; i < std::min(stored.dim(), param.dim()); ++i) {
        if (stored.size(i) != param.size(i)) d = d < 0 ? i : -2;
      }
      SY_CHECK(stored.dim() == param.dim() && d >= 0, "train.init_from: '", path, "': '", name,
               "' has shape ", stored.sizes(), ", this model's is ", param.sizes());
      const int64_t e_src = stored.size(d), total = param.size(d);
      SY_CHECK(e_src <= total, "train.init_from: '", path, "': '", name, "' holds ", e_src,
               " experts, this model has ", total, " (fewer experts cannot be mapped)");
      std::vector<at::Tensor> rows;
      for (int64_t g = 0; g < total; ++g) {
        if (g < e_src) {
          rows.push_back(stored.select(d, g));
        } else if (copy_new) {
          rows.push_back(perturbed_copy(stored.select(d, g % e_src), seed, block, g, tag_of(name)));
        } else {
          rows.push_back(param.select(d, g).detach().to(at::kCPU, at::kFloat));
        }
      }
      value = at::stack(rows, d);
    } else {
      value = src.get(name);
      check_shape(path, name, value, param.sizes());
    }
    param.copy_(value.to(param.device(), param.scalar_type()));
    ++report.loaded;
  }
  // Buffers: the routers' score biases, [num_experts]; new experts start at 0.
  for (auto& item : model.named_buffers()) {
    if (!src.has(item.key())) continue;  // an upcycled layer's: fresh (zeros)
    const at::Tensor stored = src.get(item.key());
    at::Tensor& buffer = item.value();
    if (stored.dim() == 1 && stored.size(0) < buffer.size(0)) {
      buffer.zero_();
      buffer.narrow(0, 0, stored.size(0)).copy_(stored.to(buffer.device(), buffer.scalar_type()));
    } else {
      check_shape(path, item.key(), stored, buffer.sizes());
      buffer.copy_(stored.to(buffer.device(), buffer.scalar_type()));
    }
  }
  report.upcycled = static_cast<int64_t>(upcycled_blocks.size());
  return report;
}

}  // namespace sy
