/*
 * hostile.c: `hostile` on the command line. After the normal checks, vmtest acts as a
 * broken or malicious driver: malformed rings, chains and indirect tables, malformed
 * block requests, odd config-space accesses, BAR moves, unclaimed ports and RTC
 * abuse. One line per case:
 *
 *     vmtest: hostile_<case> ok <detail>
 *
 * A ring the device cannot trust must put it in DEVICE_NEEDS_RESET (status bit 0x40);
 * a bad request gets an error status in the request itself and the device stays up.
 * After every case the guest resets the device, sets it up again and reads sector 0
 * ("vmdisk 0\n"): recovery by reset. The VMM side asserts that no process died.
 */
#include "vmtest.h"

#define F_INDIRECT (1ULL << 28)
#define F_BLK_FLUSH (1ULL << 9)
#define DESC_F_INDIRECT 4
#define T_IN 0
#define T_OUT 1
#define HQ_SIZE 64

static struct pci_dev *hpci;
static struct pci_dev *all_devs;
static int n_devs;
static struct vdev hd;
static volatile struct vring_desc *ring_desc;
static volatile u16 *ring_avail;
static volatile u8 *ring_used;
static u8 *hdr;        /* 16-byte request header */
static u8 *status;     /* 1 byte */
static u8 *data;       /* 4 KiB */
static volatile struct vring_desc *itable;   /* indirect tables: 2 pages */
static u64 capacity;

static void w64(const struct vregion *r, u32 off, u64 v)
{
    vr_write32(r, off, (u32)v);
    vr_write32(r, off + 4, (u32)(v >> 32));
}

static u8 dev_status(void) { return vr_read8(&hd.common, CC_STATUS); }

/* Waits for DEVICE_NEEDS_RESET; true if seen within `us`. */
static bool wait_needs_reset(u64 us)
{
    u64 t0 = rdtsc();
    do {
        if (dev_status() & STATUS_NEEDS_RESET)
            return true;
        cpu_relax();
    } while (rdtsc() - t0 < us_to_tsc(us));
    return false;
}

/* Sets queue 0 up on the preallocated rings (or, for a case, on the given addresses). */
static bool setup_queue(u64 desc, u64 avail, u64 used, char *why, size_t whysz)
{
    const struct vregion *cc = &hd.common;
    vr_write16(cc, CC_QUEUE_SELECT, 0);
    u16 size = vr_read16(cc, CC_QUEUE_SIZE);
    if (size == 0 || size == 0xFFFF) {
        snprintf(why, whysz, "queue 0 has size %u", size);
        return false;
    }
    if (size > HQ_SIZE)
        size = HQ_SIZE;
    while (size & (size - 1))
        size &= (u16)(size - 1);
    vr_write16(cc, CC_QUEUE_SIZE, size);
    memset((void *)ring_desc, 0, 16u * HQ_SIZE);
    memset((void *)ring_avail, 0, 6u + 2u * HQ_SIZE);
    memset((void *)ring_used, 0, 6u + 8u * HQ_SIZE);
    struct vq *q = &hd.vqs[0];
    q->dev = &hd;
    q->index = 0;
    q->size = size;
    q->desc = ring_desc;
    q->avail = ring_avail;
    q->used = ring_used;
    for (u16 i = 0; i < size; i++)
        ring_desc[i].next = (u16)(i + 1);
    q->free_head = 0;
    q->num_free = size;
    q->last_used = 0;
    q->avail_idx = 0;
    q->notify_offset = (u32)vr_read16(cc, CC_QUEUE_NOTIFY_OFF) * hd.notify_mult;
    w64(cc, CC_QUEUE_DESC, desc);
    w64(cc, CC_QUEUE_DRIVER, avail);
    w64(cc, CC_QUEUE_DEVICE, used);
    vr_write16(cc, CC_QUEUE_ENABLE, 1);
    return true;
}

/* Reset, negotiate (INDIRECT_DESC too), queue 0, DRIVER_OK. */
static bool bring_up(char *why, size_t whysz)
{
    memset(&hd, 0, sizeof(hd));
    if (!vdev_init(&hd, hpci, "vioblk0", F_INDIRECT | F_BLK_FLUSH, why, whysz))
        return false;
    if (!setup_queue((u64)(uintptr_t)ring_desc, (u64)(uintptr_t)ring_avail, (u64)(uintptr_t)ring_used, why, whysz))
        return false;
    vdev_driver_ok(&hd);
    if (dev_status() & STATUS_NEEDS_RESET) {
        snprintf(why, whysz, "NEEDS_RESET right after set-up (status 0x%02x)", dev_status());
        return false;
    }
    capacity = (u64)vr_read32(&hd.device, 0) | ((u64)vr_read32(&hd.device, 4) << 32);
    return true;
}

