/*
 * pic.c: the 8259 pair, remapped to vectors 0x20..0x2F with every line masked.
 * The CPL0 stubs in boot.S count an interrupt, mask its line and EOI, so a level-
 * triggered PCI line cannot storm the emulated ring 0. CPL3 code then reads the
 * device's ISR (which lowers the line) and unmasks the line again (irq_service).
 */
#include "vmtest.h"

void pic_init(void)
{
    /* boot.S programmed both PICs (ICW1-4, bases 0x20/0x28) at CPL0 with IF clear:
     * an ICW1 here would reset the vector base to 0 while a BIOS-started PIT ticks. */
    outb(0x21, 0xFB);                      /* everything masked but the cascade (IRQ2) */
    outb(0xA1, 0xFF);
}

/*
 * Opens a line. CPL3 cannot cli (no IOPL under PVM), so a stub may run between our
 * IMR read and write; the worst outcome is that its line is unmasked again and
 * fires once more, which irq_service tolerates (it reads the device ISR each time).
 */
void pic_unmask(int line)
{
    if (line < 0 || line > 15 || line == 2)
        return;

    if (line < 8)
        outb(0x21, (u8)(inb(0x21) & ~(1u << line)));
    else
        outb(0xA1, (u8)(inb(0xA1) & ~(1u << (line - 8))));

}
