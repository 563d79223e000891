#define _GNU_SOURCE
#include "cvmd_crash.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * Crash reports. A fault handler may run in a sandboxed process that can do
 * little more than write(2) to a descriptor it holds, so the line is built
 * with no allocation, no stdio and no locks, then the signal is re-raised
 * with its default action so the parent's wait status tells the truth.
 */
static char crash_prefix[256];
static size_t crash_prefix_len;
static char crash_suffix[8];
static size_t crash_suffix_len;
static volatile int crash_fd = 2;
static char crash_altstack[64 * 1024];

void cvmd_crash_set_output(int fd, const char *prefix, const char *suffix)
{
	size_t n = strlen(prefix), m = strlen(suffix);
	if (n >= sizeof(crash_prefix))
		n = sizeof(crash_prefix) - 1;
	if (m >= sizeof(crash_suffix))
		m = sizeof(crash_suffix) - 1;
	crash_fd = -1;
	memcpy(crash_prefix, prefix, n);
	crash_prefix_len = n;
	memcpy(crash_suffix, suffix, m);
	crash_suffix_len = m;
	crash_fd = fd;
}

static size_t put_str(char *b, size_t at, size_t cap, const char *s)
{
	while (*s && at < cap)
		b[at++] = *s++;
	return at;
}

static size_t put_hex(char *b, size_t at, size_t cap, unsigned long v)
{
	char t[16];
	int n = 0;
	do {
		t[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v && n < 16);
	at = put_str(b, at, cap, "0x");
	while (n > 0 && at < cap)
		b[at++] = t[--n];
	return at;
}

static size_t put_dec(char *b, size_t at, size_t cap, long v)
{
	char t[24];
	int n = 0;
	unsigned long u = v < 0 ? (unsigned long)-v : (unsigned long)v;
	do {
		t[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u && n < 24);
	if (v < 0 && at < cap)
		b[at++] = '-';
	while (n > 0 && at < cap)
		b[at++] = t[--n];
	return at;
}

static const char *crash_signal_name(int sig)
{
	switch (sig) {
	case SIGSEGV: return "SIGSEGV";
	case SIGBUS: return "SIGBUS";
	case SIGILL: return "SIGILL";
	case SIGFPE: return "SIGFPE";
	case SIGTRAP: return "SIGTRAP";
	case SIGABRT: return "SIGABRT";
	case SIGSYS: return "SIGSYS";
	default: return NULL;
	}
}

/* The line for one trap; exposed for tests. Returns its length (<= cap). */
size_t cvmd_crash_format(char *b, size_t cap, int sig, int code, const void *addr, int has_addr)
{
	size_t at = 0;
	at = put_str(b, at, cap, "crashed: ");
	const char *name = crash_signal_name(sig);
	if (name != NULL) {
		at = put_str(b, at, cap, name);
	} else {
		at = put_str(b, at, cap, "signal ");
		at = put_dec(b, at, cap, sig);
	}
	if (has_addr) {
		at = put_str(b, at, cap, " at address ");
		at = put_hex(b, at, cap, (unsigned long)addr);
	}
	at = put_str(b, at, cap, " (si_code ");
	at = put_dec(b, at, cap, code);
	at = put_str(b, at, cap, ")");
	return at;
}

static void crash_handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	int saved = errno;
	char line[512];
	size_t at = 0;
	/* A fault the kernel raised (si_code > 0) carries the faulting address. */
	int has_addr = si != NULL && si->si_code > 0 && sig != SIGABRT;
	memcpy(line, crash_prefix, crash_prefix_len);
	at = crash_prefix_len;
	at += cvmd_crash_format(line + at, sizeof(line) - at - sizeof(crash_suffix), sig,
				si ? si->si_code : 0, has_addr ? si->si_addr : NULL, has_addr);
	memcpy(line + at, crash_suffix, crash_suffix_len);
	at += crash_suffix_len;
	int fd = crash_fd;
	if (fd >= 0) {
		ssize_t r;
		do
			r = write(fd, line, at);
		while (r < 0 && errno == EINTR);
	}
	/* Default action, then raise: a fault re-faults on return anyway. */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigaction(sig, &dfl, NULL);
	syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), sig);
	errno = saved;
}

int cvmd_crash_install(void)
{
	stack_t ss;
	memset(&ss, 0, sizeof(ss));
	ss.ss_sp = crash_altstack;
	ss.ss_size = sizeof(crash_altstack);
	if (sigaltstack(&ss, NULL) != 0)
		return -1;
	int sigs[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGABRT };
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = crash_handler;
		sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
		sigemptyset(&sa.sa_mask);
		if (sigaction(sigs[i], &sa, NULL) != 0)
			return -1;
	}
	return 0;
}