static void set_desc(u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
    ring_desc[i].addr = addr;
    ring_desc[i].len = len;
    ring_desc[i].flags = flags;
    ring_desc[i].next = next;
}

static void set_itable(u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
    itable[i].addr = addr;
    itable[i].len = len;
    itable[i].flags = flags;
    itable[i].next = next;
}

/* Publishes descriptor `head` (written by hand) and kicks. */
static void publish(u16 head)
{
    struct vq *q = &hd.vqs[0];
    q->avail[2 + (q->avail_idx % q->size)] = head;
    barrier();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    vq_kick(q);
}

static void header(u32 type, u64 sector)
{
    memset(hdr, 0, 16);
    *(u32 *)hdr = type;
    *(u64 *)(hdr + 8) = sector;
    *status = 0xEE;
}

/* A well-formed 3-descriptor request at descriptors 0..2. */
static void request3(u32 type, u64 sector, u32 len)
{
    header(type, sector);
    set_desc(0, (u64)(uintptr_t)hdr, 16, VRING_DESC_F_NEXT, 1);
    set_desc(1, (u64)(uintptr_t)data, len, (u16)(VRING_DESC_F_NEXT | (type == T_IN ? VRING_DESC_F_WRITE : 0)), 2);
    set_desc(2, (u64)(uintptr_t)status, 1, VRING_DESC_F_WRITE, 0);
}

/* Waits for one used element; returns its id or -1. */
static int wait_used(u32 *len, u64 us)
{
    struct vq *q = &hd.vqs[0];
    volatile u16 *used_idx = (volatile u16 *)(q->used + 2);
    u64 t0 = rdtsc();
    while (*used_idx == q->last_used) {
        if (rdtsc() - t0 > us_to_tsc(us))
            return -1;
        cpu_relax();
    }
    barrier();
    volatile u8 *elem = q->used + 4 + 8u * (q->last_used % q->size);
    q->last_used++;
    if (len)
        *len = *(volatile u32 *)(elem + 4);
    return (int)*(volatile u32 *)elem;
}

/* A normal read of sector 0 on a freshly set-up device. */
static bool normal_read(char *why, size_t whysz)
{
    memset(data, 0, 512);
    request3(T_IN, 0, 512);
    publish(0);
    if (wait_used(NULL, 5000000) != 0) {
        snprintf(why, whysz, "no completion of a normal read (status 0x%02x)", dev_status());
        return false;
    }
    if (*status != 0 || memcmp(data, "vmdisk 0\n", 9) != 0) {
        snprintf(why, whysz, "normal read: status %u, data \"%c%c%c%c\"", *status, data[0], data[1], data[2], data[3]);
        return false;
    }
    return true;
}

/* ---- the cases: each returns NULL (as expected) or why not ---- */

typedef const char *(*case_fn)(char *why, size_t whysz);

static char detail[160];

static const char *expect_reset(const char *what, char *why, size_t whysz)
{
    if (!wait_needs_reset(2000000)) {
        snprintf(why, whysz, "%s: no DEVICE_NEEDS_RESET within 2 s (status 0x%02x)", what, dev_status());
        return why;
    }
    snprintf(detail, sizeof(detail), "needs_reset");
    return NULL;
}

static const char *c_avail_jump(char *why, size_t whysz)
{
    struct vq *q = &hd.vqs[0];
    q->avail[1] = (u16)(q->avail_idx + q->size + 3);
    vq_kick(q);
    return expect_reset("avail idx size+3 ahead", why, whysz);
}

static const char *c_head_range(char *why, size_t whysz)
{
    publish((u16)(hd.vqs[0].size + 7));
    return expect_reset("head past the queue", why, whysz);
}

static const char *c_desc_loop(char *why, size_t whysz)
{
    header(T_IN, 0);
    set_desc(0, (u64)(uintptr_t)hdr, 16, VRING_DESC_F_NEXT, 1);
    set_desc(1, (u64)(uintptr_t)hdr, 16, VRING_DESC_F_NEXT, 0);
    publish(0);
    return expect_reset("descriptor loop", why, whysz);
}

