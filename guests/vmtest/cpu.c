/*
 * cpu.c: the descriptor tables. cpu_init runs at CPL0 (emulated under PVM), so it
 * only loads them; the IDT entries are written by idt_fill, the first thing CPL3
 * does (the IDT is in a user-writable page), and the TSS is a static initializer.
 */
#include "vmtest.h"

struct idt_entry {
    u16 offset_lo, selector;
    u8 ist, type_attr;
    u16 offset_mid;
    u32 offset_hi, zero;
} __attribute__((packed));

struct tss64 {
    u32 reserved0;
    u64 rsp0, rsp1, rsp2;
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3, iomap_base;
    u8 iomap[8192 + 1];        /* all ports allowed; the last byte must be 0xFF */
} __attribute__((packed));

extern const u64 exc_stubs[32], irq_stubs[16];
extern void isr_ignore(void);
extern u64 gdt_tss[2];
extern u8 kstack_top[];
extern u32 passed, failed;

/* In .data, not .bss: CPL3 clears .bss after these are loaded. */
static struct idt_entry idt[256] __attribute__((aligned(16), section(".data")));
/* PVM drops IOPL on every return to ring 3, so the TSS I/O bitmap grants the ports. */
static struct tss64 tss __attribute__((aligned(16))) = {
    .rsp0 = (uintptr_t)kstack_top,
    .iomap_base = offsetof(struct tss64, iomap),
    .iomap[8192] = 0xFF,
};

static void set_gate(int vec, u64 handler)
{
    idt[vec].offset_lo = (u16)handler;
    idt[vec].selector = 0x08;
    idt[vec].ist = 0;
    idt[vec].type_attr = 0x8E;          /* present, DPL0, 64-bit interrupt gate */
    idt[vec].offset_mid = (u16)(handler >> 16);
    idt[vec].offset_hi = (u32)(handler >> 32);
    idt[vec].zero = 0;
}

/* CPL3: one more gate (msix.c's vectors). */
void idt_set_gate(int vec, u64 handler)
{
    if (vec >= 0x30 && vec < 256)
        set_gate(vec, handler);
}

/* CPL3, before anything can fault: exceptions, PIC vectors, the rest ignored. */
void idt_fill(void)
{
    for (int v = 0; v < 256; v++)
        set_gate(v, (u64)(uintptr_t)isr_ignore);
    for (int v = 0; v < 32; v++)
        set_gate(v, exc_stubs[v]);
    for (int v = 0; v < 16; v++)
        set_gate(0x20 + v, irq_stubs[v]);
}

/* CPL0, from boot.S: the TSS descriptor, then lidt and ltr. */
void cpu_init(void)
{
    u64 base = (u64)(uintptr_t)&tss, limit = sizeof(tss) - 1;
    gdt_tss[0] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89ull << 40) |
                 (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56);
    gdt_tss[1] = base >> 32;

    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)(uintptr_t)idt };
    __asm__ volatile("lidt %0" ::"m"(idtr));
    __asm__ volatile("ltr %w0" ::"r"(0x28));
}

/* Called from exc_common with the frame: vector, error, rip, cs, rflags, rsp, ss. */
void cpu_fault(const u64 *frame)
{
    u64 cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    printf("vmtest: fault FAIL vector=%lu error=0x%lx rip=0x%lx cs=0x%lx rflags=0x%lx rsp=0x%lx cr2=0x%lx\n",
           frame[0], frame[1], frame[2], frame[3], frame[4], frame[5], cr2);
    printf("vmtest summary: passed=%u failed=%u\n", passed, failed + 1);
    power_off();
}
