/*
 * msix.c: the MSI-X path, checked on the first virtio-blk device when it offers an
 * MSI-X capability (ID 0x11; QEMU's virtio-pci and our VMM both do). After the
 * other checks the device is reset and set up again with MSI-X enabled: table
 * entry 0 (the configuration vector) -> IDT vector 0x40, entry 1 (queue 0) ->
 * 0x41, both to the BSP's local APIC. One line:
 *
 *     vmtest: msix ok vectors=N queue_irqs=.. config_irqs=0 masked_pending=yes intx_after=yes
 *
 * It proves: (1) a completion on queue 0 fires queue 0's vector, and neither the
 * configuration vector nor the INTx line; (2) with queue 0's vector masked in the
 * table, a completion sets its PBA bit and sends nothing, and unmasking sends it
 * (and clears the bit); (3) with MSI-X disabled again, a completion raises INTx
 * and sets ISR bit 0. The device is left reset afterwards.
 *
 * The CPL0 stubs count the vector and write the local APIC's EOI register; CPL3
 * does the rest.
 */
#include "vmtest.h"

#define MSIX_VECTOR_BASE 0x40
#define MSIX_STUBS 4
#define LAPIC 0xFEE00000ull
#define CC_MSIX_CONFIG 0x10
#define CC_QUEUE_MSIX_VECTOR 0x1A
#define NO_VECTOR 0xFFFF
#define MSIX_QUEUE_SIZE 8

volatile u32 msix_count[MSIX_STUBS];
extern const u64 msix_stubs[MSIX_STUBS];

__asm__(
    "    .text\n"
    "    .irp n,0,1,2,3\n"
    "msix_stub\\n:\n"
    "    push %rax\n"
    "    lock incl msix_count+4*\\n(%rip)\n"
    "    mov $0xFEE000B0, %eax\n"        /* local APIC EOI */
    "    movl $0, (%rax)\n"
    "    pop %rax\n"
    "    iretq\n"
    "    .endr\n"
    "    .section .rodata\n"
    "    .align 8\n"
    "msix_stubs:\n"
    "    .irp n,0,1,2,3\n"
    "    .quad msix_stub\\n\n"
    "    .endr\n"
    "    .text\n");

struct mreq { u32 type, reserved; u64 sector; } __attribute__((packed));

static struct vdev md;
static u64 table, pba;
static u8 cap;
static struct mreq *hdr;
static u8 *status, *buf;

static u8 find_msix_cap(struct pci_dev *p)
{
    if (!(pci_read16(p, 0x06) & 0x10))
        return 0;
    u8 ptr = pci_read8(p, 0x34) & 0xFC;
    for (int hops = 0; ptr >= 0x40 && hops < 48; hops++) {
        if (pci_read8(p, ptr) == 0x11)
            return ptr;
        ptr = pci_read8(p, (u8)(ptr + 1)) & 0xFC;
    }
    return 0;
}

/* The table or PBA address from its offset/BIR dword, if inside a memory BAR. */
static u64 bir_address(struct pci_dev *p, u32 v, u32 bytes)
{
    u32 bir = v & 7, off = v & ~7u;
    if (bir > 5 || !p->bar[bir].present || p->bar[bir].io || (u64)off + bytes > p->bar[bir].size)
        return 0;
    return p->bar[bir].base + off;
}

static void entry_write(int i, u32 field, u32 v) { mmio_write32(table + 16u * (u32)i + 4 * field, v); }
static void set_masked(int i, bool m) { entry_write(i, 3, m ? 1 : 0); }
static void set_enabled(struct pci_dev *p, bool on)
{
    u16 mc = pci_read16(p, (u8)(cap + 2));
    pci_write16(p, (u8)(cap + 2), on ? (u16)((mc | 0x8000) & ~0x4000) : (u16)(mc & ~0x8000));
}

/* Queues one 512-byte read of sector 0 and kicks. */
/* The local APIC software-enabled (SPIV bit 8), so it accepts fixed
 * interrupts, and the MSI-X vectors' stubs in the IDT; returns the APIC id
 * that a table entry's message address names. */
static u32 lapic_for_msix(void)
{
    u32 spiv = mmio_read32(LAPIC + 0xF0);
    if (!(spiv & 0x100))
        mmio_write32(LAPIC + 0xF0, spiv | 0x1FF);
    for (int v = 0; v < MSIX_STUBS; v++)
        idt_set_gate(MSIX_VECTOR_BASE + v, msix_stubs[v]);
    return mmio_read32(LAPIC + 0x20) >> 24;
}

