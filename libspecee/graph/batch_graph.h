// batch_graph.h — one forward pass over one new token from each of several
// sequences, each with its own KV cache (continuous batching): the matrix
// products run once over all of them, attention per sequence.
#pragma once

#include "graph/graph.h"

#include <vector>

namespace specee {

struct batch_graph {
    ggml_cgraph * gf        = nullptr;
    ggml_tensor * tokens    = nullptr;  // [n] I32
    ggml_tensor * positions = nullptr;  // [n] I32
    using sequence = attention_inputs;  // one per sequence: [1] row each
    std::vector<sequence> seqs;
    ggml_tensor * logits = nullptr;     // [n_vocab, n]
    ggml_tensor * hidden = nullptr;     // [n_embd, n] after the final norm, when asked for
};

// plans[s]: sequence s's token at plans[s].pos over cells [0, plans[s].n_kv)
// of *kvs[s], every layer.
batch_graph build_batch_forward(ggml_context * ctx0, const model & m, const std::vector<const kv_cache *> & kvs,
                                const std::vector<forward_plan> & plans, bool want_hidden, int graph_size);

// Nodes a batch graph of n sequences may need.
int batch_graph_size(const model & m, int n);

} // namespace specee
