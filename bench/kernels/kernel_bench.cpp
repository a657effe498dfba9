// kernel_bench.cpp — specee's kernels (Q4_K, Q6_K, Q8_0, Q5_0, Q4_1) against ggml's, per column
// count: GB/s of weights read and time per column, beside a measured read
// bandwidth; and the checks that make the figures mean something (the fast
// kernel equals its reference bit for bit, a batched column equals the
// one-column call, and both agree with ggml's dot product).
//
// usage: specee-kernel-bench TYPE ROWS COLS [threads=1] [max_columns=8] [seconds=1]
//   TYPE q4_k | q6_k | q8_0 | q5_0 | q4_1 | bandwidth (then ROWS is the buffer size in MiB)
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

using namespace specee::kernels;

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
    struct type_pair { const char * name; ggml_type gt; weight_type wt; };
    const type_pair types[] = {{"q4_k", GGML_TYPE_Q4_K, weight_type::q4_k}, {"q6_k", GGML_TYPE_Q6_K, weight_type::q6_k},
                               {"q8_0", GGML_TYPE_Q8_0, weight_type::q8_0}, {"q5_0", GGML_TYPE_Q5_0, weight_type::q5_0},
                               {"q4_1", GGML_TYPE_Q4_1, weight_type::q4_1}};
    const type_pair * tp = std::find_if(std::begin(types), std::end(types), [&](const type_pair & t) { return kind == t.name; });
    if (tp == std::end(types)) {
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
    std::vector<uint8_t> wq(row_bytes * rows);
    {
        std::vector<float> wf((size_t) cols * 256);
        for (int64_t r0 = 0; r0 < rows; r0 += 256) {
            const int64_t nr = std::min<int64_t>(256, rows - r0);
            for (auto & v : wf) v = nd(rng) * 0.02f;
            ggml_quantize_chunk(gt, wf.data(), wq.data() + r0 * row_bytes, 0, nr, cols, nullptr);
        }
    }
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
