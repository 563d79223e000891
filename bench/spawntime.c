/* spawntime N cmd [args] [-- cmd [args]]...: runs the commands in turn, N
 * rounds, each with stdout and stderr on /dev/null, and prints for each, one
 * line per command, its median wall time from posix_spawn to its exit and
 * its median CPU time (user + system, from wait4), in milliseconds.
 * Alternating keeps a changing load fair to all of them. */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
extern char **environ;
static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}
int main(int argc, char **argv) {
	if (argc < 3) { fprintf(stderr, "usage: spawntime N cmd [args] [-- cmd ...]\n"); return 2; }
	int n = atoi(argv[1]), ncmd = 0;
	char **cmds[64];
	cmds[ncmd++] = argv + 2;
	for (int i = 2; i < argc && ncmd < 64; i++)
		if (strcmp(argv[i], "--") == 0) { argv[i] = NULL; cmds[ncmd++] = argv + i + 1; }
	double *t = calloc((size_t)n * ncmd, sizeof(double));
	double *cpu = calloc((size_t)n * ncmd, sizeof(double));
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	for (int r = 0; r < n; r++)
		for (int c = 0; c < ncmd; c++) {
			struct timespec a, b;
			pid_t p;
			int st;
			struct rusage ru;
			clock_gettime(CLOCK_MONOTONIC, &a);
			if (posix_spawn(&p, cmds[c][0], &fa, NULL, cmds[c], environ) != 0) { perror(cmds[c][0]); return 1; }
			wait4(p, &st, 0, &ru);
			clock_gettime(CLOCK_MONOTONIC, &b);
			t[c * n + r] = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
			cpu[c * n + r] = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
			    (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
		}
	for (int c = 0; c < ncmd; c++) {
		qsort(t + c * n, n, sizeof(double), cmp);
		qsort(cpu + c * n, n, sizeof(double), cmp);
		printf("%.3f %.3f\n", t[c * n + n / 2], cpu[c * n + n / 2]);
	}
	return 0;
}
