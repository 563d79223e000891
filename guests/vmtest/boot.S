/*
 * boot.S: the only CPL0 code of vmtest besides cpu.c.
 *
 * Ring-0 guest code is emulated on this project's KVM (PVM, ~3M instr/s), so this
 * file does the minimum: Multiboot entry in 32-bit protected mode, long mode with
 * static identity page tables (first 4 GiB, 2 MiB pages, user-accessible), GDT,
 * then cpu_init() (load IDT + TSS) and an iretq to 64-bit CPL3, where all device work
 * happens at native speed (ports are granted by the TSS I/O bitmap, see below). Interrupt stubs here are tiny: count, mask
 * the PIC line, EOI, return; CPL3 code acknowledges the device and unmasks.
 */

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS   (0x18 | 3)
#define USER_CS   (0x20 | 3)
/*
 * IF=1 at CPL3 (every PIC line is masked until pic_init). IOPL stays 0: this
 * KVM (PVM) clears IOPL on every emulated return to ring 3, so port access from CPL3
 * comes from the TSS I/O permission bitmap (cpu.c), and CPL3 never uses cli/sti.
 */
#define RFLAGS_USER 0x0202

/* ---- Multiboot v1 header (flags: page-align modules, give memory info); not in
 * vmtest-pvh.elf, which QEMU would otherwise boot as Multiboot (pvhnote.S) ---- */
#ifndef PVH_ONLY
    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002
    .long 0x00000003
    .long -(0x1BADB002 + 0x00000003)
#endif

/* ---- 32-bit entry: EAX = magic, EBX = Multiboot info ---- */
    .section .text32, "ax"
    .code32
    .global _start
_start:
    cli
    mov %eax, boot_magic
    mov %ebx, boot_info
    jmp boot_common
    .global pvh_start
pvh_start:                          /* the PVH entry (pvhnote.S): EBX = hvm_start_info */
    cli
    movl $0x336ec578, boot_magic    /* PVH_START_MAGIC: main.c reads start_info */
    mov %ebx, boot_info
boot_common:
    rdtsc
    mov %eax, boot_tsc
    mov %edx, boot_tsc + 4
    lgdt gdt_ptr
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx           /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            /* PG | PE */
    mov %eax, %cr0
    ljmp $KERNEL_CS, $long_entry

/* ---- 64-bit, still CPL0 ---- */
    .text
    .code64
long_entry:
    mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $kstack_top, %rsp
    call cpu_init
    /* Remap the PICs to 0x20/0x28 and mask them here, with IF clear: a BIOS
     * leaves IRQ0 on vector 8, and pic_init's ICW1 (which clears the mask) at
     * CPL3 would let a pending timer tick in as a "double fault". */
    mov $0x11, %al                  /* ICW1 */
    out %al, $0x20
    out %al, $0xA0
    mov $0x20, %al                  /* ICW2: vector bases */
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xA1
    mov $0x04, %al                  /* ICW3 */
    out %al, $0x21
    mov $0x02, %al
    out %al, $0xA1
    mov $0x01, %al                  /* ICW4 */
    out %al, $0x21
    out %al, $0xA1
    mov $0xFF, %al                  /* everything masked until pic_init / pic_unmask */
    out %al, $0x21
    out %al, $0xA1
    pushq $USER_DS                  /* ss */
    pushq $ustack_top               /* rsp */
    pushq $RFLAGS_USER              /* rflags */
    pushq $USER_CS                  /* cs */
    pushq $user_entry               /* rip */
    iretq

/* CPL3 starts here: clear the stack frame link and call the C main. */
user_entry:
    mov $USER_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    xor %ebp, %ebp
    call vmtest_main
1:  jmp 1b

/* ---- exceptions: vector + error code on the stack, then C (cpu.c) ---- */
.macro EXC_NOERR n
exc\n: pushq $0
       pushq $\n
       jmp exc_common
.endm
.macro EXC_ERR n
exc\n: pushq $\n
       jmp exc_common
.endm
    EXC_NOERR 0
    EXC_NOERR 1
    EXC_NOERR 2
    EXC_NOERR 3
    EXC_NOERR 4
    EXC_NOERR 5
    EXC_NOERR 6
    EXC_NOERR 7
    EXC_ERR   8
    EXC_NOERR 9
    EXC_ERR   10
    EXC_ERR   11
    EXC_ERR   12
    EXC_ERR   13
    EXC_ERR   14
    EXC_NOERR 15
    EXC_NOERR 16
    EXC_ERR   17
    EXC_NOERR 18
    EXC_NOERR 19
    EXC_NOERR 20
    EXC_ERR   21
    EXC_NOERR 22
    EXC_NOERR 23
    EXC_NOERR 24
    EXC_NOERR 25
    EXC_NOERR 26
    EXC_NOERR 27
    EXC_NOERR 28
    EXC_ERR   29
    EXC_ERR   30
    EXC_NOERR 31
