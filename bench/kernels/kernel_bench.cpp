// kernel_bench.cpp — specee's kernels (Q4_K, Q6_K, Q8_0, Q5_0, Q4_1) against ggml's, per column
// count: GB/s of weights read and time per column, beside a measured read
// bandwidth; and the checks that make the figures mean something (the fast
// kernel equals its reference bit for bit, a batched column equals the
// one-column call, and both agree with ggml's dot product).
//
// usage: specee-kernel-bench TYPE ROWS COLS [threads=1] [max_columns=8] [seconds=1]
//   TYPE q4_k | q6_k | q8_0 | q5_0 | q4_1 | bandwidth (then ROWS is the buffer size in MiB)
//        specee-kernel-bench step TYPE LAYERS N_EMBD N_QKV N_FF OUT_TYPE N_VOCAB [threads=2] [seconds=2]
//   the products of one decode step and nothing else (see step_stream)
// Output: one JSON object a line (bench/kernels.py runs it and tabulates).
#include "kernels/kernels.h"

#include "ggml-cpu.h"
#include "ggml.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <immintrin.h>
#include <random>
#include <string>
#include <thread>
#include <vector>
#include <new>
#include <utility>
#include <sys/mman.h>

using namespace specee::kernels;

// While `arena_next` is set, every allocation of this program comes from one
// mapping, in order (64-byte aligned), so that step_stream can place matrices
// one after another in memory; deletes of blocks in any such mapping (up to
// 8, never unmapped) do nothing.
static char * arena_begin = nullptr;
static char * arena_next  = nullptr;
static char * arena_end   = nullptr;
static std::pair<char *, char *> arenas[8];
static int n_arenas = 0;

void * operator new(size_t n) {
    if (arena_next != nullptr && arena_next + n <= arena_end) {
        void * p   = arena_next;
        arena_next += (n + 63) & ~size_t(63);
        return p;
    }
    if (void * p = malloc(n)) return p;
    throw std::bad_alloc();
}
void operator delete(void * p) noexcept {
    for (int i = 0; i < n_arenas; ++i) {
        if (p >= (void *) arenas[i].first && p < (void *) arenas[i].second) return;
    }
    free(p);
}
void operator delete(void * p, size_t) noexcept { operator delete(p); }

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs fn(thread, n_threads) on n threads and returns the wall time.
static double parallel(int n, const std::function<void(int, int)> & fn) {
    const double             t0 = now_s();
    std::vector<std::thread> ts;
    for (int i = 1; i < n; ++i) {
        ts.emplace_back(fn, i, n);
    }
    fn(0, n);
    for (auto & t : ts) {
        t.join();
    }
    return now_s() - t0;
}

// Best time of repeated runs within `seconds` (at least 3 runs).
static double best_of(double seconds, const std::function<double()> & run) {
    double best = 1e30, spent = 0;
    for (int i = 0; i < 3 || spent < seconds; ++i) {
        const double t = run();
        best           = std::min(best, t);
        spent += t;
    }
    return best;
}

// Sums 64-bit words with 4 independent AVX2 accumulators: a read loop that the
// memory, not the core, holds back.
__attribute__((target("avx2"))) static uint64_t sum_words(const uint64_t * p, size_t n) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    size_t  k  = 0;
    for (; k + 16 <= n; k += 16) {
        s0 = _mm256_add_epi64(s0, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + k)));
        s1 = _mm256_add_epi64(s1, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + k + 4)));
        s2 = _mm256_add_epi64(s2, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + k + 8)));
        s3 = _mm256_add_epi64(s3, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + k + 12)));
    }
    alignas(32) uint64_t out[4];
    _mm256_store_si256(reinterpret_cast<__m256i *>(out),
                       _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
    return out[0] + out[1] + out[2] + out[3];
}

static void bandwidth(int64_t mib, int threads, double seconds) {
    const size_t          n = (size_t) mib << 20 >> 3;
    std::vector<uint64_t> buf(n, 1);
    std::atomic<uint64_t> sink{0};
    const double t = best_of(seconds, [&] {
        return parallel(threads, [&](int i, int nt) {
            const size_t b = n * i / nt, e = n * (i + 1) / nt;
            sink += sum_words(buf.data() + b, e - b);
        });
    });
    printf("{\"kind\": \"bandwidth\", \"mib\": %lld, \"threads\": %d, \"gb_s\": %.2f}\n", (long long) mib, threads,
           n * 8 / t / 1e9);
}

