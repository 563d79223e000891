#ifndef CKVM_IRQFD_H
#define CKVM_IRQFD_H
#include <stdint.h>
/*
 * KVM_IRQFD: a write to `eventfd` raises `gsi` inside the kernel, with no
 * exit to user space. With `resamplefd` >= 0 the GSI is level-triggered:
 * held high until the guest's EOI, which lowers it and signals
 * `resamplefd` (the device then raises it again if still pending).
 * `assign` 0 removes it. Returns 0 or an errno.
 */
int ckvm_irqfd(int vmfd, int eventfd, uint32_t gsi, int resamplefd, int assign);
unsigned long ckvm_irqfd_request(void);

/*
 * KVM_SET_GSI_ROUTING with KVM's default x86 routes (GSI 0-15 to both the
 * PIC and the IOAPIC pin, 16-23 to the IOAPIC) followed by `count` MSI
 * routes: GSI gsis[i] -> (addresses[i], datas[i]). The table replaces the
 * previous one whole. Returns 0 or an errno.
 */
int ckvm_set_msi_routing(int vmfd, uint32_t count, const uint32_t *gsis,
                         const uint64_t *addresses, const uint32_t *datas);
unsigned long ckvm_set_gsi_routing_request(void);
#endif
