// Helpers shared by the config sources (config.cpp loads and prints, validate.cpp checks), and
// the YAML checks that grid files share with config files (study/grid.cpp); not part of the
// public interface.
#pragma once

#include <string>

namespace YAML {
class Node;
}

namespace sy::config_detail {

// The shortest "%.Ng" form of `value` that parses back to exactly the same double, with ".0"
// appended when it would otherwise read as an integer (0.001 -> "0.001", 2 -> "2.0").
std::string format_number(double value);

// Parses `text` as exactly one YAML document; errors name `source` and the line, and say that
// `what` ("a config file", "a grid file") must hold one document.
YAML::Node parse_document(const std::string& text, const std::string& source,
                          const std::string& what = "a config file");

// Note [No YAML tags] (config.cpp): throws "AT: KEY: the YAML tag '!!str' is not allowed ..."
// when `node` carries a YAML tag; `at` is where it was written ("a.yaml:3").
void check_tag(const YAML::Node& node, const std::string& at, const std::string& key);

}  // namespace sy::config_detail
