// SPDX-License-Identifier: Apache-2.0
#include "sim/cli/flags.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace headpage {
namespace {

// How the error message words a lower bound.
std::string IntRequirement(int64_t min) {
  return min == 1 ? "a positive integer" : absl::StrCat("an integer >= ", min);
}

// Parses a whole number into `Int`, refusing values below `min` or past the
// type's range.
template <typename Int>
bool ParseInt(absl::string_view text, int64_t min, Int* value) {
  int64_t parsed = 0;
  if (!absl::SimpleAtoi(text, &parsed) || parsed < min ||
      parsed > static_cast<int64_t>(std::numeric_limits<Int>::max())) {
    return false;
  }
  *value = static_cast<Int>(parsed);
  return true;
}

// "a, b or c".
std::string ChoiceList(const std::vector<std::string>& choices) {
  if (choices.size() < 2) return absl::StrJoin(choices, "");
  return absl::StrCat(absl::StrJoin(choices.begin(), choices.end() - 1, ", "), " or ",
                      choices.back());
}

}  // namespace

void FlagSet::Add(absl::string_view name, std::string requirement,
                  std::function<bool(absl::string_view value)> accept) {
  flags_.push_back(Flag{std::string(name), true, std::move(requirement), std::move(accept)});
}

void FlagSet::Text(absl::string_view name, std::string* value) {
  Add(name, "text", [value](absl::string_view text) {
    *value = std::string(text);
    return true;
  });
}

void FlagSet::TextList(absl::string_view name, std::vector<std::string>* values) {
  Add(name, "text", [values](absl::string_view text) {
    values->emplace_back(text);
    return true;
  });
}

void FlagSet::Choice(absl::string_view name, std::vector<std::string> choices,
                     std::string* value) {
  std::string requirement = ChoiceList(choices);
  Add(name, std::move(requirement), [choices = std::move(choices), value](absl::string_view text) {
    for (const std::string& choice : choices) {
      if (text == choice) {
        *value = choice;
        return true;
      }
    }
    return false;
  });
}

void FlagSet::Int(absl::string_view name, int64_t* value, int64_t min) {
  Add(name, IntRequirement(min),
      [value, min](absl::string_view text) { return ParseInt(text, min, value); });
}

void FlagSet::Int(absl::string_view name, int32_t* value, int64_t min) {
  Add(name, IntRequirement(min),
      [value, min](absl::string_view text) { return ParseInt(text, min, value); });
}

void FlagSet::Number(absl::string_view name, double* value) {
  Add(name, "a number", [value](absl::string_view text) {
    double parsed = 0;
    if (!absl::SimpleAtod(text, &parsed) || std::isnan(parsed)) return false;
    *value = parsed;
    return true;
  });
}

void FlagSet::PositiveNumber(absl::string_view name, double* value) {
  Add(name, "a positive number", [value](absl::string_view text) {
    double parsed = 0;
    if (!absl::SimpleAtod(text, &parsed) || !(parsed > 0.0)) return false;
    *value = parsed;
    return true;
  });
}

void FlagSet::Switch(absl::string_view name, bool* value) {
  Add(name, "no value", [value](absl::string_view) {
    *value = true;
    return true;
  });
  flags_.back().takes_value = false;
}

void FlagSet::Positionals(std::vector<std::string>* values) { positionals_ = values; }

const FlagSet::Flag* FlagSet::Find(absl::string_view name) const {
  for (const Flag& flag : flags_) {
    if (flag.name == name) return &flag;
  }
  return nullptr;
}

absl::StatusOr<FlagSet::Outcome> FlagSet::Parse(int argc, const char* const* argv) const {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") return Outcome::kHelp;
    if (arg.substr(0, 2) != "--") {
      if (positionals_ == nullptr || arg.substr(0, 1) == "-") {
        return absl::InvalidArgumentError(absl::StrCat("unknown argument '", arg, "'"));
      }
      positionals_->emplace_back(arg);
      continue;
    }
    // "--name=VALUE" or "--name" (its value, if it takes one, is the next argument).
    const size_t equals = arg.find('=');
    const absl::string_view name = arg.substr(2, equals == absl::string_view::npos ? arg.npos
                                                                                   : equals - 2);
    const Flag* flag = Find(name);
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument '", arg, "'"));
    }
    const std::string dashed = absl::StrCat("--", name);
    absl::string_view value;
    if (!flag->takes_value) {
      if (equals != absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat(dashed, " takes no value"));
      }
    } else if (equals != absl::string_view::npos) {
      value = arg.substr(equals + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat(dashed, " needs a value"));
    }
    if (!flag->accept(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat(dashed, " needs ", flag->requirement, ", got '", value, "'"));
    }
  }
  return Outcome::kRun;
}

}  // namespace headpage
