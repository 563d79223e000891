#include "ckvm_rom.h"
#include <errno.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

int ckvm_set_readonly_memory_region(int vmfd, uint32_t slot, uint64_t guest_phys,
                                    uint64_t size, void *host, int readonly) {
    struct kvm_userspace_memory_region region = {
        .slot = slot,
        .flags = readonly ? KVM_MEM_READONLY : 0,
        .guest_phys_addr = guest_phys,
        .memory_size = size,
        .userspace_addr = (uint64_t)(uintptr_t)host,
    };
    return ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &region) < 0 ? errno : 0;
}

int ckvm_readonly_memory_supported(int vmfd) {
    return ioctl(vmfd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) > 0;
}
