// SPDX-License-Identifier: Apache-2.0
// File: sim/cli/flags.h
//
// The one flag parser of the `headpage` subcommands. A subcommand declares
// each flag with the variable its value goes to (what the variable holds
// beforehand is the default), then parses its arguments once:
//
//   FlagSet flags;
//   flags.Int("page-size", &page_size, /*min=*/1);
//   flags.Text("trace", &trace);
//   absl::StatusOr<FlagSet::Outcome> outcome = flags.Parse(argc, argv);
//
// A value is given as "--name VALUE" or "--name=VALUE" (the next argument is
// the value whatever it looks like, so "--trace --help" names a file
// "--help"). "--help" or "-h" where a flag may stand stops the parse at once:
// Outcome::kHelp. Every error is InvalidArgument with the message the command
// line prints, one shape for every subcommand:
//
//   unknown argument '--bogus'
//   --trace needs a value
//   --page-size needs a positive integer, got 'x'
//   --format needs table, csv or json, got 'xml'
//
// Arguments are parsed in order and the first error wins.
#ifndef HEADPAGE_SIM_CLI_FLAGS_H_
#define HEADPAGE_SIM_CLI_FLAGS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace headpage {

class FlagSet {
 public:
  enum class Outcome : uint8_t {
    kRun,   // every argument parsed: run the command
    kHelp,  // --help or -h: print the usage instead
  };

  // Any text, the empty string included.
  void Text(absl::string_view name, std::string* value);
  // Any text; every use of the flag appends one (--trace A --trace B).
  void TextList(absl::string_view name, std::vector<std::string>* values);
  // One of `choices`, as given.
  void Choice(absl::string_view name, std::vector<std::string> choices, std::string* value);
  // A whole number >= min that fits the variable.
  void Int(absl::string_view name, int64_t* value, int64_t min);
  void Int(absl::string_view name, int32_t* value, int64_t min);
  // A number, inf included, but not NaN.
  void Number(absl::string_view name, double* value);
  // A number > 0 (inf included).
  void PositiveNumber(absl::string_view name, double* value);
  // A flag without a value: its presence sets *value to true.
  void Switch(absl::string_view name, bool* value);
  // Arguments that do not start with '-' are collected here, in order. Without
  // this, each one is an unknown argument.
  void Positionals(std::vector<std::string>* values);

  // Parses argv[1..argc) (argv[0] is the subcommand's name) into the declared
  // variables, in order. InvalidArgument with the message above for an unknown
  // argument, a missing value or a value the flag does not accept; the
  // variables parsed before the error keep their new values.
  [[nodiscard]] absl::StatusOr<Outcome> Parse(int argc, const char* const* argv) const;

 private:
  struct Flag {
    std::string name;         // without the leading "--"
    bool takes_value = true;  // false: a Switch
    std::string requirement;  // what a value must be, for the error: "a positive integer"
    // Stores the value; false when the flag does not accept it.
    std::function<bool(absl::string_view value)> accept;
  };

  void Add(absl::string_view name, std::string requirement,
           std::function<bool(absl::string_view value)> accept);
  const Flag* Find(absl::string_view name) const;

  std::vector<Flag> flags_;
  std::vector<std::string>* positionals_ = nullptr;
};

}  // namespace headpage

#endif  // HEADPAGE_SIM_CLI_FLAGS_H_
