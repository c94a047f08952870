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
#include "data/pairs.h"

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

// A sentence's meaning, independent of the language that says it: which words (by their index in
// each language's lexicon) in which roles. Every language's lexicon has the same sizes, so a
// meaning drawn for one language can be said in any (the embedded translation task).
struct NounPhrase {
  int cls = 0;
  size_t noun = 0;
  int adjective = -1;  // an index into the adjectives, or none
};
struct Clause {
  NounPhrase subject, object;
  size_t verb = 0;
};
struct Meaning {
  bool question = false;
  Clause first;
  int conjunction = -1;  // joins a second clause, or none
  Clause second;
  char end = '.';
};

NounPhrase draw_noun_phrase(const Language& lang, int cls, SplitMix64& rng) {
  NounPhrase np;
  np.cls = cls;
  np.noun = rng.skewed(lang.nouns[cls].size());
  if (rng.chance(35)) np.adjective = static_cast<int>(rng.skewed(lang.adjectives.size()));
  return np;
}

// The random draws of a clause, in the order the language says its parts (so the mixed corpus is
// what it always was).
Clause draw_clause(const Language& lang, SplitMix64& rng) {
  Clause c;
  const int subject_class = static_cast<int>(rng.below(2));
  const int object_class = static_cast<int>(rng.below(2));
  for (const char* part = lang.typology.order; *part; ++part) {
    if (*part == 'S') c.subject = draw_noun_phrase(lang, subject_class, rng);
    if (*part == 'O') c.object = draw_noun_phrase(lang, object_class, rng);
    if (*part == 'V') c.verb = rng.skewed(lang.verbs.size());
  }
  return c;
}

Meaning draw_meaning(const Language& lang, SplitMix64& rng) {
  Meaning m;
  m.question = rng.chance(15);
  m.first = draw_clause(lang, rng);
  if (rng.chance(30)) {
    m.conjunction = static_cast<int>(rng.below(2));
    m.second = draw_clause(lang, rng);
  }
  m.end = m.question ? '?' : rng.chance(8) ? '!' : '.';
  return m;
}

// Appends a noun phrase ("det [adj] noun" or "det noun [adj]") to `words`.
void say_noun_phrase(const Language& lang, const NounPhrase& np, std::vector<std::string>& words) {
  words.push_back(lang.determiner[np.cls]);
  std::string noun = lang.nouns[np.cls][np.noun] + lang.class_suffix[np.cls];
  if (np.adjective < 0) {
    words.push_back(noun);
    return;
  }
  std::string adjective =
      lang.adjectives[static_cast<size_t>(np.adjective)] + lang.class_suffix[np.cls];
  if (lang.typology.adjective_after_noun) std::swap(noun, adjective);
  words.push_back(adjective);
  words.push_back(noun);
}

// Appends one clause (subject, verb agreeing with it, object) in the language's word order.
void say_clause(const Language& lang, const Clause& c, std::vector<std::string>& words) {
  for (const char* part = lang.typology.order; *part; ++part) {
    if (*part == 'S') say_noun_phrase(lang, c.subject, words);
    if (*part == 'O') say_noun_phrase(lang, c.object, words);
    if (*part == 'V') words.push_back(lang.verbs[c.verb] + lang.verb_suffix[c.subject.cls]);
  }
}

// One sentence as words, punctuation attached: "Ko rami tesu, na ..., ... vela."
void say(const Language& lang, const Meaning& m, std::vector<std::string>& words) {
  const size_t first = words.size();
  if (m.question) words.push_back(lang.question);
  say_clause(lang, m.first, words);
  if (m.conjunction >= 0) {
    words.back() += ',';
    words.push_back(lang.conjunctions[static_cast<size_t>(m.conjunction)]);
    say_clause(lang, m.second, words);
  }
  words[first][0] = static_cast<char>(std::toupper(static_cast<unsigned char>(words[first][0])));
  words.back() += m.end;
}

std::string join(const std::vector<std::string>& words) {
  std::string out;
  for (const std::string& w : words) out += (out.empty() ? "" : " ") + w;
  return out;
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
    for (size_t s = 0; s < num_sentences; ++s) say(lang, draw_meaning(lang, rng), words);
    if (!out.empty()) out += '\n';  // blank line between paragraphs
    append_wrapped(words, out);
  }
  out.resize(static_cast<size_t>(num_chars));
  return out;
}

}  // namespace sy

namespace sy {

std::vector<TextPair> synthetic_pairs(uint64_t seed, int64_t num_chars, PairTask task,
                                      int source_language, int target_language, int64_t max_len) {
  SY_CHECK(source_language >= 0 && source_language < kNumLanguages && target_language >= 0 &&
               target_language < kNumLanguages,
           "synthetic pairs: languages ", source_language, " and ", target_language,
           " must be 0 to ", kNumLanguages - 1);
  SY_CHECK(max_len >= 1, "synthetic pairs: the longest side (", max_len, ") must be >= 1");
  SplitMix64 rng(seed);
  const std::vector<Language> langs = make_languages(rng);
  const Language& source = langs[static_cast<size_t>(source_language)];
  const Language& target = langs[static_cast<size_t>(target_language)];
  std::vector<TextPair> pairs;
  int64_t chars = 0;
  std::vector<std::string> words;
  // Sentences that do not fit are drawn again: a deterministic stream of the ones that do.
  for (int64_t misses = 0; chars < num_chars;) {
    const Meaning m = draw_meaning(source, rng);
    TextPair p;
    words.clear();
    say(source, m, words);
    p.source = join(words);
    if (task == PairTask::kTranslate) {
      words.clear();
      say(target, m, words);
      p.target = join(words);
    } else {
      p.target.assign(p.source.rbegin(), p.source.rend());
    }
    if (static_cast<int64_t>(std::max(p.source.size(), p.target.size())) > max_len) {
      SY_CHECK(++misses < 1000000, "synthetic pairs: no sentence fits in ", max_len,
               " characters; use a larger model.block_size");
      continue;
    }
    chars += static_cast<int64_t>(p.source.size());
    pairs.push_back(std::move(p));
  }
  return pairs;
}

}  // namespace sy
