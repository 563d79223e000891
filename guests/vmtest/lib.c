/* lib.c: the few C library pieces a freestanding guest needs. */
#include "vmtest.h"

void *memset(void *d, int c, size_t n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    u8 *dp = d;
    const u8 *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x < *y ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* ---- formatting: %s %c %d %u %x %p with l/ll, width and '0' ---- */
struct out { char *buf; size_t size, len; };

static void emit(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void emit_num(struct out *o, u64 v, unsigned base, bool neg, int width, char pad)
{
    char tmp[24];
    int n = 0;
    do {
        unsigned digit = (unsigned)(v % base);
        tmp[n++] = (char)(digit < 10 ? '0' + digit : 'a' + digit - 10);
        v /= base;
    } while (v && n < (int)sizeof(tmp));
    int len = n + (neg ? 1 : 0);
    if (neg && pad == '0')
        emit(o, '-');
    for (; width > len; width--)
        emit(o, pad);
    if (neg && pad != '0')
        emit(o, '-');
    while (n)
        emit(o, tmp[--n]);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(&o, *fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            longs++;
            fmt++;
        }
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int len = (int)strlen(s);
            for (; width > len; width--)
                emit(&o, ' ');
            while (*s)
                emit(&o, *s++);
            break;
        }
        case 'c':
            emit(&o, (char)va_arg(ap, int));
            break;
        case 'd': {
            long long v = longs ? va_arg(ap, long long) : va_arg(ap, int);
            emit_num(&o, v < 0 ? (u64)(-(v + 1)) + 1 : (u64)v, 10, v < 0, width, pad);
            break;
        }
        case 'u':
        case 'x': {
            u64 v = longs ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
            emit_num(&o, v, *fmt == 'x' ? 16 : 10, false, width, pad);
            break;
        }
        case 'p':
            emit(&o, '0');
            emit(&o, 'x');
            emit_num(&o, (u64)(uintptr_t)va_arg(ap, void *), 16, false, width, pad);
            break;
        case '%':
            emit(&o, '%');
            break;
        case 0:
            fmt--;
            break;
        default:
            emit(&o, '%');
            emit(&o, *fmt);
        }
    }
    if (size)
        buf[o.len < size ? o.len : size - 1] = 0;
    return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void printf(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    for (const char *p = line; *p; p++)
        uart_putc(*p);
}

/* Copies bytes from a guest buffer or device for a message: printable ASCII only. */
void format_printable(char *out, size_t outsz, const u8 *in, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < outsz; i++) {
        u8 c = in[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, outsz - o, "\\x%02x", c);
    }
    if (outsz)
        out[o < outsz ? o : outsz - 1] = 0;
}

/*
 * DMA memory for virtqueues and buffers: a bump allocator over a static pool.
 * The guest identity-maps memory, so a pointer is also the guest-physical address.
 */
#define DMA_POOL_SIZE (6u << 20)
/* Not in .bss: clearing 6 MiB before the first console line would cost boot time. */
static u8 dma_pool[DMA_POOL_SIZE] __attribute__((aligned(4096), section(".dmapool")));
static size_t dma_used;

void *dma_alloc(size_t size)
{
    size_t rounded = (size + 4095) & ~(size_t)4095;
    if (rounded < size || rounded > DMA_POOL_SIZE - dma_used)
        return NULL;
    void *p = dma_pool + dma_used;
    dma_used += rounded;
    memset(p, 0, size);
    return p;
}

u64 rand64(void)
{
    static u64 state = 0x9E3779B97F4A7C15ull;
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}
