// SPDX-License-Identifier: Apache-2.0
// The `headpage` command-line tool. The first argument names a subcommand; each
// one (sim/cli/*_command.cc) parses its flags with the shared FlagSet
// (sim/cli/flags.h) and calls into the headpage_sim library. Exit statuses:
// sim/cli/command.h.
#include <cstdio>
#include <new>
#include <stdexcept>

#include "absl/strings/string_view.h"
#include "sim/cli/command.h"

namespace headpage {
namespace {

struct Subcommand {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);  // argv[0] is the subcommand's name
};

constexpr Subcommand kSubcommands[] = {
    {"walkthrough",
     "one sequence through prefill, decode, fork, eviction and free; the pool after each step",
     &RunWalkthroughCommand},
    {"trace", "trace info FILE: a trace's metadata, shapes and attention concentration",
     &RunTraceCommand},
    {"replay", "one policy and budget over a trace: attention error, lost mass, memory kept",
     &RunReplayCommand},
    {"sweep", "traces x policies x budgets x page sizes on all cores; CSV and a plot",
     &RunSweepCommand},
    {"workload", "a serving workload through one pool: batch, preemptions, fragmentation",
     &RunWorkloadCommand},
};

void PrintUsage(std::FILE* out) {
  std::fputs(
      "usage: headpage <subcommand> [flags]\n"
      "\n"
      "headpage: a head-wise paged KV cache (every layer and KV head has its own length).\n"
      "\n"
      "subcommands:\n",
      out);
  for (const Subcommand& sub : kSubcommands) std::fprintf(out, "  %-12s %s\n", sub.name, sub.summary);
  std::fputs("\n`headpage <subcommand> --help` describes its flags.\n", out);
}

}  // namespace
}  // namespace headpage

int main(int argc, char** argv) {
  using headpage::kSubcommands;
  using headpage::PrintUsage;
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  const absl::string_view command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    PrintUsage(stdout);
    return 0;
  }
  for (const auto& sub : kSubcommands) {
    if (command != sub.name) continue;
    // The library reports errors as Status; what can still throw is the
    // standard containers running out of memory. Say so, rather than abort.
    try {
      return sub.run(argc - 1, argv + 1);
    } catch (const std::bad_alloc&) {
      std::fprintf(stderr, "headpage %s: out of memory (ask for a smaller run)\n", sub.name);
    } catch (const std::length_error& error) {
      std::fprintf(stderr, "headpage %s: a size past what a container holds (%s)\n", sub.name,
                   error.what());
    }
    return 1;
  }
  std::fprintf(stderr, "headpage: unknown subcommand '%s'\n\n", argv[1]);
  PrintUsage(stderr);
  return 2;
}

