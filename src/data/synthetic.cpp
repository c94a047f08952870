// The embedded synthetic corpus: paragraphs in several generated "languages".
//
// Each language gets, from the seed, its own share of the vowels (aeiouy) and of the consonants
// (the shares are disjoint, so a few characters identify the language); its own syllable shapes
// and word order (fixed per language slot, so the languages differ in kind, not only in
// letters); and a fixed lexicon of generated words in six classes. Sentences
// follow a small grammar with agreement: every noun belongs to one of two classes, and the
// determiner, the noun, its adjective and the verb it is subject of all carry that class's
// marker (a class-specific determiner or suffix). Sentences are capitalised and end in '.', '!'
// or (after a question particle) '?'; some join a second clause after ", conj".
//
// A paragraph is one language: "[name] " followed by a few sentences, wrapped at 72 columns,
// and paragraphs are separated by a blank line. So the text has three scales of structure a
// character model can learn: spelling (syllables), grammar (agreement across words), and the
// paragraph's language, which a router can use to send each language to its own experts.
//
// Randomness comes from splitmix64 and `next() % n` only, never a std distribution, so the same
// seed gives the same bytes on every platform and standard library.
#include <algorithm>
#include <cctype>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "config/config.h"
#include "data/dataset.h"

namespace sy {
namespace {

constexpr int kNumLanguages = kSyntheticLanguages;
constexpr size_t kLineWidth = 72;

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n); the modulo bias is below 2^-55 for the small n used here.
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
  // In [0, n), small indices more likely (P(k) falls linearly): a Zipf-like word frequency.
  size_t skewed(size_t n) { return std::min(below(n), below(n)); }
  bool chance(int percent) { return below(100) < static_cast<size_t>(percent); }

 private:
  uint64_t state_;
};

// What differs between language slots besides the letters and words.
struct Typology {
  std::vector<std::string> shapes;  // syllable shapes: 'C' consonant, 'V' vowel
  size_t max_syllables;             // of a content word
  const char* order;                // of subject (S), verb (V) and object (O)
  bool adjective_after_noun;
};

// Slots 0 and 2 get one vowel (see make_languages), so they get the richer syllable shapes.
const Typology kTypologies[kNumLanguages] = {
    {{"CVC", "CV"}, 2, "SOV", true},
    {{"CV"}, 3, "SVO", false},
    {{"CCV", "CVC", "CV"}, 2, "OSV", false},
    {{"V", "CV", "CVV"}, 3, "VSO", true},
};

struct Language {
  Typology typology;
  std::string vowels, consonants;
  std::string name;                   // the paragraph marker is "[name]"
  std::string determiner[2];          // one per noun class
  std::string class_suffix[2];        // on nouns and adjectives of that class
  std::string verb_suffix[2];         // on a verb whose subject has that class
  std::vector<std::string> nouns[2];  // stems, by class
  std::vector<std::string> verbs, adjectives, conjunctions;
  std::string question;  // a sentence starting with it ends in '?'
};

// Generates words of one language, each distinct from every word generated before.
class WordMaker {
 public:
  WordMaker(const Language& lang, SplitMix64& rng) : lang_(lang), rng_(rng) {}

  // A new word of `syllables` syllables, or longer once the short ones are used up (a language
  // whose only syllable shape is CV, with two vowels and five consonants, has ten).
  std::string fresh(size_t syllables) {
    for (size_t attempt = 0; attempt < 10000; ++attempt) {
      std::string w;
      for (size_t s = 0; s < syllables + attempt / 100; ++s) w += syllable();
      if (used_.insert(w).second) return w;
    }
    SY_THROW("synthetic corpus: a language ran out of distinct words");  // unreachable
  }
  std::vector<std::string> lexicon(size_t n) {
    std::vector<std::string> words;
    for (size_t i = 0; i < n; ++i) {
      words.push_back(fresh(1 + rng_.below(lang_.typology.max_syllables)));
    }
    return words;
  }
  // Two different syllables (class markers need not differ from words, only from each other).
  void marker_pair(std::string (&pair)[2]) {
    pair[0] = syllable();
    do {
      pair[1] = syllable();
    } while (pair[1] == pair[0]);
  }

 private:
  std::string syllable() {
    const auto& shapes = lang_.typology.shapes;
    std::string out;
    for (const char c : shapes[rng_.below(shapes.size())]) {
      const std::string& set = c == 'V' ? lang_.vowels : lang_.consonants;
      out += set[rng_.below(set.size())];
    }
    return out;
  }

  const Language& lang_;
  SplitMix64& rng_;
  std::set<std::string> used_;
};

