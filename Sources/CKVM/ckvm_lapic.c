#include "ckvm_lapic.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#define APIC_SPIV 0x0F0
#define APIC_LVT_LINT0 0x350
#define APIC_LVT_LINT1 0x360
#define APIC_MODE_EXTINT 0x7
#define APIC_MODE_NMI 0x4

static uint32_t get_reg(const struct kvm_lapic_state *s, int off)
{
	uint32_t v;
	memcpy(&v, &s->regs[off], sizeof(v));
	return v;
}

static void set_reg(struct kvm_lapic_state *s, int off, uint32_t v)
{
	memcpy(&s->regs[off], &v, sizeof(v));
}

/* Delivery mode in bits 8..10; clearing bit 16 unmasks the entry. */
static uint32_t delivery(uint32_t reg, uint32_t mode)
{
	return (reg & ~0x10700u) | (mode << 8);
}

int ckvm_set_virtual_wire(int vcpufd)
{
	struct kvm_lapic_state s;
	if (ioctl(vcpufd, KVM_GET_LAPIC, &s) == -1)
		return errno;
	/* Software-enabled with spurious vector 0xFF, as a BIOS leaves it:
	 * while disabled, the guest's own LVT writes would be forced masked. */
	set_reg(&s, APIC_SPIV, get_reg(&s, APIC_SPIV) | 0x1FF);
	set_reg(&s, APIC_LVT_LINT0, delivery(get_reg(&s, APIC_LVT_LINT0), APIC_MODE_EXTINT));
	set_reg(&s, APIC_LVT_LINT1, delivery(get_reg(&s, APIC_LVT_LINT1), APIC_MODE_NMI));
	if (ioctl(vcpufd, KVM_SET_LAPIC, &s) == -1)
		return errno;
	return 0;
}
