// The per-rank memory estimate and the device's free memory: see memory.h.
#include "model/memory.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "common/log.h"

namespace sy {

#ifdef SWITCHYARD_CUDA
int64_t cuda_free_memory(c10::DeviceIndex index);  // memory_cuda.cpp
#endif

namespace {

int64_t linear(int64_t in, int64_t out, bool bias) { return in * out + (bias ? out : 0); }

// Parameters of one block, split into the routers' and the rest (GPT's constructor, block by
// block: src/model/gpt.cpp, src/moe/moe_layer.cpp, experts.cpp and router.cpp).
struct Count {
  int64_t all = 0, router = 0;
};

Count block_parameters(const Config& c, bool cross, bool is_moe, int64_t ep_size) {
  const ModelConfig& m = c.model;
  const MoeConfig& e = c.moe;
  const int64_t H = m.d_model;
  const bool b = m.bias;
  const bool swiglu = e.activation == Activation::kSwiGlu;
  Count n;
  n.all = 2 * H + linear(H, 3 * H, b) + linear(H, H, b) + 2 * H;  // ln1, attention, ln2
  if (cross) n.all += 2 * H + linear(H, H, b) + linear(H, 2 * H, b) + linear(H, H, b);
  if (!is_moe) {
    const int64_t f = m.d_ff;
    return {n.all + linear(H, swiglu ? 2 * f : f, b) + linear(f, H, b), 0};
  }
  const int64_t E = e.num_experts;
  n.router = H * E * (e.router == RouterKind::kNoisyTopK ? 2 : 1);
  if (!c.data.tasks.empty() && e.task_masks == TaskMaskKind::kLearned) {
    n.router += static_cast<int64_t>(c.data.tasks.size()) * E;  // router.task_gate
  }
  auto experts = [&](int64_t count, int64_t f) {
    const int64_t d_in = swiglu ? 2 * f : f;
    return count * (H * d_in + f * H + (b ? d_in + H : 0));
  };
  const int64_t f_e = e.d_ff > 0 ? e.d_ff : m.d_ff;
  n.all += n.router + experts(E / std::max<int64_t>(ep_size, 1), f_e);
  if (e.shared_experts > 0) {
    n.all += experts(1, e.shared_experts * (e.shared_d_ff > 0 ? e.shared_d_ff : f_e));
  }
  return n;
}

bool moe_block(const MoeConfig& e, int64_t i, bool chosen) {
  return chosen && e.every > 0 && (i + 1) % e.every == 0;
}

// The blocks of the model: {cross-attention, MoE} of each.
std::vector<std::pair<bool, bool>> blocks_of(const Config& c) {
  std::vector<std::pair<bool, bool>> blocks;
  const bool seq2seq = c.model.kind == ModelKind::kEncoderDecoder;
  if (seq2seq) {
    for (int64_t i = 0; i < c.model.n_layers; ++i) {
      blocks.emplace_back(false, moe_block(c.moe, i, c.moe.where != MoeWhere::kDecoder));
    }
  }
  for (int64_t i = 0; i < c.model.n_layers; ++i) {
    blocks.emplace_back(seq2seq,
                        moe_block(c.moe, i, !seq2seq || c.moe.where != MoeWhere::kEncoder));
  }
  return blocks;
}

Count model_parameters(const Config& c, int64_t vocab, int64_t ep_size) {
  const int64_t H = c.model.d_model;
  const bool seq2seq = c.model.kind == ModelKind::kEncoderDecoder;
  Count n;
  n.all = vocab * H + c.model.block_size * H + 2 * H + H * vocab;  // wte, wpe, ln_f, lm_head
  if (seq2seq) n.all += c.model.block_size * H + 2 * H;            // the encoder's wpe and ln_f
  for (const auto& [cross, is_moe] : blocks_of(c)) {
    const Count block = block_parameters(c, cross, is_moe, ep_size);
    n.all += block.all;
    n.router += block.router;
  }
  for (const TaskConfig& t : c.data.tasks) {
    if (t.head == TaskHead::kOwn) n.all += H * vocab;  // heads.<task>
  }
  return n;
}

// format_bytes of a double that may be beyond any int64 (an absurd config's estimate).
std::string bytes_text(double bytes) {
  return bytes >= 9e18 ? ">8 EiB" : format_bytes(static_cast<int64_t>(bytes));
}

std::string term_text(const MemoryTerm& t) { return t.name + " " + bytes_text(t.bytes); }

}  // namespace

int64_t count_parameters(const Config& config, int64_t vocab, int64_t ep_size) {
  return model_parameters(config, vocab, ep_size).all;
}

MemoryEstimate estimate_memory(const Config& c, int64_t vocab, int64_t ep_size) {
  const ModelConfig& m = c.model;
  const MoeConfig& e = c.moe;
  const TrainConfig& t = c.train;
  const Count params = model_parameters(c, vocab, ep_size);
  const auto P = static_cast<double>(params.all), P_r = static_cast<double>(params.router);
  const bool bf16_params = t.param_dtype == Precision::kBf16;
  const double b = (bf16_params || t.dtype == Precision::kBf16) ? 2.0 : 4.0;
  const double param_bytes = bf16_params ? 2.0 * (P - P_r) + 4.0 * P_r : 4.0 * P;

  const auto H = static_cast<double>(m.d_model), T = static_cast<double>(m.block_size);
  const auto heads = static_cast<double>(m.n_heads), E = static_cast<double>(e.num_experts);
  const bool swiglu = e.activation == Activation::kSwiGlu;
  const auto f = static_cast<double>(m.d_ff);
  const double f_e = e.d_ff > 0 ? static_cast<double>(e.d_ff) : f;
  const double f_s = static_cast<double>(e.shared_experts) *
                     (e.shared_d_ff > 0 ? static_cast<double>(e.shared_d_ff) : f_e);
  const double width = swiglu ? 2.0 : 1.0;  // the first projection's width per hidden unit
  const double factor = e.capacity_factor;
  const double k = static_cast<double>(e.top_k);
  // Slots per token: k * factor, or E * min_capacity / S where that floor is higher, at most E
  // (Note [Capacity scope]: a capacity is at most the S tokens a rank holds).
  const double tokens = static_cast<double>(c.data.batch_size) * static_cast<double>(m.block_size);
  const double floor_slots = tokens > 0 ? E * static_cast<double>(e.min_capacity) / tokens : 0.0;
  const double k_slots = e.router == RouterKind::kDense ? E
                         : factor > 0 ? std::min(std::max(factor * k, floor_slots), E)
                                      : k;
  const bool keep_experts = t.activation_checkpointing == Recompute::kNone;
  const double attention = 6.0 * H + 2.0 * heads * T;
  double per_token_blocks = 0, largest_block = 0;
  int64_t num_moe = 0;
  for (const auto& [cross, is_moe] : blocks_of(c)) {
    double block = attention + 2.0 * H + (cross ? attention : 0.0);
    if (is_moe) {
      ++num_moe;
      block += 3.0 * E + k_slots * (2.0 * H + (keep_experts ? (width + 1.0) * f_e : 0.0));
      if (e.shared_experts > 0) block += 2.0 * H + (keep_experts ? (width + 1.0) * f_s : 0.0);
    } else {
      block += 2.0 * H + (width + 1.0) * f;
    }
    per_token_blocks += block;
    largest_block = std::max(largest_block, block);
  }
  if (t.activation_checkpointing == Recompute::kBlock) {
    per_token_blocks = H * static_cast<double>(blocks_of(c).size()) + largest_block;
  }
  const double rows = m.kind == ModelKind::kEncoderDecoder ? 2.0 : 1.0;
  const double N = static_cast<double>(c.data.batch_size) * T * rows;
  const double activations =
      N * (b * (H + per_token_blocks) + 4.0 * 2.0 * static_cast<double>(vocab));
  const double dispatch =
      ep_size > 1 ? 2.0 * k_slots * H * b * N * static_cast<double>(num_moe) : 0.0;

  MemoryEstimate est;
  est.parameters = params.all;
  const std::string size_keys =
      "model.n_layers, model.d_model, model.d_ff, moe.num_experts, "
      "moe.d_ff, the vocabulary";
  est.terms = {
      {"parameters", param_bytes, size_keys},
      {"gradients", param_bytes, size_keys},
      {"optimizer state", 8.0 * P + (bf16_params ? 4.0 * (P - P_r) : 0.0), size_keys},
      {"activations", activations,
       "data.batch_size, model.block_size, model.d_model, model.n_layers, the vocabulary" +
           std::string(num_moe > 0 ? ", moe.top_k, moe.capacity_factor, moe.min_capacity, moe.d_ff"
                                   : "")},
      {"dispatch buffers", dispatch,
       "data.batch_size, model.block_size, moe.top_k, moe.capacity_factor, moe.min_capacity, "
       "parallel.ep_size"},
  };
  for (const MemoryTerm& term : est.terms) est.total += term.bytes;
  return est;
}

std::string MemoryEstimate::describe() const {
  std::string parts;
  for (const MemoryTerm& t : terms) {
    if (t.bytes > 0) parts += (parts.empty() ? "" : ", ") + term_text(t);
  }
  return bytes_text(total) + " (" + parts + ")";
}

std::string MemoryEstimate::biggest_terms(size_t n) const {
  std::vector<MemoryTerm> sorted = terms;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const MemoryTerm& a, const MemoryTerm& b) { return a.bytes > b.bytes; });
  std::string out;
  for (size_t i = 0; i < std::min(n, sorted.size()); ++i) {
    if (sorted[i].bytes <= 0) break;
    out += (out.empty() ? "" : "; ") + term_text(sorted[i]) + " (" + sorted[i].keys + ")";
  }
  return out;
}

int64_t available_memory(c10::Device device) {
  if (device.is_cuda()) {
#ifdef SWITCHYARD_CUDA
    return cuda_free_memory(device.index());
#else
    return -1;
#endif
  }
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream in(line.substr(13));
    int64_t kib = -1;
    if (in >> kib && kib >= 0) return kib * 1024;
  }
  const long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return -1;
  return static_cast<int64_t>(pages) * page;
}

}  // namespace sy