std::vector<Language> make_languages(SplitMix64& rng) {
  std::string vowels = "aeiouy", consonants = "bcdfghjklmnpqrstvwxz";
  for (std::string* s : {&vowels, &consonants}) {
    for (size_t i = s->size() - 1; i > 0; --i) std::swap((*s)[i], (*s)[rng.below(i + 1)]);
  }
  // Deals a shuffled set: language l owns the l-th of kNumLanguages near-equal parts.
  const auto share = [](const std::string& set, int l) {
    const size_t begin = set.size() * l / kNumLanguages;
    return set.substr(begin, set.size() * (l + 1) / kNumLanguages - begin);
  };

  std::vector<Language> langs(kNumLanguages);
  for (int l = 0; l < kNumLanguages; ++l) {
    Language& lang = langs[l];
    lang.typology = kTypologies[l];
    lang.vowels = share(vowels, l);          // one or two of aeiouy
    lang.consonants = share(consonants, l);  // five

    WordMaker maker(lang, rng);
    lang.name = maker.fresh(2);
    maker.marker_pair(lang.class_suffix);
    maker.marker_pair(lang.verb_suffix);
    for (int c = 0; c < 2; ++c) {
      lang.determiner[c] = maker.fresh(1);
      lang.nouns[c] = maker.lexicon(16);
    }
    lang.verbs = maker.lexicon(16);
    lang.adjectives = maker.lexicon(10);
    lang.conjunctions = {maker.fresh(1), maker.fresh(1)};
    lang.question = maker.fresh(1);
  }
  return langs;
}

// Appends a noun phrase of class `cls` ("det [adj] noun" or "det noun [adj]") to `words`.
void noun_phrase(const Language& lang, int cls, SplitMix64& rng, std::vector<std::string>& words) {
  words.push_back(lang.determiner[cls]);
  const auto& nouns = lang.nouns[cls];
  std::string noun = nouns[rng.skewed(nouns.size())] + lang.class_suffix[cls];
  if (!rng.chance(35)) {
    words.push_back(noun);
    return;
  }
  std::string adjective =
      lang.adjectives[rng.skewed(lang.adjectives.size())] + lang.class_suffix[cls];
  if (lang.typology.adjective_after_noun) std::swap(noun, adjective);
  words.push_back(adjective);
  words.push_back(noun);
}

// Appends one clause (subject, verb agreeing with it, object) in the language's word order.
void clause(const Language& lang, SplitMix64& rng, std::vector<std::string>& words) {
  const int subject_class = static_cast<int>(rng.below(2));
  const int object_class = static_cast<int>(rng.below(2));
  for (const char* part = lang.typology.order; *part; ++part) {
    if (*part == 'S') noun_phrase(lang, subject_class, rng, words);
    if (*part == 'O') noun_phrase(lang, object_class, rng, words);
    if (*part == 'V') {
      words.push_back(lang.verbs[rng.skewed(lang.verbs.size())] + lang.verb_suffix[subject_class]);
    }
  }
}

// One sentence as words, punctuation attached: "Ko rami tesu, na ..., ... vela."
void sentence(const Language& lang, SplitMix64& rng, std::vector<std::string>& words) {
  const size_t first = words.size();
  const bool question = rng.chance(15);
  if (question) words.push_back(lang.question);
  clause(lang, rng, words);
  if (rng.chance(30)) {
    words.back() += ',';
    words.push_back(lang.conjunctions[rng.below(2)]);
    clause(lang, rng, words);
  }
  words[first][0] = static_cast<char>(std::toupper(static_cast<unsigned char>(words[first][0])));
  words.back() += question ? '?' : rng.chance(8) ? '!' : '.';
}

// Joins words with spaces, breaking lines before a word that would pass kLineWidth.
void append_wrapped(const std::vector<std::string>& words, std::string& out) {
  size_t column = 0;
  for (const std::string& w : words) {
    if (column > 0 && column + 1 + w.size() > kLineWidth) {
      out += '\n';
      column = 0;
    } else if (column > 0) {
      out += ' ';
      ++column;
    }
    out += w;
    column += w.size();
  }
  out += '\n';
}

}  // namespace

std::string synthetic_corpus(uint64_t seed, int64_t num_chars, int language) {
  SY_CHECK(num_chars >= 0, "synthetic corpus size (", num_chars, ") must not be negative");
  SY_CHECK(language >= -1 && language < kNumLanguages, "synthetic corpus: language ", language,
           " does not exist (0 to ", kNumLanguages - 1, ")");
  SplitMix64 rng(seed);
  const std::vector<Language> langs = make_languages(rng);

  std::string out;
  out.reserve(static_cast<size_t>(num_chars) + 1024);
  std::vector<std::string> words;
  while (static_cast<int64_t>(out.size()) < num_chars) {
    const Language& lang = language >= 0 ? langs[language] : langs[rng.below(langs.size())];
    words.assign(1, "[" + lang.name + "]");
    const size_t num_sentences = 2 + rng.below(5);
    for (size_t s = 0; s < num_sentences; ++s) sentence(lang, rng, words);
    if (!out.empty()) out += '\n';  // blank line between paragraphs
    append_wrapped(words, out);
  }
  out.resize(static_cast<size_t>(num_chars));
  return out;
}

}  // namespace sy