static bool read_sector0(void)
{
    hdr->type = 0;
    hdr->reserved = 0;
    hdr->sector = 0;
    *status = 0xFF;
    struct vseg seg[3] = { { hdr, sizeof(*hdr), false }, { buf, 512, true }, { status, 1, true } };
    if (vq_add(&md.vqs[0], seg, 3) < 0)
        return false;
    vq_kick(&md.vqs[0]);
    return true;
}

static bool wait_used(void)
{
    u64 t0 = rdtsc();
    while (vq_get_used(&md.vqs[0], NULL) < 0) {
        if (rdtsc() - t0 > us_to_tsc(5000000))
            return vq_get_used(&md.vqs[0], NULL) >= 0;
        cpu_relax();
    }
    return *status == 0;
}

static bool wait_count(volatile u32 *c, u32 from, u64 us)
{
    u64 t0 = rdtsc();
    while (*c == from && rdtsc() - t0 < us_to_tsc(us))
        cpu_relax();
    return *c != from;
}

/* Resets the device and sets queue 0 up; with `vectors`, config -> 0, queue 0 -> 1. */
static bool setup(struct pci_dev *p, bool vectors, char *why, size_t whysz)
{
    if (!vdev_init(&md, p, "vioblk0", 0, why, whysz))
        return false;
    if (vectors) {
        vr_write16(&md.common, CC_MSIX_CONFIG, 0);
        if (vr_read16(&md.common, CC_MSIX_CONFIG) != 0) {
            snprintf(why, whysz, "config vector refused (reads 0x%x)", vr_read16(&md.common, CC_MSIX_CONFIG));
            return false;
        }
    }
    if (!vdev_setup_queue(&md, 0, MSIX_QUEUE_SIZE, why, whysz))
        return false;
    if (vectors) {
        vr_write16(&md.common, CC_QUEUE_SELECT, 0);
        vr_write16(&md.common, CC_QUEUE_MSIX_VECTOR, 1);
        if (vr_read16(&md.common, CC_QUEUE_MSIX_VECTOR) != 1) {
            snprintf(why, whysz, "queue 0 vector refused (reads 0x%x)", vr_read16(&md.common, CC_QUEUE_MSIX_VECTOR));
            return false;
        }
    }
    vdev_driver_ok(&md);
    return true;
}

