/* Crash reports for every vmd process (crash.c). */
#ifndef CVMD_CRASH_H
#define CVMD_CRASH_H

#include <stddef.h>

/* Crash reports: handlers for SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP and SIGABRT that
 * write prefix + "crashed: SIGSEGV at address 0x... (si_code N)" + suffix to fd with
 * write(2) only, then re-raise the signal with its default action. */
int cvmd_crash_install(void);
void cvmd_crash_set_output(int fd, const char *prefix, const char *suffix);
size_t cvmd_crash_format(char *buf, size_t cap, int sig, int code, const void *addr, int has_addr);

#endif
