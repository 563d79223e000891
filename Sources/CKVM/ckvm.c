/* CKVM: see include/ckvm.h. Each helper wraps one ioctl and returns an errno. */
#define _GNU_SOURCE
#include "ckvm.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <termios.h>
#include <unistd.h>

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>

long ckvm_ioctl(int fd, unsigned long request, unsigned long arg) {
    long r = ioctl(fd, request, arg);
    return r < 0 ? -(long)errno : r;
}

long ckvm_ioctl_ptr(int fd, unsigned long request, void *arg) {
    long r = ioctl(fd, request, arg);
    return r < 0 ? -(long)errno : r;
}

static int result(int r) { return r < 0 ? errno : 0; }

int ckvm_set_user_memory_region(int vmfd, uint32_t slot, uint64_t guest_phys,
                                uint64_t size, void *host) {
    struct kvm_userspace_memory_region region = {
        .slot = slot,
        .flags = 0,
        .guest_phys_addr = guest_phys,
        .memory_size = size,
        .userspace_addr = (uint64_t)(uintptr_t)host,
    };
    return result(ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &region));
}

int ckvm_create_pit2(int vmfd, uint32_t flags) {
    struct kvm_pit_config config;
    memset(&config, 0, sizeof config);
    config.flags = flags;
    return result(ioctl(vmfd, KVM_CREATE_PIT2, &config));
}

int ckvm_irq_line(int vmfd, uint32_t irq, uint32_t level) {
    struct kvm_irq_level line;
    memset(&line, 0, sizeof line);
    line.irq = irq;
    line.level = level;
    return result(ioctl(vmfd, KVM_IRQ_LINE, &line));
}

static int pic_elcr(int vmfd, uint32_t chip_id, uint8_t *elcr, int set) {
    struct kvm_irqchip chip;
    memset(&chip, 0, sizeof chip);
    chip.chip_id = chip_id;
    if (ioctl(vmfd, KVM_GET_IRQCHIP, &chip) < 0)
        return errno;
    if (!set) {
        *elcr = chip.chip.pic.elcr;
        return 0;
    }
    chip.chip.pic.elcr = *elcr;
    return result(ioctl(vmfd, KVM_SET_IRQCHIP, &chip));
}

int ckvm_set_pic_elcr(int vmfd, uint8_t master_elcr, uint8_t slave_elcr) {
    int e = pic_elcr(vmfd, KVM_IRQCHIP_PIC_MASTER, &master_elcr, 1);
    if (e != 0)
        return e;
    return pic_elcr(vmfd, KVM_IRQCHIP_PIC_SLAVE, &slave_elcr, 1);
}

int ckvm_get_pic_elcr(int vmfd, uint8_t *master_elcr, uint8_t *slave_elcr) {
    int e = pic_elcr(vmfd, KVM_IRQCHIP_PIC_MASTER, master_elcr, 0);
    if (e != 0)
        return e;
    return pic_elcr(vmfd, KVM_IRQCHIP_PIC_SLAVE, slave_elcr, 0);
}

/* struct kvm_cpuid2 ends in a flexible array: allocate header + entries. */
#define CKVM_MAX_CPUID 256

static struct kvm_cpuid2 *cpuid_alloc(uint32_t n) {
    return calloc(1, sizeof(struct kvm_cpuid2) + n * sizeof(struct kvm_cpuid_entry2));
}

int ckvm_get_supported_cpuid(int kvmfd, struct kvm_cpuid_entry2 *entries,
                             uint32_t max, uint32_t *count) {
    struct kvm_cpuid2 *cpuid = cpuid_alloc(CKVM_MAX_CPUID);
    if (cpuid == NULL)
        return ENOMEM;
    cpuid->nent = CKVM_MAX_CPUID;
    if (ioctl(kvmfd, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) {
        int e = errno;
        free(cpuid);
        return e;
    }
    uint32_t n = cpuid->nent < max ? cpuid->nent : max;
    memcpy(entries, cpuid->entries, n * sizeof entries[0]);
    *count = n;
    free(cpuid);
    return 0;
}

int ckvm_set_cpuid2(int vcpufd, const struct kvm_cpuid_entry2 *entries,
                    uint32_t count) {
    if (count > CKVM_MAX_CPUID)
        return E2BIG;
    struct kvm_cpuid2 *cpuid = cpuid_alloc(count);
    if (cpuid == NULL)
        return ENOMEM;
    cpuid->nent = count;
    memcpy(cpuid->entries, entries, count * sizeof entries[0]);
    int e = result(ioctl(vcpufd, KVM_SET_CPUID2, cpuid));
    free(cpuid);
    return e;
}

uint32_t ckvm_run_exit_reason(const struct kvm_run *run) { return run->exit_reason; }

void ckvm_run_set_immediate_exit(struct kvm_run *run, uint8_t value) {
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST);
}

void ckvm_run_io(const struct kvm_run *run, uint8_t *direction, uint8_t *size,
                 uint16_t *port, uint32_t *count, uint64_t *data_offset) {
    *direction = run->io.direction;
    *size = run->io.size;
    *port = run->io.port;
    *count = run->io.count;
    *data_offset = run->io.data_offset;
}

void ckvm_run_mmio(const struct kvm_run *run, uint64_t *phys_addr,
                   uint32_t *len, uint8_t *is_write) {
    *phys_addr = run->mmio.phys_addr;
    *len = run->mmio.len;
    *is_write = run->mmio.is_write;
}

uint8_t *ckvm_run_mmio_data(struct kvm_run *run) { return run->mmio.data; }

uint32_t ckvm_run_system_event_type(const struct kvm_run *run) {
    return run->system_event.type;
}

uint64_t ckvm_run_fail_entry_reason(const struct kvm_run *run) {
    return run->fail_entry.hardware_entry_failure_reason;
}

uint32_t ckvm_run_internal_suberror(const struct kvm_run *run) {
    return run->internal.suberror;
}

