// repack.cpp — ggml's blocks (Q4_K, Q6_K, Q8_0, Q5_0, Q4_1) into the 16-row
// layouts of layouts.h, the reference kernels over those layouts, and the
// run-time choice and dispatch of the kernel set.
#include "kernels/layouts.h"

#include <cmath>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <cstdlib>
#include <cstring>

namespace specee::kernels {

// Exact, and without ggml: the kernels and their test driver build alone.
float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t) (h & 0x8000) << 16;
    const uint32_t exp  = (h >> 10) & 0x1f;
    const uint32_t man  = h & 0x3ff;
    float f;
    if (exp == 0) {
        f = std::ldexp((float) man, -24);  // zero or subnormal
    } else if (exp == 31) {
        f = man ? NAN : INFINITY;
    } else {
        const uint32_t bits = ((exp + 112) << 23) | (man << 13);
        std::memcpy(&f, &bits, sizeof f);
    }
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    bits |= sign;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

size_t packed_matrix::block_bytes() const {
    switch (type) {
        case weight_type::q4_k: return sizeof(block_q4_k_r16);
        case weight_type::q6_k: return sizeof(block_q6_k_r16);
        case weight_type::q8_0: return sizeof(block_q8_0_r16);
        case weight_type::q5_0: return sizeof(block_q5_0_r16);
        case weight_type::q4_1: return sizeof(block_q4_1_r16);
    }
    return 0;
}

size_t source_block_bytes(weight_type t) {
    switch (t) {
        case weight_type::q4_k: return sizeof(block_q4_k);
        case weight_type::q6_k: return sizeof(block_q6_k);
        case weight_type::q8_0: return sizeof(block_q8_0);
        case weight_type::q5_0: return sizeof(block_q5_0);
        case weight_type::q4_1: return sizeof(block_q4_1);
    }
    return 0;
}

int source_block_weights(weight_type t) { return takes_q8_k(t) ? QK : 32; }

// ---- ggml's blocks, unpacked to one byte a weight (the format, ggml-common.h)

