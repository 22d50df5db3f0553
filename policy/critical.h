// SPDX-License-Identifier: Apache-2.0
// File: policy/critical.h
//
// CriticalKV (Feng et al., arXiv 2502.03805): a token's attention weight alone
// does not say how much evicting it perturbs the layer's output; what reaches
// the residual stream is A_i v_i W_o^h, so the token's value pushed through
// the head's slice of the output projection matters as much. CriticalKV bounds
// the L1 perturbation of the projected output and selects in two stages:
// first the tokens that secure attention mass (by attention score alone), then
// by attention x ||v_i W_o^h||_1.
//
// Released code: kvpress's CriticalKVPress and CriticalAdaKVPress
// (kvpress/presses/criticalkv_press.py in kvpress 0.5.5: vwl1norm at lines
// 58-77, CriticalKVPress.score at 79-97, CriticalAdaKVPress.compress at
// 100-201; the same code as the authors' FFY0/AdaKV-in-NVIDIA-kvpress,
// branch criticalkv). Their defaults: first_stage_ratio 0.5, epsilon 1e-4.
#ifndef HEADPAGE_POLICY_CRITICAL_H_
#define HEADPAGE_POLICY_CRITICAL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "policy/stream_scores.h"
#include "policy/types.h"

namespace headpage::policy {

// The projected value norm of every token of KV head `kv_head`'s stream:
//   norms[i] = (1 / G) sum_{g < G} || v_i W_o^{kv_head * G + g} ||_1,
// W_o^h the head's [head_dim x hidden] slice (OutputProjection), G =
// num_q_heads / num_kv_heads: kvpress's vwl1norm, the L1 norm over the hidden
// dimensions, averaged over the query heads of the GQA group. Computed in
// float, each output element summed over head_dim in order. Costs num_tokens
// x G x head_dim x hidden multiply-adds.
// InvalidArgument (writing nothing): a null array with a non-zero size,
// head_dim or hidden_size < 1, values and projection of different head_dim,
// num_q_heads not a multiple of num_kv_heads, kv_head outside
// [0, num_kv_heads), an unknown dtype, a norms span of the wrong size.
[[nodiscard]] absl::Status ProjectedValueNorms(const StreamValues& values,
                                               const OutputProjection& projection,
                                               int32_t num_kv_heads, int32_t kv_head,
                                               absl::Span<float> norms);

struct CriticalOptions {
  double first_stage = 0.5;  // kvpress's first_stage_ratio: the share of kept chosen by attention
  // Added to the attention score before the product. kvpress's scores are
  // SnapKV's mean over the window's rows; headpage's are their sum, so a caller
  // passes epsilon x rows to rank as kvpress does.
  float epsilon = 1e-4f;
};

// CriticalKV's two-stage selection for one stream that keeps `kept` tokens
// (its protected ones included): writes the scores whose top `kept`
// (SelectKeepSet) is the stream's keep set. Stage 1 takes the
// floor(kept * first_stage) highest of the attention scores, the protected
// tokens counting among them (kvpress pads the observation window with the
// highest score, so it is taken first); they score FLT_MAX (kvpress's
// finfo.max). Every other token scores (score + epsilon) * value_norms[j].
// kvpress 0.5.5 takes at least one token in stage 1 when first_stage > 0; the
// released code (and this) floor to zero.
// InvalidArgument for a bad stream (SelectKeepSet's checks), kept outside
// [NumProtected, num_tokens], first_stage outside [0, 1], a negative, NaN or
// infinite norm, spans of the wrong size.
// `secured` (protected tokens included) is a floor on stage 1: CriticalAdaKV's
// safeguard (kvpress writes finfo.max into each head's top int(alpha *
// capacity) attention scores before both stages, so they are taken first and
// stay first), making stage 1 the top max(secured, floor(kept * first_stage)).
[[nodiscard]] absl::Status CriticalScores(const StreamScores& stream,
                                          absl::Span<const float> value_norms, int32_t kept,
                                          const CriticalOptions& options, absl::Span<float> out,
                                          int32_t secured = 0);

}  // namespace headpage::policy

#endif  // HEADPAGE_POLICY_CRITICAL_H_
