/*
 * smp.c: finds the CPUs in the ACPI MADT (RSDP scan) or else the Intel MP table
 * ("_MP_" floating pointer in the EBDA, the last KiB of base memory or 0xF0000-0xFFFFF),
 * starts every other enabled CPU with INIT-SIPI-SIPI through the local APIC, and
 * counts the ones that report in. The APs run the real-mode trampoline in boot.S,
 * copied to 0x8000: it counts itself, marks its APIC ID and halts.
 * Firmware tables are input like any other: checksums and bounds are checked.
 */
#include "vmtest.h"

#define AP_TRAMPOLINE 0x8000u
#define MAX_CPUS 64
#define LAPIC_ID 0x20
#define LAPIC_SVR 0xF0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT0 0x350

extern u8 ap_tramp_start[], ap_tramp_end[], ap_tramp_count[], ap_tramp_seen[];

static u8 apic_ids[MAX_CPUS];
static int n_cpus;
static u64 lapic_base = 0xFEE00000u;
static const char *source = "none";

/* Through an empty asm: gcc must not treat low physical addresses as null-derived. */
static const u8 *phys(u64 a)
{
    uintptr_t p = (uintptr_t)a;
    __asm__("" : "+r"(p));
    return (const u8 *)p;
}
static u32 rd32(const u8 *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }
static u16 rd16(const u8 *p) { return (u16)(p[0] | p[1] << 8); }

static bool sum_ok(const u8 *p, u32 len)
{
    u8 s = 0;
    for (u32 i = 0; i < len; i++)
        s = (u8)(s + p[i]);
    return s == 0;
}

/* Only the identity-mapped first 4 GiB may be read. */
static bool readable(u64 addr, u64 len) { return addr != 0 && len <= 0x100000 && addr + len <= 0xFEC00000ull; }

static void add_cpu(u8 apic_id)
{
    for (int i = 0; i < n_cpus; i++)
        if (apic_ids[i] == apic_id)
            return;
    if (n_cpus < MAX_CPUS)
        apic_ids[n_cpus++] = apic_id;
}

static const u8 *scan(u64 from, u64 to, const char *sig, u32 siglen, u32 sumlen)
{
    for (u64 a = from; a + sumlen <= to; a += 16)
        if (memcmp(phys(a), sig, siglen) == 0 && sum_ok(phys(a), sumlen))
            return phys(a);
    return NULL;
}

static u64 ebda(void)
{
    u64 seg = rd16(phys(0x40E));
    u64 a = seg << 4;
    return (a >= 0x80000 && a < 0xA0000) ? a : 0;
}

static bool parse_madt(const u8 *t)
{
    u32 len = rd32(t + 4);
    if (len < 44 || !readable((u64)(uintptr_t)t, len) || !sum_ok(t, len))
        return false;
    lapic_base = rd32(t + 36);
    for (u32 off = 44; off + 2 <= len;) {
        u8 type = t[off], elen = t[off + 1];
        if (elen < 2 || off + elen > len)
            break;
        if (type == 0 && elen >= 8 && (rd32(t + off + 4) & 1))     /* processor local APIC, enabled */
            add_cpu(t[off + 3]);
        off += elen;
    }
    return n_cpus > 0;
}

static bool find_madt(void)
{
    const u8 *rsdp = NULL;
    if (ebda())
        rsdp = scan(ebda(), ebda() + 1024, "RSD PTR ", 8, 20);
    if (!rsdp)
        rsdp = scan(0xE0000, 0x100000, "RSD PTR ", 8, 20);
    if (!rsdp)
        return false;
    u64 rsdt = rd32(rsdp + 16);
    if (!readable(rsdt, 36) || memcmp(phys(rsdt), "RSDT", 4) != 0)
        return false;
    u32 len = rd32(phys(rsdt) + 4);
    if (len < 36 || !readable(rsdt, len) || !sum_ok(phys(rsdt), len))
        return false;
    for (u32 off = 36; off + 4 <= len; off += 4) {
        u64 t = rd32(phys(rsdt) + off);
        if (readable(t, 36) && memcmp(phys(t), "APIC", 4) == 0 && parse_madt(phys(t))) {
            source = "madt";
            return true;
        }
    }
    return false;
}