// q[256] in 0..63, w = d * scales[i / 16] * (q[i] - 32)
static void unpack_q6_k(const block_q6_k & b, uint8_t * q) {
    for (int h = 0; h < 2; ++h) {
        const uint8_t * ql = b.ql + 64 * h;
        const uint8_t * qh = b.qh + 32 * h;
        uint8_t *       o  = q + 128 * h;
        for (int l = 0; l < 32; ++l) {
            o[l]      = (ql[l] & 0xf) | ((qh[l] >> 0) & 3) << 4;
            o[l + 32] = (ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4;
            o[l + 64] = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
            o[l + 96] = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
        }
    }
}

// q[256] in 0..15, w = d * sc[i / 32] * q[i] - dmin * m[i / 32]
static void unpack_q4_k(const block_q4_k & b, uint8_t * q, uint8_t * sc, uint8_t * m) {
    const uint8_t * s = b.scales;
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            sc[j] = s[j] & 63;
            m[j]  = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
            m[j]  = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    for (int c = 0; c < 4; ++c) {
        for (int l = 0; l < 32; ++l) {
            q[64 * c + l]      = b.qs[32 * c + l] & 0xf;
            q[64 * c + 32 + l] = b.qs[32 * c + l] >> 4;
        }
    }
}

// `lines` lines of low nibbles from rows of `stride` weights: line p holds
// quad 2p in the low nibble and quad 2p + 1 in the high one.
static void pack_nibbles(const uint8_t * q, int stride, int lines, uint8_t (*lo)[64]) {
    for (int p = 0; p < lines; ++p) {
        for (int r = 0; r < ROW_GROUP; ++r) {
            const uint8_t * row = q + r * stride;
            for (int i = 0; i < 4; ++i) {
                lo[p][4 * r + i] = (uint8_t) ((row[8 * p + i] & 0xf) | (row[8 * p + 4 + i] & 0xf) << 4);
            }
        }
    }
}

// One 32-weight block as stored values (Q8_0: q + 128; Q5_0: 0..31; Q4_1: 0..15).
static void unpack_q32(weight_type t, const uint8_t * src, uint8_t * q, uint16_t & d, uint16_t & m) {
    m = 0;
    if (t == weight_type::q8_0) {
        const auto & b = *reinterpret_cast<const block_q8_0 *>(src);
        d              = b.d;
        for (int j = 0; j < 32; ++j) q[j] = (uint8_t) (b.qs[j] + 128);
    } else if (t == weight_type::q5_0) {
        const auto & b = *reinterpret_cast<const block_q5_0 *>(src);
        uint32_t     qh;
        std::memcpy(&qh, b.qh, sizeof qh);
        d = b.d;
        for (int j = 0; j < 16; ++j) {
            q[j]      = (uint8_t) ((b.qs[j] & 0xf) | ((qh >> j) & 1) << 4);
            q[j + 16] = (uint8_t) ((b.qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
        }
    } else {
        const auto & b = *reinterpret_cast<const block_q4_1 *>(src);
        d              = b.d;
        m              = b.m;
        for (int j = 0; j < 16; ++j) {
            q[j]      = b.qs[j] & 0xf;
            q[j + 16] = b.qs[j] >> 4;
        }
    }
}

// 16 rows x 32 weights of a 32-weight type.
static void repack_q32(weight_type t, const uint8_t * const * rows, uint8_t * dst) {
    uint8_t  q[ROW_GROUP][32];
    uint16_t d[ROW_GROUP], m[ROW_GROUP];
    for (int r = 0; r < ROW_GROUP; ++r) {
        unpack_q32(t, rows[r], q[r], d[r], m[r]);
    }
    if (t == weight_type::q8_0) {
        auto & out = *reinterpret_cast<block_q8_0_r16 *>(dst);
        for (int j = 0; j < 8; ++j) {
            for (int r = 0; r < ROW_GROUP; ++r) {
                for (int i = 0; i < 4; ++i) out.q[j][4 * r + i] = q[r][4 * j + i];
            }
        }
        std::memcpy(out.d, d, sizeof d);
    } else if (t == weight_type::q5_0) {
        auto & out = *reinterpret_cast<block_q5_0_r16 *>(dst);
        pack_nibbles(&q[0][0], 32, 4, out.lo);
        for (int r = 0; r < ROW_GROUP; ++r) {
            for (int i = 0; i < 4; ++i) {
                uint8_t h = 0;
                for (int j = 0; j < 8; ++j) h |= (uint8_t) (((q[r][4 * j + i] >> 4) & 1) << j);
                out.hi[4 * r + i] = h;
            }
        }
        std::memcpy(out.d, d, sizeof d);
    } else {
        auto & out = *reinterpret_cast<block_q4_1_r16 *>(dst);
        pack_nibbles(&q[0][0], 32, 4, out.lo);
        std::memcpy(out.d, d, sizeof d);
        std::memcpy(out.m, m, sizeof m);
    }
}

static void repack_q6_k(const block_q6_k * const * rows, block_q6_k_r16 & out) {
    uint8_t q[ROW_GROUP][QK];
    for (int r = 0; r < ROW_GROUP; ++r) {
        unpack_q6_k(*rows[r], q[r]);
        out.d[r] = rows[r]->d;
        for (int g = 0; g < 16; ++g) {
            out.scales[g][r] = rows[r]->scales[g];
        }
    }
    pack_nibbles(&q[0][0], QK, 32, out.lo);
    for (int g = 0; g < 16; ++g) {
        for (int r = 0; r < ROW_GROUP; ++r) {
            for (int i = 0; i < 4; ++i) {
                uint8_t h = 0;
                for (int j = 0; j < 4; ++j) {
                    h |= (uint8_t) (((q[r][16 * g + 4 * j + i] >> 4) & 3) << (2 * j));
                }
                out.hi[g][4 * r + i] = h;
            }
        }
    }
}

static void repack_q4_k(const block_q4_k * const * rows, block_q4_k_r16 & out) {
    uint8_t q[ROW_GROUP][QK];
    for (int r = 0; r < ROW_GROUP; ++r) {
        uint8_t sc[8], m[8];
        unpack_q4_k(*rows[r], q[r], sc, m);
        out.d[r]    = rows[r]->d;
        out.dmin[r] = rows[r]->dmin;
        for (int j = 0; j < 8; ++j) {
            out.scales[j][r] = sc[j];
            out.mins[j][r]   = m[j];
        }
    }
    pack_nibbles(&q[0][0], QK, 32, out.lo);
}

bool repack(weight_type type, const void * blocks, int64_t n_rows, int64_t n_cols, packed_matrix & out,
            std::string * why) {
    const int per_block = source_block_weights(type);
    if (n_rows <= 0 || n_rows % ROW_GROUP != 0 || n_cols <= 0 || n_cols % per_block != 0) {
        if (why) {
            *why = "shape " + std::to_string(n_rows) + " x " + std::to_string(n_cols) +
                   ": rows must be a multiple of 16 and columns of " + std::to_string(per_block);
        }
        return false;
    }
    out.type   = type;
    out.n_rows = n_rows;
    out.n_cols = n_cols;
    const int64_t nb = out.n_blocks();
    out.data.resize((size_t) (n_rows / ROW_GROUP * nb) * out.block_bytes());
    const size_t sb  = source_block_bytes(type);
    const auto * src = static_cast<const uint8_t *>(blocks);
    for (int64_t g = 0; g < n_rows / ROW_GROUP; ++g) {
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t * rows[ROW_GROUP];
            for (int r = 0; r < ROW_GROUP; ++r) {
                rows[r] = src + ((g * ROW_GROUP + r) * nb + b) * sb;
            }
            uint8_t * dst = out.data.data() + (size_t) (g * nb + b) * out.block_bytes();
            switch (type) {
                case weight_type::q4_k:
                    repack_q4_k(reinterpret_cast<const block_q4_k * const *>(rows), *reinterpret_cast<block_q4_k_r16 *>(dst));
                    break;
                case weight_type::q6_k:
                    repack_q6_k(reinterpret_cast<const block_q6_k * const *>(rows), *reinterpret_cast<block_q6_k_r16 *>(dst));
                    break;
                default:
                    repack_q32(type, rows, dst);
            }
        }
    }
    return true;
}

void q8_0_sums(const block_q8_0 * x, int64_t n_blocks, int32_t * out) {
    for (int64_t i = 0; i < n_blocks; ++i) {
        int32_t s = 0;
        for (int j = 0; j < 32; ++j) s += x[i].qs[j];
        out[i] = s;
    }
}

// ---- reference kernels: the same integer sums and the same float steps, in
// the same order, as the SIMD kernels (so the tests can ask for equality).

void mul_mat_q6_k_reference(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                            int64_t row_begin, int64_t row_end) {
    const int64_t nb  = w.n_cols / QK;
    const auto *  blk = reinterpret_cast<const block_q6_k_r16 *>(w.bytes());
    for (int64_t g = row_begin / ROW_GROUP; g < row_end / ROW_GROUP; ++g) {
        for (int c = 0; c < n_x; ++c) {
            for (int r = 0; r < ROW_GROUP; ++r) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; ++b) {
                    const block_q6_k_r16 & B  = blk[g * nb + b];
                    const block_q8_k &     X  = x[c * nb + b];
                    float                  sb = 0.0f;
                    for (int s = 0; s < 16; ++s) {
                        int32_t sum = 0;
                        for (int j = 0; j < 4; ++j) {  // quad 4s + j
                            const int     quad = 4 * s + j;
                            for (int i = 0; i < 4; ++i) {
                                const uint8_t lo = (B.lo[quad / 2][4 * r + i] >> (4 * (quad % 2))) & 0xf;
                                const uint8_t hi = (B.hi[s][4 * r + i] >> (2 * j)) & 3;
                                sum += (int32_t) (lo | hi << 4) * X.qs[16 * s + 4 * j + i];
                            }
                        }
                        sum -= 32 * X.bsums[s];
                        sb = std::fma((float) sum, (float) B.scales[s][r], sb);
                    }
                    const float dxw = fp16_to_fp32(B.d[r]) * X.d;
                    acc             = std::fma(sb, dxw, acc);
                }
                y[c * ldy + g * ROW_GROUP + r] = acc;
            }
        }
    }
}

