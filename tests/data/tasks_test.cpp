// data.tasks on the data side: synthetic_corpus() limited to one language, TaskMixture (tasks
// drawn by their weights, never a task of weight 0, Batch::task naming the source each row came
// from, sample_task for one task only, the documented draw rule), and load_corpus() with tasks
// (one shared vocabulary of every synthetic language; rows decode to their task's language).
#include <cctype>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "data/data_test_util.h"
#include "common/files.h"
#include "config/config.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "temp_folder.h"

namespace sy {
namespace {

using test::error_of;
using test::paragraphs;

constexpr uint64_t kSeed = 0x5717C4;  // the seed load_corpus gives the synthetic corpus

// The paragraph's first token: "[abc] Text..." -> "[abc]"; "" when it is not a tag.
std::string tag_of(const std::string& paragraph) {
  const size_t space = paragraph.find_first_of(" \n");
  const std::string first = paragraph.substr(0, space);
  if (first.size() < 3 || first.front() != '[' || first.back() != ']') return "";
  return first;
}

// The tags of the text's paragraphs (the last, possibly cut, paragraph only if its tag is whole).
std::map<std::string, int64_t> tag_counts(const std::string& text) {
  std::map<std::string, int64_t> counts;
  const std::vector<std::string> paras = paragraphs(text);
  for (size_t i = 0; i < paras.size(); ++i) {
    const std::string tag = tag_of(paras[i]);
    if (i + 1 == paras.size() && tag.empty()) continue;  // cut inside its tag
    ++counts[tag];
  }
  return counts;
}

std::set<char> letters_of(const std::string& text) {
  std::set<char> out;
  for (char c : text) {
    if (std::isalpha(static_cast<unsigned char>(c))) out.insert(c);
  }
  return out;
}

TEST(SyntheticLanguage, OneLanguageHasOnlyItsTagAndTheMixHasAllFour) {
  const std::string mixed = synthetic_corpus(kSeed, 60000);
  const std::map<std::string, int64_t> mixed_tags = tag_counts(mixed);
  ASSERT_EQ(mixed_tags.size(), 4u) << "the mixed corpus has 4 languages";
  EXPECT_EQ(mixed_tags.count(""), 0u) << "every paragraph of the mix starts with its tag";
  // The letters each language uses in the mix, by tag.
  std::map<std::string, std::set<char>> mixed_letters;
  for (const std::string& p : paragraphs(mixed)) {
    for (char c : letters_of(p.substr(tag_of(p).size()))) mixed_letters[tag_of(p)].insert(c);
  }
  std::set<std::string> seen;
  for (int language = 0; language < kSyntheticLanguages; ++language) {
    SCOPED_TRACE("language " + std::to_string(language));
    const std::string text = synthetic_corpus(kSeed, 20000, language);
    EXPECT_EQ(text.size(), 20000u);
    EXPECT_EQ(synthetic_corpus(kSeed, 20000, language), text) << "deterministic";
    const std::map<std::string, int64_t> tags = tag_counts(text);
    ASSERT_EQ(tags.size(), 1u) << "one tag: " << tags.begin()->first << ", ...";
    const std::string tag = tags.begin()->first;
    EXPECT_GT(tags.begin()->second, 20) << "many paragraphs, all tagged " << tag;
    EXPECT_EQ(mixed_tags.count(tag), 1u) << tag << " is one of the mix's languages";
    EXPECT_TRUE(seen.insert(tag).second) << tag << " is another language's tag too";
    // The same language as the mix's paragraphs of that tag: its letters are theirs.
    std::set<char> body;
    for (const std::string& p : paragraphs(text)) {
      for (char c : letters_of(p.substr(tag_of(p).size()))) body.insert(c);
    }
    for (char c : body) {
      EXPECT_EQ(mixed_letters[tag].count(c), 1u) << "'" << c << "' not in the mix's " << tag;
    }
  }
  EXPECT_EQ(seen.size(), 4u);
  EXPECT_NE(error_of([] { synthetic_corpus(kSeed, 100, kSyntheticLanguages); }).find("language 4"),
            std::string::npos);
  EXPECT_NE(error_of([] { synthetic_corpus(kSeed, 100, -2); }), "<no error thrown>");
}

// ------------------------------------------------------------------------------------------
// TaskMixture over sources whose tokens are disjoint ranges: task t holds the tokens
// base(t) + i, i < n, so a row's first token says which task (and which offset) it came from.

constexpr int64_t kT = 8;      // block size
constexpr int64_t kN = 1000;   // tokens per task
constexpr double kVal = 0.25;  // validation fraction: train offsets [0, 750), val [750, 1000)

int64_t base(int64_t task) { return 10000 * (task + 1); }

std::vector<int64_t> task_tokens(int64_t task) {
  std::vector<int64_t> t(kN);
  for (int64_t i = 0; i < kN; ++i) t[i] = base(task) + i;
  return t;
}

std::unique_ptr<TaskMixture> mixture(const std::vector<double>& weights) {
  std::vector<std::unique_ptr<TokenSource>> sources;
  for (size_t t = 0; t < weights.size(); ++t) {
    sources.push_back(std::make_unique<TokenDataset>(task_tokens(static_cast<int64_t>(t)), kVal, kT,
                                                     "task " + std::to_string(t)));
  }
  return std::make_unique<TaskMixture>(std::move(sources), weights);
}

// Checks every row of `b` against the task Batch::task names: x is base + [o, o + T), y the same
// shifted by one, inside the split. Returns the rows' tasks.
std::vector<int64_t> check_rows(const Batch& b, Split split) {
  const int64_t B = b.x.size(0);
  EXPECT_EQ(b.x.sizes(), (std::vector<int64_t>{B, kT}));
  EXPECT_EQ(b.y.sizes(), (std::vector<int64_t>{B, kT}));
  EXPECT_TRUE(b.task.defined());
  if (!b.task.defined()) return {};
  EXPECT_EQ(b.task.sizes(), (std::vector<int64_t>{B}));
  EXPECT_EQ(b.task.scalar_type(), at::kLong);
  std::vector<int64_t> tasks;
  for (int64_t i = 0; i < B; ++i) {
    const int64_t t = b.task[i].item<int64_t>();
    tasks.push_back(t);
    const int64_t o = b.x[i][0].item<int64_t>() - base(t);
    const int64_t lo = split == Split::kTrain ? 0 : 750, hi = split == Split::kTrain ? 750 : kN;
    EXPECT_GE(o, lo) << "row " << i << " of task " << t << " starts outside its split";
    EXPECT_LE(o + kT, hi - 1) << "row " << i << " of task " << t;
    for (int64_t j = 0; j < kT; ++j) {
      EXPECT_EQ(b.x[i][j].item<int64_t>(), base(t) + o + j) << "row " << i;
      EXPECT_EQ(b.y[i][j].item<int64_t>(), base(t) + o + j + 1) << "row " << i;
    }
  }
  return tasks;
}

TEST(TaskMixture, DrawsTasksByWeightNeverWeightZeroAndLabelsEachRow) {
  // Weights 3 : 1 : 0 (the zero in the middle and at the end).
  for (const std::vector<double>& weights :
       {std::vector<double>{3, 1, 0}, std::vector<double>{3, 0, 1}}) {
    const auto m = mixture(weights);
    EXPECT_EQ(m->num_tasks(), 3);
    EXPECT_EQ(m->num_tokens(Split::kTrain), 3 * 750);
    EXPECT_EQ(m->num_tokens(Split::kVal), 3 * 250);
    std::mt19937_64 rng(17);
    std::vector<int64_t> count(3, 0);
    const int64_t draws = 4000;
    for (int64_t i = 0; i < draws / 8; ++i) {
      const Split split = i % 2 ? Split::kVal : Split::kTrain;
      for (int64_t t : check_rows(m->sample(split, 8, rng), split)) ++count[t];
    }
    const int64_t light = weights[1] > 0 ? 1 : 2, zero = weights[1] > 0 ? 2 : 1;
    EXPECT_EQ(count[zero], 0) << "a task of weight 0 is never drawn";
    EXPECT_EQ(count[0] + count[light], draws);
    // Binomial(4000, 3/4): sd = sqrt(4000 * 3/4 * 1/4) = 27.4; 5 sd.
    EXPECT_NEAR(static_cast<double>(count[0]), 3000.0, 5 * std::sqrt(draws * 0.75 * 0.25))
        << count[0] << " of " << draws << " rows from the task of weight 3";
  }
}

TEST(TaskMixture, SampleTaskGivesThatTaskOnly) {
  const auto m = mixture({1, 1, 0});
  std::mt19937_64 rng(3);
  for (int64_t t = 0; t < 3; ++t) {  // the task of weight 0 too (it is evaluated)
    for (Split split : {Split::kTrain, Split::kVal}) {
      const Batch b = m->sample_task(t, split, 16, rng);
      for (int64_t got : check_rows(b, split)) EXPECT_EQ(got, t);
    }
  }
  EXPECT_NE(error_of([&] { m->sample_task(3, Split::kTrain, 2, rng); }).find("no task 3"),
            std::string::npos);
  EXPECT_NE(error_of([] { mixture({0, 0}); }).find("weights sum to 0"), std::string::npos);
}

TEST(TaskMixture, FollowsTheDocumentedDrawRule) {
  // Row by row: u = (rng() >> 11) * 2^-53, the first task whose cumulative weight share exceeds
  // u, then that task's block from the same rng (one TokenDataset draw: offset rng() % range).
  const std::vector<double> weights = {0.5, 0.2, 0.3};
  const double cumulative[] = {0.5, 0.7, 1.0};
  const auto m = mixture(weights);
  std::mt19937_64 rng(99), replay(99);
  const Batch b = m->sample(Split::kVal, 64, rng);
  for (int64_t i = 0; i < 64; ++i) {
    const double u = static_cast<double>(replay() >> 11) * 0x1.0p-53;
    int64_t t = 0;
    while (t < 2 && !(u < cumulative[t])) ++t;
    const int64_t offset = 750 + static_cast<int64_t>(replay() % (250 - kT));
    EXPECT_EQ(b.task[i].item<int64_t>(), t) << "row " << i;
    EXPECT_EQ(b.x[i][0].item<int64_t>(), base(t) + offset) << "row " << i;
  }
}

// ------------------------------------------------------------------------------------------
// load_corpus with data.tasks.

Config task_config(const std::vector<int64_t>& languages, int64_t chars = 6000) {
  Config c;
  c.model.block_size = 16;
  c.data.synthetic_chars = chars;
  for (int64_t l : languages) {
    TaskConfig t;
    t.name = "lang" + std::to_string(l);
    t.synthetic = l;
    c.data.tasks.push_back(t);
  }
  validate(c);
  return c;
}

TEST(TaskCorpus, VocabularyIsEveryLanguagesCharacters) {
  const Config c01 = task_config({0, 1}), c23 = task_config({2, 3});
  const Corpus a = load_corpus(c01), b = load_corpus(c23);
  ASSERT_TRUE(a.tokenizer && b.tokenizer);
  EXPECT_EQ(a.tokenizer->chars(), b.tokenizer->chars());
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  // Every character of every language (at this data.synthetic_chars) and nothing else.
  std::set<char> all;
  for (int l = 0; l < kSyntheticLanguages; ++l) {
    for (char ch : synthetic_corpus(kSeed, 6000, l)) all.insert(ch);
  }
  EXPECT_EQ(std::set<char>(a.tokenizer->chars().begin(), a.tokenizer->chars().end()), all);
  // So it holds letters that languages 0 and 1 never use (the alphabets are disjoint).
  std::set<char> used01;
  for (int l = 0; l < 2; ++l) {
    for (char ch : synthetic_corpus(kSeed, 6000, l)) used01.insert(ch);
  }
  EXPECT_GT(all.size(), used01.size());
  ASSERT_NE(a.tasks, nullptr);
  EXPECT_EQ(a.tasks->num_tasks(), 2);
  EXPECT_EQ(static_cast<const TokenSource*>(a.tasks), a.dataset.get());
  // A model.vocab_size that disagrees is named.
  Config wrong = c01;
  wrong.model.vocab_size = a.vocab_size + 1;
  EXPECT_NE(error_of([&] { load_corpus(wrong); }).find("model.vocab_size"), std::string::npos);
}

TEST(TaskCorpus, EachRowIsTextOfItsTasksLanguage) {
  const Config c = task_config({3, 1});  // task 0: language 3, task 1: language 1
  const Corpus corpus = load_corpus(c);
  const std::string text[2] = {synthetic_corpus(kSeed, 6000, 3), synthetic_corpus(kSeed, 6000, 1)};
  std::mt19937_64 rng(5);
  std::vector<int64_t> per_task(2, 0);
  for (Split split : {Split::kTrain, Split::kVal}) {
    const Batch b = corpus.dataset->sample(split, 32, rng);
    ASSERT_TRUE(b.task.defined());
    for (int64_t i = 0; i < 32; ++i) {
      const int64_t t = b.task[i].item<int64_t>();
      ASSERT_TRUE(t == 0 || t == 1) << t;
      ++per_task[t];
      const at::Tensor row = b.x[i].contiguous();
      const std::string decoded = corpus.tokenizer->decode(
          std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel()));
      EXPECT_NE(text[t].find(decoded), std::string::npos)
          << "row " << i << " of task " << t << ": '" << decoded << "'";
      EXPECT_EQ(text[1 - t].find(decoded), std::string::npos)
          << "row " << i << " of task " << t << " is also text of the other language";
    }
  }
  EXPECT_GT(per_task[0], 0);
  EXPECT_GT(per_task[1], 0);
}

TEST(TaskCorpus, TextFileTaskAddsItsCharactersAndTokenFileTasksShareVocabSize) {
  const sy::testing::TempFolder folder("tasks");
  const std::string& dir = folder.path();
  // A text task beside a synthetic one: the file's characters join the vocabulary.
  const std::string file_text = std::string(400, '~') + std::string(400, '^');
  const std::string text_path = dir + "/tilde.txt";
  std::ofstream(text_path, std::ios::binary) << file_text;
  Config c = task_config({0});
  TaskConfig file;
  file.name = "file";
  file.path = text_path;
  c.data.tasks.push_back(file);
  validate(c);
  const Corpus corpus = load_corpus(c);
  const std::string& chars = corpus.tokenizer->chars();
  EXPECT_NE(chars.find('~'), std::string::npos);
  EXPECT_NE(chars.find('^'), std::string::npos);
  EXPECT_EQ(corpus.vocab_size, load_corpus(task_config({2})).vocab_size + 2);
  std::mt19937_64 rng(1);
  const Batch b = corpus.tasks->sample_task(1, Split::kTrain, 4, rng);
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t j = 0; j < 16; ++j) {
      const char ch = chars[static_cast<size_t>(b.x[i][j].item<int64_t>())];
      EXPECT_TRUE(ch == '~' || ch == '^') << ch;
    }
  }
  // Token-file tasks: ids of model.vocab_size; task t's file holds only ids t, so each row's ids
  // name its task.
  Config tokens;
  tokens.model.block_size = 16;
  tokens.model.vocab_size = 7;
  for (int t = 0; t < 2; ++t) {
    const std::string path = dir + "/t" + std::to_string(t) + ".bin";
    const std::vector<uint16_t> ids(500, static_cast<uint16_t>(t + 5));
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(ids.data()),
               static_cast<std::streamsize>(ids.size() * sizeof(uint16_t)));
    TaskConfig task;
    task.name = "bin" + std::to_string(t);
    task.path = path;
    task.format = DataFormat::kUint16;
    tokens.data.tasks.push_back(task);
  }
  validate(tokens);
  const Corpus bin = load_corpus(tokens);
  EXPECT_EQ(bin.vocab_size, 7);
  EXPECT_FALSE(bin.tokenizer);
  const Batch rows = bin.dataset->sample(Split::kTrain, 64, rng);
  for (int64_t i = 0; i < 64; ++i) {
    const int64_t t = rows.task[i].item<int64_t>();
    EXPECT_TRUE(at::equal(rows.x[i], at::full({16}, t + 5, at::kLong))) << "row " << i;
  }
}

}  // namespace
}  // namespace sy
