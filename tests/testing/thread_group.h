// SPDX-License-Identifier: Apache-2.0
// File: tests/testing/thread_group.h
//
// A policy::Collective whose members are threads of one process: each
// AllReduceSum waits until every member has brought its array, then hands all
// of them the sums, as a torch.distributed group does across processes. It
// lets the group allocators (policy/collective.h) and the engine's group mode
// be tested against one process holding every stream, without a network.
#ifndef HEADPAGE_TESTS_TESTING_THREAD_GROUP_H_
#define HEADPAGE_TESTS_TESTING_THREAD_GROUP_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "policy/collective.h"

namespace headpage::testing {

class ThreadGroup {
 public:
  explicit ThreadGroup(int32_t size) {
    for (int32_t r = 0; r < size; ++r) members_.push_back(std::make_unique<Member>(this, r));
  }
  policy::Collective& member(int32_t rank) { return *members_[rank]; }
  int32_t size() const { return static_cast<int32_t>(members_.size()); }
  // All-reduces run so far (every member's count is the same once they return).
  int64_t rounds() const {
    std::lock_guard<std::mutex> lock(mu_);
    return generation_;
  }

  // Runs body(rank) on one thread per member and waits for them all.
  void Run(const std::function<void(int32_t)>& body) {
    std::vector<std::thread> threads;
    for (int32_t r = 0; r < size(); ++r) threads.emplace_back(body, r);
    for (auto& t : threads) t.join();
  }

 private:
  class Member : public policy::Collective {
   public:
    Member(ThreadGroup* group, int32_t rank) : group_(group), rank_(rank) {}
    int32_t rank() const override { return rank_; }
    int32_t size() const override { return group_->size(); }
    absl::Status AllReduceSum(absl::Span<int64_t> values) override {
      return group_->AllReduce(values);
    }

   private:
    ThreadGroup* group_;
    int32_t rank_;
  };

  absl::Status AllReduce(absl::Span<int64_t> values) {
    std::unique_lock<std::mutex> lock(mu_);
    if (arrived_ == 0) {
      sum_.assign(values.size(), 0);
      mismatch_ = false;
    }
    if (values.size() != sum_.size()) mismatch_ = true;
    for (size_t i = 0; i < values.size() && i < sum_.size(); ++i) sum_[i] += values[i];
    const int64_t round = generation_;
    if (++arrived_ == size()) {
      result_ = sum_;
      result_mismatch_ = mismatch_;
      arrived_ = 0;
      ++generation_;
      done_.notify_all();
    } else if (!done_.wait_for(lock, std::chrono::seconds(60),
                               [&] { return generation_ != round; })) {
      // A member that never comes: the protocol bug the tests look for, reported
      // instead of hanging the test (the group is unusable afterwards).
      return absl::DeadlineExceededError(
          absl::StrCat("ThreadGroup: round ", round, " waited 60 s for a member"));
    }
    // Members that brought arrays of different sizes have called out of turn:
    // the protocol bug the tests look for.
    if (result_mismatch_) {
      return absl::InternalError(absl::StrCat("ThreadGroup: members all-reduced arrays of "
                                              "different sizes in round ", round));
    }
    for (size_t i = 0; i < values.size(); ++i) values[i] = result_[i];
    return absl::OkStatus();
  }

  std::vector<std::unique_ptr<Member>> members_;
  mutable std::mutex mu_;
  std::condition_variable done_;
  int32_t arrived_ = 0;
  int64_t generation_ = 0;
  std::vector<int64_t> sum_, result_;
  bool mismatch_ = false, result_mismatch_ = false;
};

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_TESTING_THREAD_GROUP_H_