// Per 32-weight block: the exact integer sum, the offset taken off, then
// acc = fma(float(sum), d_w * d_x, acc) (Q4_1: then fma(m_w, d_x * sum_x, acc)).
void mul_mat_q32_reference(const packed_matrix & w, const block_q8_0 * x, const int32_t * sums, int n_x, float * y,
                           int64_t ldy, int64_t row_begin, int64_t row_end) {
    const int64_t nb     = w.n_blocks();
    const int32_t offset = w.type == weight_type::q8_0 ? 128 : w.type == weight_type::q5_0 ? 16 : 0;
    for (int64_t g = row_begin / ROW_GROUP; g < row_end / ROW_GROUP; ++g) {
        for (int c = 0; c < n_x; ++c) {
            for (int r = 0; r < ROW_GROUP; ++r) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; ++b) {
                    const uint8_t *    blk = w.bytes() + (size_t) (g * nb + b) * w.block_bytes();
                    const block_q8_0 & X   = x[c * nb + b];
                    const int32_t      xs  = sums[c * nb + b];
                    int32_t            sum = 0;
                    uint16_t           dw, mw = 0;
                    for (int j = 0; j < 8; ++j) {
                        for (int i = 0; i < 4; ++i) {
                            uint8_t q;
                            if (w.type == weight_type::q8_0) {
                                q = reinterpret_cast<const block_q8_0_r16 *>(blk)->q[j][4 * r + i];
                            } else if (w.type == weight_type::q5_0) {
                                const auto * B = reinterpret_cast<const block_q5_0_r16 *>(blk);
                                q = (uint8_t) (((B->lo[j / 2][4 * r + i] >> (4 * (j % 2))) & 0xf) |
                                               ((B->hi[4 * r + i] >> j) & 1) << 4);
                            } else {
                                q = (reinterpret_cast<const block_q4_1_r16 *>(blk)->lo[j / 2][4 * r + i] >> (4 * (j % 2))) & 0xf;
                            }
                            sum += (int32_t) q * X.qs[4 * j + i];
                        }
                    }
                    sum -= offset * xs;
                    if (w.type == weight_type::q8_0) {
                        dw = reinterpret_cast<const block_q8_0_r16 *>(blk)->d[r];
                    } else if (w.type == weight_type::q5_0) {
                        dw = reinterpret_cast<const block_q5_0_r16 *>(blk)->d[r];
                    } else {
                        dw = reinterpret_cast<const block_q4_1_r16 *>(blk)->d[r];
                        mw = reinterpret_cast<const block_q4_1_r16 *>(blk)->m[r];
                    }
                    const float dx = fp16_to_fp32(X.d);
                    acc            = std::fma((float) sum, fp16_to_fp32(dw) * dx, acc);
                    if (w.type == weight_type::q4_1) {
                        acc = std::fma(fp16_to_fp32(mw), dx * (float) xs, acc);
                    }
                }
                y[c * ldy + g * ROW_GROUP + r] = acc;
            }
        }
    }
}

