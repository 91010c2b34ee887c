/*
 * One VM process: every kernel file it is metered from, opened once and
 * re-read with pread on each sweep (measured: this is what comes close to the
 * cost of the kernel generating the text).  Item files (threads, disks,
 * debugfs) fail one by one into their own err; only the process's stat file
 * failing means the VM is gone.  Tap counters are not here: the caller reads
 * /proc/net/dev once per sweep for every VM (issue 16).  KVM counters come
 * from the VM's binary stats files where the caller could copy them (one
 * pread of each file's data block), else from debugfs, read only when the
 * caller asks (debugfs files cannot pread: an open per file per read).
 */
#define _GNU_SOURCE /* O_PATH */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmprobe.h"

#define TEXT_MAX 8192 /* /proc/<pid>/status is ~1.5 KiB on 6.x */
#define SMALL_MAX 128
#define NO_FD INT_MIN /* an item that has no such file (not an error) */
#define REOPEN (INT_MIN + 1) /* a file that cannot pread: open it each time */

struct vmprobe_vm {
    int stat_fd, status_fd, io_fd;
    int n_sched, n_disks, n_u64;
    int *sched_fd;            /* n_sched; < 0 is -errno from open */
    int *disk_fd;             /* O_PATH; -ESTALE: another file than seen */
    int *blk_fd;              /* NO_FD where there is no block device */
    int *u64_fd;              /* REOPEN: see read_u64_item; NO_FD: kstat */
    char **u64_path;
    int n_kstat, n_src;       /* binary stats files: not owned (the caller's) */
    int *kstat_fd, *src_file, *src_item;
    uint32_t *kstat_off, *kstat_len, *src_off;
};

static int open_in(const char *dir, const char *name)
{
    char path[4096];
    int n = snprintf(path, sizeof(path), "%s/%s", dir, name);

    if (n < 0 || (size_t)n >= sizeof(path))
        return -ENAMETOOLONG;
    return _vmprobe_open_ro(path);
}

