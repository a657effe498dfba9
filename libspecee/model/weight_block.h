// weight_block.h — one block of memory for weights that every decode step
// reads, in 2 MB pages where the kernel gives them (Linux transparent huge
// pages, asked for with madvise; 4 KB pages otherwise). A step of
// SmolLM2-135M streams 96 MB of packed weights: in 4 KB pages that is about
// 24,000 address translations a step, which the TLB cannot hold from one
// step to the next (and which a virtual machine walks twice over).
#pragma once

#include <cstddef>
#include <cstdint>

namespace specee {

class weight_block {
public:
    weight_block() = default;
    explicit weight_block(size_t bytes);  // data() is null when the memory cannot be had
    ~weight_block();
    weight_block(weight_block && other) noexcept;
    weight_block & operator=(weight_block && other) noexcept;
    weight_block(const weight_block &)             = delete;
    weight_block & operator=(const weight_block &) = delete;

    uint8_t * data() const { return data_; }
    size_t    size() const { return size_; }

    // Faults in the pages of [offset, offset + bytes) now, two threads at
    // once, before the caller writes there: on the VMs measured, a fresh
    // 2 MB page costs far more faulted in by a copy than touched ahead, and
    // two threads take half the time.
    void fault_in(size_t offset, size_t bytes) const;

private:
    void *    mapping_ = nullptr;  // what mmap returned
    size_t    mapped_  = 0;
    uint8_t * data_    = nullptr;  // 2 MB aligned, inside the mapping
    size_t    size_    = 0;
};

} // namespace specee
