/*
 * CKVM: the parts of <linux/kvm.h> that Swift cannot import on its own.
 *
 * ioctl request numbers are function-like macros (_IOW ...), struct kvm_run
 * and friends are full of anonymous unions, and ioctl(2) is variadic. This
 * shim turns them into prefixed constants and plain functions. Every function
 * returns 0 or a positive errno (never -1 + errno) so the Swift side reads the
 * error exactly where it happened.
 */
#ifndef CKVM_H
#define CKVM_H

#include <stdint.h>
#include <stddef.h>
#include <linux/kvm.h>
#include "ckvm_mmio.h"
#include "ckvm_lapic.h"
#include "ckvm_ioeventfd.h"
#include "ckvm_irqfd.h"
#include "ckvm_rom.h"

/* ioctl request numbers (system, VM and vCPU ioctls this project issues). */
static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;

/* Capabilities the VMM requires. */
static const int CKVM_CAP_IRQCHIP = KVM_CAP_IRQCHIP;
static const int CKVM_CAP_PIT2 = KVM_CAP_PIT2;
static const int CKVM_CAP_USER_MEMORY = KVM_CAP_USER_MEMORY;
static const int CKVM_CAP_SET_TSS_ADDR = KVM_CAP_SET_TSS_ADDR;
static const int CKVM_CAP_IMMEDIATE_EXIT = KVM_CAP_IMMEDIATE_EXIT;
static const int CKVM_CAP_EXT_CPUID = KVM_CAP_EXT_CPUID;
static const int CKVM_CAP_SET_IDENTITY_MAP_ADDR = KVM_CAP_SET_IDENTITY_MAP_ADDR;
static const int CKVM_CAP_MAX_VCPUS = KVM_CAP_MAX_VCPUS;
static const int CKVM_CAP_NR_VCPUS = KVM_CAP_NR_VCPUS;

/* Exit reasons. */
static const uint32_t CKVM_EXIT_UNKNOWN = KVM_EXIT_UNKNOWN;
static const uint32_t CKVM_EXIT_IO = KVM_EXIT_IO;
static const uint32_t CKVM_EXIT_HLT = KVM_EXIT_HLT;
static const uint32_t CKVM_EXIT_MMIO = KVM_EXIT_MMIO;
static const uint32_t CKVM_EXIT_SHUTDOWN = KVM_EXIT_SHUTDOWN;
static const uint32_t CKVM_EXIT_FAIL_ENTRY = KVM_EXIT_FAIL_ENTRY;
static const uint32_t CKVM_EXIT_INTR = KVM_EXIT_INTR;
static const uint32_t CKVM_EXIT_INTERNAL_ERROR = KVM_EXIT_INTERNAL_ERROR;
static const uint32_t CKVM_EXIT_SYSTEM_EVENT = KVM_EXIT_SYSTEM_EVENT;
static const uint32_t CKVM_SYSTEM_EVENT_SHUTDOWN = KVM_SYSTEM_EVENT_SHUTDOWN;
static const uint32_t CKVM_SYSTEM_EVENT_RESET = KVM_SYSTEM_EVENT_RESET;
static const uint8_t CKVM_EXIT_IO_IN = KVM_EXIT_IO_IN;

/* The one non-variadic ioctl. Returns the ioctl's result (>= 0) or -errno. */
long ckvm_ioctl(int fd, unsigned long request, unsigned long arg);
long ckvm_ioctl_ptr(int fd, unsigned long request, void *arg);

/* Struct helpers: each wraps exactly one ioctl; return 0 or an errno. */
int ckvm_set_user_memory_region(int vmfd, uint32_t slot, uint64_t guest_phys,
                                uint64_t size, void *host);
int ckvm_create_pit2(int vmfd, uint32_t flags);
int ckvm_irq_line(int vmfd, uint32_t irq, uint32_t level);
/* KVM_GET_IRQCHIP + KVM_SET_IRQCHIP on the in-kernel 8259 pair, to preset the
 * ELCR (edge/level control, ports 0x4d0/0x4d1, served by the kernel PIC). */
int ckvm_set_pic_elcr(int vmfd, uint8_t master_elcr, uint8_t slave_elcr);
int ckvm_get_pic_elcr(int vmfd, uint8_t *master_elcr, uint8_t *slave_elcr);
/* KVM_GET_SUPPORTED_CPUID into entries[0..<max]; *count gets the number. */
int ckvm_get_supported_cpuid(int kvmfd, struct kvm_cpuid_entry2 *entries,
                             uint32_t max, uint32_t *count);
int ckvm_set_cpuid2(int vcpufd, const struct kvm_cpuid_entry2 *entries,
                    uint32_t count);

/* struct kvm_run accessors (the mapping shared with the kernel). */
uint32_t ckvm_run_exit_reason(const struct kvm_run *run);
void ckvm_run_set_immediate_exit(struct kvm_run *run, uint8_t value);
void ckvm_run_io(const struct kvm_run *run, uint8_t *direction, uint8_t *size,
                 uint16_t *port, uint32_t *count, uint64_t *data_offset);
void ckvm_run_mmio(const struct kvm_run *run, uint64_t *phys_addr,
                   uint32_t *len, uint8_t *is_write);
uint8_t *ckvm_run_mmio_data(struct kvm_run *run);
uint32_t ckvm_run_system_event_type(const struct kvm_run *run);
uint64_t ckvm_run_fail_entry_reason(const struct kvm_run *run);
uint32_t ckvm_run_internal_suberror(const struct kvm_run *run);

#endif
