/*
 * mmio.c: the virtio-mmio transport (virtio 1.x spec 4.2, version 2), for the
 * microVM shape: no PCI, devices found on the command line as Linux finds them
 * ("virtio_mmio.device=<size>@<base>:<irq>", size with an optional K/M suffix).
 * Each slot becomes a struct pci_dev with mmio_base set, so the device checks
 * (blk, rng, net) run unchanged; virtio.c hands mmio devices to the functions
 * here. Everything the slot says (magic, version, queue sizes) is checked.
 */
#include "vmtest.h"

static u64 parse_number(const char **s, const char *end, bool *ok)
{
    const char *p = *s;
    u64 v = 0;
    int base = 10, digits = 0;
    if (end - p > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
    }
    for (; p < end; p++, digits++) {
        int d;
        if (*p >= '0' && *p <= '9') d = *p - '0';
        else if (base == 16 && *p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
        else if (base == 16 && *p >= 'A' && *p <= 'F') d = *p - 'A' + 10;
        else break;
        if (v > (~0ull >> 4) || digits > 16) { *ok = false; return 0; }
        v = v * (u64)base + (u64)d;
    }
    if (digits == 0) *ok = false;
    *s = p;
    return v;
}

/* One "virtio_mmio.device=SIZE@BASE:IRQ" word; false if malformed. */
static bool parse_device(const char *w, const char *end, u64 *base, u64 *size, u32 *irq)
{
    static const char key[] = "virtio_mmio.device=";
    size_t klen = sizeof(key) - 1;
    if ((size_t)(end - w) <= klen || memcmp(w, key, klen) != 0)
        return false;
    const char *p = w + klen;
    bool ok = true;
    *size = parse_number(&p, end, &ok);
    if (p < end && (*p == 'K' || *p == 'k')) { *size <<= 10; p++; }
    else if (p < end && (*p == 'M' || *p == 'm')) { *size <<= 20; p++; }
    if (!ok || p >= end || *p++ != '@')
        return false;
    *base = parse_number(&p, end, &ok);
    if (!ok || p >= end || *p++ != ':')
        return false;
    u64 i = parse_number(&p, end, &ok);
    if (!ok || i > 255)
        return false;
    *irq = (u32)i;
    /* A trailing ":<id>" (platform device id) is allowed and ignored. */
    return (p == end || *p == ':') && *size >= 0x100 && *size <= 0x100000 && *base >= 0x100000
           && *base < 0xFFFFF000ull && (*base & 3) == 0;
}

int mmio_scan(const char *cmdline, struct pci_dev *out, int max)
{
    int n = 0;
    for (const char *s = cmdline; *s && n < max;) {
        while (*s == ' ')
            s++;
        const char *w = s;
        while (*s && *s != ' ')
            s++;
        u64 base, size;
        u32 irq;
        if (!parse_device(w, s, &base, &size, &irq))
            continue;
        u32 magic = mmio_read32(base + MMIO_MAGIC), version = mmio_read32(base + MMIO_VERSION);
        u32 id = mmio_read32(base + MMIO_DEVICE_ID);
        printf("vmtest: virtio-mmio 0x%lx size 0x%lx irq %u: magic 0x%x version %u device %u\n",
               base, size, irq, magic, version, id);
        if (magic != 0x74726976 || version != 2 || id == 0 || id > 0xFFFF)
            continue;                   /* not a device, legacy (version 1), or an empty slot */
        struct pci_dev *d = &out[n++];
        memset(d, 0, sizeof(*d));
        d->mmio_base = base;
        d->mmio_size = size;
        d->vendor = 0x1af4;
        d->device = id == 0xFFFF ? 0xFFFF : (u16)(0x1040 + id);
        d->irq_line = (u8)irq;
        d->dev = (u8)n;
    }
    return n;
}

bool mmio_vdev_init(struct vdev *d, struct pci_dev *p, const char *name, u64 wanted, char *why, size_t whysz)
{
    u64 b = p->mmio_base;
    d->name = name;
    d->pci = p;
    d->mmio = true;
    d->irq = (p->irq_line > 0 && p->irq_line < 16 && p->irq_line != 2) ? p->irq_line : -1;
    /* Device configuration from 0x100; the rest of the slot is control registers. */
    d->device = (struct vregion){ .io = false, .present = true, .addr = b + MMIO_CONFIG,
                                  .len = (u32)(p->mmio_size > MMIO_CONFIG ? p->mmio_size - MMIO_CONFIG : 0) };
    d->common = (struct vregion){ .io = false, .present = true, .addr = b, .len = MMIO_CONFIG };
    printf("vmtest: %s mmio=0x%lx irq=%d\n", name, b, d->irq);
    mmio_write32(b + MMIO_STATUS, 0);
    for (int i = 0; i < 100000 && mmio_read32(b + MMIO_STATUS) != 0; i++)
        cpu_relax();
    mmio_write32(b + MMIO_STATUS, STATUS_ACK);
    mmio_write32(b + MMIO_STATUS, STATUS_ACK | STATUS_DRIVER);
    mmio_write32(b + MMIO_DEVICE_FEATURES_SEL, 0);
    u64 offered = mmio_read32(b + MMIO_DEVICE_FEATURES);
    mmio_write32(b + MMIO_DEVICE_FEATURES_SEL, 1);
    offered |= (u64)mmio_read32(b + MMIO_DEVICE_FEATURES) << 32;
    if (!(offered & VIRTIO_F_VERSION_1)) {
        mmio_write32(b + MMIO_STATUS, STATUS_FAILED);
        snprintf(why, whysz, "%s: device does not offer VERSION_1 (features 0x%lx)", name, offered);
        return false;
    }
    d->features = offered & (wanted | VIRTIO_F_VERSION_1);
    mmio_write32(b + MMIO_DRIVER_FEATURES_SEL, 0);
    mmio_write32(b + MMIO_DRIVER_FEATURES, (u32)d->features);
    mmio_write32(b + MMIO_DRIVER_FEATURES_SEL, 1);
    mmio_write32(b + MMIO_DRIVER_FEATURES, (u32)(d->features >> 32));
    mmio_write32(b + MMIO_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(mmio_read32(b + MMIO_STATUS) & STATUS_FEATURES_OK)) {
        mmio_write32(b + MMIO_STATUS, STATUS_FAILED);
        snprintf(why, whysz, "%s: device refused features 0x%lx", name, d->features);
        return false;
    }
    return true;
}

static void write64(u64 at, u64 v)
{
    mmio_write32(at, (u32)v);
    mmio_write32(at + 4, (u32)(v >> 32));
}

bool mmio_setup_queue(struct vdev *d, u16 index, u16 max_size, char *why, size_t whysz)
{
    u64 b = d->pci->mmio_base;
    if (index >= VDEV_MAX_QUEUES) {
        snprintf(why, whysz, "%s: queue %u does not exist", d->name, index);
        return false;
    }
    mmio_write32(b + MMIO_QUEUE_SEL, index);
    if (mmio_read32(b + MMIO_QUEUE_READY) != 0) {
        snprintf(why, whysz, "%s: queue %u is ready before set-up", d->name, index);
        return false;
    }
    u32 max = mmio_read32(b + MMIO_QUEUE_NUM_MAX);
    if (max == 0 || max > 32768) {
        snprintf(why, whysz, "%s: queue %u has size %u", d->name, index, max);
        return false;
    }
    struct vq *q = vq_alloc(d, index, max, max_size, why, whysz);
    if (!q)
        return false;
    mmio_write32(b + MMIO_QUEUE_NUM, q->size);
    q->notify_offset = MMIO_QUEUE_NOTIFY;
    write64(b + MMIO_QUEUE_DESC_LOW, (u64)(uintptr_t)q->desc);
    write64(b + MMIO_QUEUE_DRIVER_LOW, (u64)(uintptr_t)q->avail);
    write64(b + MMIO_QUEUE_DEVICE_LOW, (u64)(uintptr_t)q->used);
    mmio_write32(b + MMIO_QUEUE_READY, 1);
    if (mmio_read32(b + MMIO_QUEUE_READY) != 1) {
        snprintf(why, whysz, "%s: queue %u did not become ready", d->name, index);
        return false;
    }
    return true;
}

void mmio_driver_ok(struct vdev *d)
{
    mmio_write32(d->pci->mmio_base + MMIO_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
}

void mmio_kick(struct vq *q)
{
    mmio_write32(q->dev->pci->mmio_base + MMIO_QUEUE_NOTIFY, q->index);
}

/* InterruptStatus does not clear itself: acknowledge what was read. */
u8 mmio_ack_interrupt(struct vdev *d)
{
    u64 b = d->pci->mmio_base;
    u32 status = mmio_read32(b + MMIO_INTERRUPT_STATUS);
    if (status == 0xFFFFFFFF)
        return 0;
    if (status)
        mmio_write32(b + MMIO_INTERRUPT_ACK, status);
    return (u8)status;
}
