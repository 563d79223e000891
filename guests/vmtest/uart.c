/*
 * uart.c: COM1 (ns8250/16550 at 0x3F8), polled transmit only. Every port access
 * is a VM exit, so with a 16550 FIFO (IIR says so) up to 16 bytes go out per
 * "transmitter empty" poll instead of one.
 */
#include "vmtest.h"

#define COM1 0x3F8
#define LSR_THR_EMPTY 0x20

static int burst = 1, room;

void uart_init(void)
{
    outb(COM1 + 1, 0x00);   /* no UART interrupts: the console is polled */
    outb(COM1 + 3, 0x80);   /* DLAB on */
    outb(COM1 + 0, 0x01);   /* divisor 1: 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);   /* 8N1, DLAB off */
    outb(COM1 + 2, 0x07);   /* FIFO on and cleared */
    outb(COM1 + 4, 0x03);   /* DTR, RTS */
    burst = (inb(COM1 + 2) & 0xC0) == 0xC0 ? 16 : 1;
    room = 0;
}

void uart_putc(char c)
{
    if (c == '\n')
        uart_putc('\r');
    if (room == 0) {
        /* Bounded wait: a console that never drains must not hang the checks. */
        for (int spins = 0; spins < 100000; spins++)
            if (inb(COM1 + 5) & LSR_THR_EMPTY)
                break;
        room = burst;
    }
    outb(COM1, (u8)c);
    room--;
}