static const char *c_next_range(char *why, size_t whysz)
{
    header(T_IN, 0);
    set_desc(0, (u64)(uintptr_t)hdr, 16, VRING_DESC_F_NEXT, 0xFFFF);
    publish(0);
    return expect_reset("next 0xffff", why, whysz);
}

static const char *c_addr_outside(char *why, size_t whysz)
{
    request3(T_IN, 0, 512);
    ring_desc[1].addr = 0x7FFF00000000ull;
    publish(0);
    return expect_reset("buffer far outside RAM", why, whysz);
}

static const char *c_len_outside(char *why, size_t whysz)
{
    request3(T_IN, 0, 512);
    ring_desc[1].len = 0xFFFFF000u;
    publish(0);
    return expect_reset("buffer length 0xfffff000", why, whysz);
}

static const char *c_addr_wrap(char *why, size_t whysz)
{
    request3(T_IN, 0, 512);
    ring_desc[1].addr = 0xFFFFFFFFFFFFFF00ull;
    publish(0);
    return expect_reset("buffer wrapping the address space", why, whysz);
}

static const char *c_readable_after_writable(char *why, size_t whysz)
{
    header(T_IN, 0);
    set_desc(0, (u64)(uintptr_t)hdr, 16, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
    set_desc(1, (u64)(uintptr_t)status, 1, 0, 0);
    publish(0);
    return expect_reset("readable after writable", why, whysz);
}

static const char *c_indirect_nested(char *why, size_t whysz)
{
    header(T_IN, 0);
    set_itable(0, (u64)(uintptr_t)(itable + 8), 32, DESC_F_INDIRECT, 0);
    set_desc(0, (u64)(uintptr_t)itable, 16, DESC_F_INDIRECT, 0);
    publish(0);
    return expect_reset("indirect table inside an indirect table", why, whysz);
}

static const char *c_indirect_oversized(char *why, size_t whysz)
{
    set_desc(0, (u64)(uintptr_t)itable, 4097u * 16, DESC_F_INDIRECT, 0);
    publish(0);
    return expect_reset("indirect table of 4097 entries", why, whysz);
}

static const char *c_indirect_len(char *why, size_t whysz)
{
    set_desc(0, (u64)(uintptr_t)itable, 24, DESC_F_INDIRECT, 0);
    publish(0);
    return expect_reset("indirect table length 24", why, whysz);
}

static const char *c_indirect_loop(char *why, size_t whysz)
{
    header(T_IN, 0);
    set_itable(0, (u64)(uintptr_t)hdr, 16, VRING_DESC_F_NEXT, 1);
    set_itable(1, (u64)(uintptr_t)hdr, 16, VRING_DESC_F_NEXT, 0);
    set_desc(0, (u64)(uintptr_t)itable, 32, DESC_F_INDIRECT, 0);
    publish(0);
    return expect_reset("loop inside an indirect table", why, whysz);
}

static const char *c_indirect_next_range(char *why, size_t whysz)
{
    header(T_IN, 0);
    set_itable(0, (u64)(uintptr_t)hdr, 16, VRING_DESC_F_NEXT, 200);
    set_itable(1, (u64)(uintptr_t)status, 1, VRING_DESC_F_WRITE, 0);
    set_desc(0, (u64)(uintptr_t)itable, 32, DESC_F_INDIRECT, 0);
    publish(0);
    return expect_reset("indirect next past its table", why, whysz);
}

static const char *c_indirect_outside(char *why, size_t whysz)
{
    set_desc(0, 0x7FFF00000000ull, 64, DESC_F_INDIRECT, 0);
    publish(0);
    return expect_reset("indirect table outside RAM", why, whysz);
}

/* The rings themselves outside RAM or misaligned: enabling the queue fails the device. */
static const char *c_ring_outside(char *why, size_t whysz)
{
    vr_write8(&hd.common, CC_STATUS, 0);
    memset(&hd, 0, sizeof(hd));
    if (!vdev_init(&hd, hpci, "vioblk0", F_INDIRECT, why, whysz))
        return why;
    if (!setup_queue(0x7FFF00000000ull, (u64)(uintptr_t)ring_avail, (u64)(uintptr_t)ring_used, why, whysz))
        return why;
    return expect_reset("descriptor table outside RAM", why, whysz);
}

static const char *c_ring_misaligned(char *why, size_t whysz)
{
    vr_write8(&hd.common, CC_STATUS, 0);
    memset(&hd, 0, sizeof(hd));
    if (!vdev_init(&hd, hpci, "vioblk0", F_INDIRECT, why, whysz))
        return why;
    if (!setup_queue((u64)(uintptr_t)ring_desc, (u64)(uintptr_t)ring_avail, (u64)(uintptr_t)ring_used + 2, why, whysz))
        return why;
    return expect_reset("used ring at an address not 4-aligned", why, whysz);
}

/* Bad requests: an error status in the request, the device stays up. */
enum { EXACT, ANY_ERROR, ANY };

static const char *request_status(const char *what, u8 want, int mode, char *why, size_t whysz)
{
    u32 len = 0;
    int id = wait_used(&len, 2000000);
    if (id != 0) {
        snprintf(why, whysz, "%s: no used element within 2 s (got %d, status 0x%02x)", what, id, dev_status());
        return why;
    }
    if (dev_status() & STATUS_NEEDS_RESET) {
        snprintf(why, whysz, "%s: the device wants a reset for a bad request", what);
        return why;
    }
    if ((mode == ANY_ERROR && (*status == 0 || *status == 0xEE)) || (mode == EXACT && *status != want)) {
        snprintf(why, whysz, "%s: status %u, expected %s%u", what, *status, mode == ANY_ERROR ? "an error, not " : "",
                 mode == ANY_ERROR ? 0 : want);
        return why;
    }
    snprintf(detail, sizeof(detail), "status=%u used_len=%u", *status, len);
    return NULL;
}

static const char *c_sector_past_end(char *why, size_t whysz)
{
    request3(T_IN, capacity + 8, 512);
    publish(0);
    return request_status("read past the end", 1, EXACT, why, whysz);
}

static const char *c_sector_huge(char *why, size_t whysz)
{
    request3(T_OUT, 0xFFFFFFFFFFFFFFF0ull, 4096);
    publish(0);
    return request_status("write at sector 2^64-16", 1, EXACT, why, whysz);
}

static const char *c_bad_type(char *why, size_t whysz)
{
    request3(0x55, 0, 512);
    publish(0);
    return request_status("request type 0x55", 2, EXACT, why, whysz);
}

static const char *c_short_header(char *why, size_t whysz)
{
    request3(T_IN, 0, 512);
    ring_desc[0].len = 8;
    publish(0);
    return request_status("8-byte header", 0, ANY_ERROR, why, whysz);
}

static const char *c_odd_length(char *why, size_t whysz)
{
    request3(T_IN, 0, 100);
    publish(0);
    return request_status("read of 100 bytes", 0, ANY_ERROR, why, whysz);
}

static const char *c_no_status(char *why, size_t whysz)
{
    header(T_IN, 0);
    set_desc(0, (u64)(uintptr_t)hdr, 16, 0, 0);
    publish(0);
    u32 len = 0xFFFF;
    int id = wait_used(&len, 2000000);
    if (id != 0 || (dev_status() & STATUS_NEEDS_RESET)) {
        snprintf(why, whysz, "request without a status byte: id %d, status 0x%02x", id, dev_status());
        return why;
    }
    snprintf(detail, sizeof(detail), "used_len=%u", len);
    return NULL;
}

/* ---- config space, BARs, ports, RTC: the device and the VM keep working ---- */

static const char *c_pci_config(char *why, size_t whysz)
{
    (void)why; (void)whysz;
    u32 reads = 0;
    struct pci_dev ghost = { .bus = 0, .dev = 29, .fn = 7 };
    struct pci_dev *targets[2] = { hpci, &ghost };
    for (int t = 0; t < 2; t++) {
        struct pci_dev *d = targets[t];
        for (u32 off = 0; off < 256; off++) {
            outl(0xCF8, 0x80000000u | (u32)d->bus << 16 | (u32)d->dev << 11 | (u32)d->fn << 8 | (off & 0xFC));
            (void)inb((u16)(0xCFC + (off & 3)));
            (void)inw((u16)(0xCFC + (off & 3)));     /* odd widths at odd offsets */
            (void)inl((u16)(0xCFC + (off & 3)));
            reads += 3;
        }
        /* Writes to read-only and unimplemented registers (never the command register or BARs). */
        static const u8 ro[] = { 0x00, 0x02, 0x08, 0x0A, 0x0E, 0x2C, 0x2E, 0x34, 0x40, 0x44, 0x50, 0x80, 0xC0, 0xFC };
        for (u32 i = 0; i < sizeof(ro); i++)
            pci_write32(d, ro[i], 0xFFFFFFFFu);
    }
    /* The address register with an odd width, and a disabled address (not 0xCF9: the reset register). */
    outw(0xCFA, 0xFFFF);
    outl(0xCF8, 0x7FFFFFFFu);
    (void)inl(0xCFC);
    if (pci_read16(hpci, 0) != 0x1AF4 || pci_read16(hpci, 2) != hpci->device) {
        snprintf(why, whysz, "vendor/device changed to %04x:%04x", pci_read16(hpci, 0), pci_read16(hpci, 2));
        return why;
    }
    snprintf(detail, sizeof(detail), "reads=%u", reads);
    return NULL;
}

static const char *c_virtio_config(char *why, size_t whysz)
{
    const struct vregion *cc = &hd.common, *dc = &hd.device;
    for (u32 off = 0; off < cc->len + 8; off++) {
        (void)vr_read8(cc, off);
        (void)vr_read16(cc, off);
        (void)vr_read32(cc, off);
    }
    for (u32 off = 0; off < dc->len + 8; off++) {
        (void)vr_read8(dc, off);
        (void)vr_read16(dc, off);
        (void)vr_read32(dc, off);
        vr_write32(dc, off, 0xFFFFFFFFu);          /* vioblk's config is read-only */
    }
    /* Read-only common fields, a queue that does not exist, odd widths. */
    vr_write16(cc, CC_NUM_QUEUES, 99);
    vr_write32(cc, CC_DEVICE_FEATURE, 0xFFFFFFFFu);
    vr_write32(cc, CC_DEVICE_FEATURE_SELECT, 0x12345678u);
    (void)vr_read32(cc, CC_DEVICE_FEATURE);
    vr_write16(cc, CC_QUEUE_SELECT, 77);
    u16 size77 = vr_read16(cc, CC_QUEUE_SIZE);
    vr_write16(cc, CC_QUEUE_SIZE, 8);
    w64(cc, CC_QUEUE_DESC, 0x1000);
    vr_write16(cc, CC_QUEUE_ENABLE, 1);
    vr_write8(cc, CC_QUEUE_SIZE + 1, 0xFF);
    vr_write16(cc, CC_QUEUE_SELECT, 0);
    vr_write16(cc, CC_QUEUE_SIZE, 2);                /* queue 0 is enabled: ignored */
    vr_write8(&hd.isr, 0, 0xFF);                     /* ISR is read-only */
    vr_write32(&hd.notify, 0, 77);                   /* notify of a queue that does not exist */
    if (size77 != 0) {
        snprintf(why, whysz, "queue 77 has size %u", size77);
        return why;
    }
    if (dev_status() & STATUS_NEEDS_RESET) {
        snprintf(why, whysz, "config accesses put the device in NEEDS_RESET");
        return why;
    }
    if (!normal_read(why, whysz))                    /* no reset in between */
        return why;
    snprintf(detail, sizeof(detail), "common_len=%u device_len=%u", cc->len, dc->len);
    return NULL;
}

static const char *c_bar_unused(char *why, size_t whysz)
{
    const struct pci_bar *b = &hpci->bar[0];
    if (!b->present || !b->io) {
        snprintf(detail, sizeof(detail), "BAR0 is not I/O: skipped");
        return NULL;
    }
    for (u64 off = 0x380; off + 4 <= b->size; off += 3) {   /* past the device config window */
        (void)inb((u16)(b->base + off));
        (void)inw((u16)(b->base + off));
        (void)inl((u16)(b->base + off));
        outl((u16)(b->base + off), 0xFFFFFFFFu);
    }
    if (!normal_read(why, whysz))
        return why;
    snprintf(detail, sizeof(detail), "bar0=0x%lx size=0x%lx", b->base, b->size);
    return NULL;
}

static bool port_is_claimed(u32 port)
{
    for (int k = 0; k < n_devs; k++)
        for (int i = 0; i < 6; i++) {
            const struct pci_bar *b = &all_devs[k].bar[i];
            if (b->present && b->io && port + 4 > b->base && port < b->base + b->size)
                return true;
        }
    return false;
}

static const char *c_unclaimed_ports(char *why, size_t whysz)
{
    (void)why; (void)whysz;
    static const u16 ranges[][2] = { { 0x100, 0x200 }, { 0x500, 0x600 }, { 0x800, 0x900 }, { 0xC000, 0xC100 },
                                     { 0xFF00, 0xFFFC } };
    u32 n = 0;
    for (u32 r = 0; r < sizeof(ranges) / sizeof(ranges[0]); r++)
        for (u32 p = ranges[r][0]; p < ranges[r][1]; p++) {
            if (port_is_claimed(p))
                continue;
            (void)inb((u16)p);
            (void)inw((u16)p);
            (void)inl((u16)p);
            outb((u16)p, 0xA5);
            outw((u16)p, 0xA5A5);
            outl((u16)p, 0xA5A5A5A5u);
            n++;
        }
    snprintf(detail, sizeof(detail), "ports=%u", n);
    return NULL;
}

/* Moves BAR0 elsewhere while the driver runs, does I/O there, moves it back. */
static const char *c_bar_move(char *why, size_t whysz)
{
    struct pci_bar *b = &hpci->bar[0];
    if (!b->present || !b->io || b->size > 0x1000) {
        snprintf(detail, sizeof(detail), "BAR0 is not a small I/O BAR: skipped");
        return NULL;
    }
    u64 old = b->base;
    u64 bases[3] = { 0xD000, 0xE000 + b->size, old };
    for (int i = 0; i < 3; i++) {
        u64 nb = bases[i];
        if (i < 2 && port_is_claimed((u32)nb))
            continue;
        pci_write32(hpci, 0x10, (u32)nb | 1);
        b->base = nb;
        /* The regions follow the BAR: a fresh set-up finds them again. */
        if (!bring_up(why, whysz))
            return why;
        if (!normal_read(why, whysz)) {
            pci_write32(hpci, 0x10, (u32)old | 1);
            b->base = old;
            return why;
        }
    }
    /* Decoding off, a BAR at 0 and one past the end of the port space, then back. */
    u16 cmd = pci_read16(hpci, 0x04);
    pci_write16(hpci, 0x04, (u16)(cmd & ~3u));
    pci_write32(hpci, 0x10, 0 | 1);
    pci_write32(hpci, 0x10, 0xFFFFFFFFu);
    (void)inl((u16)old);
    pci_write32(hpci, 0x10, 0xFFC1);
    pci_write32(hpci, 0x10, (u32)old | 1);
    pci_write16(hpci, 0x04, cmd);
    b->base = old;
    snprintf(detail, sizeof(detail), "moved to 0x%lx and 0x%lx and back to 0x%lx", bases[0], bases[1], old);
    return NULL;
}

static const char *c_rtc(char *why, size_t whysz)
{
    u8 saved[10];
    static const u8 timeregs[10] = { 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32, 0x0A, 0x0B };
    for (int i = 0; i < 10; i++)
        saved[i] = cmos_read(timeregs[i]);
    /* Every index (bit 7 is the NMI mask), every width, on both ports. */
    for (u32 i = 0; i < 256; i++) {
        outb(0x70, (u8)i);
        (void)inb(0x71);
        (void)inw(0x70);
        (void)inl(0x70);
        (void)inb(0x70);
    }
    outw(0x70, 0xFFFF);
    outl(0x70, 0xFFFFFFFFu);
    /* Garbage in the clock: running, then in SET mode, then back to running (adopted). */
    static const u8 garbage[] = { 0xFF, 0x00, 0x99, 0xA5, 0x7F };
    for (u32 g = 0; g < sizeof(garbage); g++) {
        for (int i = 0; i < 8; i++)
            cmos_write(timeregs[i], garbage[g]);
        cmos_write(0x0B, 0x82);
        for (int i = 0; i < 8; i++)
            cmos_write(timeregs[i], garbage[g]);
        cmos_write(0x0B, (u8)(garbage[g] & 0x7F));   /* any mode, SET cleared */
        for (u32 i = 0; i < 128; i++)
            (void)cmos_read((u8)i);
    }
    cmos_write(0x0C, 0xFF);
    cmos_write(0x0D, 0x00);
    /* Put the clock back as it was. */
    cmos_write(0x0B, 0x82);
    for (int i = 0; i < 8; i++)
        cmos_write(timeregs[i], saved[i]);
    cmos_write(0x0A, saved[8]);
    cmos_write(0x0B, (u8)(saved[9] & 0x7F));
    u8 mon = cmos_read(0x08), year = cmos_read(0x09);
    if (year != saved[6] || mon != saved[5]) {
        snprintf(why, whysz, "clock not restored: year %02x month %02x, was %02x %02x", year, mon, saved[6], saved[5]);
        return why;
    }
    snprintf(detail, sizeof(detail), "indexes=256 garbage_patterns=%u", (u32)sizeof(garbage));
    return NULL;
}

struct hcase {
    const char *name;
    case_fn fn;
};

static const struct hcase cases[] = {
    { "avail_idx_jump", c_avail_jump },
    { "head_out_of_range", c_head_range },
    { "desc_loop", c_desc_loop },
    { "desc_next_out_of_range", c_next_range },
    { "buffer_outside_ram", c_addr_outside },
    { "buffer_length_outside_ram", c_len_outside },
    { "buffer_wraps", c_addr_wrap },
    { "readable_after_writable", c_readable_after_writable },
    { "indirect_nested", c_indirect_nested },
    { "indirect_oversized", c_indirect_oversized },
    { "indirect_bad_length", c_indirect_len },
    { "indirect_loop", c_indirect_loop },
    { "indirect_next_out_of_range", c_indirect_next_range },
    { "indirect_outside_ram", c_indirect_outside },
    { "ring_outside_ram", c_ring_outside },
    { "ring_misaligned", c_ring_misaligned },
    { "blk_sector_past_end", c_sector_past_end },
    { "blk_sector_overflow", c_sector_huge },
    { "blk_bad_type", c_bad_type },
    { "blk_short_header", c_short_header },
    { "blk_odd_length", c_odd_length },
    { "blk_no_status_byte", c_no_status },
    { "pci_config_widths", c_pci_config },
    { "virtio_config_widths", c_virtio_config },
    { "bar_unused_offsets", c_bar_unused },
    { "unclaimed_ports", c_unclaimed_ports },
    { "bar_move", c_bar_move },
    { "rtc_cmos", c_rtc },
};

void hostile_run(struct pci_dev *blk, struct pci_dev *devs, int n)
{
    char why[200], name[48];
    all_devs = devs;
    n_devs = n;
    if (!blk) {
        check_skip("hostile", "no virtio-blk device");
        return;
    }
    hpci = blk;
    ring_desc = dma_alloc(16u * HQ_SIZE);
    ring_avail = dma_alloc(6u + 2u * HQ_SIZE);
    ring_used = dma_alloc(6u + 8u * HQ_SIZE);
    u8 *meta = dma_alloc(64);
    data = dma_alloc(4096);
    itable = dma_alloc(2 * 4096 + 4097u * 16);
    if (!ring_desc || !ring_avail || !ring_used || !meta || !data || !itable) {
        check_fail("hostile", "out of DMA memory");
        return;
    }
    hdr = meta;
    status = meta + 32;
    u32 resets = 0;
    for (u32 i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(name, sizeof(name), "hostile_%s", cases[i].name);
        why[0] = 0;
        if (!bring_up(why, sizeof(why))) {
            check_fail(name, "set-up before the case: %s", why);
            continue;
        }
        detail[0] = 0;
        const char *bad = cases[i].fn(why, sizeof(why));
        if (bad) {
            check_fail(name, "%s", bad);
            continue;
        }
        bool was_reset = (dev_status() & STATUS_NEEDS_RESET) != 0;
        /* Recovery: reset, set up again, a normal read. */
        char rwhy[200];
        if (!bring_up(rwhy, sizeof(rwhy)) || !normal_read(rwhy, sizeof(rwhy))) {
            check_fail(name, "%s; no recovery by reset: %s", detail, rwhy);
            continue;
        }
        resets += was_reset;
        check_ok(name, "%s recovered=yes", detail);
    }
    vr_write8(&hd.common, CC_STATUS, 0);
    printf("vmtest: hostile done cases=%u needs_reset=%u\n", (u32)(sizeof(cases) / sizeof(cases[0])), resets);
}
