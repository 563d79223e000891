/*
 * virtio.c: the virtio 1.x PCI transport (vendor capabilities: common config,
 * notify, ISR, device config, each a window of any BAR, port I/O or MMIO) and split
 * virtqueues. Everything a device says (capability offsets, queue sizes, used-ring
 * ids and lengths) is checked before use.
 */
#include "vmtest.h"

#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR 3
#define CAP_DEVICE 4

/* Accesses outside a window read as all-ones and write nothing: a bad offset cannot reach other memory. */
static bool in_window(const struct vregion *r, u32 off, u32 size)
{
    return r->present && off <= r->len && size <= r->len - off;
}

u8 vr_read8(const struct vregion *r, u32 off)
{
    if (!in_window(r, off, 1)) return 0xFF;
    return r->io ? inb((u16)(r->addr + off)) : mmio_read8(r->addr + off);
}
u16 vr_read16(const struct vregion *r, u32 off)
{
    if (!in_window(r, off, 2)) return 0xFFFF;
    return r->io ? inw((u16)(r->addr + off)) : mmio_read16(r->addr + off);
}
u32 vr_read32(const struct vregion *r, u32 off)
{
    if (!in_window(r, off, 4)) return 0xFFFFFFFF;
    return r->io ? inl((u16)(r->addr + off)) : mmio_read32(r->addr + off);
}
void vr_write8(const struct vregion *r, u32 off, u8 v)
{
    if (!in_window(r, off, 1)) return;
    if (r->io) outb((u16)(r->addr + off), v); else mmio_write8(r->addr + off, v);
}
void vr_write16(const struct vregion *r, u32 off, u16 v)
{
    if (!in_window(r, off, 2)) return;
    if (r->io) outw((u16)(r->addr + off), v); else mmio_write16(r->addr + off, v);
}
void vr_write32(const struct vregion *r, u32 off, u32 v)
{
    if (!in_window(r, off, 4)) return;
    if (r->io) outl((u16)(r->addr + off), v); else mmio_write32(r->addr + off, v);
}
static void vr_write64(const struct vregion *r, u32 off, u64 v)
{
    vr_write32(r, off, (u32)v);
    vr_write32(r, off + 4, (u32)(v >> 32));
}

/* Turns a capability's (bar, offset, length) into a window, if it lies inside the BAR. */
static bool cap_window(const struct pci_dev *p, u8 bar, u32 offset, u32 length, struct vregion *out)
{
    if (bar > 5 || !p->bar[bar].present || length == 0)
        return false;
    const struct pci_bar *b = &p->bar[bar];
    if ((u64)offset + length > b->size)
        return false;
    out->io = b->io;
    out->addr = b->base + offset;
    out->len = length;
    out->present = true;
    return true;
}

static bool find_caps(struct vdev *d)
{
    struct pci_dev *p = d->pci;
    if (!(pci_read16(p, 0x06) & 0x10))
        return false;
    u8 ptr = pci_read8(p, 0x34) & 0xFC;
    for (int hops = 0; ptr >= 0x40 && hops < 48; hops++) {
        u8 id = pci_read8(p, ptr), next = pci_read8(p, (u8)(ptr + 1)) & 0xFC;
        if (id == 0x09 && ptr <= 0xEC) {
            u8 type = pci_read8(p, (u8)(ptr + 3)), bar = pci_read8(p, (u8)(ptr + 4));
            u32 offset = pci_read32(p, (u8)(ptr + 8)), length = pci_read32(p, (u8)(ptr + 12));
            struct vregion *r = type == CAP_COMMON ? &d->common : type == CAP_NOTIFY ? &d->notify
                              : type == CAP_ISR ? &d->isr : type == CAP_DEVICE ? &d->device : NULL;
            if (r && !r->present && cap_window(p, bar, offset, length, r) && type == CAP_NOTIFY)
                d->notify_mult = pci_read32(p, (u8)(ptr + 16));
        }
        ptr = next;
    }
    return d->common.present && d->notify.present && d->isr.present;
}

