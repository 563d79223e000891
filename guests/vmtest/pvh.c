/*
 * pvh.c: the PVH entry's start information (Xen's hvm_start_info, version 1):
 * the command line and the memory map, as the Multiboot information gives them
 * on the other entry. boot.S stores EBX and sets boot_magic to the start_info
 * magic when it was entered through the PVH note.
 */
#include "vmtest.h"

extern u32 boot_info;

u64 read_pvh(char *cmdline, size_t size)
{
    const u8 *si = (const u8 *)(uintptr_t)boot_info;
    if (boot_info == 0 || boot_info > 0xFFFF0000u || *(const u32 *)si != PVH_START_MAGIC)
        return 0;
    u64 cmd = *(const u64 *)(si + 24);
    const char *c = cmd && cmd < 0xFFFF0000u ? (const char *)(uintptr_t)cmd : NULL;
    size_t i = 0;
    for (; c && i + 1 < size && c[i]; i++)
        cmdline[i] = (c[i] >= 0x20 && c[i] < 0x7f) ? c[i] : ' ';
    cmdline[i] = 0;
    u64 mem_kib = 0;
    if (*(const u32 *)(si + 4) >= 1) {
        u64 map = *(const u64 *)(si + 40);
        u32 entries = *(const u32 *)(si + 48);
        for (u32 e = 0; map && map < 0xFFFF0000u && e < entries && e < 128; e++) {
            const u8 *m = (const u8 *)(uintptr_t)map + 24u * e;
            u64 len = *(const u64 *)(m + 8);
            if (*(const u32 *)(m + 16) == 1 && len < (1ull << 50))
                mem_kib += len / 1024;
        }
    }
    printf("vmtest: pvh start_info at 0x%x version %u memmap entries %u\n", boot_info, *(const u32 *)(si + 4),
           *(const u32 *)(si + 48));
    return mem_kib;
}
