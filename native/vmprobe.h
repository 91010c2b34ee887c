/*
 * vmprobe: the whole C API that vmagent's Python side may call.
 *
 * Shape (cffi API mode): functions return 0 or -1 with errno set, results go
 * into caller-allocated structs, nothing here touches Python objects.  Parsers
 * take a buffer and its length and are pure, so tests feed them literal text.
 * Exported names start with vmprobe_, internal ones with _vmprobe_.
 */
#ifndef VMPROBE_H
#define VMPROBE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifndef VMPROBE_VERSION
#error "VMPROBE_VERSION must be defined by the build (native/build_ffi.py)"
#endif

/* cdef-begin: everything from here to cdef-end is also handed to cffi. */

const char *vmprobe_version(void);

/* One decimal number, optionally followed by a newline (common/text.c). */
int vmprobe_parse_u64(const char *buf, size_t len, uint64_t *out);

/* --- msgpack record heads (common/msgpack_heads.c) ------------------------ */

/* Per record, VMPROBE_HEAD_WORDS int64s: where it ends (offset past it),
 * seq, t, the kind string's offset and length in buf, flags.  Without
 * VMPROBE_HEAD_PLAIN only the end is set: the record must be decoded in
 * full (not a map, a gap record, no int seq or str kind, a bool t, ext
 * types, non-str map keys, bad UTF-8).  Returns the number of records, or
 * -1 with EINVAL (not whole msgpack objects, or nested deeper than 64) or
 * E2BIG (more than max records). */
#define VMPROBE_HEAD_WORDS 6
#define VMPROBE_HEAD_PLAIN 1
#define VMPROBE_HEAD_T 2
long vmprobe_msgpack_heads(const unsigned char *buf, size_t len,
                           int64_t *out, size_t max);

/* --- a sample record's readings (common/msgpack_reading.c) -------------- */

/* The ledger's view of one ``sample`` record in its usual shape
 * (agent/vmagent/ledger/readings.py), into out[]: t; the vm map's bytes,
 * then its uuid, gen and name, as (offset, length) in buf; flags
 * (VMPROBE_READING_*: which of the next three are given); started_ns; mem
 * rss_bytes; mem alloc_bytes; the number of vCPU threads listed; n, the
 * counters; the length of their keys in sig (VMPROBE_READING_HEAD words in
 * all); then the n counters' values, sorted as Python sorts their (meter
 * name, device) keys.  sig gets those keys: per counter its meter (an
 * index into the sorted meter names), the device name's length as two
 * bytes big-endian (0xffff: none) and the name.  Returns 0; 1 when the
 * record is not in the usual shape (decode it); -1 when buf is not
 * msgpack. */
#define VMPROBE_READING_HEAD 16
#define VMPROBE_READING_DEVS 16
#define VMPROBE_READING_COUNTERS 64
#define VMPROBE_READING_WORDS 80  /* HEAD + COUNTERS */
#define VMPROBE_READING_SIG 8192
#define VMPROBE_READING_STARTED 1
#define VMPROBE_READING_RSS 2
#define VMPROBE_READING_ALLOC 4
int vmprobe_sample_reading(const unsigned char *buf, size_t len,
                           int64_t *out, unsigned char *sig);

/* linux-begin: the Linux probes (native/linux/); the cdef of other
 * platforms leaves everything up to linux-end out. */

/* --- /proc/<pid>/stat, /proc/<pid>/status, /proc/<pid>/io ---------------- */

/* Counters of one process; proc(5) field numbers in brackets. */
struct vmprobe_stat {
    char state;             /* [3]  R S D Z X ... */
    uint32_t flags;         /* [9]  PF_* task flags (PF_KTHREAD = 0x00200000) */
    uint64_t utime;         /* [14] clock ticks, includes guest time */
    uint64_t stime;         /* [15] clock ticks */
    int64_t num_threads;    /* [20] */
    uint64_t starttime;     /* [22] clock ticks after boot */
    uint64_t rss_pages;     /* [24] pages, = VmRSS */
    uint64_t guest_time;    /* [43] clock ticks */
    int has_guest_time;     /* field 43 exists (since Linux 2.6.24) */
    char comm[64];          /* [2]  without the parentheses, NUL-terminated */
};

struct vmprobe_status {
    uint64_t vm_rss_kb;     /* VmRSS */
    uint64_t hugetlb_kb;    /* HugetlbPages (Linux 4.4+); not part of VmRSS */
    int has_vm_rss;
    int has_hugetlb;
};