bool vdev_init(struct vdev *d, struct pci_dev *p, const char *name, u64 wanted, char *why, size_t whysz)
{
    if (p->mmio_base)
        return mmio_vdev_init(d, p, name, wanted, why, whysz);
    d->name = name;
    d->pci = p;
    /* The interrupt-line register is trusted even if the pin register says 0. */
    d->irq = (p->irq_line > 0 && p->irq_line < 16 && p->irq_line != 2) ? p->irq_line : -1;
    pci_setup_bars(p);
    pci_enable(p);
    if (!find_caps(d)) {
        snprintf(why, whysz, "%s: no virtio 1.x capabilities (common/notify/isr) inside its BARs", name);
        return false;
    }
    printf("vmtest: %s pci=%02x:%02x.%x irq=%d common=%s:0x%lx notify=%s:0x%lx*%u isr=%s:0x%lx device=%s:0x%lx\n",
           name, p->bus, p->dev, p->fn, d->irq, d->common.io ? "io" : "mem", d->common.addr,
           d->notify.io ? "io" : "mem", d->notify.addr, d->notify_mult, d->isr.io ? "io" : "mem", d->isr.addr,
           d->device.io ? "io" : "mem", d->device.addr);
    const struct vregion *cc = &d->common;
    vr_write8(cc, CC_STATUS, 0);
    for (int i = 0; i < 100000 && vr_read8(cc, CC_STATUS) != 0; i++)
        cpu_relax();
    vr_write8(cc, CC_STATUS, STATUS_ACK);
    vr_write8(cc, CC_STATUS, STATUS_ACK | STATUS_DRIVER);
    vr_write32(cc, CC_DEVICE_FEATURE_SELECT, 0);
    u64 offered = vr_read32(cc, CC_DEVICE_FEATURE);
    vr_write32(cc, CC_DEVICE_FEATURE_SELECT, 1);
    offered |= (u64)vr_read32(cc, CC_DEVICE_FEATURE) << 32;
    if (!(offered & VIRTIO_F_VERSION_1)) {
        vr_write8(cc, CC_STATUS, STATUS_FAILED);
        snprintf(why, whysz, "%s: device does not offer VERSION_1 (features 0x%lx)", name, offered);
        return false;
    }
    d->features = offered & (wanted | VIRTIO_F_VERSION_1);
    vr_write32(cc, CC_DRIVER_FEATURE_SELECT, 0);
    vr_write32(cc, CC_DRIVER_FEATURE, (u32)d->features);
    vr_write32(cc, CC_DRIVER_FEATURE_SELECT, 1);
    vr_write32(cc, CC_DRIVER_FEATURE, (u32)(d->features >> 32));
    vr_write8(cc, CC_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(vr_read8(cc, CC_STATUS) & STATUS_FEATURES_OK)) {
        vr_write8(cc, CC_STATUS, STATUS_FAILED);
        snprintf(why, whysz, "%s: device refused features 0x%lx", name, d->features);
        return false;
    }
    return true;
}

/* The driver side of one split ring: picks the size (the device's offer,
 * capped at max_size, rounded down to a power of two as split rings want),
 * allocates desc/avail/used and chains the free list. Both transports
 * (PCI here, mmio.c) tell the device the size and ring addresses after. */
struct vq *vq_alloc(struct vdev *d, u16 index, u32 offered, u16 max_size, char *why, size_t whysz)
{
    u16 size = offered > max_size ? max_size : (u16)offered;
    while (size & (size - 1))
        size &= (u16)(size - 1);
    struct vq *q = &d->vqs[index];
    q->dev = d;
    q->index = index;
    q->size = size;
    q->desc = dma_alloc(16u * size);
    q->avail = dma_alloc(6u + 2u * size);
    q->used = dma_alloc(6u + 8u * size);
    if (!q->desc || !q->avail || !q->used) {
        snprintf(why, whysz, "%s: out of DMA memory for queue %u", d->name, index);
        return NULL;
    }
    for (u16 i = 0; i < size; i++)
        q->desc[i].next = (u16)(i + 1);
    q->free_head = 0;
    q->num_free = size;
    q->last_used = 0;
    q->avail_idx = 0;
    q->notify_offset = 0;
    q->event_idx = (d->features & VIRTIO_F_EVENT_IDX) != 0;
    q->interrupts_off = false;
    q->kicked_idx = 0;
    return q;
}

