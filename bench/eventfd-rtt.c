/*
 * eventfd-rtt.c: the host's floor for one cross-process wake-up round trip, as
 * a device completion costs it (bench/vmbench.py compiles and runs it). Two
 * processes, two eventfds: the parent signals the child, which signals back;
 * each side blocks in read(2), as an event loop's wake-up does.
 * Prints: eventfd_rtt n=N median_us=X p99_us=Y
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    if (n < 100 || n > 10000000)
        n = 20000;
    int ping = eventfd(0, 0), pong = eventfd(0, 0);
    if (ping < 0 || pong < 0) {
        perror("eventfd");
        return 1;
    }
    uint64_t v = 1;
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < n; i++) {
            if (read(ping, &v, 8) != 8 || write(pong, &v, 8) != 8)
                _exit(1);
        }
        _exit(0);
    }
    uint64_t *lat = malloc(sizeof(uint64_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        v = 1;
        if (write(ping, &v, 8) != 8 || read(pong, &v, 8) != 8) {
            perror("eventfd round trip");
            return 1;
        }
        lat[i] = now_ns() - t0;
    }
    waitpid(pid, NULL, 0);
    qsort(lat, (size_t)n, sizeof(uint64_t), cmp);
    printf("eventfd_rtt n=%d median_us=%.1f p99_us=%.1f\n", n, lat[n / 2] / 1000.0, lat[(size_t)n * 99 / 100] / 1000.0);
    return 0;
}
