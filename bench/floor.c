/*
 * floor: the kernel's own cost of the information one vmagent sweep needs,
 * read the cheapest way the kernel allows (issue 16).
 *
 * Reads a plan on stdin, one item per line:
 *   vm            starts a VM (the result is divided by their number)
 *   pread N PATH  a read of up to N bytes with an fd opened once
 *   readall PATH  lseek to 0 and read to the end, fd opened once (a seq_file
 *                 such as /proc/net/dev gives at most a page per read)
 *   fstat PATH    fstat() of an O_PATH fd opened once (a disk through
 *                 /proc/<pid>/fd/<n>)
 *   stat PATH     stat() by path each sweep (the prober before issue 16)
 *   reopen PATH   open, read, close each sweep (nonseekable debugfs files)
 * A file read once per sweep for all VMs (/proc/net/dev) is one readall line
 * before the first "vm".  A file that cannot be opened (another VM on the
 * host exited meanwhile) is left out with a warning.  The floor as issue 16
 * defines it: per VM /proc/<pid>/{stat,status,io} and each vCPU thread's
 * schedstat, one /proc/net/dev for all taps, fstat of each disk.  No
 * parsing.
 *
 * Does ROUNDS sweeps and prints the median sweep's CPU time of this thread
 * (CLOCK_THREAD_CPUTIME_ID) in microseconds per VM: back-to-back when
 * INTERVAL_MS is 0, else one sweep every INTERVAL_MS (the daemon's cadence;
 * the same reads cost more with cold caches).
 *
 *   cc -O2 -o floor floor.c && ./floor ROUNDS [INTERVAL_MS] < plan
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BUF_MAX (1 << 20)

enum kind { PREAD, READALL, FSTAT, STAT, REOPEN };

struct item {
    enum kind kind;
    int fd;        /* PREAD, READALL, FSTAT */
    size_t size;   /* PREAD count */
    char *path;    /* STAT, REOPEN */
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int parse(struct item *it, char *line)
{
    char *path;

    memset(it, 0, sizeof(*it));
    if (strncmp(line, "pread ", 6) == 0) {
        it->kind = PREAD;
        it->size = strtoul(line + 6, &path, 10);
        if (*path != ' ' || it->size > BUF_MAX)
            return -1;
        it->fd = open(path + 1, O_RDONLY | O_CLOEXEC);
        if (it->fd < 0)
            perror(path + 1);
        return it->fd < 0 ? 1 : 0;
    }
    if (strncmp(line, "readall ", 8) == 0) {
        it->kind = READALL;
        it->fd = open(line + 8, O_RDONLY | O_CLOEXEC);
        if (it->fd < 0)
            perror(line + 8);
        return it->fd < 0 ? 1 : 0;
    }
    if (strncmp(line, "fstat ", 6) == 0) {
        it->kind = FSTAT;
        it->fd = open(line + 6, O_PATH | O_CLOEXEC);
        if (it->fd < 0)
            perror(line + 6);
        return it->fd < 0 ? 1 : 0;
    }
    if (strncmp(line, "stat ", 5) == 0) {
        it->kind = STAT;
        it->path = strdup(line + 5);
        return 0;
    }
    if (strncmp(line, "reopen ", 7) == 0) {
        it->kind = REOPEN;
        it->path = strdup(line + 7);
        return 0;
    }
    fprintf(stderr, "floor: bad plan line: %s\n", line);
    return -1;
}

static void sweep(const struct item *items, size_t n, char *buf)
{
    struct stat st;
    size_t i;
    ssize_t got;
    int fd;

    for (i = 0; i < n; i++) {
        const struct item *it = &items[i];
        switch (it->kind) {
        case PREAD:
            if (pread(it->fd, buf, it->size, 0) < 0)
                perror("pread");
            break;
        case READALL:
            if (lseek(it->fd, 0, SEEK_SET) < 0)
                perror("lseek");
            while ((got = read(it->fd, buf, BUF_MAX)) > 0)
                ;
            if (got < 0)
                perror("read");
            break;
        case FSTAT:
            if (fstat(it->fd, &st) < 0)
                perror("fstat");
            break;
        case STAT:
            if (stat(it->path, &st) < 0)
                perror(it->path);
            break;
        case REOPEN:
            fd = open(it->path, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || read(fd, buf, 127) < 0)
                perror(it->path);
            if (fd >= 0)
                close(fd);
            break;
        }
    }
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 200;
    long interval_ms = argc > 2 ? atol(argv[2]) : 0;
    size_t n = 0, cap = 1024, vms = 0;
    struct item *items = malloc(cap * sizeof(*items));
    char line[4096], *buf = malloc(BUF_MAX);
    double *times = malloc((size_t)(rounds > 0 ? rounds : 1) * sizeof(double));
    struct timespec next;
    int r;

    if (items == NULL || buf == NULL || times == NULL)
        return 1;
    while (fgets(line, sizeof(line), stdin) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (strcmp(line, "vm") == 0) {
            vms++;
            continue;
        }
        if (line[0] == '\0')
            continue;
        if (n == cap && (items = realloc(items, (cap *= 2) *
                                         sizeof(*items))) == NULL)
            return 1;
        switch (parse(&items[n], line)) {
        case 0:
            n++;
            break;
        case 1: /* cannot be opened: left out */
            break;
        default:
            return 1;
        }
    }
    if (vms == 0 || rounds < 1) {
        fprintf(stderr, "usage: floor ROUNDS [INTERVAL_MS] < plan\n");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (r = 0; r < rounds; r++) {
        double t0;

        if (interval_ms > 0) {
            next.tv_nsec += (interval_ms % 1000) * 1000000L;
            next.tv_sec += interval_ms / 1000 + next.tv_nsec / 1000000000L;
            next.tv_nsec %= 1000000000L;
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        }
        t0 = cpu_us();
        sweep(items, n, buf);
        times[r] = cpu_us() - t0;
    }
    qsort(times, (size_t)rounds, sizeof(double), cmp_double);
    printf("%.2f\n", times[rounds / 2] / (double)vms);
    return 0;
}