static void close_all(int *fds, int n)
{
    int i;

    for (i = 0; fds != NULL && i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

void vmprobe_vm_close(struct vmprobe_vm *vm)
{
    int i;

    if (vm == NULL)
        return;
    close_all(&vm->stat_fd, 1);
    close_all(&vm->status_fd, 1);
    close_all(&vm->io_fd, 1);
    close_all(vm->sched_fd, vm->n_sched);
    close_all(vm->disk_fd, vm->n_disks);
    close_all(vm->blk_fd, vm->n_disks);
    close_all(vm->u64_fd, vm->n_u64);
    for (i = 0; vm->u64_path != NULL && i < vm->n_u64; i++)
        free(vm->u64_path[i]);
    free(vm->u64_path);
    free(vm->sched_fd);
    free(vm->disk_fd);
    free(vm->blk_fd);
    free(vm->u64_fd);
    free(vm->kstat_fd);
    free(vm->kstat_off);
    free(vm->kstat_len);
    free(vm->src_file);
    free(vm->src_off);
    free(vm->src_item);
    free(vm);
}

static int *open_each(const char *const *paths, int n)
{
    int *fds = calloc((size_t)n + 1, sizeof(int)), i;

    for (i = 0; fds != NULL && i < n; i++)
        fds[i] = paths[i] != NULL ? _vmprobe_open_ro(paths[i]) : NO_FD;
    return fds;
}

/* An O_PATH fd on the file behind the VM's own fd (/proc/<pid>/fd/<n>),
 * checked to be the file seen at discovery: the fd number may have been
 * reused since.  It stays that file until the rescan looks again. */
static int open_disk(const char *link, uint64_t dev, uint64_t ino)
{
    struct stat st;
    int fd = open(link, O_PATH | O_CLOEXEC), err;

    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        err = errno;
        close(fd);
        return -err;
    }
    if ((uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino) {
        close(fd);
        return -ESTALE;
    }
    return fd;
}

static void *copy_of(const void *src, int n, size_t size)
{
    void *out = malloc(((size_t)n + 1) * size);

    if (out != NULL && n > 0)
        memcpy(out, src, (size_t)n * size);
    return out;
}

static int copy_kstats(struct vmprobe_vm *vm, const struct vmprobe_vm_spec *s)
{
    int i;

    vm->n_kstat = s->n_kstat;
    vm->n_src = s->n_src;
    vm->kstat_fd = copy_of(s->kstat_fds, s->n_kstat, sizeof(int));
    vm->kstat_off = copy_of(s->kstat_off, s->n_kstat, sizeof(uint32_t));
    vm->kstat_len = copy_of(s->kstat_len, s->n_kstat, sizeof(uint32_t));
    vm->src_file = copy_of(s->src_file, s->n_src, sizeof(int));
    vm->src_off = copy_of(s->src_off, s->n_src, sizeof(uint32_t));
    vm->src_item = copy_of(s->src_item, s->n_src, sizeof(int));
    if (!vm->kstat_fd || !vm->kstat_off || !vm->kstat_len || !vm->src_file ||
        !vm->src_off || !vm->src_item)
        return -1;
    for (i = 0; i < s->n_kstat; i++)
        if (vm->kstat_len[i] > VMPROBE_KSTAT_MAX)
            vm->kstat_len[i] = 0; /* refused: its sources read as EINVAL */
    for (i = 0; i < s->n_src; i++)
        if (vm->src_file[i] < 0 || vm->src_file[i] >= s->n_kstat ||
            vm->src_item[i] < 0 || vm->src_item[i] >= s->n_u64)
            vm->src_item[i] = -1; /* out of range: ignored */
    return 0;
}

static int open_items(struct vmprobe_vm *vm, const struct vmprobe_vm_spec *s)
{
    int i;

    vm->sched_fd = open_each(s->sched_paths, s->n_sched);
    vm->u64_fd = open_each(s->u64_paths, s->n_u64);
    vm->blk_fd = open_each(s->disk_blk_stats, s->n_disks);
    vm->disk_fd = calloc((size_t)s->n_disks + 1, sizeof(int));
    for (i = 0; vm->disk_fd != NULL && i < s->n_disks; i++)
        vm->disk_fd[i] = NO_FD; /* nothing to close if a later step fails */
    vm->u64_path = calloc((size_t)s->n_u64 + 1, sizeof(char *));
    if (!vm->sched_fd || !vm->u64_fd || !vm->blk_fd || !vm->disk_fd ||
        !vm->u64_path || copy_kstats(vm, s) < 0)
        return -1;
    for (i = 0; i < s->n_u64; i++)
        if (s->u64_paths[i] != NULL &&
            (vm->u64_path[i] = strdup(s->u64_paths[i])) == NULL)
            return -1;
    for (i = 0; i < s->n_disks; i++)
        vm->disk_fd[i] = open_disk(s->disk_links[i], s->disk_dev[i],
                                   s->disk_ino[i]);
    return 0;
}

struct vmprobe_vm *vmprobe_vm_open(const struct vmprobe_vm_spec *spec)
{
    struct vmprobe_vm *vm = calloc(1, sizeof(*vm));
    int saved;

    if (vm == NULL)
        return NULL;
    vm->status_fd = vm->io_fd = -1;
    vm->n_sched = spec->n_sched;
    vm->n_disks = spec->n_disks;
    vm->n_u64 = spec->n_u64;
    vm->stat_fd = open_in(spec->proc_dir, "stat");
    if (vm->stat_fd < 0) {
        saved = -vm->stat_fd;
        goto error;
    }
    vm->status_fd = open_in(spec->proc_dir, "status");
    vm->io_fd = open_in(spec->proc_dir, "io");
    if (open_items(vm, spec) < 0) {
        saved = ENOMEM;
        goto error;
    }
    return vm;

error:
    vmprobe_vm_close(vm);
    errno = saved;
    return NULL;
}

/* Reads a text file through its cached fd into buf; 0 or an errno value. */
static int read_text(int fd, char *buf, size_t cap, ssize_t *len)
{
    if (fd == NO_FD)
        return ENOENT;
    if (fd < 0)
        return -fd;
    *len = _vmprobe_pread_text(fd, buf, cap);
    return *len < 0 ? errno : 0;
}

static int read_u64(int fd, uint64_t *out)
{
    char buf[SMALL_MAX];
    ssize_t n;
    int err = read_text(fd, buf, sizeof(buf), &n);

    if (err == 0 && vmprobe_parse_u64(buf, (size_t)n, out) < 0)
        err = errno;
    return err;
}

/* debugfs KVM stat files are nonseekable (pread gives ESPIPE), so such a
 * file is opened, read and closed on every sweep instead. */
static int read_u64_item(struct vmprobe_vm *vm, int i, uint64_t *out)
{
    char buf[SMALL_MAX];
    ssize_t n;
    int err, fd;

    if (vm->u64_fd[i] != REOPEN) {
        err = read_u64(vm->u64_fd[i], out);
        if (err != ESPIPE)
            return err;
        close(vm->u64_fd[i]);
        vm->u64_fd[i] = REOPEN;
    }
    fd = _vmprobe_open_ro(vm->u64_path[i]);
    if (fd < 0)
        return -fd;
    do {
        n = read(fd, buf, sizeof(buf) - 1);
    } while (n < 0 && errno == EINTR);
    err = n < 0 ? errno : 0;
    close(fd);
    if (err == 0 && vmprobe_parse_u64(buf, (size_t)n, out) < 0)
        err = errno;
    return err;
}

/* The binary stats items: each file's data range read with one pread, each
 * source's u64 added to its item.  Layout: api.rst 4.133 (struct
 * kvm_stats_header, kvm_stats_desc; the data block at data_offset, one
 * stat at desc.offset within it), served by kvm_stats_read()
 * (torvalds/linux:virt/kvm/binary_stats.c), which needs no lock on the
 * VM and takes any offset: a pread, not a whole-file read. */
static void read_kstats(struct vmprobe_vm *vm, struct vmprobe_reading *out)
{
    unsigned char buf[VMPROBE_KSTAT_MAX];
    ssize_t n;
    uint64_t v;
    int f, j, err, item;

    for (j = 0; j < vm->n_u64; j++)
        if (vm->u64_path[j] == NULL) { /* a kstat item without a source */
            out->u64s[j].value = 0;
            out->u64s[j].err = ENOENT;
        }
    for (j = 0; j < vm->n_src; j++)
        if ((item = vm->src_item[j]) >= 0) {
            out->u64s[item].value = 0;
            out->u64s[item].err = 0;
        }
    for (f = 0; f < vm->n_kstat; f++) {
        do {
            n = pread(vm->kstat_fd[f], buf, vm->kstat_len[f],
                      vm->kstat_off[f]);
        } while (n < 0 && errno == EINTR);
        err = n < 0 ? errno : 0;
        for (j = 0; j < vm->n_src; j++) {
            if (vm->src_file[j] != f || (item = vm->src_item[j]) < 0)
                continue;
            if (err == 0 && (n < 8 || vm->src_off[j] > (uint32_t)n - 8))
                err = EINVAL; /* shorter than the header promised */
            if (err != 0) {
                out->u64s[item].err = err;
                continue;
            }
            memcpy(&v, buf + vm->src_off[j], sizeof(v)); /* host order */
            out->u64s[item].value += v;
        }
    }
}

/* /sys/dev/block/M:m/stat: fields 1, 3, 5, 7 (Documentation/block/stat.rst) */
static int read_blk(int fd, struct vmprobe_disk *d)
{
    char buf[512];
    unsigned long long v[7];
    ssize_t n;
    int err = read_text(fd, buf, sizeof(buf), &n);

    if (err != 0)
        return err;
    if (sscanf(buf, "%llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
               &v[2], &v[3], &v[4], &v[5], &v[6]) != 7)
        return EINVAL;
    d->rd_ios = v[0];
    d->rd_sectors = v[2];
    d->wr_ios = v[4];
    d->wr_sectors = v[6];
    d->has_blk = 1;
    return 0;
}

/* fstat() of the O_PATH fd opened at discovery (open_disk): no path walk
 * through /proc/<pid>/fd each sweep. */
static void read_disk(struct vmprobe_vm *vm, int i, struct vmprobe_disk *d)
{
    struct stat st;

    memset(d, 0, sizeof(*d));
    if (vm->disk_fd[i] < 0) {
        d->err = vm->disk_fd[i] == NO_FD ? ENOENT : -vm->disk_fd[i];
        return;
    }
    if (fstat(vm->disk_fd[i], &st) < 0) {
        d->err = errno;
        return;
    }
    d->size_bytes = (uint64_t)st.st_size;
    d->alloc_bytes = (uint64_t)st.st_blocks * 512; /* st_blocks: 512 B units */
    if (vm->blk_fd[i] != NO_FD)
        d->err = read_blk(vm->blk_fd[i], d);
}

static int read_process(struct vmprobe_vm *vm, struct vmprobe_reading *out)
{
    char buf[TEXT_MAX];
    ssize_t n;
    int err = read_text(vm->stat_fd, buf, sizeof(buf), &n);

    /* A reaped process's stat fd gives ESRCH; a zombie has lost its mm. */
    if (err == 0 && n == 0)
        err = ESRCH;
    if (err == 0 && vmprobe_parse_stat(buf, (size_t)n, &out->stat) < 0)
        err = errno;
    if (err == 0 && (out->stat.state == 'Z' || out->stat.state == 'X'))
        err = ESRCH;
    if (err != 0) {
        errno = err;
        return -1;
    }
    out->status_err = read_text(vm->status_fd, buf, sizeof(buf), &n);
    if (out->status_err == 0 &&
        vmprobe_parse_status(buf, (size_t)n, &out->status) < 0)
        out->status_err = errno;
    out->io_err = read_text(vm->io_fd, buf, sizeof(buf), &n);
    if (out->io_err == 0 && vmprobe_parse_io(buf, (size_t)n, &out->io) < 0)
        out->io_err = errno;
    return 0;
}

int vmprobe_vm_read(struct vmprobe_vm *vm, struct vmprobe_reading *out)
{
    char buf[SMALL_MAX];
    ssize_t n;
    int i;

    if (read_process(vm, out) < 0)
        return -1;
    for (i = 0; i < vm->n_sched; i++) {
        struct vmprobe_thread *t = &out->threads[i];
        t->err = read_text(vm->sched_fd[i], buf, sizeof(buf), &n);
        if (t->err == 0 &&
            vmprobe_parse_schedstat(buf, (size_t)n, &t->sched) < 0)
            t->err = errno;
    }
    for (i = 0; i < vm->n_disks; i++)
        read_disk(vm, i, &out->disks[i]);
    for (i = 0; i < vm->n_u64; i++) {
        if (vm->u64_path[i] == NULL)
            continue; /* a kstat item: read_kstats */
        out->u64s[i].err = out->read_debugfs ?
            read_u64_item(vm, i, &out->u64s[i].value) : EAGAIN;
    }
    read_kstats(vm, out);
    return 0;
}

size_t vmprobe_vm_flat_len(const struct vmprobe_vm *vm)
{
    return VMPROBE_FLAT_FIXED + (size_t)vm->n_sched * VMPROBE_FLAT_THREAD +
           (size_t)vm->n_disks * VMPROBE_FLAT_DISK +
           (size_t)vm->n_u64 * VMPROBE_FLAT_U64;
}

static uint64_t *flatten_items(const struct vmprobe_vm *vm,
                               const struct vmprobe_reading *r, uint64_t *p)
{
    int i;

    for (i = 0; i < vm->n_sched; i++) {
        const struct vmprobe_thread *t = &r->threads[i];
        *p++ = (uint64_t)t->err;
        *p++ = t->sched.run_ns;
        *p++ = t->sched.wait_ns;
    }
    for (i = 0; i < vm->n_disks; i++) {
        const struct vmprobe_disk *d = &r->disks[i];
        *p++ = (uint64_t)d->err;
        *p++ = d->size_bytes;
        *p++ = d->alloc_bytes;
        *p++ = (uint64_t)d->has_blk;
        *p++ = d->rd_ios;
        *p++ = d->rd_sectors;
        *p++ = d->wr_ios;
        *p++ = d->wr_sectors;
    }
    for (i = 0; i < vm->n_u64; i++) {
        *p++ = (uint64_t)r->u64s[i].err;
        *p++ = r->u64s[i].value;
    }
    return p;
}

int vmprobe_vm_read_flat(struct vmprobe_vm *vm,
                         struct vmprobe_reading *reading, uint64_t *flat)
{
    const struct vmprobe_reading *r = reading;
    int status, io;

    if (vmprobe_vm_read(vm, reading) < 0)
        return -1;
    status = r->status_err == 0;
    io = r->io_err == 0;
    flat[VMPROBE_FLAT_UTIME] = r->stat.utime;
    flat[VMPROBE_FLAT_STIME] = r->stat.stime;
    flat[VMPROBE_FLAT_HAS_GUEST_TIME] = r->stat.has_guest_time != 0;
    flat[VMPROBE_FLAT_GUEST_TIME] = r->stat.guest_time;
    flat[VMPROBE_FLAT_STARTTIME] = r->stat.starttime;
    flat[VMPROBE_FLAT_RSS_PAGES] = r->stat.rss_pages;
    flat[VMPROBE_FLAT_HAS_VM_RSS] = status && r->status.has_vm_rss;
    flat[VMPROBE_FLAT_VM_RSS_KB] = r->status.vm_rss_kb;
    flat[VMPROBE_FLAT_HAS_HUGETLB] = status && r->status.has_hugetlb;
    flat[VMPROBE_FLAT_HUGETLB_KB] = r->status.hugetlb_kb;
    flat[VMPROBE_FLAT_HAS_STORAGE] = io && r->io.has_storage;
    flat[VMPROBE_FLAT_READ_BYTES] = r->io.read_bytes;
    flat[VMPROBE_FLAT_WRITE_BYTES] = r->io.write_bytes;
    flatten_items(vm, r, flat + VMPROBE_FLAT_FIXED);
    return 0;
}