struct vmprobe_io {
    uint64_t rchar, wchar, syscr, syscw;  /* all syscalls, tap and eventfd too */
    uint64_t read_bytes, write_bytes;     /* storage layer */
    uint64_t cancelled_write_bytes;
    int has_storage;                      /* read_bytes/write_bytes present */
};

struct vmprobe_schedstat {
    uint64_t run_ns;        /* sum_exec_runtime */
    uint64_t wait_ns;       /* run_delay: runnable, not running (KVM steal) */
    uint64_t timeslices;
};

int vmprobe_parse_stat(const char *buf, size_t len, struct vmprobe_stat *out);
int vmprobe_parse_status(const char *buf, size_t len, struct vmprobe_status *out);
int vmprobe_parse_io(const char *buf, size_t len, struct vmprobe_io *out);
int vmprobe_parse_schedstat(const char *buf, size_t len,
                            struct vmprobe_schedstat *out);

/* --- /proc/net/dev: every interface's counters, one read per sweep ------- */

#define VMPROBE_IFNAMSIZ 16         /* IFNAMSIZ: 15 characters and a NUL */
#define VMPROBE_NET_DEV_FIELDS 16   /* 8 received, then 8 sent */

/* For the first `max` interfaces: their names into `names` (max *
 * VMPROBE_IFNAMSIZ bytes), one after another split by '\n', NUL-terminated;
 * interface i's numbers into values[i * VMPROBE_NET_DEV_FIELDS ...].
 * Returns how many interfaces the text has (more than max: call again with
 * room for them), or -1 with EINVAL when it is not this file. */
int vmprobe_parse_net_dev(const char *buf, size_t len, char *names,
                          uint64_t *values, int max);

/* --- one VM: cached fds, re-read with pread -------------------------------- */

struct vmprobe_disk {
    uint64_t size_bytes;    /* st_size (regular file) */
    uint64_t alloc_bytes;   /* st_blocks * 512 */
    uint64_t rd_ios, rd_sectors, wr_ios, wr_sectors;  /* block device only */
    int has_blk;            /* the four above were read */
    int err;                /* ESTALE: not the file seen at discovery */
};

struct vmprobe_u64 {
    uint64_t value;
    int err;
};

struct vmprobe_thread {
    struct vmprobe_schedstat sched;
    int err;
};

/* What to open for one VM.  Paths are absolute (the caller applies roots). */
struct vmprobe_vm_spec {
    const char *proc_dir;             /* "<procfs>/<pid>" */
    const char *const *sched_paths;   /* vCPU and vhost schedstat files */
    int n_sched;
    const char *const *disk_links;    /* "<procfs>/<pid>/fd/<n>": opened
                                         O_PATH once, fstat()ed each read */
    const uint64_t *disk_dev;         /* st_dev and st_ino seen at discovery */
    const uint64_t *disk_ino;
    const char *const *disk_blk_stats;/* "<sysfs>/dev/block/M:m/stat" or NULL */
    int n_disks;
    const char *const *u64_paths;     /* one decimal u64 each (debugfs kvm),
                                         or NULL: the item's value is the
                                         sum of its kstat sources below */
    int n_u64;
    /* KVM binary stats files (Documentation/virt/kvm/api.rst 4.133,
     * KVM_GET_STATS_FD) copied from the VM process; the caller keeps them
     * open.  File i: fd, and the byte range of its data block to pread
     * (kstat_off, kstat_len <= VMPROBE_KSTAT_MAX).  Source j adds the u64
     * at src_off[j] of file src_file[j]'s range to item src_item[j]. */
    const int *kstat_fds;
    const uint32_t *kstat_off;
    const uint32_t *kstat_len;
    int n_kstat;
    const int *src_file;
    const uint32_t *src_off;
    const int *src_item;
    int n_src;
};

#define VMPROBE_KSTAT_MAX 16384

/* Everything one read fills in; arrays sized as in the spec. */
struct vmprobe_reading {
    struct vmprobe_stat stat;
    struct vmprobe_status status;
    struct vmprobe_io io;
    int status_err, io_err;
    struct vmprobe_thread *threads;
    struct vmprobe_disk *disks;
    struct vmprobe_u64 *u64s;
    int read_debugfs;       /* in: read the debugfs items this time; when 0
                               their err is EAGAIN (not read) */
};

struct vmprobe_vm;

/* Opens the process files; -1 and errno (ENOENT/ESRCH: the process is gone).
 * Item files that cannot be opened are reported per item by each read. */