bool vdev_setup_queue(struct vdev *d, u16 index, u16 max_size, char *why, size_t whysz)
{
    if (d->mmio)
        return mmio_setup_queue(d, index, max_size, why, whysz);
    const struct vregion *cc = &d->common;
    if (index >= VDEV_MAX_QUEUES || index >= vr_read16(cc, CC_NUM_QUEUES)) {
        snprintf(why, whysz, "%s: queue %u does not exist", d->name, index);
        return false;
    }
    vr_write16(cc, CC_QUEUE_SELECT, index);
    u16 size = vr_read16(cc, CC_QUEUE_SIZE);
    if (size == 0 || size == 0xFFFF) {
        snprintf(why, whysz, "%s: queue %u has size %u", d->name, index, size);
        return false;
    }
    struct vq *q = vq_alloc(d, index, size, max_size, why, whysz);
    if (!q)
        return false;
    vr_write16(cc, CC_QUEUE_SIZE, q->size);
    vr_write64(cc, CC_QUEUE_DESC, (u64)(uintptr_t)q->desc);
    vr_write64(cc, CC_QUEUE_DRIVER, (u64)(uintptr_t)q->avail);
    vr_write64(cc, CC_QUEUE_DEVICE, (u64)(uintptr_t)q->used);
    u32 off = (u32)vr_read16(cc, CC_QUEUE_NOTIFY_OFF) * d->notify_mult;
    if (d->notify_mult != 0 && off / d->notify_mult != vr_read16(cc, CC_QUEUE_NOTIFY_OFF)) {
        snprintf(why, whysz, "%s: queue %u notify offset overflows", d->name, index);
        return false;
    }
    q->notify_offset = off;
    if (!in_window(&d->notify, off, 2)) {
        snprintf(why, whysz, "%s: queue %u notify offset 0x%x outside the notify window", d->name, index, off);
        return false;
    }
    vr_write16(cc, CC_QUEUE_ENABLE, 1);
    return true;
}