exc_common:
    mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %rsp, %rdi                  /* -> vector, error, rip, cs, rflags, rsp, ss */
    and $-16, %rsp
    call cpu_fault                  /* reports and powers off; never returns */
2:  hlt
    jmp 2b

/* ---- PIC interrupts 0x20..0x2F: count, mask the line, EOI. ---- */
.macro IRQ n
irq\n: push %rax
       mov $\n, %eax
       jmp irq_common
.endm
    IRQ 0
    IRQ 1
    IRQ 2
    IRQ 3
    IRQ 4
    IRQ 5
    IRQ 6
    IRQ 7
    IRQ 8
    IRQ 9
    IRQ 10
    IRQ 11
    IRQ 12
    IRQ 13
    IRQ 14
    IRQ 15
irq_common:
    push %rcx
    push %rdx
    lock incl irq_count(,%rax,4)
    mov %eax, %ecx
    and $7, %ecx
    mov $1, %edx
    shl %cl, %edx                   /* dl = line bit within its PIC */
    cmp $8, %eax
    jae 3f
    in $0x21, %al
    or %dl, %al
    out %al, $0x21
    mov $0x20, %al
    out %al, $0x20
    jmp 4f
3:  in $0xA1, %al
    or %dl, %al
    out %al, $0xA1
    mov $0x20, %al
    out %al, $0xA0
    out %al, $0x20
4:  pop %rdx
    pop %rcx
    pop %rax
    iretq

/* Anything else (LAPIC spurious vector, stray vectors) is ignored. */
    .global isr_ignore
isr_ignore:
    iretq

    .section .rodata
    .align 8
    .global exc_stubs, irq_stubs
exc_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc\n
    .endr
irq_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .quad irq\n
    .endr

/*
 * Application-processor trampoline, copied to AP_TRAMPOLINE (0x8000) by smp.c and
 * started by INIT-SIPI-SIPI in real mode. Each AP reports in by marking its initial
 * APIC ID (CPUID leaf 1) and counting itself, then halts: nothing else runs there.
 */
#define AP_TRAMPOLINE 0x8000
#define AP_ADDR(sym) (AP_TRAMPOLINE + (sym - ap_tramp_start))
    .global ap_tramp_start, ap_tramp_end, ap_tramp_count, ap_tramp_seen
    .code16
ap_tramp_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov $1, %eax
    cpuid
    shr $24, %ebx
    movb $1, AP_ADDR(ap_tramp_seen)(%bx)   /* mark first: the BSP reads the count, then the marks */
    lock incl AP_ADDR(ap_tramp_count)
6:  cli
    hlt
    jmp 6b
    .align 4
ap_tramp_count:
    .long 0
ap_tramp_seen:
    .fill 256, 1, 0
ap_tramp_end:
    .code64

/* ---- data written at CPL0 before .bss is cleared at CPL3 ---- */
    .data
    .align 16
    .global boot_magic, boot_info, boot_tsc, gdt, gdt_tss
boot_tsc:   .quad 0
boot_magic: .long 0
boot_info:  .long 0
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF        /* 0x08 kernel code, 64-bit */
    .quad 0x00CF92000000FFFF        /* 0x10 kernel data */
    .quad 0x00CFF2000000FFFF        /* 0x18 user data, DPL3 */
    .quad 0x00AFFA000000FFFF        /* 0x20 user code, 64-bit, DPL3 */
gdt_tss:
    .quad 0, 0                      /* 0x28 TSS, filled in by cpu_init */
gdt_end:
    .align 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

/*
 * Identity map of the first 4 GiB with 2 MiB pages, all user-accessible (P|RW|US|PS);
 * 3..4 GiB (PCI MMIO hole, LAPIC, IOAPIC) uncached. Static, so no CPL0 loop fills it.
 */
    .section .data.pagetables, "aw"
    .align 4096
    .global pml4
pml4:
    .quad pdpt + 0x007
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + 0x007
    .quad pd + 0x1000 + 0x007
    .quad pd + 0x2000 + 0x007
    .quad pd + 0x3000 + 0x007
    .fill 508, 8, 0
pd:
    .set page, 0
    .rept 1536
    .quad (page << 21) | 0x087
    .set page, page + 1
    .endr
    .rept 512
    .quad (page << 21) | 0x09F
    .set page, page + 1
    .endr

    .bss
    .align 16
    .global irq_count
irq_count:
    .fill 16, 4, 0

/* Stacks live outside .bss: CPL3 clears .bss while it runs on ustack. */
    .section .stack, "aw", @nobits
    .align 4096
    .global kstack_top, ustack_top
kstack:
    .fill 16384, 1, 0
kstack_top:
ustack:
    .fill 65536, 1, 0
ustack_top:
    .section .note.GNU-stack, "", @progbits
