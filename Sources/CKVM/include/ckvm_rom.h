/* CKVM: a read-only memory slot (KVM_MEM_READONLY) for the BIOS ROM. */
#ifndef CKVM_ROM_H
#define CKVM_ROM_H
#include <stdint.h>

/* 0 or a positive errno; EINVAL when KVM lacks KVM_CAP_READONLY_MEM. */
int ckvm_set_readonly_memory_region(int vmfd, uint32_t slot, uint64_t guest_phys,
                                    uint64_t size, void *host, int readonly);
int ckvm_readonly_memory_supported(int vmfd);
#endif
