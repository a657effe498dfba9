// kernel_check.cpp — drives libspecee/kernels/ without ggml for the tests:
// random weights of each type and their activations (any bytes are valid
// quants; the fp16 scales are drawn finite), repacked, multiplied by the
// reference kernel, by the CPU's fastest kernel for all columns at once,
// and by the fastest kernel one column at a time.
//
// usage: kernel_check TYPE ROWS COLS N_COLUMNS SEED OUT_DIR [isa]  (TYPE: q4_k q6_k q8_0 q5_0 q4_1)
// writes OUT_DIR/weights.bin (ggml blocks), x.bin (Q8_K or Q8_0 blocks) and
// y_reference.f32, y_batched.f32, y_one.f32 ([N_COLUMNS, ROWS] each);
// prints the ISA of the fast kernel. isa: a kernel set to use instead of the
// CPU's best ("reference", "avx2", "avx512_vnni"); exit status 3 if the CPU lacks it.
#include "kernels/kernels.h"

#include <cstddef>
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

static bool parse_type(const std::string & s, weight_type & t) {
    const std::pair<const char *, weight_type> names[] = {{"q4_k", weight_type::q4_k}, {"q6_k", weight_type::q6_k},
                                                          {"q8_0", weight_type::q8_0}, {"q5_0", weight_type::q5_0},
                                                          {"q4_1", weight_type::q4_1}};
    for (const auto & [name, type] : names) {
        if (s == name) {
            t = type;
            return true;
        }
    }
    return false;
}

int main(int argc, char ** argv) {
    weight_type type;
    if (argc < 7 || !parse_type(argv[1], type)) {
        fprintf(stderr, "usage: %s q4_k|q6_k|q8_0|q5_0|q4_1 ROWS COLS N_COLUMNS SEED OUT_DIR [isa]\n", argv[0]);
        return 2;
    }
    const int64_t     rows = atoll(argv[2]), cols = atoll(argv[3]);
    const int         n_x  = atoi(argv[4]);
    const std::string out  = argv[6];
    std::mt19937      rng((uint32_t) atoi(argv[5]));

    // weights: random bytes, with finite fp16 scales where each block keeps them
    const int64_t        n_blocks = cols / source_block_weights(type) * rows;
    const size_t         sb       = source_block_bytes(type);
    std::vector<uint8_t> w(n_blocks * sb);
    for (auto & b : w) b = (uint8_t) rng();
    for (int64_t i = 0; i < n_blocks; ++i) {
        uint8_t * blk = w.data() + i * sb;
        auto      put = [&](size_t offset) {
            const uint16_t h = small_fp16(rng);
            std::memcpy(blk + offset, &h, sizeof h);
        };
        switch (type) {
            case weight_type::q4_k: put(offsetof(block_q4_k, d)); put(offsetof(block_q4_k, dmin)); break;
            case weight_type::q6_k: put(offsetof(block_q6_k, d)); break;
            case weight_type::q4_1: put(offsetof(block_q4_1, d)); put(offsetof(block_q4_1, m)); break;
            default: put(0); break;  // Q8_0, Q5_0: d first
        }
    }
    // activations: Q8_K blocks for the k-quants, Q8_0 blocks for the others
    std::vector<uint8_t> x;
    if (takes_q8_k(type)) {
        std::vector<block_q8_k> xk((size_t) n_x * (cols / QK));
        for (auto & b : xk) {
            b.d = std::ldexp(1.0f + (float) (rng() % 1000) / 1000.0f, -7);
            for (int i = 0; i < QK; ++i) b.qs[i] = (int8_t) (int) (rng() % 255 - 127);
            for (int j = 0; j < QK / 16; ++j) {
                int s = 0;
                for (int i = 0; i < 16; ++i) s += b.qs[16 * j + i];
                b.bsums[j] = (int16_t) s;
            }
        }
        x.assign(reinterpret_cast<uint8_t *>(xk.data()), reinterpret_cast<uint8_t *>(xk.data() + xk.size()));
    } else {
        std::vector<block_q8_0> x0((size_t) n_x * (cols / 32));
        for (auto & b : x0) {
            b.d = small_fp16(rng) & 0x7fff;
            for (int i = 0; i < 32; ++i) b.qs[i] = (int8_t) (int) (rng() % 255 - 127);
        }
        x.assign(reinterpret_cast<uint8_t *>(x0.data()), reinterpret_cast<uint8_t *>(x0.data() + x0.size()));
    }
    const size_t x_row = x.size() / n_x;  // bytes of one column's activations
    packed_matrix pm;
    std::string   why;
    if (!repack(type, w.data(), rows, cols, pm, &why)) {
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
        mul_mat(fast, pm, x.data() + c * x_row, 1, &y_one[(size_t) c * rows], rows, 0, rows / 32 * 16);
        mul_mat(fast, pm, x.data() + c * x_row, 1, &y_one[(size_t) c * rows], rows, rows / 32 * 16, rows);
    }
    const bool ok = write_file(out + "/weights.bin", w.data(), w.size()) &&
                    write_file(out + "/x.bin", x.data(), x.size()) &&
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
