// Note [EP invariance], checked: the config's MoE layer on N in-process ranks (with its ep_size)
// against one process holding all experts and running each rank's tokens with the same capacity
// per source rank. Compared: outputs, input gradients, router and expert weight gradients (after
// the training gradient sync), aux and z losses, the dropped choices, and the weights after one
// SGD step (linear in the gradients; see verify.cpp). `switchyard verify` prints the report; the EP tests assert on it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "config/config.h"
#include "moe/moe_layer.h"
#include "parallel/communicator.h"

namespace sy {

struct VerifyRow {
  std::string quantity;
  double max_abs_err = 0;
  double rel_err = 0;  // ||got - ref|| / ||ref|| over all ranks
  bool bitwise = false;
  bool ok = false;
};

struct VerifyReport {
  std::vector<VerifyRow> rows;
  int64_t ranks = 0, ep_size = 0, tokens_per_rank = 0, capacity = 0;
  int64_t dropped = 0;              // dropped choices over all ranks (reference)
  int64_t choices = 0;              // routed choices over all ranks (padding left out)
  int64_t drop_set_mismatches = 0;  // choices whose kept/dropped status differs
  bool ok() const;
  std::string table() const;
};

// On `ranks` in-process ranks (CPU). tolerance: relative error allowed per quantity (fp32).
VerifyReport verify_expert_parallel(const Config& config, int ranks, double tolerance = 1e-5);

// On the ranks of a real world (mpirun: MPI on the CPU, NCCL on GPUs), collective over `world`:
// each rank runs its part on `device`, recomputes the CPU reference and compares its own
// results; the errors are reduced over the world, so every rank returns the same report. On CUDA
// the router must be deterministic (no noise, jitter or random routing).
VerifyReport verify_expert_parallel(const Config& config, const CommPtr& world,
                                    const c10::Device& device, double tolerance = 1e-5);

// Prints the report (`where` names the ranks: "in-process", "mpi", "nccl"); true when it passed.
bool print_verify_report(const Config& config, const VerifyReport& report,
                         const std::string& where);

// verify_expert_parallel on in-process ranks, printed.
bool run_verify(const Config& config, int ranks);

// The training-layout check (`switchyard verify --layouts`, docs/moe.md#layout-invariance): one
// global batch of four micro-batches per step, trained for `steps` steps (the model, gradient
// sync, clipping, AdamW and the balancing updates of training) as (ep 4), (ep 2 x dp 2),
// (1 rank, grad_accum 4) and (ep 2, grad_accum 2) on in-process CPU ranks. Each layout's global
// mean loss per step and final weights (experts gathered) against the first layout's.
struct LayoutRow {
  std::string layout;          // "ep 2 x dp 2, grad_accum 1"
  std::vector<double> losses;  // global mean loss per step
  double max_loss_diff = 0;    // against the first layout, over the steps
  double weight_rel_err = 0;   // |w - w0| / |w0| over all weights and buffers
  double max_weight_diff = 0;
  std::string worst;  // the tensor with the largest relative difference
  double worst_rel_err = 0;
};
struct LayoutReport {
  std::vector<LayoutRow> rows;
  double tolerance = 0;
  bool ok() const;
  std::string table() const;
};
LayoutReport verify_layouts(const Config& config, int steps = 3, double tolerance = 1e-5);

}  // namespace sy
