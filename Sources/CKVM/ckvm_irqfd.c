#include "ckvm_irqfd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

int ckvm_irqfd(int vmfd, int eventfd, uint32_t gsi, int resamplefd, int assign)
{
	struct kvm_irqfd irqfd;
	memset(&irqfd, 0, sizeof(irqfd));
	irqfd.fd = (uint32_t)eventfd;
	irqfd.gsi = gsi;
	if (!assign) {
		irqfd.flags = KVM_IRQFD_FLAG_DEASSIGN;
	} else if (resamplefd >= 0) {
		irqfd.flags = KVM_IRQFD_FLAG_RESAMPLE;
		irqfd.resamplefd = (uint32_t)resamplefd;
	}
	if (ioctl(vmfd, KVM_IRQFD, &irqfd) == -1)
		return errno;
	return 0;
}

unsigned long ckvm_irqfd_request(void) { return KVM_IRQFD; }

#define CKVM_DEFAULT_ROUTES (16 * 2 + 8)

int ckvm_set_msi_routing(int vmfd, uint32_t count, const uint32_t *gsis,
                         const uint64_t *addresses, const uint32_t *datas)
{
	if (count > 1024)
		return EINVAL;
	uint32_t total = CKVM_DEFAULT_ROUTES + count;
	size_t size = sizeof(struct kvm_irq_routing) + total * sizeof(struct kvm_irq_routing_entry);
	struct kvm_irq_routing *table = calloc(1, size);
	if (table == NULL)
		return ENOMEM;
	uint32_t n = 0;
	for (uint32_t irq = 0; irq < 24; irq++) {
		struct kvm_irq_routing_entry *e = &table->entries[n++];
		e->gsi = irq;
		e->type = KVM_IRQ_ROUTING_IRQCHIP;
		e->u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
		e->u.irqchip.pin = irq;
		if (irq < 16) {
			e = &table->entries[n++];
			e->gsi = irq;
			e->type = KVM_IRQ_ROUTING_IRQCHIP;
			e->u.irqchip.irqchip = irq < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
			e->u.irqchip.pin = irq % 8;
		}
	}
	for (uint32_t i = 0; i < count; i++) {
		struct kvm_irq_routing_entry *e = &table->entries[n++];
		e->gsi = gsis[i];
		e->type = KVM_IRQ_ROUTING_MSI;
		e->u.msi.address_lo = (uint32_t)addresses[i];
		e->u.msi.address_hi = (uint32_t)(addresses[i] >> 32);
		e->u.msi.data = datas[i];
	}
	table->nr = n;
	int r = ioctl(vmfd, KVM_SET_GSI_ROUTING, table);
	int e = errno;
	free(table);
	return r == -1 ? e : 0;
}

unsigned long ckvm_set_gsi_routing_request(void) { return KVM_SET_GSI_ROUTING; }
