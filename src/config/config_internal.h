// Helpers shared by the config sources (config.cpp loads and prints, validate.cpp checks); not
// part of the public interface.
#pragma once

#include <string>

namespace sy::config_detail {

// The shortest "%.Ng" form of `value` that parses back to exactly the same double, with ".0"
// appended when it would otherwise read as an integer (0.001 -> "0.001", 2 -> "2.0").
std::string format_number(double value);

}  // namespace sy::config_detail