void vdev_driver_ok(struct vdev *d)
{
    if (d->mmio) {
        mmio_driver_ok(d);
        return;
    }
    vr_write8(&d->common, CC_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
}

/* Chains segments into free descriptors and publishes the head in the avail ring. */
int vq_add(struct vq *q, const struct vseg *segs, int n)
{
    if (n <= 0 || n > q->num_free || q->free_head >= q->size)
        return -1;
    /* The table is shared memory: a `next` the device scribbled on is caught here. */
    u16 head = q->free_head, idx = head;
    for (int i = 0; i < n; i++) {
        volatile struct vring_desc *dsc = &q->desc[idx];
        dsc->addr = (u64)(uintptr_t)segs[i].addr;
        dsc->len = segs[i].len;
        dsc->flags = (u16)((segs[i].device_writes ? VRING_DESC_F_WRITE : 0) | (i + 1 < n ? VRING_DESC_F_NEXT : 0));
        if (i + 1 < n) {
            idx = dsc->next;
            if (idx >= q->size)
                return -1;
        }
    }
    q->free_head = q->desc[idx].next;
    q->num_free = (u16)(q->num_free - n);
    q->avail[2 + (q->avail_idx % q->size)] = head;
    barrier();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    return head;
}

/* The notify write itself; callers order it after the avail index (full_barrier). */
static void vq_notify(struct vq *q)
{
    if (q->dev->mmio) {
        mmio_kick(q);
        return;
    }
    vr_write16(&q->dev->notify, q->notify_offset, q->index);
}

/* With EVENT_IDX, as Linux's virtqueue_kick_prepare: notify only when the
 * entries added since the last kick cross the device's avail_event (which
 * follows the avail index we publish: full_barrier orders the two). */
void vq_kick(struct vq *q)
{
    full_barrier();
    if (q->event_idx) {
        u16 event = *(volatile u16 *)(q->used + 4 + 8u * q->size);
        u16 new = q->avail_idx, old = q->kicked_idx;
        q->kicked_idx = new;
        if ((u16)(new - event - 1) >= (u16)(new - old))
            return;
    }
    vq_notify(q);
}

/* Interrupts off: used_event half the index space ahead of what we have
 * taken, which a device at most a ring's size ahead of us never crosses
 * (virtio 1.x 2.7.10); on: the next used entry interrupts. */
static void vq_set_used_event(struct vq *q)
{
    volatile u16 *used_event = &q->avail[2 + q->size];
    *used_event = q->interrupts_off ? (u16)(q->last_used + 0x8000) : q->last_used;
}

/* Takes one used element, returns its chain to the free list; -1 if none (or a bad id). */
int vq_get_used(struct vq *q, u32 *len)
{
    volatile u16 *used_idx = (volatile u16 *)(q->used + 2);
    if (q->last_used == *used_idx)
        return -1;
    barrier();
    volatile u8 *elem = q->used + 4 + 8u * (q->last_used % q->size);
    u32 id = *(volatile u32 *)elem;
    if (len)
        *len = *(volatile u32 *)(elem + 4);
    q->last_used++;
    if (q->event_idx)
        vq_set_used_event(q);
    if (id >= q->size)
        return -1;                      /* a device bug; the chain is lost, not reused */
    u16 idx = (u16)id;
    u16 count = 1;
    while ((q->desc[idx].flags & VRING_DESC_F_NEXT) && count < q->size && q->desc[idx].next < q->size) {
        idx = q->desc[idx].next;
        count++;
    }
    q->desc[idx].next = q->free_head;
    q->free_head = (u16)id;
    q->num_free = (u16)(q->num_free + count);
    return (int)id;
}

void vq_no_interrupts(struct vq *q, bool off)
{
    q->avail[0] = off ? VRING_AVAIL_F_NO_INTERRUPT : 0;
    q->interrupts_off = off;
    if (q->event_idx)
        vq_set_used_event(q);
}

/* ---- interrupts: which devices sit on which PIC line ---- */
#define MAX_IRQ_DEVS 8
static struct vdev *irq_devs[MAX_IRQ_DEVS];
static int n_irq_devs;
static u32 irq_seen[16];

void irq_register(struct vdev *d)
{
    if (d->irq < 0 || n_irq_devs >= MAX_IRQ_DEVS)
        return;
    irq_devs[n_irq_devs++] = d;
    irq_seen[d->irq] = irq_count[d->irq];
    pic_unmask(d->irq);
}

/*
 * For every line whose stub ran since the last call: read the ISR of each device on
 * it (that also lowers a level-triggered line), remember the bits, then unmask.
 */
void irq_service(void)
{
    for (int line = 0; line < 16; line++) {
        u32 c = irq_count[line];
        if (c == irq_seen[line])
            continue;
        irq_seen[line] = c;
        bool ours = false;
        for (int i = 0; i < n_irq_devs; i++) {
            struct vdev *d = irq_devs[i];
            if (d->irq != line)
                continue;
            ours = true;
            u8 isr = d->legacy ? inb((u16)(d->legacy_port + 0x13)) : d->mmio ? mmio_ack_interrupt(d)
                                                                         : vr_read8(&d->isr, 0);
            if (isr == 0xFF)
                isr = 0;
            if (isr & 1)
                d->isr_irqs++;
            d->isr_pending |= isr;
        }
        if (ours)
            pic_unmask(line);
    }
}

const char *vq_kick_again_verdict(struct vq *q)
{
    volatile u16 *used_idx = (volatile u16 *)(q->used + 2);
    full_barrier();
    vq_notify(q);                       /* whatever avail_event says: this is the "kick again" */
    u64 t = rdtsc();
    while (*used_idx == q->last_used && rdtsc() - t < us_to_tsc(1000000))
        cpu_relax();
    return *used_idx != q->last_used ? "a second kick completed it: a kick was lost"
                                     : "a second kick did not help";
}

void poll_clock_start(struct poll_clock *c)
{
    c->prev = rdtsc();
    c->longest_gap = 0;
    c->waited = 0;
    c->cap = us_to_tsc(50000);
}

void poll_clock_tick(struct poll_clock *c)
{
    u64 now = rdtsc();
    if (now - c->prev > c->longest_gap)
        c->longest_gap = now - c->prev;
    c->waited += now - c->prev < c->cap ? now - c->prev : c->cap;
    c->prev = now;
}
