/* vmtest.h: shared declarations of the vmtest guest (freestanding, x86-64). */
#ifndef VMTEST_H
#define VMTEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

/* ---- port and memory-mapped I/O (CPL3 may use in/out: the TSS I/O bitmap allows all ports) ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)(uintptr_t)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)(uintptr_t)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)(uintptr_t)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)(uintptr_t)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)(uintptr_t)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)(uintptr_t)a = v; }

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void full_barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

/* ---- lib.c ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int snprintf(char *buf, size_t size, const char *fmt, ...);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
void printf(const char *fmt, ...);
void *dma_alloc(size_t size);   /* zeroed, 4 KiB aligned, identity mapped; NULL if out */
u64 rand64(void);
void format_printable(char *out, size_t outsz, const u8 *in, size_t n);

/* ---- cpu.c ---- */
void idt_fill(void);
void idt_set_gate(int vec, u64 handler);   /* vectors 0x30..0xFF */

/* ---- uart.c: COM1 console ---- */
void uart_init(void);
void uart_putc(char c);

/* ---- timer.c: TSC calibrated against the PIT ---- */
extern u64 tsc_hz, tsc_cal_err_ppm;
bool tsc_calibrate(void);
u64 tsc_to_us(u64 ticks);
u64 tsc_to_ns(u64 ticks);
u64 us_to_tsc(u64 us);
void udelay(u64 us);

/* ---- pic.c: 8259 remapped to 0x20..0x2F; stubs in boot.S mask + EOI ---- */
extern volatile u32 irq_count[16];
void pic_init(void);
void pic_unmask(int line);

/* ---- power ---- */
void power_off(void) __attribute__((noreturn));
void reboot(void) __attribute__((noreturn));

/* ---- results (main.c) ---- */
void check_ok(const char *check, const char *fmt, ...);
void check_fail(const char *check, const char *fmt, ...);
void check_skip(const char *check, const char *fmt, ...);

/* ---- options from the Multiboot command line (main.c) ---- */
struct options {
    bool stay, bench;
    bool reboot;                /* reset (i8042) after the checks instead of powering off */
    bool reboot_acpi;           /* reboot=acpi: reset through the FADT reset register instead */
    bool have_ip, have_gw;
    u32 ip, gw, netmask;        /* host byte order */
    u32 bench_scale;            /* percent of the default bench op counts */
    bool cpus_mptable_only;     /* cpus_from=mptable: skip the MADT (tests the MP table path) */
    bool pci_reassign;          /* pci_reassign: clear virtio BARs first (tests BAR assignment) */
    bool no_cpu_tables;         /* no_cpu_tables: a machine without MADT or MP table (microvm) */
    bool hostile;               /* hostile: after the checks, act as a broken/malicious driver */
    u32 kick_stress;            /* kick_stress=N: N rounds of blk_randread_qd1 + net_tx_1500 */
    bool regloop;               /* regloop: read a vioblk register forever after the checks */
    u32 blk_verify;             /* blk_verify=N: write+verify the whole disk for N seconds (verify.c) */
    bool blkfill;               /* blkfill: write the disk sequentially forever after the checks */
    bool dhcp;                  /* dhcp: get ip/gw from a DHCP server before the net check */
    bool slaac;                 /* slaac: IPv6 router solicitation + SLAAC + ping6 (slaac.c) */
    u32 bench_rx;               /* bench_rx[=N]: after net_tx_1500, N rounds of net_rx_1500 (the host floods UDP) */
    bool novmmci;               /* novmmci: leave the vmmci device alone (a guest without its driver) */
    bool blkread;               /* blkread: blk_randread_qd1 and _qd32 only (bench/blk-cold.py) */
    u32 blk_index;              /* blk_index=N: check the N-th virtio-blk device (0 = the first) */
    u32 devloop;                /* devloop=N: rng reads and gateway pings for N seconds (devloop.c) */
    u32 scsi_verify;            /* scsi_verify=N: read and check the CD-ROM for N seconds (scsi.c) */
};
extern struct options opt;

/* ---- dhcp.c: a small DHCP client on vionet0 (net.c sends and polls) ---- */
bool net_send_frame(const u8 *frame, u32 len);
void net_rx_bench(u32 round);                    /* net.c: bench net_rx_1500, round 1.. */
struct vdev;
struct vdev *net_tx_idle_device(u8 *our_mac);    /* net.c: for netgso.c */
void net_gso_bench(void);                        /* netgso.c: bench net_tx_gso64k */
void net_poll(void);
bool dhcp_rx(const u8 *frame, u32 len);          /* true: the frame was a DHCP reply for us */
bool dhcp_configure(const u8 *mac);              /* fills opt.ip/gw/netmask; reports the "dhcp" check */
bool slaac_rx(const u8 *frame, u32 len);         /* slaac.c: true: an IPv6 frame, consumed */
bool slaac_configure(const u8 *mac);             /* RS/RA, SLAAC, ping6; reports the "slaac" check */

