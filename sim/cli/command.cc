// SPDX-License-Identifier: Apache-2.0
#include "sim/cli/command.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/status.h"

namespace headpage {
namespace {

std::atomic<bool> interrupted{false};
extern "C" void OnInterrupt(int) { interrupted = true; }

}  // namespace

int Fail(absl::string_view command, const absl::Status& status) {
  std::fflush(stdout);
  std::fprintf(stderr, "headpage %s: %s\n", std::string(command).c_str(),
               status.ToString().c_str());
  return 1;
}

int UsageError(absl::string_view command, absl::string_view message, const char* usage) {
  std::fprintf(stderr, "headpage %s: %s\n\n%s", std::string(command).c_str(),
               std::string(message).c_str(), usage);
  return 2;
}

std::optional<int> ParseFlags(const FlagSet& flags, int argc, char** argv,
                              absl::string_view command, const char* usage) {
  const absl::StatusOr<FlagSet::Outcome> outcome = flags.Parse(argc, argv);
  if (!outcome.ok()) return UsageError(command, outcome.status().message(), usage);
  if (*outcome == FlagSet::Outcome::kHelp) {
    std::fputs(usage, stdout);
    return 0;
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<Budget>> ParseBudgets(absl::string_view list) {
  std::vector<Budget> out;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    absl::StatusOr<Budget> b = Budget::Parse(part);
    if (!b.ok()) return b.status();
    out.push_back(*b);
  }
  if (out.empty()) return absl::InvalidArgumentError("no budget given");
  return out;
}

absl::StatusOr<std::vector<int32_t>> ParsePageSizes(absl::string_view list) {
  std::vector<int32_t> out;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int32_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 1 || v > (1 << 16)) {
      return absl::InvalidArgumentError(
          absl::StrCat("page size '", part, "' is not in [1, 65536]"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError("no page size given");
  return out;
}

absl::Status WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path);
  out << contents;
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status Plot(const char* script, const std::string& csv_path, const std::string& csv,
                  const std::string& plot_path) {
  std::string path = csv_path;
  if (path.empty()) {
    path = plot_path + ".csv";
    HEADPAGE_RETURN_IF_ERROR(WriteFile(path, csv));
  }
  // The plotting scripts need matplotlib: the repository's .venv has it when
  // scripts/demo made one (HEADPAGE_PYTHON); otherwise whatever python3 is on PATH.
  const char* python = std::getenv("HEADPAGE_PYTHON");
  const std::string cmd = absl::StrCat(python != nullptr ? python : "python3", " \"",
                                       HEADPAGE_SOURCE_DIR, "/tools/", script, "\" \"", path,
                                       "\" \"", plot_path, "\"");
  if (std::system(cmd.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("plotting failed: ", cmd));
  }
  std::printf("wrote %s\n", plot_path.c_str());
  return absl::OkStatus();
}

const std::atomic<bool>* StopOnInterrupt() {
  std::signal(SIGINT, OnInterrupt);
  return &interrupted;
}

}  // namespace headpage