struct vmprobe_vm *vmprobe_vm_open(const struct vmprobe_vm_spec *spec);

/* Re-reads everything with pread.  -1 with errno ESRCH when the process has
 * exited (gone or a zombie); per-item failures are in each item's err. */
int vmprobe_vm_read(struct vmprobe_vm *vm, struct vmprobe_reading *out);

/* The reading as one array of u64 (what the caller turns into numbers in
 * one step, not field by field): the VMPROBE_FLAT_* items, then per thread
 * (err, run_ns, wait_ns), per disk (err, size_bytes, alloc_bytes, has_blk,
 * rd_ios, rd_sectors, wr_ios, wr_sectors), per u64 item (err, value).  A
 * flag item is 1 when the values after it were read, else 0. */
enum {
    VMPROBE_FLAT_UTIME,
    VMPROBE_FLAT_STIME,
    VMPROBE_FLAT_HAS_GUEST_TIME,
    VMPROBE_FLAT_GUEST_TIME,
    VMPROBE_FLAT_STARTTIME,
    VMPROBE_FLAT_RSS_PAGES,
    VMPROBE_FLAT_HAS_VM_RSS,    /* status read and VmRSS in it */
    VMPROBE_FLAT_VM_RSS_KB,
    VMPROBE_FLAT_HAS_HUGETLB,   /* status read and HugetlbPages in it */
    VMPROBE_FLAT_HUGETLB_KB,
    VMPROBE_FLAT_HAS_STORAGE,   /* io read and read_bytes/write_bytes in it */
    VMPROBE_FLAT_READ_BYTES,
    VMPROBE_FLAT_WRITE_BYTES,
    VMPROBE_FLAT_FIXED,         /* the count of the items above */
    VMPROBE_FLAT_THREAD = 3,    /* u64 per thread, per disk, per u64 item */
    VMPROBE_FLAT_DISK = 8,
    VMPROBE_FLAT_U64 = 2
};

/* The u64 count vmprobe_vm_read_flat writes for this VM. */
size_t vmprobe_vm_flat_len(const struct vmprobe_vm *vm);

/* vmprobe_vm_read into `reading`, then the reading flattened into `flat`
 * (vmprobe_vm_flat_len items); -1 and errno as vmprobe_vm_read. */
int vmprobe_vm_read_flat(struct vmprobe_vm *vm,
                         struct vmprobe_reading *reading, uint64_t *flat);

void vmprobe_vm_close(struct vmprobe_vm *vm);

/* A copy of fd `fd` of process `pid` (pidfd_open + pidfd_getfd, Linux 5.6+,
 * close-on-exec); -1 with errno (EPERM: not allowed to ptrace it; EBADF: no
 * such fd; ENOSYS: kernel too old). */
int vmprobe_pidfd_getfd(int pid, int fd);

/* linux-end */

/* --- process accounting records (acct(5)), portable ----------------------- */

#define VMPROBE_ACCT_LINUX_V3 1    /* struct acct_v3, 64 bytes */
#define VMPROBE_ACCT_FREEBSD_V2 2  /* struct acctv2, 72 bytes */
#define VMPROBE_ACCT_FREEBSD_V3 3  /* struct acctv3, 80 bytes */

/* One accounting record, in the units of the record schema. */
struct vmprobe_acct {
    char comm[17];          /* NUL-terminated */
    int format;
    uint32_t pid, ppid;     /* Linux only (has_pid) */
    int has_pid;
    uint32_t uid, gid;
    int64_t btime;          /* start, Unix seconds */
    uint64_t utime_us, stime_us, etime_us;
    uint64_t mem_kb;        /* Linux: virtual size at exit; FreeBSD: average */
    uint64_t io_blocks;     /* FreeBSD: blocks in + out (has_io) */
    int has_io;
    uint32_t flags;         /* the record's flag bits, as stored */
    uint32_t exitcode;      /* Linux: do_exit() code (has_exit) */
    int has_exit;
};

/* The record size of a format, or 0 for an unknown one. */
size_t vmprobe_acct_record_size(int format);

/* The format of a file from its first record(s); -1 (EINVAL) if neither
 * FreeBSD's (version 2 or 3 with its lengths at both ends) nor Linux v3. */
int vmprobe_acct_detect(const unsigned char *buf, size_t len);

/* Parses whole records from buf into out (at most max).  Returns how many
 * were stored; *consumed is the bytes used (whole records only: a partial
 * last record is left), *skipped the records that failed validation. */
