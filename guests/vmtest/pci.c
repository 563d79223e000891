/*
 * pci.c: bus 0 through configuration mechanism #1 (0xCF8/0xCFC). BARs are used as
 * the firmware or VMM assigned them; a BAR that reads 0, or a 64-bit BAR above
 * 4 GiB (outside the guest's identity map), is given an address from a pool above
 * every BAR already in use.
 */
#include "vmtest.h"

static u32 cfg_addr(const struct pci_dev *d, u8 off)
{
    return 0x80000000u | ((u32)d->bus << 16) | ((u32)d->dev << 11) | ((u32)d->fn << 8) | (off & 0xFC);
}

u32 pci_read32(const struct pci_dev *d, u8 off) { outl(0xCF8, cfg_addr(d, off)); return inl(0xCFC); }
u16 pci_read16(const struct pci_dev *d, u8 off) { return (u16)(pci_read32(d, off) >> ((off & 2) * 8)); }
u8 pci_read8(const struct pci_dev *d, u8 off) { return (u8)(pci_read32(d, off) >> ((off & 3) * 8)); }
void pci_write32(const struct pci_dev *d, u8 off, u32 v) { outl(0xCF8, cfg_addr(d, off)); outl(0xCFC, v); }
void pci_write16(const struct pci_dev *d, u8 off, u16 v)
{
    outl(0xCF8, cfg_addr(d, off));
    outw((u16)(0xCFC + (off & 2)), v);
}

/* Reads a BAR's address and, with decoding off, its size. */
static void probe_bar(struct pci_dev *d, int i)
{
    struct pci_bar *b = &d->bar[i];
    u8 off = (u8)(0x10 + 4 * i);
    u32 lo = pci_read32(d, off);
    u16 cmd = pci_read16(d, 0x04);
    pci_write16(d, 0x04, (u16)(cmd & ~3u));
    pci_write32(d, off, 0xFFFFFFFFu);
    u32 mask_lo = pci_read32(d, off);
    pci_write32(d, off, lo);
    b->io = lo & 1;
    b->is64 = !b->io && ((lo >> 1) & 3) == 2 && i < 5;
    u64 mask = b->io ? (mask_lo & ~3u) | 0xFFFF0000u : (mask_lo & ~0xFu);
    u64 base = b->io ? (lo & ~3u) : (lo & ~0xFu);
    if (b->is64) {
        u32 hi = pci_read32(d, (u8)(off + 4));
        pci_write32(d, (u8)(off + 4), 0xFFFFFFFFu);
        u32 mask_hi = pci_read32(d, (u8)(off + 4));
        pci_write32(d, (u8)(off + 4), hi);
        mask |= (u64)mask_hi << 32;
        base |= (u64)hi << 32;
    } else if (!b->io) {
        mask |= 0xFFFFFFFF00000000ull;
    }
    pci_write16(d, 0x04, cmd);
    b->base = base;
    b->size = mask ? (~mask + 1) & (b->io ? 0xFFFF : ~0ull) : 0;
    b->present = mask_lo != 0 && b->size != 0;
}

int pci_scan(struct pci_dev *out, int max)
{
    int n = 0;
    for (u8 dev = 0; dev < 32; dev++) {
        for (u8 fn = 0; fn < 8 && n < max; fn++) {
            struct pci_dev d = { .bus = 0, .dev = dev, .fn = fn };
            u32 id = pci_read32(&d, 0x00);
            if ((id & 0xFFFF) == 0xFFFF || id == 0) {
                if (fn == 0)
                    break;
                continue;
            }
            d.vendor = (u16)id;
            d.device = (u16)(id >> 16);
            u32 class = pci_read32(&d, 0x08);
            d.class_code = (u8)(class >> 24);
            d.subclass = (u8)(class >> 16);
            d.header_type = pci_read8(&d, 0x0E);
            d.irq_line = pci_read8(&d, 0x3C);
            d.irq_pin = pci_read8(&d, 0x3D);
            if ((d.header_type & 0x7F) == 0) {
                d.subsys_device = pci_read16(&d, 0x2E);
                for (int i = 0; i < 6; i++) {
                    probe_bar(&d, i);
                    if (d.bar[i].is64)
                        i++;
                }
            }
            out[n++] = d;
            if (fn == 0 && !(d.header_type & 0x80))
                break;
        }
    }
    return n;
}

/* Allocation pools start above every BAR seen on the bus (pci_pool_init). */
static u64 io_next = 0xC000, mem_next = 0xE0000000ull;

void pci_pool_init(const struct pci_dev *devs, int n)
{
    for (int k = 0; k < n; k++)
        for (int i = 0; i < 6; i++) {
            const struct pci_bar *b = &devs[k].bar[i];
            if (!b->present || b->base == 0)
                continue;
            u64 end = b->base + b->size;
            if (b->io && end > io_next && end <= 0x10000)
                io_next = end;
            if (!b->io && end > mem_next && end <= 0xFEC00000ull)
                mem_next = end;
        }
}

void pci_setup_bars(struct pci_dev *d)
{
    for (int i = 0; i < 6; i++) {
        struct pci_bar *b = &d->bar[i];
        if (!b->present)
            continue;
        bool outside = !b->io && b->base + b->size > 0xFEC00000ull;
        if (b->base != 0 && !outside)
            continue;
        u64 *pool = b->io ? &io_next : &mem_next;
        u64 limit = b->io ? 0x10000 : 0xFEC00000ull;
        u64 base = (*pool + b->size - 1) & ~(b->size - 1);
        if (b->size > limit || base > limit - b->size) {
            printf("vmtest: pci %02x:%02x.%x BAR%d of 0x%lx bytes does not fit\n", d->bus, d->dev, d->fn, i, b->size);
            b->present = false;
            continue;
        }
        u16 cmd = pci_read16(d, 0x04);
        pci_write16(d, 0x04, (u16)(cmd & ~3u));
        pci_write32(d, (u8)(0x10 + 4 * i), (u32)base | (b->io ? 0 : (pci_read32(d, (u8)(0x10 + 4 * i)) & 0xF)));
        if (b->is64)
            pci_write32(d, (u8)(0x14 + 4 * i), 0);
        pci_write16(d, 0x04, cmd);
        b->base = base;
        *pool = base + b->size;
        printf("vmtest: pci %02x:%02x.%x BAR%d assigned %s 0x%lx size 0x%lx\n", d->bus, d->dev, d->fn, i,
               b->io ? "io" : "mem", base, b->size);
    }
}

/* I/O and memory decoding, bus mastering (virtqueue DMA), INTx not disabled. */
void pci_enable(struct pci_dev *d)
{
    u16 cmd = pci_read16(d, 0x04);
    pci_write16(d, 0x04, (u16)((cmd | 0x7) & ~0x400u));
}

/* Zeroes a device's BARs (decoding off) so that pci_setup_bars must assign them. */
void pci_clear_bars(struct pci_dev *d)
{
    u16 cmd = pci_read16(d, 0x04);
    pci_write16(d, 0x04, (u16)(cmd & ~3u));
    for (int i = 0; i < 6; i++) {
        struct pci_bar *b = &d->bar[i];
        if (!b->present)
            continue;
        pci_write32(d, (u8)(0x10 + 4 * i), b->io ? 0 : (pci_read32(d, (u8)(0x10 + 4 * i)) & 0xF));
        if (b->is64)
            pci_write32(d, (u8)(0x14 + 4 * i), 0);
        b->base = 0;
    }
}
