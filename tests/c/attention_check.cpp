// attention_check.cpp — drives specee's attention kernel
// (libspecee/kernels/attention.h) without ggml for the tests.
//
// usage: attention_check N_ROWS N_HEAD N_HEAD_KV HEAD_DIM N_KV f16|f32 ISA DIR
// reads DIR/q.f32 ([N_ROWS, N_HEAD, HEAD_DIM]), DIR/k.f16 and DIR/v.f16
// ([N_KV, N_HEAD_KV * HEAD_DIM]), DIR/mask.f16 or DIR/mask.f32 ([N_ROWS, N_KV]);
// writes DIR/out_ISA.f32 ([N_ROWS, N_HEAD * HEAD_DIM]). ISA: reference, avx2
// or avx512_vnni; exit status 3 if the CPU lacks it.
#include "kernels/attention.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace specee::kernels;

static std::vector<char> read_file(const std::string & path, size_t n) {
    std::vector<char> out(n);
    FILE * f = fopen(path.c_str(), "rb");
    if (!f || fread(out.data(), 1, n, f) != n) {
        fprintf(stderr, "cannot read %zu bytes of %s\n", n, path.c_str());
        exit(2);
    }
    fclose(f);
    return out;
}

int main(int argc, char ** argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s N_ROWS N_HEAD N_HEAD_KV HEAD_DIM N_KV f16|f32 ISA DIR\n", argv[0]);
        return 2;
    }
    attention_problem p;
    p.n_rows = atoi(argv[1]);
    p.n_head = atoi(argv[2]);
    p.n_head_kv = atoi(argv[3]);
    p.head_dim = atoi(argv[4]);
    p.n_kv = atoi(argv[5]);
    p.mask_f16 = std::strcmp(argv[6], "f16") == 0;
    const std::string isa_arg = argv[7], dir = argv[8];
    isa use = isa::reference;
    for (isa i : {isa::reference, isa::avx2, isa::avx512_vnni}) {
        if (isa_arg == isa_name(i)) {
            use = i;
        }
    }
    if (!cpu_has(use)) {
        fprintf(stderr, "this CPU has no %s\n", isa_arg.c_str());
        return 3;
    }
    const size_t hd = size_t(p.head_dim), kv_embd = size_t(p.n_head_kv) * hd, rows = size_t(p.n_rows);
    const auto q    = read_file(dir + "/q.f32", rows * size_t(p.n_head) * hd * 4);
    const auto k    = read_file(dir + "/k.f16", size_t(p.n_kv) * kv_embd * 2);
    const auto v    = read_file(dir + "/v.f16", size_t(p.n_kv) * kv_embd * 2);
    const size_t mb = p.mask_f16 ? 2 : 4;
    const auto mask = read_file(dir + (p.mask_f16 ? "/mask.f16" : "/mask.f32"), rows * size_t(p.n_kv) * mb);
    std::vector<float> out(rows * size_t(p.n_head) * hd);
    p.scale    = 0.125f;
    p.q        = q.data();
    p.q_head   = hd * 4;
    p.q_row    = size_t(p.n_head) * hd * 4;
    p.k        = k.data();
    p.v        = v.data();
    p.k_cell   = p.v_cell = kv_embd * 2;
    p.mask     = mask.data();
    p.mask_row = size_t(p.n_kv) * mb;
    p.out      = out.data();
    p.out_row  = size_t(p.n_head) * hd;
    // in two calls, as two threads would split the tasks
    const int64_t tasks = int64_t(rows) * p.n_head;
    attend(use, p, 0, tasks / 2);
    attend(use, p, tasks / 2, tasks);
    FILE * f = fopen((dir + "/out_" + isa_arg + ".f32").c_str(), "wb");
    if (!f || fwrite(out.data(), 4, out.size(), f) != out.size() || fclose(f) != 0) {
        fprintf(stderr, "cannot write the output\n");
        return 2;
    }
    return 0;
}