/* ---- pci.c ---- */
struct pci_bar {
    u64 base, size;
    bool io, is64, present;
};
struct pci_dev {
    u8 bus, dev, fn;
    u16 vendor, device, subsys_device;
    u8 class_code, subclass, header_type;
    u8 irq_line, irq_pin;
    struct pci_bar bar[6];
    u64 mmio_base, mmio_size;  /* non-zero: a virtio-mmio slot (mmio.c), not a PCI function */
};
int pci_scan(struct pci_dev *out, int max);
u32 pci_read32(const struct pci_dev *d, u8 off);
u16 pci_read16(const struct pci_dev *d, u8 off);
u8 pci_read8(const struct pci_dev *d, u8 off);
void pci_write32(const struct pci_dev *d, u8 off, u32 v);
void pci_write16(const struct pci_dev *d, u8 off, u16 v);
void pci_pool_init(const struct pci_dev *devs, int n);
void pci_setup_bars(struct pci_dev *d);
void pci_enable(struct pci_dev *d);
void pci_clear_bars(struct pci_dev *d);

/* ---- virtio.c: virtio 1.x PCI transport + split virtqueues ---- */
struct vregion {               /* a window inside a BAR: port I/O or MMIO */
    bool io, present;
    u64 addr;
    u32 len;
};
u8 vr_read8(const struct vregion *r, u32 off);
u16 vr_read16(const struct vregion *r, u32 off);
u32 vr_read32(const struct vregion *r, u32 off);
void vr_write8(const struct vregion *r, u32 off, u8 v);
void vr_write16(const struct vregion *r, u32 off, u16 v);
void vr_write32(const struct vregion *r, u32 off, u32 v);

struct vring_desc { u64 addr; u32 len; u16 flags; u16 next; };
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1

/* virtio 1.x common configuration (struct virtio_pci_common_cfg) offsets
 * and device status bits, shared by the driver (virtio.c) and the hostile
 * mode (hostile.c). */
#define CC_DEVICE_FEATURE_SELECT 0x00
#define CC_DEVICE_FEATURE 0x04
#define CC_DRIVER_FEATURE_SELECT 0x08
#define CC_DRIVER_FEATURE 0x0C
#define CC_NUM_QUEUES 0x12
#define CC_STATUS 0x14
#define CC_QUEUE_SELECT 0x16
#define CC_QUEUE_SIZE 0x18
#define CC_QUEUE_ENABLE 0x1C
#define CC_QUEUE_NOTIFY_OFF 0x1E
#define CC_QUEUE_DESC 0x20
#define CC_QUEUE_DRIVER 0x28
#define CC_QUEUE_DEVICE 0x30

#define STATUS_ACK 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_NEEDS_RESET 0x40
#define STATUS_FAILED 0x80

struct vq {
    struct vdev *dev;
    u16 index, size;
    volatile struct vring_desc *desc;
    volatile u16 *avail;       /* flags, idx, ring[size], used_event */
    volatile u8 *used;         /* flags, idx, ring[size] of {u32 id, u32 len} */
    u16 free_head, num_free, last_used, avail_idx;
    u32 notify_offset;         /* byte offset inside the notify region */
    bool event_idx;            /* VIRTIO_F_EVENT_IDX negotiated: avail_event/used_event suppress */
    bool interrupts_off;       /* vq_no_interrupts(q, true) */
    u16 kicked_idx;            /* avail_idx at the last vq_kick (EVENT_IDX) */
};
struct vseg { void *addr; u32 len; bool device_writes; };

#define VDEV_MAX_QUEUES 3        /* virtio-scsi's request queue is queue 2 */
struct vdev {
    const char *name;          /* "vioblk0", used in messages */
    struct pci_dev *pci;
    struct vregion common, notify, isr, device;
    u32 notify_mult;
    u64 features;             /* negotiated */
    int irq;                   /* PIC line or -1 */
    volatile u8 isr_pending;   /* ISR bits collected by irq_service() */
    u32 isr_irqs;              /* interrupts that carried a queue bit for this device */
    struct vq vqs[VDEV_MAX_QUEUES];
    bool legacy;               /* 0.9 I/O-port layout (vmmci) */
    u16 legacy_port;
    bool mmio;                 /* virtio-mmio slot (mmio.c) */
};
#define VIRTIO_F_VERSION_1 (1ULL << 32)
/* Asked for by net.c in bench mode, as Linux's drivers ask for it: kicks the
 * device did not ask for (avail_event) are skipped, and interrupts are
 * suppressed through used_event instead of the avail ring's flag. */
#define VIRTIO_F_EVENT_IDX (1ULL << 29)

