/*
 * rtc.c: the MC146818 RTC/CMOS at ports 0x70 (index; bit 7 masks NMI) and 0x71
 * (data), read the way every Linux guest reads it at boot. The check reads all
 * 128 registers (with and without the NMI bit) and the clock, and requires a
 * plausible date: BCD digits, fields in range, year 2020..2099.
 */
#include "vmtest.h"

u8 cmos_read(u8 index)
{
    outb(0x70, index);
    return inb(0x71);
}

void cmos_write(u8 index, u8 v)
{
    outb(0x70, index);
    outb(0x71, v);
}

static bool bcd_ok(u8 v, u8 lo, u8 hi)
{
    if ((v & 0x0F) > 9 || (v >> 4) > 9)
        return false;
    u8 n = (u8)((v >> 4) * 10 + (v & 0x0F));
    return n >= lo && n <= hi;
}

void rtc_check(void)
{
    u8 regs[128];
    u32 all_ones = 0;
    for (u32 i = 0; i < 256; i++) {          /* 128..255: the same registers, NMI masked */
        u8 v = cmos_read((u8)i);
        if (i < 128)
            regs[i] = v;
        if (v == 0xFF)
            all_ones++;
    }
    if (all_ones == 256) {
        check_skip("rtc", "no CMOS at 0x70/0x71 (every register reads 0xFF)");
        return;
    }
    /* Wait out an update in progress (register A bit 7), as drivers do. */
    for (int i = 0; i < 100000 && (cmos_read(0x0A) & 0x80); i++)
        cpu_relax();
    u8 b = cmos_read(0x0B);
    u8 sec = cmos_read(0x00), min = cmos_read(0x02), hour = cmos_read(0x04), wday = cmos_read(0x06);
    u8 mday = cmos_read(0x07), mon = cmos_read(0x08), year = cmos_read(0x09), cent = cmos_read(0x32);
    if (b & 0x04) {
        check_skip("rtc", "binary mode (register B 0x%02x): only BCD is checked", b);
        return;
    }
    u8 h = (b & 0x02) ? hour : (u8)(hour & 0x7F);
    if (!bcd_ok(sec, 0, 59) || !bcd_ok(min, 0, 59) || !bcd_ok(h, 0, 23) || !bcd_ok(wday, 1, 7) ||
        !bcd_ok(mday, 1, 31) || !bcd_ok(mon, 1, 12) || !bcd_ok(year, 0, 99) || !(cent == 0x20 || cent == 0x00)) {
        check_fail("rtc", "implausible clock %02x%02x-%02x-%02x %02x:%02x:%02x wday %02x (register B 0x%02x)",
                   cent, year, mon, mday, hour, min, sec, wday, b);
        return;
    }
    if (!bcd_ok(year, 20, 99)) {
        check_fail("rtc", "year 20%02x is before 2020", year);
        return;
    }
    check_ok("rtc", "time=20%02x-%02x-%02xT%02x:%02x:%02x regB=0x%02x regD=0x%02x base_kib=%u",
             year, mon, mday, h, min, sec, b, regs[0x0D], regs[0x15] | regs[0x16] << 8);
}
