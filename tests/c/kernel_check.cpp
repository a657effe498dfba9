// kernel_check.cpp — drives libspecee/kernels/ without ggml for the tests:
// random Q4_K / Q6_K weights and Q8_K activations (any bytes are valid
// quants; the fp16 scales are drawn finite), repacked, multiplied by the
// reference kernel, by the CPU's fastest kernel for all columns at once,
// and by the fastest kernel one column at a time.
//
// usage: kernel_check TYPE ROWS COLS N_COLUMNS SEED OUT_DIR [isa]
// writes OUT_DIR/weights.bin (ggml blocks), x.bin (Q8_K blocks) and
// y_reference.f32, y_batched.f32, y_one.f32 ([N_COLUMNS, ROWS] each);
// prints the ISA of the fast kernel. isa: a kernel set to use instead of the
// CPU's best ("reference", "avx2", "avx512_vnni"); exit status 3 if the CPU lacks it.
#include "kernels/kernels.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace specee::kernels;

static bool write_file(const std::string & path, const void * data, size_t n) {
    FILE * f = fopen(path.c_str(), "wb");
    if (!f) return false;
    const bool ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

// a finite fp16 of magnitude about 2^-14 .. 2^-6 (exponent 1..9), either sign
static uint16_t small_fp16(std::mt19937 & rng) {
    return (uint16_t) ((rng() & 0x8000) | ((1 + rng() % 9) << 10) | (rng() & 0x3ff));
}

int main(int argc, char ** argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s q4_k|q6_k ROWS COLS N_COLUMNS SEED OUT_DIR [isa]\n", argv[0]);
        return 2;
    }
    const bool        q4   = std::string(argv[1]) == "q4_k";
    const int64_t     rows = atoll(argv[2]), cols = atoll(argv[3]);
    const int         n_x  = atoi(argv[4]);
    const std::string out  = argv[6];
    std::mt19937      rng((uint32_t) atoi(argv[5]));
    const int64_t     nb = cols / QK;

    std::vector<uint8_t> w(rows * nb * (q4 ? sizeof(block_q4_k) : sizeof(block_q6_k)));
    for (auto & b : w) b = (uint8_t) rng();
    for (int64_t i = 0; i < rows * nb; ++i) {
        if (q4) {
            auto * b = reinterpret_cast<block_q4_k *>(w.data()) + i;
            b->d     = small_fp16(rng);
            b->dmin  = small_fp16(rng);
        } else {
            reinterpret_cast<block_q6_k *>(w.data())[i].d = small_fp16(rng);
        }
    }
    std::vector<block_q8_k> x((size_t) n_x * nb);
    for (auto & b : x) {
        b.d = std::ldexp(1.0f + (float) (rng() % 1000) / 1000.0f, -7);
        for (int i = 0; i < QK; ++i) b.qs[i] = (int8_t) (int) (rng() % 255 - 127);
        for (int j = 0; j < QK / 16; ++j) {
            int s = 0;
            for (int i = 0; i < 16; ++i) s += b.qs[16 * j + i];
            b.bsums[j] = (int16_t) s;
        }
    }
    packed_matrix pm;
    std::string   why;
    if (!repack(q4 ? weight_type::q4_k : weight_type::q6_k, w.data(), rows, cols, pm, &why)) {
        fprintf(stderr, "repack: %s\n", why.c_str());
        return 1;
    }
    isa fast = best_isa();
    if (argc > 7) {
        bool found = false;
        for (isa i : {isa::reference, isa::avx2, isa::avx512_vnni}) {
            if (std::string(argv[7]) == isa_name(i)) {
                fast  = i;
                found = true;
            }
        }
        if (!found || !cpu_has(fast)) {
            fprintf(stderr, "this CPU cannot run kernel set %s\n", argv[7]);
            return 3;
        }
    }
    std::vector<float> y_ref((size_t) n_x * rows), y_batched((size_t) n_x * rows), y_one((size_t) n_x * rows);
    mul_mat(isa::reference, pm, x.data(), n_x, y_ref.data(), rows, 0, rows);
    mul_mat(fast, pm, x.data(), n_x, y_batched.data(), rows, 0, rows);
    for (int c = 0; c < n_x; ++c) {
        // rows in two halves, as two threads would split them
        mul_mat(fast, pm, &x[(size_t) c * nb], 1, &y_one[(size_t) c * rows], rows, 0, rows / 32 * 16);
        mul_mat(fast, pm, &x[(size_t) c * nb], 1, &y_one[(size_t) c * rows], rows, rows / 32 * 16, rows);
    }
    const bool ok = write_file(out + "/weights.bin", w.data(), w.size()) &&
                    write_file(out + "/x.bin", x.data(), x.size() * sizeof(block_q8_k)) &&
                    write_file(out + "/y_reference.f32", y_ref.data(), y_ref.size() * 4) &&
                    write_file(out + "/y_batched.f32", y_batched.data(), y_batched.size() * 4) &&
                    write_file(out + "/y_one.f32", y_one.data(), y_one.size() * 4);
    if (!ok) {
        fprintf(stderr, "could not write to %s\n", out.c_str());
        return 1;
    }
    printf("%s\n", isa_name(fast));
    return 0;
}