void mul_mat_q4_k_reference(const packed_matrix & w, const block_q8_k * x, int n_x, float * y, int64_t ldy,
                            int64_t row_begin, int64_t row_end) {
    const int64_t nb  = w.n_cols / QK;
    const auto *  blk = reinterpret_cast<const block_q4_k_r16 *>(w.bytes());
    for (int64_t g = row_begin / ROW_GROUP; g < row_end / ROW_GROUP; ++g) {
        for (int c = 0; c < n_x; ++c) {
            for (int r = 0; r < ROW_GROUP; ++r) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; ++b) {
                    const block_q4_k_r16 & B  = blk[g * nb + b];
                    const block_q8_k &     X  = x[c * nb + b];
                    float                  sb = 0.0f;
                    int32_t                sm = 0;
                    for (int s = 0; s < 8; ++s) {
                        int32_t sum = 0;
                        for (int j = 0; j < 8; ++j) {  // quad 8s + j
                            const int quad = 8 * s + j;
                            for (int i = 0; i < 4; ++i) {
                                const uint8_t q = (B.lo[quad / 2][4 * r + i] >> (4 * (quad % 2))) & 0xf;
                                sum += (int32_t) q * X.qs[32 * s + 4 * j + i];
                            }
                        }
                        sb = std::fma((float) sum, (float) B.scales[s][r], sb);
                        sm += bsum32(X, s) * B.mins[s][r];
                    }
                    acc = std::fma(sb, fp16_to_fp32(B.d[r]) * X.d, acc);
                    acc = std::fma(-(float) sm, fp16_to_fp32(B.dmin[r]) * X.d, acc);
                }
                y[c * ldy + g * ROW_GROUP + r] = acc;
            }
        }
    }
}