static bool run(struct pci_dev *p, char *detail, size_t dsz, char *why, size_t whysz)
{
    u16 mc = pci_read16(p, (u8)(cap + 2));
    u32 vectors = (mc & 0x7FF) + 1u;
    pci_setup_bars(p);
    table = bir_address(p, pci_read32(p, (u8)(cap + 4)), 16u * vectors);
    pba = bir_address(p, pci_read32(p, (u8)(cap + 8)), 8);
    if (!table || !pba || vectors < 2) {
        snprintf(why, whysz, "table/PBA not inside a memory BAR, or %u vectors", vectors);
        return false;
    }
    hdr = dma_alloc(sizeof(*hdr) + 64);
    buf = dma_alloc(4096);
    if (!hdr || !buf) {
        snprintf(why, whysz, "out of DMA memory");
        return false;
    }
    status = (u8 *)hdr + 32;

    u32 apic_id = lapic_for_msix();
    for (int i = 0; i < 2; i++) {
        set_masked(i, true);
        entry_write(i, 0, (u32)LAPIC | apic_id << 12);
        entry_write(i, 1, 0);
        entry_write(i, 2, MSIX_VECTOR_BASE + (u32)i);   /* fixed, edge */
    }
    set_enabled(p, true);
    set_masked(0, false);
    set_masked(1, false);
    if (!setup(p, true, why, whysz))
        return false;

    /* (1) queue 0 -> vector 1 only. */
    int line = md.irq;
    u32 intx0 = line >= 0 ? irq_count[line] : 0, c0 = msix_count[0], q0 = msix_count[1];
    if (!read_sector0() || !wait_used()) {
        snprintf(why, whysz, "read of sector 0 failed (status 0x%02x)", *status);
        return false;
    }
    if (!wait_count(&msix_count[1], q0, 1000000)) {
        snprintf(why, whysz, "queue 0's vector never fired (config vector %u, INTx %u)",
                 msix_count[0] - c0, line >= 0 ? irq_count[line] - intx0 : 0);
        return false;
    }
    udelay(20000);
    if (msix_count[0] != c0 || (line >= 0 && irq_count[line] != intx0)) {
        snprintf(why, whysz, "a queue completion also fired the config vector (%u) or INTx (%u)",
                 msix_count[0] - c0, line >= 0 ? irq_count[line] - intx0 : 0);
        return false;
    }
    u32 queue_irqs = msix_count[1] - q0;

    /* (2) masked: pending in the PBA, sent on unmask. */
    set_masked(1, true);
    q0 = msix_count[1];
    if (!read_sector0() || !wait_used()) {
        snprintf(why, whysz, "masked: read of sector 0 failed");
        return false;
    }
    udelay(50000);
    u64 pending = mmio_read32(pba) | (u64)mmio_read32(pba + 4) << 32;
    if (msix_count[1] != q0 || !(pending & 2)) {
        snprintf(why, whysz, "masked vector: %u interrupts, PBA 0x%lx (want 0 and bit 1)", msix_count[1] - q0, pending);
        return false;
    }
    set_masked(1, false);
    if (!wait_count(&msix_count[1], q0, 1000000)) {
        snprintf(why, whysz, "unmasking left the pending vector unsent (PBA 0x%x)", mmio_read32(pba));
        return false;
    }
    udelay(1000);
    pending = mmio_read32(pba);
    if (pending & 2) {
        snprintf(why, whysz, "PBA bit 1 still set after the vector was sent");
        return false;
    }

    /* (3) MSI-X off: INTx and ISR again. */
    set_enabled(p, false);
    if (!setup(p, false, why, whysz))
        return false;
    bool intx = false;
    if (line >= 0) {
        (void)vr_read8(&md.isr, 0);             /* stale bits */
        pic_unmask(line);
        intx0 = irq_count[line];
        q0 = msix_count[1];
        if (!read_sector0() || !wait_used()) {
            snprintf(why, whysz, "INTx: read of sector 0 failed");
            return false;
        }
        bool fired = wait_count(&irq_count[line], intx0, 1000000);
        u8 isr = vr_read8(&md.isr, 0);
        pic_unmask(line);
        if (!fired || !(isr & 1) || msix_count[1] != q0) {
            snprintf(why, whysz, "MSI-X off: INTx %s, ISR 0x%02x, MSI-X vector %u times",
                     fired ? "fired" : "did not fire", isr, msix_count[1] - q0);
            return false;
        }
        intx = true;
    }
    vr_write8(&md.common, CC_STATUS, 0);
    snprintf(detail, dsz, "vectors=%u queue_irqs=%u config_irqs=%u masked_pending=yes intx_after=%s",
             vectors, queue_irqs, msix_count[0] - c0, intx ? "yes" : "no-line");
    return true;
}

/* For irqbench.c: table entries 0..n-1 -> IDT 0x40+i on the BSP, unmasked, and
 * MSI-X enabled; false (nothing changed) without a capability of n vectors in a
 * memory BAR. msix_count[i] counts vector i. */
bool msix_arm(struct pci_dev *p, int n)
{
    u8 c = find_msix_cap(p);
    if (!c || n < 1 || n > MSIX_STUBS)
        return false;
    u16 mc = pci_read16(p, (u8)(c + 2));
    if ((int)(mc & 0x7FF) + 1 < n)
        return false;
    u64 t = bir_address(p, pci_read32(p, (u8)(c + 4)), 16u * (u32)n);
    if (!t)
        return false;
    u32 apic_id = lapic_for_msix();
    for (int i = 0; i < n; i++) {
        u64 e = t + 16u * (u32)i;
        mmio_write32(e + 12, 1);
        mmio_write32(e, (u32)LAPIC | apic_id << 12);
        mmio_write32(e + 4, 0);
        mmio_write32(e + 8, MSIX_VECTOR_BASE + (u32)i);
        mmio_write32(e + 12, 0);
    }
    pci_write16(p, (u8)(c + 2), (u16)((mc | 0x8000) & ~0x4000));
    return true;
}

void msix_disarm(struct pci_dev *p)
{
    u8 c = find_msix_cap(p);
    if (c)
        pci_write16(p, (u8)(c + 2), (u16)(pci_read16(p, (u8)(c + 2)) & ~0x8000));
}

void msix_check(struct pci_dev *p)
{
    char why[200], detail[160];
    if (!p) {
        check_skip("msix", "no virtio-blk device");
        return;
    }
    cap = find_msix_cap(p);
    if (!cap) {
        check_skip("msix", "vioblk0 has no MSI-X capability");
        return;
    }
    if (run(p, detail, sizeof(detail), why, sizeof(why)))
        check_ok("msix", "%s", detail);
    else {
        set_enabled(p, false);
        vr_write8(&md.common, CC_STATUS, 0);
        check_fail("msix", "%s", why);
    }
}
