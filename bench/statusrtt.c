/* statusrtt SOCKET N: the daemon's share of `vmctl status`. On one open
 * control connection, N+5 times: send vmdGetInfoVMRequest (all VMs), read
 * until vmdInfoVMEnd; prints the median time from sending to the last reply
 * of the last N, in milliseconds, and the rows (VM and backend replies) of
 * the last answer. Parsing the imsg headers in C keeps the client's own
 * share negligible. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { GET_INFO = 10, INFO_DATA = 11, INFO_END = 12, BACKEND_DATA = 22 };

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
	if (argc != 3) { fprintf(stderr, "usage: statusrtt SOCKET N\n"); return 2; }
	int n = atoi(argv[2]), s = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strncpy(sa.sun_path, argv[1], sizeof(sa.sun_path) - 1);
	if (n < 1 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) { perror(argv[1]); return 1; }
	static unsigned char buf[1 << 20];
	double *t = calloc(n, sizeof(double));
	int rows = 0;
	for (int i = 0; i < n + 5; i++) {
		struct timespec a, b;
		uint32_t hdr[4] = { GET_INFO, 16, 0, 0 };   /* type; len 16, flags 0; peer id; pid */
		size_t have = 0, off = 0;
		int done = 0;
		rows = 0;
		clock_gettime(CLOCK_MONOTONIC, &a);
		if (write(s, hdr, 16) != 16) { perror("write"); return 1; }
		while (!done) {
			ssize_t r = read(s, buf + have, sizeof(buf) - have);
			if (r <= 0) { fprintf(stderr, "statusrtt: vmd closed the connection\n"); return 1; }
			have += (size_t)r;
			while (have - off >= 16) {
				uint32_t type;
				uint16_t len;
				memcpy(&type, buf + off, 4);
				memcpy(&len, buf + off + 4, 2);
				if (len < 16) { fprintf(stderr, "statusrtt: bad length %u\n", len); return 1; }
				if (have - off < len) break;
				off += len;
				if (type == INFO_END) { done = 1; break; }
				if (type != INFO_DATA && type != BACKEND_DATA) { fprintf(stderr, "statusrtt: reply type %u\n", type); return 1; }
				rows++;
			}
			if (!done && off > 0) { memmove(buf, buf + off, have - off); have -= off; off = 0; }
		}
		clock_gettime(CLOCK_MONOTONIC, &b);
		if (i >= 5) t[i - 5] = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
	}
	qsort(t, n, sizeof(double), cmp);
	printf("%.3f %d\n", t[n / 2], rows);
	return 0;
}