// ---- dispatch

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports has no "f16c"
static bool has_f16c() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}
#endif

static bool cpu_supports(isa i) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    switch (i) {
        case isa::reference: return true;
        case isa::avx2:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
        case isa::avx512_vnni:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") && has_f16c();
    }
#endif
    return i == isa::reference;
}

bool cpu_has(isa i) {
    static const bool has[3] = {true, cpu_supports(isa::avx2), cpu_supports(isa::avx512_vnni)};
    return has[int(i)];
}

isa best_isa() {
    isa cap = isa::avx512_vnni;
    if (const char * env = std::getenv("SPECEE_KERNELS_ISA")) {
        for (isa i : {isa::reference, isa::avx2, isa::avx512_vnni}) {
            if (std::strcmp(env, isa_name(i)) == 0) {
                cap = i;
            }
        }
    }
    for (isa i : {isa::avx512_vnni, isa::avx2}) {
        if (i <= cap && cpu_has(i)) {
            return i;
        }
    }
    return isa::reference;
}

const char * isa_name(isa i) {
    switch (i) {
        case isa::avx512_vnni: return "avx512_vnni";
        case isa::avx2:        return "avx2";
        case isa::reference:   return "reference";
    }
    return "?";
}

void mul_mat(isa i, const packed_matrix & w, const void * x, int n_x, float * y, int64_t ldy,
             int64_t row_begin, int64_t row_end) {
    const isa use = cpu_has(i) ? i : isa::reference;
    if (!takes_q8_k(w.type)) {
        const auto *         xq = static_cast<const block_q8_0 *>(x);
        const int64_t        n  = (int64_t) n_x * (w.n_cols / 32);
        thread_local std::vector<int32_t> sums;  // each thread of a product sums the activations it reads
        sums.resize((size_t) n);
        q8_0_sums(xq, n, sums.data());
        switch (use) {
#if defined(__x86_64__)
            case isa::avx512_vnni: return mul_mat_q32_avx512_vnni(w, xq, sums.data(), n_x, y, ldy, row_begin, row_end);
            case isa::avx2:        return mul_mat_q32_avx2(w, xq, sums.data(), n_x, y, ldy, row_begin, row_end);
#endif
            default:               return mul_mat_q32_reference(w, xq, sums.data(), n_x, y, ldy, row_begin, row_end);
        }
    }
    const auto * xk = static_cast<const block_q8_k *>(x);
    const bool   q4 = w.type == weight_type::q4_k;
    switch (use) {
#if defined(__x86_64__)
        case isa::avx512_vnni:
            return (q4 ? mul_mat_q4_k_avx512_vnni : mul_mat_q6_k_avx512_vnni)(w, xk, n_x, y, ldy, row_begin, row_end);
        case isa::avx2:
            return (q4 ? mul_mat_q4_k_avx2 : mul_mat_q6_k_avx2)(w, xk, n_x, y, ldy, row_begin, row_end);
#endif
        default:
            return (q4 ? mul_mat_q4_k_reference : mul_mat_q6_k_reference)(w, xk, n_x, y, ldy, row_begin, row_end);
    }
}

} // namespace specee::kernels
