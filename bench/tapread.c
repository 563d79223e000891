/*
 * tapread.c: the host's own limit for net_rx_1500's work (bench/vmbench.py
 * compiles it and runs it in a namespace of its own, udpflood.c feeding it):
 * a process that reads frames from a tap as vionet does (IFF_VNET_HDR, one
 * readv(2) per frame into a 2 KiB buffer plus a 64 KiB overflow, up to 64 per
 * poll(2)), with no guest to hand them to. Creates the tap NAME itself.
 * Prints: tapread frames=N fps=X cpu_ns_per_frame=Y
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv)
{
    if (argc != 3 || strlen(argv[1]) >= IFNAMSIZ) {
        fprintf(stderr, "usage: tapread NAME SECONDS\n");
        return 2;
    }
    double seconds = atof(argv[2]);
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strcpy(ifr.ifr_name, argv[1]);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    int header = 12;
    if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &header) < 0) {
        perror("tapread: tap");
        return 1;
    }
    static char buffer[2048], overflow[65536];
    struct iovec iov[2] = { { buffer, sizeof(buffer) }, { overflow, sizeof(overflow) } };
    struct pollfd p = { fd, POLLIN, 0 };
    printf("tapread ready\n");
    fflush(stdout);
    if (poll(&p, 1, 10000) != 1) {
        fprintf(stderr, "tapread: nothing within 10 s\n");
        return 1;
    }
    /* Past the sender's start, as the guest's 0.2 s warm-up. */
    double warm = now();
    while (now() - warm < 0.2)
        if (poll(&p, 1, 100) == 1)
            for (int i = 0; i < 64 && readv(fd, iov, 2) >= 0; i++) {}
    double t0 = now(), c0 = cpu_seconds();
    unsigned long frames = 0;
    while (now() - t0 < seconds) {
        if (poll(&p, 1, 100) != 1)
            continue;
        for (int i = 0; i < 64 && readv(fd, iov, 2) >= 0; i++)
            frames++;
    }
    double elapsed = now() - t0, cpu = cpu_seconds() - c0;
    printf("tapread frames=%lu fps=%.0f cpu_ns_per_frame=%.0f\n", frames, frames / elapsed,
           frames ? cpu * 1e9 / (double)frames : 0.0);
    return 0;
}
