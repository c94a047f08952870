#include "train/generate.h"

#include <filesystem>

#include <torch/torch.h>

#include "common/error.h"
#include "config/config.h"
#include "data/tokenizer.h"
#include "model/gpt.h"
#include "moe/init.h"
#include "train/model_io.h"
#include "parallel/runtime.h"

namespace sy {

std::string generate_text(const GenerateOptions& opt) {
  SY_CHECK(opt.temperature >= 0, "--temperature must be >= 0, got ", opt.temperature);
  SY_CHECK(opt.top_k >= 0, "--top-k must be >= 0, got ", opt.top_k);
  SY_CHECK(std::filesystem::is_directory(opt.run_dir), "run folder '", opt.run_dir,
           "' does not exist (expected the train.out_dir of a finished run)");
  const Config cfg = load_config({opt.run_dir + "/config.yaml"}, {});
  SY_CHECK(cfg.data.format == DataFormat::kText, "run folder '", opt.run_dir,
           "' was trained on token ids (data.format '", choice_name(cfg.data.format),
           "'): generate decodes characters and needs a text ", "run's vocab.json");
  SY_CHECK(cfg.moe.router != RouterKind::kExpertChoice, "run folder '", opt.run_dir,
           "' was trained with moe.router 'expert_choice', whose experts choose among all tokens "
           "of a batch, later positions included: it cannot generate one token at a time");
  SY_CHECK(cfg.model.kind != ModelKind::kEncoder, "run folder '", opt.run_dir,
           "' holds an encoder (model.kind encoder, trained by masked-token prediction): it ",
           "sees both sides of a position and cannot generate text one token at a time");
  const bool seq2seq = cfg.model.kind == ModelKind::kEncoderDecoder;
  SY_CHECK(!seq2seq || !opt.source.empty(), "run folder '", opt.run_dir,
           "' holds an encoder_decoder: give the sequence to translate with --source TEXT");
  SY_CHECK(!seq2seq || opt.prompt.empty(), "--prompt starts a decoder's text; run folder '",
           opt.run_dir, "' holds an encoder_decoder, which takes --source TEXT");
  SY_CHECK(seq2seq || opt.source.empty(), "--source is for encoder_decoder runs; run folder '",
           opt.run_dir, "' holds a ", choice_name(cfg.model.kind), " (use --prompt)");
  const std::string model_path = opt.run_dir + "/model.pt";
  SY_CHECK(std::filesystem::exists(model_path), "run folder '", opt.run_dir, "' has no model.pt ('",
           model_path, "'): ",
           cfg.train.checkpoint_interval < 0
               ? "it was trained with train.checkpoint_interval -1, which writes none"
           : std::filesystem::exists(opt.run_dir + "/checkpoints")
               ? "the run has not finished (continue it with switchyard train --resume auto)"
               : "the run has not finished and wrote no checkpoint");
  const CharTokenizer tokenizer = CharTokenizer::load(opt.run_dir + "/vocab.json");
  // The text of --prompt or --source as ids, or an error naming the flag and the run's vocabulary.
  auto encode = [&](const std::string& text, const char* flag) {
    try {
      return tokenizer.encode(text);
    } catch (const Error& e) {
      SY_THROW(flag, ": ", e.message(), " of run folder '", opt.run_dir,
               "' (its vocab.json: the bytes of its training text)");
    }
  };
  const torch::Device device(resolve_device(opt.device) == DeviceKind::kCuda ? c10::kCUDA
                                                                             : c10::kCPU);

  const int64_t vocab = tokenizer.vocab_size() + (seq2seq ? kSeq2SeqSpecialIds : 0);
  GPT model(cfg.model, cfg.moe, vocab, /*ep_group=*/nullptr, cfg.train.seed, cfg.data.tasks);
  load_model(model_path, *model, /*ep_rank=*/0, /*ep_size=*/1);
  model->to(device);
  model->eval();
  // data.tasks: the task's expert masks and head. A run whose routers are masked needs a task.
  at::Tensor task;
  if (!cfg.data.tasks.empty()) {
    std::string names;
    int64_t index = -1;
    for (size_t t = 0; t < cfg.data.tasks.size(); ++t) {
      names += (names.empty() ? "" : ", ") + cfg.data.tasks[t].name;
      if (cfg.data.tasks[t].name == opt.task) index = static_cast<int64_t>(t);
    }
    SY_CHECK(opt.task.empty() || index >= 0, "--task '", opt.task, "': run folder '", opt.run_dir,
             "' has the tasks ", names);
    SY_CHECK(index >= 0 || !(model->has_task_masks() || !model->task_heads.empty()), "run folder '",
             opt.run_dir,
             "' was trained with per-task expert masks or heads: ", "choose a task with --task (",
             names, ")");
    if (index >= 0) task = at::full({1}, index, at::kLong).to(device);
  } else {
    SY_CHECK(opt.task.empty(), "--task '", opt.task, "': run folder '", opt.run_dir,
             "' was not trained with data.tasks");
  }
  torch::NoGradGuard no_grad;
  at::Generator gen = make_cpu_generator(static_cast<uint64_t>(opt.seed));

  // The next token from the last position's logits [V] (fp32, CPU); `banned` ids never.
  auto pick = [&](at::Tensor logits, const std::vector<int64_t>& banned) {
    for (int64_t id : banned) logits[id] = -std::numeric_limits<float>::infinity();
    if (opt.temperature == 0) return logits.argmax().item<int64_t>();
    logits = logits / opt.temperature;
    if (opt.top_k > 0 && opt.top_k < logits.size(0)) {
      const double kth = std::get<0>(logits.topk(opt.top_k)).min().item<double>();
      logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
    }
    at::Tensor probs = at::softmax(logits, /*dim=*/-1);
    return at::multinomial(probs, /*num_samples=*/1, /*replacement=*/false, gen).item<int64_t>();
  };
  const auto last_logits = [&](const at::Tensor& logits, int64_t position) {
    return logits.select(1, position).squeeze(0).to(at::kCPU, at::kFloat);
  };

  if (seq2seq) {  // Note [Seq2seq batches]: one row [source | BOS target...], decoded greedily
    const int64_t T = cfg.model.block_size;
    const std::vector<int64_t> src = encode(opt.source, "--source");
    SY_CHECK(static_cast<int64_t>(src.size()) <= T, "--source has ", src.size(),
             " characters; the model reads at most model.block_size (", T, ")");
    const Seq2SeqIds ids = seq2seq_ids(tokenizer.vocab_size());
    at::Tensor row = at::full({1, 2 * T}, ids.pad, at::kLong);
    for (size_t i = 0; i < src.size(); ++i) row[0][static_cast<int64_t>(i)] = src[i];
    row[0][T] = ids.bos;
    std::vector<int64_t> out;
    const int64_t limit = std::min<int64_t>(opt.num_tokens, T - 1);
    for (int64_t i = 0; i < limit; ++i) {
      const at::Tensor logits = model->forward(row.to(device));
      const int64_t next = pick(last_logits(logits, i), {ids.pad, ids.bos});  // never targets
      if (next == ids.eos) break;
      out.push_back(next);
      row[0][T + 1 + i] = next;
    }
    return tokenizer.decode(out);
  }

  std::string prompt = opt.prompt;
  if (prompt.empty()) {
    prompt =
        tokenizer.chars().find('\n') != std::string::npos ? "\n" : tokenizer.chars().substr(0, 1);
  }
  std::vector<int64_t> ids = encode(prompt, "--prompt");
  const size_t prompt_len = ids.size();
  for (int64_t i = 0; i < opt.num_tokens; ++i) {
    const int64_t start =
        std::max<int64_t>(0, static_cast<int64_t>(ids.size()) - cfg.model.block_size);
    std::vector<int64_t> window(ids.begin() + start, ids.end());
    at::Tensor idx = at::tensor(window, at::kLong).unsqueeze(0).to(device);
    const at::Tensor logits = model->forward(idx, nullptr, nullptr, task);
    ids.push_back(pick(last_logits(logits, -1), {}));
  }
  return prompt + tokenizer.decode(std::vector<int64_t>(ids.begin() + prompt_len, ids.end()));
}

}  // namespace sy
