// What one forward keeps for the backward, with each train.activation_checkpointing setting: the
// growth of the process's resident memory (CPU) or of the CUDA allocator's allocated bytes over
// one training forward of the config's model on one rank (one micro-batch of random tokens,
// fp32). An optional target (not built by default):
//   ninja -C build activation_memory
//   build/activation_memory configs/debug-cpu.yaml [--set K=V ...]
// Each setting runs in a child process of its own, so that one setting's freed memory cannot
// hide the next one's growth.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/config.h"
#include "model/gpt.h"
#include "moe/init.h"
#include "parallel/runtime.h"

#ifdef SWITCHYARD_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace {

// Resident memory (CPU) or allocated bytes (CUDA), MiB.
double memory_mib(bool cuda) {
#ifdef SWITCHYARD_CUDA
  if (cuda) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
    return static_cast<double>(stats.allocated_bytes[0].current) / (1 << 20);
  }
#endif
  (void)cuda;
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

void measure(const sy::Config& cfg, sy::Recompute what) {
  const bool cuda = sy::resolve_device(cfg.train.device) == sy::DeviceKind::kCuda;
  const torch::Device device = cuda ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  const int64_t vocab = cfg.model.vocab_size > 0 ? cfg.model.vocab_size : 64;
  sy::GPT model(cfg.model, cfg.moe, vocab, nullptr, static_cast<uint64_t>(cfg.train.seed));
  model->to(device);
  model->train();
  model->set_activation_checkpointing(what);
  at::Generator gen = sy::make_cpu_generator(1);
  model->set_generator(&gen);
  const int64_t B = cfg.data.batch_size, T = cfg.model.block_size;
  const bool seq2seq = cfg.model.kind == sy::ModelKind::kEncoderDecoder;
  const int64_t chars = seq2seq ? vocab - sy::kSeq2SeqSpecialIds : vocab;
  const at::Tensor x = at::randint(0, chars, {B, seq2seq ? 2 * T : T}, gen, at::kLong).to(device);
  const at::Tensor y = at::randint(0, chars, {B, T}, gen, at::kLong).to(device);
  const double before = memory_mib(cuda);
  sy::LossOutput out = model->loss(x, y);
  const double kept = memory_mib(cuda) - before;
  out.loss.backward();
  std::printf("| %s | %.0f | %.4f |\n", sy::choice_name(what), kept, out.loss.item<double>());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CONFIG [--set K=V ...]\n", argv[0]);
    return 2;
  }
  std::vector<std::string> sets;
  for (int i = 2; i < argc; ++i) {
    if (std::string(argv[i]) != "--set" || i + 1 == argc) {
      std::fprintf(stderr, "expected --set K=V, got '%s'\n", argv[i]);
      return 2;
    }
    sets.push_back(argv[++i]);
  }
  try {
    const sy::Config cfg = sy::load_config({argv[1]}, sets);
    std::printf("| train.activation_checkpointing | kept by the forward (MiB, %s) | loss |\n",
                sy::resolve_device(cfg.train.device) == sy::DeviceKind::kCuda ? "CUDA allocated"
                                                                              : "CPU resident");
    std::printf("| --- | --- | --- |\n");
    std::fflush(stdout);
    for (const sy::Recompute what :
         {sy::Recompute::kNone, sy::Recompute::kMoe, sy::Recompute::kBlock}) {
      const pid_t pid = fork();
      if (pid == 0) {
        measure(cfg, what);
        std::fflush(stdout);
        _exit(0);
      }
      int status = 0;
      waitpid(pid, &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
