/*
 * hostile_mmio.c: `hostile` when the disk is a virtio-mmio slot. The guest
 * pokes the slot's registers the way no driver should: every offset of the
 * control area with 1, 2 and 8 byte and unaligned accesses, reads and writes
 * past the registers and past the slot, QueueReady before anything is set up,
 * a queue beyond the last, and rings outside memory. One line per case as in
 * hostile.c; after each, the device is reset, set up again and must read
 * sector 0 ("vmdisk 0\n"): recovery by reset. The host side asserts that no
 * process died.
 */
#include "vmtest.h"

static struct pci_dev *hblk;
static struct vdev hv;
static u64 base;

static u32 status(void) { return mmio_read32(base + MMIO_STATUS); }

/* Reset, initialise and read sector 0 through the normal driver. */
static bool recover(char *why, size_t whysz)
{
    memset(&hv, 0, sizeof(hv));
    if (!vdev_init(&hv, hblk, "vioblk0", 0, why, whysz) || !vdev_setup_queue(&hv, 0, 64, why, whysz))
        return false;
    vdev_driver_ok(&hv);
    struct vq *q = &hv.vqs[0];
    u8 *hdr = dma_alloc(4096), *data = dma_alloc(4096);
    if (!hdr || !data) {
        snprintf(why, whysz, "out of DMA memory");
        return false;
    }
    memset(hdr, 0, 16);                 /* VIRTIO_BLK_T_IN, sector 0 */
    hdr[16] = 0xFF;
    struct vseg segs[3] = { { hdr, 16, false }, { data, 512, true }, { hdr + 16, 1, true } };
    if (vq_add(q, segs, 3) < 0) {
        snprintf(why, whysz, "no room in the queue");
        return false;
    }
    vq_kick(q);
    u64 t0 = rdtsc();
    u32 len;
    while (vq_get_used(q, &len) < 0)
        if (rdtsc() - t0 > us_to_tsc(2000000)) {
            snprintf(why, whysz, "no completion within 2 s (status 0x%x)", status());
            return false;
        }
    if (hdr[16] != 0 || memcmp(data, "vmdisk 0\n", 9) != 0) {
        snprintf(why, whysz, "sector 0 read back wrong (status %u)", hdr[16]);
        return false;
    }
    mmio_ack_interrupt(&hv);
    return true;
}

static bool case_odd_widths(char *detail, size_t n)
{
    u32 oddities = 0;
    for (u32 off = 0; off < MMIO_CONFIG; off++) {
        u8 b = mmio_read8(base + off);
        u16 w = (off & 1) == 0 ? mmio_read16(base + off) : 0;
        if (b || w)
            oddities++;
        mmio_write8(base + off, 0xFF);
        if ((off & 1) == 0)
            mmio_write16(base + off, 0xFFFF);
    }
    for (u32 off = 0; off < MMIO_CONFIG; off += 8)
        *(volatile u64 *)(uintptr_t)(base + off) = ~0ull;
    snprintf(detail, n, "control area 0x%x bytes, %u narrow reads answered non-zero, status 0x%x", MMIO_CONFIG, oddities,
             status());
    return true;
}

static bool case_unaligned(char *detail, size_t n)
{
    u32 nonzero = 0;
    for (u32 off = 1; off < MMIO_CONFIG; off += 2)
        if (*(volatile u32 *)(uintptr_t)(base + off) != 0)
            nonzero++;
    for (u32 off = 1; off < MMIO_CONFIG; off += 2)
        *(volatile u32 *)(uintptr_t)(base + off) = 0xFFFFFFFF;
    snprintf(detail, n, "unaligned 32-bit accesses, %u read non-zero", nonzero);
    return true;
}

static bool case_out_of_range(char *detail, size_t n)
{
    u64 end = base + (hblk->mmio_size ? hblk->mmio_size : 0x1000);
    u32 r = mmio_read32(end - 4) | mmio_read32(base + 0xFFC);
    mmio_write32(end - 4, 0xFFFFFFFF);
    mmio_write32(base + 0x0a8, 1);      /* reserved */
    mmio_write32(base + 0x0ac, 1);      /* SHMSel: no shared memory regions */
    mmio_write32(base + MMIO_QUEUE_SEL, 0xFFFF);
    mmio_write32(base + MMIO_QUEUE_NUM, 8);
    mmio_write32(base + MMIO_QUEUE_READY, 1);
    u32 max = mmio_read32(base + MMIO_QUEUE_NUM_MAX);
    mmio_write32(base + MMIO_QUEUE_NOTIFY, 0xFFFFFFFF);
    mmio_write32(base + MMIO_INTERRUPT_ACK, 0xFFFFFFFF);
    snprintf(detail, n, "end of slot read 0x%x, queue 0xffff max %u", r, max);
    return max == 0;
}

static bool case_ready_before_setup(char *detail, size_t n)
{
    mmio_write32(base + MMIO_STATUS, 0);
    mmio_write32(base + MMIO_STATUS, STATUS_ACK | STATUS_DRIVER);
    mmio_write32(base + MMIO_QUEUE_SEL, 0);
    mmio_write32(base + MMIO_QUEUE_READY, 1);
    u32 ready = mmio_read32(base + MMIO_QUEUE_READY), s = status();
    snprintf(detail, n, "ready=%u status=0x%x", ready, s);
    return ready == 0;
}

static bool case_ring_outside_memory(char *detail, size_t n)
{
    char why[128];
    if (!vdev_init(&hv, hblk, "vioblk0", 0, why, sizeof(why))) {
        snprintf(detail, n, "%s", why);
        return false;
    }
    mmio_write32(base + MMIO_QUEUE_SEL, 0);
    mmio_write32(base + MMIO_QUEUE_NUM, 64);
    mmio_write32(base + MMIO_QUEUE_DESC_LOW, 0xFFFFF000u);
    mmio_write32(base + MMIO_QUEUE_DESC_LOW + 4, 0x7F);
    mmio_write32(base + MMIO_QUEUE_READY, 1);
    u32 ready = mmio_read32(base + MMIO_QUEUE_READY), s = status();
    snprintf(detail, n, "ready=%u status=0x%x needs_reset=%s", ready, s, (s & STATUS_NEEDS_RESET) ? "yes" : "no");
    return ready == 0 && (s & STATUS_NEEDS_RESET);
}

void hostile_mmio_run(struct pci_dev *blk)
{
    static const struct { const char *name; bool (*run)(char *, size_t); } cases[] = {
        { "mmio_odd_widths", case_odd_widths },
        { "mmio_unaligned", case_unaligned },
        { "mmio_out_of_range", case_out_of_range },
        { "mmio_ready_before_setup", case_ready_before_setup },
        { "mmio_ring_outside_memory", case_ring_outside_memory },
    };
    hblk = blk;
    base = blk->mmio_base;
    for (u32 i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char name[48], detail[160], why[160];
        snprintf(name, sizeof(name), "hostile_%s", cases[i].name);
        bool good = cases[i].run(detail, sizeof(detail));
        if (!recover(why, sizeof(why)))
            check_fail(name, "%s; no recovery by reset: %s", detail, why);
        else if (!good)
            check_fail(name, "%s", detail);
        else
            check_ok(name, "%s recovered=yes", detail);
    }
    printf("vmtest: hostile done cases=%u mmio=yes\n", (u32)(sizeof(cases) / sizeof(cases[0])));
}