// A type name of the command line, or nullptr.
struct type_pair { const char * name; ggml_type gt; weight_type wt; };
static const type_pair * find_type(const std::string & name) {
    static const type_pair types[] = {{"q4_k", GGML_TYPE_Q4_K, weight_type::q4_k}, {"q6_k", GGML_TYPE_Q6_K, weight_type::q6_k},
                                      {"q8_0", GGML_TYPE_Q8_0, weight_type::q8_0}, {"q5_0", GGML_TYPE_Q5_0, weight_type::q5_0},
                                      {"q4_1", GGML_TYPE_Q4_1, weight_type::q4_1}};
    const type_pair * tp = std::find_if(std::begin(types), std::end(types), [&](const type_pair & t) { return name == t.name; });
    return tp == std::end(types) ? nullptr : tp;
}

// Rows x cols of random normal weights quantized by ggml to `type`.
static std::vector<uint8_t> random_weights(ggml_type type, int64_t rows, int64_t cols, std::mt19937 & rng) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const size_t         row_bytes = ggml_row_size(type, cols);
    std::vector<uint8_t> wq(row_bytes * rows);
    std::vector<float>   wf((size_t) cols * 256);
    for (int64_t r0 = 0; r0 < rows; r0 += 256) {
        const int64_t nr = std::min<int64_t>(256, rows - r0);
        for (auto & v : wf) v = nd(rng) * 0.02f;
        ggml_quantize_chunk(type, wf.data(), wq.data() + r0 * row_bytes, 0, nr, cols, nullptr);
    }
    return wq;
}

// A packed matrix of rows x cols of `t`, random weights.
static packed_matrix random_packed(const type_pair & t, int64_t rows, int64_t cols, std::mt19937 & rng) {
    const std::vector<uint8_t> wq = random_weights(t.gt, rows, cols, rng);
    packed_matrix pm;
    std::string   why;
    if (!repack(t.wt, wq.data(), rows, cols, pm, &why)) {
        fprintf(stderr, "repack: %s\n", why.c_str());
        exit(1);
    }
    return pm;
}

// The products of one decode step of a llama-shaped model, in its order
// (per layer Q/K/V as one node, the attention output, gate/up as one node,
// down; then the output matrix), each split by row groups over the threads
// of a persistent pool, with a spin barrier after each node as ggml has, and
// nothing else: no norms, attention or quantization. What a step's products
// cost when nothing else runs: the floor that the model's graph compares to.
// Each thread asks for the first 64 KB of its rows of the next node before
// the barrier, as packed_product does. Four placements of the weights, each
// run twice in the order A B C D D C B A (these hosts drift):
//   per node              one allocation per matrix, as the library has them
//   node-major            the matrices one after another in one mapping
//   node-major, 2 MB      the same in transparent huge pages (madvise)
//   thread-major, 2 MB    each thread's rows of every node one after another,
//                         one thread's whole step after the other's, so that
//                         a thread's weights are one stream; huge pages
struct step_layout {
    const char *                            name;
    std::vector<std::vector<packed_matrix>> rows;  // [node][thread]: that thread's rows (empty: per node)
};

// Thread t's share of w (row groups split as the library splits them).
static packed_matrix share_of(const packed_matrix & w, int t, int nt) {
    const int64_t groups = w.n_rows / ROW_GROUP, g0 = groups * t / nt, g1 = groups * (t + 1) / nt;
    const size_t  gb     = w.data.size() / size_t(groups);
    packed_matrix m;
    m.type   = w.type;
    m.n_rows = (g1 - g0) * ROW_GROUP;
    m.n_cols = w.n_cols;
    m.data.assign(w.data.begin() + g0 * gb, w.data.begin() + g1 * gb);
    return m;
}

