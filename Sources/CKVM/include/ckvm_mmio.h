#ifndef CKVM_MMIO_H
#define CKVM_MMIO_H
#include <stdint.h>
/*
 * KVM_IOEVENTFD on guest-physical MMIO: a guest write of `length` bytes at
 * `address` (with `value`, when match is non-zero) signals `eventfd` inside
 * the kernel, with no exit to user space (a virtio-mmio QueueNotify).
 * `assign` 0 removes it. Returns 0 or an errno.
 */
int ckvm_mmio_ioeventfd(int vmfd, uint64_t address, uint32_t length, int eventfd,
                        int match, uint64_t value, int assign);
#endif
