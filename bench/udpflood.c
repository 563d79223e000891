/*
 * udpflood.c: the traffic source of net_rx_1500 (bench/vmbench.py compiles it and
 * runs it inside the VM's namespace once the guest says net_rx_ready). Sends
 * SIZE-byte UDP datagrams to ADDR:9 for SECONDS, 64 per sendmmsg(2), so the
 * sender's own cost per frame is the kernel's UDP/IP path and nothing more: on
 * these 2-CPU hosts it may share a CPU with the device that feeds the guest,
 * and a sender that spends less per frame leaves more of that CPU to it.
 * Prints: udpflood sent=N errors=E last_errno=X
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: udpflood ADDR SECONDS SIZE\n");
        return 2;
    }
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(9) };
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "udpflood: bad address %s\n", argv[1]);
        return 2;
    }
    double seconds = atof(argv[2]);
    size_t size = (size_t)atol(argv[3]);
    if (seconds <= 0 || size == 0 || size > 65507) {
        fprintf(stderr, "udpflood: bad duration or size\n");
        return 2;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) {
        perror("udpflood: socket");
        return 1;
    }
    int sndbuf = 1 << 22;
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    if (connect(s, (struct sockaddr *)&to, sizeof(to)) < 0) {
        perror("udpflood: connect");
        return 1;
    }
    char *data = calloc(1, size);
    struct iovec iov = { data, size };
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long sent = 0, errors = 0;
    int last_errno = 0;
    double end = now() + seconds;
    while (now() < end) {
        int n = sendmmsg(s, msgs, BATCH, 0);
        if (n > 0)
            sent += (unsigned long)n;
        else {
            /* ENOBUFS, a refused ICMP, or ENETUNREACH once the VM is gone: keep going */
            errors++;
            last_errno = errno;
        }
    }
    printf("udpflood sent=%lu errors=%lu last_errno=%d\n", sent, errors, last_errno);
    return 0;
}