// Every node's shares copied into one fresh mapping (in 2 MB pages when
// `huge`), node by node or thread by thread. The mapping is never unmapped.
static std::vector<std::vector<packed_matrix>> placed(const std::vector<packed_matrix> & nodes, int nt,
                                                      bool thread_by_thread, bool huge) {
    std::vector<std::vector<packed_matrix>> out(nodes.size(), std::vector<packed_matrix>(nt));
    size_t total = 0;
    for (size_t i = 0; i < nodes.size(); ++i) {
        for (int t = 0; t < nt; ++t) {
            out[i][t] = share_of(nodes[i], t, nt);
            total += out[i][t].data.size() + 64;
        }
    }
    const size_t page = size_t(2) << 20, len = (total + 2 * page) & ~(page - 1);
    char * m = static_cast<char *>(mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (m == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    char * a = reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(m) + page - 1) & ~uintptr_t(page - 1));
    if (huge && madvise(a, len - page, MADV_HUGEPAGE) != 0) {
        perror("madvise(MADV_HUGEPAGE)");
    }
    arena_begin = arena_next = a;
    arena_end   = a + len - page;
    if (n_arenas == 8) {
        fprintf(stderr, "step: too many arenas\n");
        exit(1);
    }
    arenas[n_arenas++] = {arena_begin, arena_end};
    for (int x = 0; x < (thread_by_thread ? nt : int(nodes.size())); ++x) {
        for (int y = 0; y < (thread_by_thread ? int(nodes.size()) : nt); ++y) {
            packed_matrix &      w = thread_by_thread ? out[y][x] : out[x][y];
            std::vector<uint8_t> copy(w.data);  // allocated here, right after the previous share
            w.data.swap(copy);                  // (the old block is freed outside the arena)
        }
    }
    arena_next = nullptr;
    return out;
}

