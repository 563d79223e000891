/*
 * acpi.c: the ACPI power button. Finds the FADT (RSDP scan -> RSDT -> "FACP") for
 * the PM1a event and control blocks, reads SLP_TYP for S5 from the DSDT's \_S5
 * package, and enables the fixed-feature power-button event (PWRBTN_EN). While
 * the guest waits (`stay`), acpi_poll() sees PWRBTN_STS, clears it and enters S5
 * by writing SLP_TYP|SLP_EN to PM1a_CNT, as an ACPI OS does on a button press.
 * Firmware tables are input like any other: checksums and bounds are checked.
 */
#include "vmtest.h"

#define PM1_PWRBTN (1u << 8)
#define PM1_SLP_EN (1u << 13)

static u16 pm1a_evt, pm1a_cnt;
static u16 reset_port;            /* FADT RESET_REG in I/O space (0: none) */
static u8 reset_value;
static u32 s5_type;
static bool ready;

static const u8 *phys(u64 a)
{
    uintptr_t p = (uintptr_t)a;
    __asm__("" : "+r"(p));
    return (const u8 *)p;
}
static u32 rd32(const u8 *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }
static bool readable(u64 addr, u64 len) { return addr != 0 && len <= 0x100000 && addr + len <= 0xFEC00000ull; }
static bool sum_ok(const u8 *p, u32 len)
{
    u8 s = 0;
    for (u32 i = 0; i < len; i++)
        s = (u8)(s + p[i]);
    return s == 0;
}

/* A checksummed table at `addr` with signature `sig`, or NULL. */
static const u8 *table(u64 addr, const char *sig)
{
    if (!readable(addr, 36) || memcmp(phys(addr), sig, 4) != 0)
        return NULL;
    u32 len = rd32(phys(addr) + 4);
    if (len < 36 || !readable(addr, len) || !sum_ok(phys(addr), len))
        return NULL;
    return phys(addr);
}

static const u8 *find_rsdp(void)
{
    u64 ebda = (u64)(phys(0x40E)[0] | phys(0x40E)[1] << 8) << 4;
    u64 ranges[2][2] = {{ebda, ebda + 1024}, {0xE0000, 0x100000}};
    for (int r = 0; r < 2; r++) {
        if (ranges[r][0] < 0x80000 && r == 0)
            continue;
        for (u64 a = ranges[r][0]; a + 20 <= ranges[r][1]; a += 16)
            if (memcmp(phys(a), "RSD PTR ", 8) == 0 && sum_ok(phys(a), 20))
                return phys(a);
    }
    return NULL;
}

/* SLP_TYPa of \_S5: NameOp "_S5_" PackageOp PkgLength NumElements, first element. */
static bool find_s5(const u8 *dsdt, u32 *type)
{
    u32 len = rd32(dsdt + 4);
    for (u32 i = 36; i + 12 <= len; i++) {
        if (dsdt[i] != 0x08 || memcmp(dsdt + i + 1 + (dsdt[i + 1] == '\\'), "_S5_", 4) != 0)
            continue;
        u32 at = i + 5 + (dsdt[i + 1] == '\\');
        if (dsdt[at] != 0x12)
            continue;
        at += 1 + (dsdt[at + 1] >> 6) + 1 + 1;     /* PackageOp, PkgLength, NumElements */
        if (at + 2 > len)
            return false;
        switch (dsdt[at]) {
        case 0x00: *type = 0; return true;
        case 0x01: *type = 1; return true;
        case 0x0A: *type = dsdt[at + 1]; return true;
        default: return false;
        }
    }
    return false;
}

void acpi_check(void)
{
    const u8 *rsdp = find_rsdp();
    if (!rsdp) {
        check_skip("acpi", "no RSDP");
        return;
    }
    const u8 *rsdt = table(rd32(rsdp + 16), "RSDT");
    const u8 *fadt = NULL;
    for (u32 off = 36; rsdt && !fadt && off + 4 <= rd32(rsdt + 4); off += 4)
        fadt = table(rd32(rsdt + off), "FACP");
    if (!fadt || rd32(fadt + 4) < 116) {
        check_fail("acpi", "RSDP found but no valid RSDT/FADT");
        return;
    }
    u32 evt = rd32(fadt + 56), cnt = rd32(fadt + 64), sci = fadt[46] | fadt[47] << 8;
    const u8 *dsdt = table(rd32(fadt + 40), "DSDT");
    if (!evt || evt > 0xFFFC || !cnt || cnt > 0xFFFE || fadt[88] < 4 || !dsdt || !find_s5(dsdt, &s5_type) || s5_type > 7) {
        check_fail("acpi", "FADT/DSDT: pm1a_evt=0x%x pm1a_cnt=0x%x dsdt=%s", evt, cnt, dsdt ? "ok" : "bad");
        return;
    }
    /* RESET_REG (GAS at 116: space 1 = I/O) and RESET_VALUE (128), if RESET_REG_SUP (flags bit 10). */
    if (rd32(fadt + 4) >= 129 && (rd32(fadt + 112) & (1u << 10)) && fadt[116] == 1 && rd32(fadt + 124) == 0 &&
        rd32(fadt + 120) <= 0xFFFF) {
        reset_port = (u16)rd32(fadt + 120);
        reset_value = fadt[128];
    }
    pm1a_evt = (u16)evt;
    pm1a_cnt = (u16)cnt;
    u16 en_port = (u16)(pm1a_evt + fadt[88] / 2);
    outw(pm1a_evt, PM1_PWRBTN);                 /* clear a stale press, then enable */
    outw(en_port, (u16)(inw(en_port) | PM1_PWRBTN));
    ready = true;
    check_ok("acpi", "pm1a_evt=0x%x pm1a_cnt=0x%x sci=%u s5_type=%u sci_en=%u reset=0x%x/0x%x", evt, cnt, sci,
             s5_type, inw(pm1a_cnt) & 1, reset_port, reset_value);
}

void acpi_poll(void)
{
    if (!ready || !(inw(pm1a_evt) & PM1_PWRBTN))
        return;
    outw(pm1a_evt, PM1_PWRBTN);
    printf("vmtest: acpi power button pressed, entering S5\n");
    outw(pm1a_cnt, (u16)((s5_type << 10) | PM1_SLP_EN));
    for (;;)
        cpu_relax();
}

bool acpi_reset(void)
{
    if (!reset_port)
        return false;
    printf("vmtest: reboot: resetting through the ACPI reset register 0x%x\n", reset_port);
    outb(reset_port, reset_value);
    for (;;)
        cpu_relax();
}