size_t vmprobe_acct_parse(int format, const unsigned char *buf, size_t len,
                          struct vmprobe_acct *out, size_t max,
                          size_t *consumed, size_t *skipped);

/* --- FreeBSD bhyve decoders, portable (tested on Linux) ------------------- */

#define VMPROBE_VM_STATS_14 1      /* struct vm_stats with index, 544 bytes */
#define VMPROBE_VM_STATS_13 2      /* FreeBSD 13 layout, 536 bytes */
#define VMPROBE_MAX_VM_STATS 64    /* MAX_VM_STATS, statbuf entries */

/* A VM_STATS reply: the values and the snapshot time. */
struct vmprobe_vm_stats {
    int cpuid, index, num_entries;
    int64_t tv_sec, tv_usec;
    uint64_t values[64];
};

/* Decodes a VM_STATS buffer of the given layout; -1/EINVAL when short or
 * num_entries is out of range. */
int vmprobe_vm_stats_decode(int layout, const unsigned char *buf, size_t len,
                            struct vmprobe_vm_stats *out);

/* Decodes a 132-byte VM_STAT_DESC reply: the index and its description. */
int vmprobe_vm_stat_desc_decode(const unsigned char *buf, size_t len,
                                int *index, char *desc, size_t desc_len);

/* struct if_data (FreeBSD 11+, 152 bytes): the counters billing needs. */
struct vmprobe_if_data {
    uint64_t ipackets, ierrors, opackets, oerrors, ibytes, obytes;
    uint64_t iqdrops, oqdrops;
    uint32_t mtu;
    uint8_t link_state;
};
int vmprobe_if_data_decode(const unsigned char *buf, size_t len,
                           struct vmprobe_if_data *out);

/* One record of a KERN_PROC_FILEDESC reply (packed kinfo_file records,
 * each kf_structsize long): sets the fields and returns the record's
 * length, 0 at the end of the buffer, -1/EINVAL when malformed. */
struct vmprobe_kinfo_file {
    int type, fd, flags;
    char path[1024];
};
int vmprobe_kinfo_file_next(const unsigned char *buf, size_t len,
                            struct vmprobe_kinfo_file *out);

/* rctl_get_racct(2) output "name=value,...": the resources vmagent uses,
 * each with has_* set when present; -1/EINVAL on a malformed string. */
struct vmprobe_racct {
    int64_t cputime, memoryuse, vmemoryuse, readbps, writebps, readiops,
        writeiops, wallclock, pcpu;
    int has_cputime, has_memoryuse, has_vmemoryuse, has_readbps,
        has_writebps, has_readiops, has_writeiops, has_wallclock, has_pcpu;
};
int vmprobe_racct_parse(const char *buf, size_t len, struct vmprobe_racct *out);

/* The pages of /dev/devstat (sys/kern/subr_devstat.c), which hold every
 * struct devstat, GEOM providers' included (kern.devstat.all leaves those
 * out): page_size / 288 records a page, the rest padding.  A provider's
 * record carries its id (kern.geom.confxml <provider id="0x...">). */
#define VMPROBE_DEVSTAT_SIZE 288   /* struct devstat, LP64 */
struct vmprobe_devstat {
    uint64_t id;
    char name[17];          /* device_name, for non-GEOM devices */
    int unit;
    uint64_t rd_bytes, wr_bytes, free_bytes;  /* bytes[DEVSTAT_READ...] */
    uint64_t rd_ops, wr_ops, free_ops;        /* operations[...] */
};
/* Decodes up to max allocated records with an id into out; returns how
 * many were stored, or -1/EINVAL when len is not whole pages of at least
 * one record.  A record the kernel was updating (sequence0 != sequence1)
 * is left out and counted in *torn. */
int vmprobe_devstat_decode(const unsigned char *buf, size_t len,
                           size_t page_size, struct vmprobe_devstat *out,
                           size_t max, size_t *torn);

/* freebsd-begin: the FreeBSD syscall layer (native/freebsd/); the cdef of
 * other platforms leaves everything up to freebsd-end out.  Each call is one
 * syscall (or two: a size query) whose reply goes to the decoders above or
 * into the structs below; -1 with errno on failure. */