static bool find_mptable(void)
{
    const u8 *fp = NULL;
    if (ebda())
        fp = scan(ebda(), ebda() + 1024, "_MP_", 4, 16);
    if (!fp)
        fp = scan(0x9FC00, 0xA0000, "_MP_", 4, 16);
    if (!fp)
        fp = scan(0xF0000, 0x100000, "_MP_", 4, 16);
    if (!fp)
        return false;
    u64 cfg = rd32(fp + 4);
    if (!readable(cfg, 44) || memcmp(phys(cfg), "PCMP", 4) != 0)
        return false;
    const u8 *c = phys(cfg);
    u32 len = rd16(c + 4), count = rd16(c + 34);
    if (len < 44 || !readable(cfg, len) || !sum_ok(c, len))
        return false;
    lapic_base = rd32(c + 36);
    u32 off = 44;
    for (u32 i = 0; i < count && off < len; i++) {
        u8 type = c[off];
        if (type == 0) {                          /* processor: 20 bytes */
            if (off + 20 > len)
                break;
            if (c[off + 3] & 1)
                add_cpu(c[off + 1]);
            off += 20;
        } else if (type <= 4) {
            off += 8;
        } else {
            break;
        }
    }
    if (n_cpus)
        source = "mptable";
    return n_cpus > 0;
}

static u32 lapic_read(u32 reg) { return mmio_read32(lapic_base + reg); }
static void lapic_write(u32 reg, u32 v) { mmio_write32(lapic_base + reg, v); }

static void ipi(u8 apic_id, u32 icr)
{
    lapic_write(LAPIC_ICR_HI, (u32)apic_id << 24);
    lapic_write(LAPIC_ICR_LO, icr);
    for (int i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LO) & (1u << 12)); i++)
        cpu_relax();
}

void cpus_check(void)
{
    if ((opt.cpus_mptable_only || !find_madt()) && !find_mptable()) {
        if (opt.no_cpu_tables) {        /* QEMU -M microvm,acpi=off describes no CPUs */
            /* Nothing set the virtual wire up before a PVH entry: let the PIC reach the BSP. */
            lapic_base = 0xFEE00000u;
            lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100 | 0xFF);
            lapic_write(LAPIC_LVT0, 0x700);
            check_skip("cpus", "no ACPI MADT and no MP table (no_cpu_tables: none expected)");
        } else
            check_fail("cpus", "no ACPI MADT and no MP table found");
        return;
    }
    if (lapic_base == 0 || lapic_base & 0xFFF || !readable(lapic_base, 0x1000))
        lapic_base = 0xFEE00000u;
    u8 bsp = (u8)(lapic_read(LAPIC_ID) >> 24);
    /* Keep the PIC reaching the BSP (LINT0 ExtINT). Software-enable the APIC
     * first: while it is disabled, LVT writes are forced masked (SDM 10.4.7.2),
     * which without a BIOS having enabled it leaves the 8259 cut off. */
    lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100 | 0xFF);
    lapic_write(LAPIC_LVT0, 0x700);

    u32 tramp_len = (u32)(ap_tramp_end - ap_tramp_start);
    u8 *tramp = (u8 *)(uintptr_t)AP_TRAMPOLINE;
    memcpy(tramp, ap_tramp_start, tramp_len);
    volatile u32 *count = (volatile u32 *)(tramp + (ap_tramp_count - ap_tramp_start));
    volatile u8 *seen = tramp + (ap_tramp_seen - ap_tramp_start);

    int started = 0;
    for (int i = 0; i < n_cpus; i++) {
        if (apic_ids[i] == bsp)
            continue;
        u32 before = *count;
        ipi(apic_ids[i], 0x4500);                         /* INIT, assert */
        udelay(10000);
        for (int sipi = 0; sipi < 2 && *count == before; sipi++) {
            ipi(apic_ids[i], 0x4600 | (AP_TRAMPOLINE >> 12));   /* STARTUP */
            u64 t0 = rdtsc();
            while (*count == before && rdtsc() - t0 < us_to_tsc(sipi ? 200000 : 1000))
                cpu_relax();
        }
        started++;
    }
    u64 t0 = rdtsc();
    while ((int)*count < started && rdtsc() - t0 < us_to_tsc(500000))
        cpu_relax();
    int reported = (int)*count;
    for (int i = 0; i < n_cpus; i++)
        if (apic_ids[i] != bsp && !seen[apic_ids[i]]) {
            check_fail("cpus", "count=%d source=%s: cpu with apic id %u did not report in (%d of %d did)",
                       n_cpus, source, apic_ids[i], reported, started);
            return;
        }
    check_ok("cpus", "count=%d source=%s bsp_apic=%u aps_reported=%d", 1 + reported, source, bsp, reported);
}
