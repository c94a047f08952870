// checkpoint(): see Note [Activation checkpointing] in recompute.h.
#include "common/recompute.h"

#include <ATen/Context.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "common/autocast.h"
#include "common/error.h"

namespace sy {
namespace {

// What the backward needs besides the saved inputs: fn, the parameters, which outputs fn left
// undefined, and the forward's random-number and autocast state.
struct RecomputeState : torch::CustomClassHolder {
  RecomputeFn fn;
  std::vector<at::Tensor> params;
  size_t num_inputs = 0;
  std::vector<bool> output_defined;
  at::Generator* gen = nullptr;
  at::Tensor cpu_state;   // gen's state before the forward
  at::Tensor cuda_state;  // the CUDA default generator's, when the inputs are on CUDA
  c10::Device device = c10::kCPU;
  bool autocast = false;
};

// The generators set to the forward's state while it lives, then put back where they were.
class RewindGenerators {
 public:
  explicit RewindGenerators(const RecomputeState& s) : s_(s) {
    if (s_.cpu_state.defined()) {
      cpu_now_ = s_.gen->get_state();
      s_.gen->set_state(s_.cpu_state);
    }
    if (s_.cuda_state.defined()) {
      at::Generator cuda = at::globalContext().defaultGenerator(s_.device);
      cuda_now_ = cuda.get_state();
      cuda.set_state(s_.cuda_state);
    }
  }
  ~RewindGenerators() {
    if (cpu_now_.defined()) s_.gen->set_state(cpu_now_);
    if (cuda_now_.defined()) {
      at::Generator cuda = at::globalContext().defaultGenerator(s_.device);
      cuda.set_state(cuda_now_);
    }
  }
  RewindGenerators(const RewindGenerators&) = delete;
  RewindGenerators& operator=(const RewindGenerators&) = delete;

 private:
  const RecomputeState& s_;
  at::Tensor cpu_now_, cuda_now_;
};

class Checkpoint : public torch::autograd::Function<Checkpoint> {
 public:
  // tensors: fn's inputs, then the parameters (so that the node has edges to both).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                c10::intrusive_ptr<RecomputeState> state,
                                                at::TensorList tensors) {
    const std::vector<at::Tensor> inputs(tensors.begin(),
                                         tensors.begin() + static_cast<int64_t>(state->num_inputs));
    std::vector<at::Tensor> outputs = state->fn(inputs);
    torch::autograd::variable_list out;
    for (const at::Tensor& t : outputs) {
      state->output_defined.push_back(t.defined());
      out.push_back(t.defined() ? t : at::empty({0}));  // an autograd output must be a tensor
    }
    ctx->save_for_backward(inputs);
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto state =
        c10::static_intrusive_pointer_cast<RecomputeState>(ctx->saved_data["state"].toCapsule());
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    std::vector<at::Tensor> inputs;
    for (const at::Tensor& t : saved) {
      inputs.push_back(t.defined() ? t.detach().requires_grad_(t.requires_grad()) : t);
    }
    std::vector<at::Tensor> outputs;
    {
      RewindGenerators rewind(*state);
      torch::AutoGradMode grad_on(true);
      CudaAutocast autocast(state->autocast);
      outputs = state->fn(inputs);
    }
    // Differentiate the outputs that got a gradient with respect to what needs one.
    std::vector<at::Tensor> roots, root_grads, wrt;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (state->output_defined[i] && outputs[i].requires_grad() && grad_outputs[i].defined()) {
        roots.push_back(outputs[i]);
        root_grads.push_back(grad_outputs[i]);
      }
    }
    std::vector<int64_t> index;  // of each tensor in wrt among inputs + params
    for (size_t i = 0; i < inputs.size() + state->params.size(); ++i) {
      const at::Tensor& t = i < inputs.size() ? inputs[i] : state->params[i - inputs.size()];
      if (t.defined() && t.requires_grad()) {
        wrt.push_back(t);
        index.push_back(static_cast<int64_t>(i));
      }
    }
    std::vector<at::Tensor> grads;
    if (!roots.empty() && !wrt.empty()) {
      grads = torch::autograd::grad(roots, wrt, root_grads, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);
    }
    // The state argument, then one gradient per tensor (undefined where none).
    torch::autograd::variable_list result(1 + inputs.size() + state->params.size());
    for (size_t j = 0; j < grads.size(); ++j) result[1 + static_cast<size_t>(index[j])] = grads[j];
    return result;
  }
};

}  // namespace

std::vector<at::Tensor> checkpoint(const RecomputeFn& fn, const std::vector<at::Tensor>& inputs,
                                   const std::vector<at::Tensor>& params, at::Generator* gen) {
  if (!torch::GradMode::is_enabled()) return fn(inputs);
  auto state = c10::make_intrusive<RecomputeState>();
  state->fn = fn;
  state->num_inputs = inputs.size();
  state->gen = gen;
  for (const at::Tensor& p : params) {
    if (p.requires_grad()) state->params.push_back(p);
  }
  for (const at::Tensor& t : inputs) {
    if (t.defined() && t.is_cuda()) state->device = t.device();
  }
  if (gen != nullptr) state->cpu_state = gen->get_state();
  if (state->device.is_cuda()) {
    state->cuda_state = at::globalContext().defaultGenerator(state->device).get_state();
  }
  state->autocast = cuda_autocast_enabled();
  std::vector<at::Tensor> tensors = inputs;
  tensors.insert(tensors.end(), state->params.begin(), state->params.end());
  torch::autograd::variable_list out = Checkpoint::apply(state, at::TensorList(tensors));
  for (size_t i = 0; i < out.size(); ++i) {
    if (!state->output_defined[i]) out[i] = at::Tensor();
  }
  return out;
}

}  // namespace sy
