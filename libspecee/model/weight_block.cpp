// weight_block.cpp — see weight_block.h.
#include "model/weight_block.h"

#include <sys/mman.h>

#include <algorithm>
#include <thread>
#include <utility>

namespace specee {

namespace {
constexpr size_t huge_page = size_t(2) << 20;
}

weight_block::weight_block(size_t bytes) {
    if (bytes == 0) {
        return;
    }
    // 2 MB aligned and a whole number of 2 MB pages, so that every page of
    // the block can be a huge one
    size_ = (bytes + huge_page - 1) / huge_page * huge_page;
    mapped_ = size_ + huge_page;
    void * m = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        size_ = mapped_ = 0;
        return;
    }
    mapping_ = m;
    data_    = reinterpret_cast<uint8_t *>((reinterpret_cast<uintptr_t>(m) + huge_page - 1) & ~uintptr_t(huge_page - 1));
#ifdef MADV_HUGEPAGE
    madvise(data_, size_, MADV_HUGEPAGE);  // a request: without it the block keeps 4 KB pages
#endif
}

void weight_block::fault_in(size_t offset, size_t bytes) const {
    if (data_ == nullptr || offset >= size_) {
        return;
    }
    bytes = std::min(bytes, size_ - offset);
    constexpr size_t page = 4096;  // every small page too, where the block did not get huge ones
    auto touch = [this, offset](size_t begin, size_t end) {
        for (size_t at = begin; at < end; at += page) {
            data_[offset + at] = 0;
        }
    };
    const size_t half = bytes / 2 / page * page;
    std::thread other(touch, half, bytes);
    touch(0, half);
    other.join();
}

weight_block::~weight_block() {
    if (mapping_ != nullptr) {
        munmap(mapping_, mapped_);
    }
}

weight_block::weight_block(weight_block && other) noexcept { *this = std::move(other); }

weight_block & weight_block::operator=(weight_block && other) noexcept {
    if (this != &other) {
        if (mapping_ != nullptr) {
            munmap(mapping_, mapped_);
        }
        mapping_ = std::exchange(other.mapping_, nullptr);
        mapped_  = std::exchange(other.mapped_, 0);
        data_    = std::exchange(other.data_, nullptr);
        size_    = std::exchange(other.size_, 0);
    }
    return *this;
}

} // namespace specee