static void step_stream(const type_pair & t, int layers, int64_t embd, int64_t qkv, int64_t ff, const type_pair & out_t,
                        int64_t vocab, int threads, double seconds) {
    std::mt19937 rng(7);
    std::vector<packed_matrix> nodes;
    for (int l = 0; l < layers; ++l) {
        nodes.push_back(random_packed(t, qkv, embd, rng));
        nodes.push_back(random_packed(t, embd, embd, rng));
        nodes.push_back(random_packed(t, 2 * ff, embd, rng));
        nodes.push_back(random_packed(t, embd, ff, rng));
    }
    nodes.push_back(random_packed(out_t, vocab, embd, rng));
    double bytes = 0;
    for (const packed_matrix & w : nodes) bytes += double(w.data.size());
    if (takes_q8_k(t.wt) != takes_q8_k(out_t.wt)) {
        fprintf(stderr, "step: %s and %s take different activation types\n", t.name, out_t.name);
        exit(2);
    }
    // activations: one column, as wide as the widest input
    const ggml_type at = takes_q8_k(t.wt) ? GGML_TYPE_Q8_K : GGML_TYPE_Q8_0;
    const int64_t   max_k = std::max(embd, ff);
    std::vector<uint8_t> xa(ggml_row_size(at, max_k));
    {
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float>              xf(max_k);
        for (auto & v : xf) v = nd(rng);
        ggml_get_type_traits_cpu(at)->from_float(xf.data(), xa.data(), max_k);
    }
    std::vector<float> y(size_t(std::max(vocab, 2 * ff)));
    const isa fast = best_isa();

    std::vector<step_layout> layouts = {{"per node", {}},
                                        {"node-major", placed(nodes, threads, false, false)},
                                        {"node-major, 2 MB pages", placed(nodes, threads, false, true)},
                                        {"thread-major, 2 MB pages", placed(nodes, threads, true, true)}};

    std::vector<std::vector<double>> steps(layouts.size());
    for (int v : {0, 1, 2, 3, 3, 2, 1, 0}) {
        std::atomic<int>  arrived{0}, generation{0};
        std::atomic<bool> stop{false};
        auto barrier = [&](int nt) {
            const int gen = generation.load(std::memory_order_relaxed);
            if (arrived.fetch_add(1, std::memory_order_acq_rel) == nt - 1) {
                arrived.store(0, std::memory_order_relaxed);
                generation.fetch_add(1, std::memory_order_acq_rel);
            } else {
                while (generation.load(std::memory_order_acquire) == gen) _mm_pause();
            }
        };
        // thread ith's rows of node i: a pointer to its first group and how many rows
        auto rows_of = [&](size_t i, int ith, int nt, const packed_matrix *& w, int64_t & r0, int64_t & r1) {
            if (!layouts[size_t(v)].rows.empty()) {
                w  = &layouts[size_t(v)].rows[i][ith];
                r0 = 0, r1 = w->n_rows;
                return;
            }
            w = &nodes[i];
            const int64_t groups = w->n_rows / ROW_GROUP;
            r0 = groups * ith / nt * ROW_GROUP, r1 = groups * (ith + 1) / nt * ROW_GROUP;
        };
        std::vector<double> run;
        auto work = [&](int ith, int nt) {
            for (;;) {
                const double t0 = now_s();
                for (size_t i = 0; i < nodes.size(); ++i) {
                    const packed_matrix * w;
                    int64_t r0, r1;
                    rows_of(i, ith, nt, w, r0, r1);
                    mul_mat(fast, *w, xa.data(), 1, y.data(), w->n_rows, r0, r1);
                    if (i + 1 < nodes.size()) {
                        rows_of(i + 1, ith, nt, w, r0, r1);
                        const size_t gb = w->data.size() / size_t(w->n_rows / ROW_GROUP);
                        const char * p  = reinterpret_cast<const char *>(w->data.data()) + size_t(r0 / ROW_GROUP) * gb;
                        const size_t n  = std::min<size_t>(65536, size_t((r1 - r0) / ROW_GROUP) * gb);
                        for (size_t off = 0; off < n; off += 64) __builtin_prefetch(p + off, 0, 2);
                    }
                    barrier(nt);
                }
                if (ith == 0) {
                    run.push_back(now_s() - t0);
                    double spent = 0;
                    for (double x : run) spent += x;
                    stop.store(spent > seconds / 2, std::memory_order_relaxed);
                }
                barrier(nt);
                if (stop.load(std::memory_order_relaxed)) return;
            }
        };
        parallel(threads, work);
        steps[v].insert(steps[v].end(), run.begin(), run.end());
    }
    for (size_t v = 0; v < layouts.size(); ++v) {
        std::vector<double> sorted = steps[v];
        std::sort(sorted.begin(), sorted.end());
        double mean = 0;
        for (double x : sorted) mean += x;
        mean /= double(sorted.size());
        printf("{\"kind\": \"step\", \"type\": \"%s\", \"out_type\": \"%s\", \"layers\": %d, \"nodes\": %zu, "
               "\"mb\": %.1f, \"threads\": %d, \"layout\": \"%s\", \"steps\": %zu, \"mean_ms\": %.3f, "
               "\"median_ms\": %.3f, \"best_ms\": %.3f, \"mean_gb_s\": %.2f}\n",
               t.name, out_t.name, layers, nodes.size(), bytes / 1e6, threads, layouts[v].name, sorted.size(),
               mean * 1e3, sorted[sorted.size() / 2] * 1e3, sorted[0] * 1e3, bytes / mean / 1e9);
        fflush(stdout);
    }
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s q4_k|q6_k|bandwidth ROWS COLS [threads] [max_columns] [seconds]\n", argv[0]);
        return 2;
    }
    const std::string kind    = argv[1];
    const int64_t     rows    = atoll(argv[2]);
    const int64_t     cols    = atoll(argv[3]);
    const int         threads = argc > 4 ? atoi(argv[4]) : 1;
    const int         max_n   = argc > 5 ? atoi(argv[5]) : 8;
    const double      seconds = argc > 6 ? atof(argv[6]) : 1.0;
    if (kind == "bandwidth") {
        bandwidth(rows, threads, seconds);
        return 0;
    }
    if (kind == "step") {
        const type_pair * t = find_type(argv[2]);
        const type_pair * o = argc > 7 ? find_type(argv[7]) : nullptr;
        if (argc < 9 || t == nullptr || o == nullptr) {
            fprintf(stderr, "usage: %s step TYPE LAYERS N_EMBD N_QKV N_FF OUT_TYPE N_VOCAB [threads] [seconds]\n", argv[0]);
            return 2;
        }
        ggml_cpu_init();
        step_stream(*t, atoi(argv[3]), atoll(argv[4]), atoll(argv[5]), atoll(argv[6]), *o, atoll(argv[8]),
                    argc > 9 ? atoi(argv[9]) : 2, argc > 10 ? atof(argv[10]) : 2.0);
        return 0;
    }
    const type_pair * tp = find_type(kind);
    if (tp == nullptr) {
        fprintf(stderr, "unknown type %s\n", kind.c_str());
        return 1;
    }
    const ggml_type   gt = tp->gt;
    const weight_type wt = tp->wt;
    ggml_cpu_init();

    // weights: random normal rows quantized by ggml
    std::mt19937       rng(1234);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const size_t       row_bytes = ggml_row_size(gt, cols);
    const std::vector<uint8_t> wq = random_weights(gt, rows, cols, rng);
    // activations: max_n columns quantized by ggml's CPU quantizer to the
    // type ggml pairs with the weights (Q8_K for the k-quants, else Q8_0)
    const ggml_type    at     = takes_q8_k(wt) ? GGML_TYPE_Q8_K : GGML_TYPE_Q8_0;
    const auto *       q8     = ggml_get_type_traits_cpu(at);
    const auto *       tr     = ggml_get_type_traits_cpu(gt);
    const size_t       x_row  = ggml_row_size(at, cols);  // bytes of one column
    std::vector<uint8_t> x((size_t) max_n * x_row);
    {
        std::vector<float> xf(cols);
        for (int c = 0; c < max_n; ++c) {
            for (auto & v : xf) v = nd(rng);
            q8->from_float(xf.data(), &x[(size_t) c * x_row], cols);
        }
    }
    packed_matrix pm;
    std::string   why;
    const double  t_repack0 = now_s();
    if (!repack(wt, wq.data(), rows, cols, pm, &why)) {
        fprintf(stderr, "repack: %s\n", why.c_str());
        return 1;
    }
    const double t_repack = now_s() - t_repack0;
    const isa    fast     = best_isa();

    // checks, on the first 256 rows: fast == reference, batched == one column, ~ ggml
    const int64_t      cr = std::min<int64_t>(rows, 256);
    std::vector<float> y_ref((size_t) max_n * rows), y_fast((size_t) max_n * rows), y_one(rows);
    mul_mat(isa::reference, pm, x.data(), max_n, y_ref.data(), rows, 0, cr);
    mul_mat(fast, pm, x.data(), max_n, y_fast.data(), rows, 0, cr);
    bool   same_ref = true, same_batched = true;
    double max_rel  = 0;
    for (int c = 0; c < max_n; ++c) {
        mul_mat(fast, pm, &x[(size_t) c * x_row], 1, y_one.data(), rows, 0, cr);
        for (int64_t r = 0; r < cr; ++r) {
            const float f = y_fast[(size_t) c * rows + r];
            same_ref &= std::memcmp(&f, &y_ref[(size_t) c * rows + r], sizeof f) == 0;
            same_batched &= std::memcmp(&f, &y_one[r], sizeof f) == 0;
            float g;
            tr->vec_dot(cols, &g, 0, wq.data() + r * row_bytes, 0, &x[(size_t) c * x_row], 0, 1);
            max_rel = std::max(max_rel, (double) std::fabs(f - g) / (std::fabs(g) + 1e-3));
        }
    }
    printf("{\"kind\": \"check\", \"type\": \"%s\", \"isa\": \"%s\", \"fast_equals_reference\": %s, "
           "\"batched_equals_one_column\": %s, \"max_rel_diff_vs_ggml\": %.3g, \"repack_s\": %.3f}\n",
           kind.c_str(), isa_name(fast), same_ref ? "true" : "false", same_batched ? "true" : "false", max_rel,
           t_repack);

    const double gbytes = (double) row_bytes * rows / 1e9;  // ggml's bytes: what a pass must read
    for (int n = 1; n <= max_n; n = n < 2 ? 2 : n * 2) {
        // ggml: one vec_dot per (row, column), rows split across threads (its plain path)
        const double t_ggml = best_of(seconds, [&] {
            return parallel(threads, [&](int i, int nt) {
                const int64_t r0 = rows * i / nt, r1 = rows * (i + 1) / nt;
                for (int64_t r = r0; r < r1; ++r) {
                    for (int c = 0; c < n; ++c) {
                        tr->vec_dot(cols, &y_one[r], 0, wq.data() + r * row_bytes, 0, &x[(size_t) c * x_row], 0, 1);
                    }
                }
            });
        });
        const double t_ours = best_of(seconds, [&] {
            return parallel(threads, [&](int i, int nt) {
                const int64_t groups = rows / ROW_GROUP;
                const int64_t g0 = groups * i / nt, g1 = groups * (i + 1) / nt;
                mul_mat(fast, pm, x.data(), n, y_fast.data(), rows, g0 * ROW_GROUP, g1 * ROW_GROUP);
            });
        });
        printf("{\"kind\": \"mul_mat\", \"type\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"columns\": %d, "
               "\"threads\": %d, \"ggml_ms\": %.3f, \"specee_ms\": %.3f, \"ggml_gb_s\": %.2f, \"specee_gb_s\": %.2f, "
               "\"speedup\": %.3f}\n",
               kind.c_str(), (long long) rows, (long long) cols, n, threads, t_ggml * 1e3, t_ours * 1e3,
               gbytes / t_ggml, gbytes / t_ours, t_ggml / t_ours);
        fflush(stdout);
    }
    return 0;
}
