/*
 * floor: the kernel's own cost of the files one vmagent sweep reads.
 *
 * Reads a plan on stdin, one item per line: "vm" starts a VM, "pread N PATH"
 * a read of up to N bytes with a cached fd (vmagent's buffer size for that
 * file), "stat PATH" a stat() call (disks), "reopen PATH" an open, read,
 * close (debugfs KVM files, which cannot pread).  Opens
 * every file once, then does ROUNDS sweeps of pread/stat and prints the
 * median sweep time in microseconds per VM.  No parsing: this is the floor
 * vmagent's native code (which parses too) is compared against.
 *
 *   cc -O2 -o floor floor.c && ./floor ROUNDS < plan
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct item {
    int fd;        /* >= 0: pread; -1: stat(path); -2: reopen(path) */
    size_t size;   /* pread count */
    char *path;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 200;
    size_t n = 0, cap = 1024, vms = 0, i;
    struct item *items = malloc(cap * sizeof(*items));
    char line[4096], buf[8192];
    double *times = malloc((size_t)rounds * sizeof(double));
    struct stat st;
    int r;

    while (fgets(line, sizeof(line), stdin) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (strcmp(line, "vm") == 0) {
            vms++;
            continue;
        }
        if (n == cap)
            items = realloc(items, (cap *= 2) * sizeof(*items));
        if (strncmp(line, "pread ", 6) == 0) {
            char *path = strchr(line + 6, ' ');
            if (path == NULL)
                return 2;
            items[n].size = strtoul(line + 6, NULL, 10);
            items[n].fd = open(path + 1, O_RDONLY | O_CLOEXEC);
            if (items[n].fd < 0 || items[n].size > sizeof(buf)) {
                perror(path + 1);
                return 1;
            }
            items[n++].path = NULL;
        } else if (strncmp(line, "stat ", 5) == 0) {
            items[n].fd = -1;
            items[n++].path = strdup(line + 5);
        } else if (strncmp(line, "reopen ", 7) == 0) {
            items[n].fd = -2;
            items[n++].path = strdup(line + 7);
        }
    }
    if (vms == 0 || rounds < 1) {
        fprintf(stderr, "usage: floor ROUNDS < plan (with 'vm' lines)\n");
        return 2;
    }
    for (r = 0; r < rounds; r++) {
        double t0 = now_us();
        for (i = 0; i < n; i++) {
            if (items[i].fd >= 0) {
                if (pread(items[i].fd, buf, items[i].size, 0) < 0)
                    perror("pread");
            } else if (items[i].fd == -1) {
                if (stat(items[i].path, &st) < 0)
                    perror(items[i].path);
            } else {
                int fd = open(items[i].path, O_RDONLY | O_CLOEXEC);
                if (fd < 0 || read(fd, buf, 127) < 0)
                    perror(items[i].path);
                if (fd >= 0)
                    close(fd);
            }
        }
        times[r] = now_us() - t0;
    }
    qsort(times, (size_t)rounds, sizeof(double), cmp_double);
    printf("%.2f\n", times[rounds / 2] / (double)vms);
    return 0;
}
