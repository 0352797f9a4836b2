// Token embedding: out[n, :] = wte[tokens[n], :], wte [V, D] (HF "embed_tokens").
// The backward scatters rows of dout back into dwte; repeated tokens add up.
#pragma once
#include <cstdint>

#include "core/params.h"

namespace hysim {

struct EmbeddingConfig {
  int64_t vocab_size = 256;
  int64_t d_model = 64;
  double init_std = 0.02;
};

template <class T> struct EmbeddingParams {
  T* embed_tokens = nullptr;  // [V, D]
};

// No weight decay on the embedding (as in the model's parameter list).
template <class T, class V> void visit_params(const EmbeddingConfig& c, EmbeddingParams<T>& p, V&& v) {
  v(p.embed_tokens, ParamSpec{"embed_tokens", {c.vocab_size, c.d_model}, Init::normal(c.init_std), false});
}

// out: [N, D]. Throws std::out_of_range naming the first token outside [0, V) and its position.
template <class T> void embedding_forward(T* out, const int32_t* tokens, const T* wte, int64_t N, int64_t D, int64_t V);

// dwte[tokens[n], :] += dout[n, :]. Tokens must be those of the forward (not re-checked
// against V). Summation order is fixed (n ascending for every entry), so the result
// does not depend on the number of threads.
template <class T> void embedding_backward(T* dwte, const T* dout, const int32_t* tokens, int64_t N, int64_t D);

}  // namespace hysim