/* Finds the capabilities, resets, negotiates (wanted & offered, VERSION_1 required). */
bool vdev_init(struct vdev *d, struct pci_dev *p, const char *name, u64 wanted, char *why, size_t whysz);
bool vdev_setup_queue(struct vdev *d, u16 index, u16 max_size, char *why, size_t whysz);
/* Ring memory and free list for queue index (virtio.c; PCI and mmio use it). */
struct vq *vq_alloc(struct vdev *d, u16 index, u32 offered, u16 max_size, char *why, size_t whysz);
void vdev_driver_ok(struct vdev *d);
int vq_add(struct vq *q, const struct vseg *segs, int n);   /* head id or -1 */
void vq_kick(struct vq *q);                  /* unless EVENT_IDX says the device need not hear */
/* A queue that seems stalled: kick once more, wait up to 1 s, and say
 * whether that completed something (a lost kick) or not. */
const char *vq_kick_again_verdict(struct vq *q);
/* Time a vCPU spent polling a ring: a gap longer than the cap (this vCPU
 * did not run; these machines are guests themselves) counts as the cap. */
struct poll_clock { u64 prev, longest_gap, waited, cap; };
void poll_clock_start(struct poll_clock *c);
void poll_clock_tick(struct poll_clock *c);
int vq_get_used(struct vq *q, u32 *len);                      /* head id or -1 */
void vq_no_interrupts(struct vq *q, bool off);
void irq_register(struct vdev *d);
void irq_service(void);       /* reads ISR of devices whose line fired, unmasks */

/* ---- mmio.c: virtio-mmio (version 2) slots from "virtio_mmio.device=" words ---- */
#define MMIO_MAGIC 0x000
#define MMIO_VERSION 0x004
#define MMIO_DEVICE_ID 0x008
#define MMIO_DEVICE_FEATURES 0x010
#define MMIO_DEVICE_FEATURES_SEL 0x014
#define MMIO_DRIVER_FEATURES 0x020
#define MMIO_DRIVER_FEATURES_SEL 0x024
#define MMIO_QUEUE_SEL 0x030
#define MMIO_QUEUE_NUM_MAX 0x034
#define MMIO_QUEUE_NUM 0x038
#define MMIO_QUEUE_READY 0x044
#define MMIO_QUEUE_NOTIFY 0x050
#define MMIO_INTERRUPT_STATUS 0x060
#define MMIO_INTERRUPT_ACK 0x064
#define MMIO_STATUS 0x070
#define MMIO_QUEUE_DESC_LOW 0x080
#define MMIO_QUEUE_DRIVER_LOW 0x090
#define MMIO_QUEUE_DEVICE_LOW 0x0a0
#define MMIO_CONFIG_GENERATION 0x0fc
#define MMIO_CONFIG 0x100
int mmio_scan(const char *cmdline, struct pci_dev *out, int max);
bool mmio_vdev_init(struct vdev *d, struct pci_dev *p, const char *name, u64 wanted, char *why, size_t whysz);
bool mmio_setup_queue(struct vdev *d, u16 index, u16 max_size, char *why, size_t whysz);
void mmio_driver_ok(struct vdev *d);
void mmio_kick(struct vq *q);
u8 mmio_ack_interrupt(struct vdev *d);
void hostile_mmio_run(struct pci_dev *blk);   /* hostile_mmio.c */

/* ---- pvh.c: the PVH entry's hvm_start_info ---- */
#define PVH_START_MAGIC 0x336ec578u
u64 read_pvh(char *cmdline, size_t size);

/* ---- devices ---- */
void blk_check(struct pci_dev *p);
void blk_bench(void);
void blk_qd1_bench(void);
void blk_read_bench(void);
bool blk_transfer(bool write, u64 sector, u8 *buf, u32 count, char *why, size_t whysz);
u64 blk_capacity(void);                /* sectors; 0 when the check did not set the device up */
void blk_verify_run(u32 seconds);      /* verify.c */
void blk_fill_forever(void);
bool rng_read_once(u8 *buf, u32 len, char *why, size_t whysz);
bool net_ping_once(u64 timeout_us);
void devloop_run(u32 seconds);         /* devloop.c */
void rng_check(struct pci_dev *p);
void scsi_check(struct pci_dev *p);    /* scsi.c */
void scsi_verify_run(u32 seconds);
void net_check(struct pci_dev *p);
void net_bench(void);
void vmmci_check(struct pci_dev *p);
bool vmmci_present(void);
void vmmci_wait(void) __attribute__((noreturn));
void cpus_check(void);
u8 cmos_read(u8 index);
void cmos_write(u8 index, u8 v);
void rtc_check(void);

/* ---- acpi.c: the fixed-feature power button ---- */
void acpi_check(void);
void acpi_poll(void);    /* on a power-button press: enters S5 (does not return) */
bool acpi_reset(void);   /* writes the FADT reset register; false if there is none */
void hostile_run(struct pci_dev *blk, struct pci_dev *devs, int n);
void regloop(const struct pci_dev *blk);
void msix_check(struct pci_dev *blk);    /* msix.c; resets the device */
bool msix_arm(struct pci_dev *p, int vectors);
void msix_disarm(struct pci_dev *p);
extern volatile u32 msix_count[];
void irq_bench(struct pci_dev *blk, struct pci_dev *net);   /* irqbench.c; resets both */   /* regloop.c; returns only if it cannot run */

#endif
