// SPDX-License-Identifier: Apache-2.0
// The flag parser every `headpage` subcommand shares (sim/cli/flags.h).
#include "sim/cli/flags.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using absl::StatusCode;

// Parses `args` as a subcommand's arguments (the subcommand's name in front).
absl::StatusOr<FlagSet::Outcome> ParseArgs(const FlagSet& flags, std::vector<const char*> args) {
  args.insert(args.begin(), "command");
  return flags.Parse(static_cast<int>(args.size()), args.data());
}

TEST_CASE("Flags: values by --name VALUE and --name=VALUE, defaults kept", "[sim][cli]") {
  std::string text = "default", unset = "kept", choice = "table";
  std::vector<std::string> list;
  int64_t big = -1;
  int32_t small = 7;
  double number = 0.5, positive = 1.0;
  bool on = false;
  FlagSet flags;
  flags.Text("text", &text);
  flags.Text("unset", &unset);
  flags.TextList("trace", &list);
  flags.Choice("format", {"table", "csv", "json"}, &choice);
  flags.Int("big", &big, /*min=*/0);
  flags.Int("small", &small, /*min=*/1);
  flags.Number("number", &number);
  flags.PositiveNumber("positive", &positive);
  flags.Switch("on", &on);
  auto outcome = ParseArgs(flags, {"--text", "a b", "--trace=x", "--trace", "y", "--format=csv",
                                   "--big", "123456789012", "--small=3", "--number", "-inf",
                                   "--positive=2.5", "--on"});
  REQUIRE_OK(outcome);
  REQUIRE(*outcome == FlagSet::Outcome::kRun);
  REQUIRE(text == "a b");
  REQUIRE(unset == "kept");
  REQUIRE(list == std::vector<std::string>{"x", "y"});
  REQUIRE(choice == "csv");
  REQUIRE(big == 123456789012);
  REQUIRE(small == 3);
  REQUIRE(number == -INFINITY);
  REQUIRE(positive == 2.5);
  REQUIRE(on);

  // An empty value is a value; the next argument is the value whatever it is.
  REQUIRE_OK(ParseArgs(flags, {"--text=", "--trace", "--help"}));
  REQUIRE(text.empty());
  REQUIRE(list.back() == "--help");
}

TEST_CASE("Flags: --help and -h stop the parse", "[sim][cli]") {
  std::string text;
  FlagSet flags;
  flags.Text("text", &text);
  for (const char* help : {"--help", "-h"}) {
    auto outcome = ParseArgs(flags, {"--text", "a", help, "--bogus"});
    REQUIRE_OK(outcome);
    REQUIRE(*outcome == FlagSet::Outcome::kHelp);
  }
  // An error before the help wins: arguments are parsed in order.
  REQUIRE_ERROR(ParseArgs(flags, {"--bogus", "--help"}), StatusCode::kInvalidArgument,
                "unknown argument '--bogus'");
}

TEST_CASE("Flags: each error says which flag and why", "[sim][cli]") {
  std::string text, choice = "all";
  int64_t count = 0;
  int32_t threads = 0;
  double gib = 1.0, rate = 1.0;
  bool sweep = false;
  FlagSet flags;
  flags.Text("text", &text);
  flags.Choice("queries", {"all", "window", "generated"}, &choice);
  flags.Int("count", &count, /*min=*/1);
  flags.Int("threads", &threads, /*min=*/0);
  flags.PositiveNumber("pool-gib", &gib);
  flags.Number("rate", &rate);
  flags.Switch("sweep", &sweep);
  struct Bad {
    std::vector<const char*> args;
    const char* message;
  };
  for (const Bad& bad : {
           Bad{{"--bogus"}, "unknown argument '--bogus'"},
           Bad{{"--text-x=1"}, "unknown argument '--text-x=1'"},
           Bad{{"--"}, "unknown argument '--'"},
           Bad{{"stray"}, "unknown argument 'stray'"},
           Bad{{"-x"}, "unknown argument '-x'"},
           Bad{{"--text"}, "--text needs a value"},
           Bad{{"--count", "x"}, "--count needs a positive integer, got 'x'"},
           Bad{{"--count=0"}, "--count needs a positive integer, got '0'"},
           Bad{{"--threads=-1"}, "--threads needs an integer >= 0, got '-1'"},
           Bad{{"--threads", "3000000000"}, "--threads needs an integer >= 0, got '3000000000'"},
           Bad{{"--threads", "1.5"}, "--threads needs an integer >= 0, got '1.5'"},
           Bad{{"--pool-gib", "0"}, "--pool-gib needs a positive number, got '0'"},
           Bad{{"--pool-gib=nan"}, "--pool-gib needs a positive number, got 'nan'"},
           Bad{{"--rate", "nan"}, "--rate needs a number, got 'nan'"},
           Bad{{"--rate="}, "--rate needs a number, got ''"},
           Bad{{"--queries", "some"}, "--queries needs all, window or generated, got 'some'"},
           Bad{{"--sweep=1"}, "--sweep takes no value"},
       }) {
    CAPTURE(bad.message);
    REQUIRE_ERROR(ParseArgs(flags, bad.args), StatusCode::kInvalidArgument, bad.message);
  }
}

TEST_CASE("Flags: positional arguments only where declared", "[sim][cli]") {
  std::vector<std::string> args;
  bool verbose = false;
  FlagSet flags;
  flags.Switch("verbose", &verbose);
  flags.Positionals(&args);
  REQUIRE_OK(ParseArgs(flags, {"info", "--verbose", "file.safetensors"}));
  REQUIRE(args == std::vector<std::string>{"info", "file.safetensors"});
  REQUIRE(verbose);
  REQUIRE_ERROR(ParseArgs(flags, {"info", "-v"}), StatusCode::kInvalidArgument,
                "unknown argument '-v'");
}

}  // namespace
}  // namespace headpage
