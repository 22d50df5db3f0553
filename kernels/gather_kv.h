// SPDX-License-Identifier: Apache-2.0
// File: kernels/gather_kv.h
//
// GatherKV: see gather_kv_args.h.
#ifndef HEADPAGE_KERNELS_GATHER_KV_H_
#define HEADPAGE_KERNELS_GATHER_KV_H_

#include "absl/status/status.h"
#include "kernels/gather_kv_args.h"

namespace headpage {

[[nodiscard]] absl::Status Validate(const GatherKVArgs& args);

namespace ref {
// CPU reference. Also checks (host pointers) that every row's block table is
// long enough for its length and its page ids are inside the cache.
[[nodiscard]] absl::Status GatherKV(const GatherKVArgs& args);
}  // namespace ref

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_GATHER_KV_H_