/* What vmagent uses of one struct kinfo_proc (sys/sys/user.h). */
struct vmprobe_fbsd_proc {
    int pid, tid;           /* ki_pid, ki_tid */
    uint32_t uid;           /* ki_ruid */
    int zombie;             /* ki_stat == SZOMB */
    char comm[20];          /* ki_comm */
    char tdname[40];        /* ki_tdname + ki_moretdname ("vcpu 0") */
    int64_t start_us;       /* ki_start, Unix µs */
    uint64_t runtime_us;    /* ki_runtime (per thread with threads) */
    int64_t utime_us, stime_us;  /* ki_rusage */
    int64_t inblock, oublock;    /* ki_rusage, operations */
    uint64_t rss_pages;     /* ki_rssize */
};

/* kern.proc: pid -1 lists every process whose ki_comm is comm (NULL: all);
 * otherwise that pid, one entry per thread when threads.  Up to *n entries
 * go to out and *n is set to the count; -1/ENOMEM with *n the count needed
 * when out is too small; -1/ESRCH when pid does not exist. */
int vmprobe_fbsd_procs(int pid, int threads, const char *comm,
                       struct vmprobe_fbsd_proc *out, size_t *n);

#define VMPROBE_FBSD_ARGS 1      /* kern.proc.args: the title */
#define VMPROBE_FBSD_FILEDESC 2  /* kern.proc.filedesc: packed kinfo_file */

/* kern.proc.args / kern.proc.filedesc of pid into buf (*len: room in, bytes
 * out); buf NULL asks for the size. */
int vmprobe_fbsd_proc_sysctl(int what, int pid, unsigned char *buf,
                             size_t *len);

/* A sysctl by name into buf (*len: room in, bytes out); buf NULL asks for
 * the size.  vmagent reads kern.geom.confxml. */
int vmprobe_fbsd_sysctl_name(const char *name, unsigned char *buf,
                             size_t *len);

int vmprobe_fbsd_boottime_us(int64_t *out);  /* kern.boottime */
int vmprobe_fbsd_tsc_freq(uint64_t *out);    /* machdep.tsc_freq (amd64) */

/* VM_STATS on an open /dev/vmm/<name> in a VMPROBE_VM_STATS_* layout; the
 * reply (544 or 536 bytes) goes to buf for vmprobe_vm_stats_decode.
 * ENOTTY: this kernel does not know that layout. */
int vmprobe_fbsd_vm_stats(int fd, int layout, int cpu, int index,
                          unsigned char *buf, size_t len);
/* VM_STAT_DESC: the 132-byte reply for vmprobe_vm_stat_desc_decode. */
int vmprobe_fbsd_vm_stat_desc(int fd, int index, unsigned char *buf,
                              size_t len);
/* The guest's RAM in bytes: its mappings of system memory segments
 * (VM_MMAP_GETNEXT, VM_GET_MEMSEG). */
int vmprobe_fbsd_vm_sysmem(int fd, uint64_t *bytes);

/* The struct if_data of an interface (sysctl net.link.generic.ifdata.
 * <index>.general) into buf for vmprobe_if_data_decode; ENXIO: no such
 * interface. */
int vmprobe_fbsd_if_data(const char *ifname, unsigned char *buf, size_t len);

/* rctl_get_racct(2) of process pid ("name=value,..." for
 * vmprobe_racct_parse).  ENOSYS: RACCT is off (kern.racct.enable=0) or
 * not in the kernel. */
int vmprobe_fbsd_racct(int pid, char *buf, size_t len);

/* DIOCGMEDIASIZE of a disk device (a zvol, a GEOM provider). */
int vmprobe_fbsd_media_size(const char *path, uint64_t *bytes);

/* freebsd-end */

/* cdef-end */

/* --- internal helpers shared between the C files (not in the cdef) -------- */

/* Layouts the portable decoders assume; native/freebsd/ checks them against
 * FreeBSD's own headers at compile time. */
#define VMPROBE_VM_STATS_14_SIZE 544
#define VMPROBE_VM_STATS_13_SIZE 536
#define VMPROBE_VM_STAT_DESC_SIZE 132
#define VMPROBE_IF_DATA_SIZE 152
#define VMPROBE_KF_PATH_OFFSET 368  /* amd64, arm64 */

/* Parses the decimal digits in [s, e) into *out; -1/EINVAL on anything else
 * or on overflow. */
int _vmprobe_u64(const char *s, const char *e, uint64_t *out);

/* pread(fd, buf, cap - 1, 0) and NUL-terminates; returns the length or -1. */
ssize_t _vmprobe_pread_text(int fd, char *buf, size_t cap);

/* open(path, O_RDONLY | O_CLOEXEC); returns the fd or -errno. */
int _vmprobe_open_ro(const char *path);

#endif /* VMPROBE_H */
