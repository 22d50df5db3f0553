// SPDX-License-Identifier: Apache-2.0
// File: sim/cli/command.h
//
// The `headpage` subcommands (one file each in sim/cli/) and what they share:
// how they parse their flags (sim/cli/flags.h), report errors, write files,
// plot and stop on Ctrl-C. The work itself is in the headpage_sim library.
//
// Exit status: 0 on success, 1 when the work itself fails (the error is printed),
// 2 for a usage error (unknown subcommand, bad flag), 130 when Ctrl-C stopped a
// sweep.
#ifndef HEADPAGE_SIM_CLI_COMMAND_H_
#define HEADPAGE_SIM_CLI_COMMAND_H_

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "policy/config.h"
#include "sim/cli/flags.h"

namespace headpage {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// The subcommands. argv[0] is the subcommand's name; each returns the exit status.
int RunWalkthroughCommand(int argc, char** argv);
int RunTraceCommand(int argc, char** argv);
int RunReplayCommand(int argc, char** argv);
int RunSweepCommand(int argc, char** argv);
int RunWorkloadCommand(int argc, char** argv);

// Prints "headpage COMMAND: STATUS" to stderr; returns 1.
int Fail(absl::string_view command, const absl::Status& status);
// Prints "headpage COMMAND: MESSAGE", then the usage, to stderr; returns 2.
int UsageError(absl::string_view command, absl::string_view message, const char* usage);

// Parses the subcommand's flags. Returns the exit status when the command must
// not run: 0 after printing `usage` for --help, 2 after a usage error (printed
// with the usage); std::nullopt when it should.
std::optional<int> ParseFlags(const FlagSet& flags, int argc, char** argv,
                              absl::string_view command, const char* usage);

// "a,b,c" (empty entries skipped) as budgets or page sizes in [1, 65536].
// InvalidArgument naming the entry that is not one, or for an empty list.
[[nodiscard]] absl::StatusOr<std::vector<Budget>> ParseBudgets(absl::string_view list);
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> ParsePageSizes(absl::string_view list);

// Writes `contents` to `path`; Unavailable naming the path if that fails.
[[nodiscard]] absl::Status WriteFile(const std::string& path, const std::string& contents);

// Runs tools/<script> CSV PNG. The CSV is `csv_path` when the caller wrote one
// there, else `csv` written next to the plot.
[[nodiscard]] absl::Status Plot(const char* script, const std::string& csv_path,
                                const std::string& csv, const std::string& plot_path);

// From now on Ctrl-C (SIGINT) sets the flag returned instead of ending the
// process, so that a sweep can stop between configurations.
const std::atomic<bool>* StopOnInterrupt();

}  // namespace headpage

#endif  // HEADPAGE_SIM_CLI_COMMAND_H_
