/*
 * Process accounting records (acct(5)) of Linux and FreeBSD, decoded with
 * explicit little-endian loads so the same code runs (and is tested) on
 * either system.  Layouts (offsets compiled, research/kernel_counters.md
 * §6-§7 with its errata):
 *   Linux   struct acct_v3  (include/uapi/linux/acct.h)   64 bytes
 *   FreeBSD struct acctv3   (sys/sys/acct.h)              80 bytes
 *   FreeBSD struct acctv2   (FreeBSD 7-11, 32-bit dev_t)  72 bytes
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "le.h"
#include "vmprobe.h"

#define LINUX_AHZ 100         /* acct_v3 times are in AHZ = 100 Hz ticks */
#define LINUX_FLAGS 0x3f      /* AFORK ASU ACOMPAT ACORE AXSIG AGROUP */
#define FREEBSD_FLAGS 0x3f    /* AFORK ASU ACOMPAT ACORE AXSIG ANVER */
#define FREEBSD_ANVER 0x20

static float lefloat(const unsigned char *p)
{
    uint32_t bits = le32(p);
    float f;

    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* comp_t: 13-bit mantissa, 3-bit base-8 exponent (kernel/acct.c). */
static uint64_t comp_t(uint16_t v)
{
    return (uint64_t)(v & 0x1fff) << (3 * (v >> 13));
}

/* A float time as whole microseconds; -1 if it is not a time at all. */
static int64_t float_us(float f, double scale)
{
    double us = (double)f * scale;

    if (!isfinite(us) || us < 0 || us > 1e18)
        return -1;
    return (int64_t)us;
}

/* The command name: NUL-padded, at most 16 bytes, printable. */
static int copy_comm(char *dst, const unsigned char *src, size_t n)
{
    size_t i;

    for (i = 0; i < n && src[i] != 0; i++)
        if (src[i] < 0x20 || src[i] == 0x7f)
            return -1;
    memcpy(dst, src, i);
    dst[i] = '\0';
    return 0;
}

size_t vmprobe_acct_record_size(int format)
{
    switch (format) {
    case VMPROBE_ACCT_LINUX_V3: return 64;
    case VMPROBE_ACCT_FREEBSD_V2: return 72;
    case VMPROBE_ACCT_FREEBSD_V3: return 80;
    }
    return 0;
}

/* ac_zero, ac_version, ac_len and ac_len2 (12 bytes before the end), and
 * ANVER in the trailer (8 before the end; kern_acct.c static-asserts both
 * distances for every version). */
static int is_freebsd(const unsigned char *r, size_t len, int version,
                      size_t size)
{
    return len >= size && r[0] == 0 && r[1] == version &&
           le16(r + 2) == size && le16(r + size - 12) == size &&
           (r[size - 8] & FREEBSD_ANVER);
}

int vmprobe_acct_detect(const unsigned char *buf, size_t len)
{
    if (is_freebsd(buf, len, 3, 80))
        return VMPROBE_ACCT_FREEBSD_V3;
    if (is_freebsd(buf, len, 2, 72))
        return VMPROBE_ACCT_FREEBSD_V2;
    /* Linux: ac_version 3 (0x80 would be a big-endian kernel's record) */
    if (len >= 64 && buf[1] == 3 && (buf[0] & ~LINUX_FLAGS) == 0)
        return VMPROBE_ACCT_LINUX_V3;
    errno = EINVAL;
    return -1;
}

static int parse_linux_v3(const unsigned char *r, struct vmprobe_acct *a)
{
    int64_t etime = float_us(lefloat(r + 28), 1e6 / LINUX_AHZ);

    if (r[1] != 3 || (r[0] & ~LINUX_FLAGS) || etime < 0 ||
        copy_comm(a->comm, r + 48, 16) < 0 || a->comm[0] == '\0')
        return -1;
    a->flags = r[0];
    a->exitcode = le32(r + 4);
    a->has_exit = 1;
    a->uid = le32(r + 8);
    a->gid = le32(r + 12);
    a->pid = le32(r + 16);
    a->ppid = le32(r + 20);
    a->has_pid = 1;
    a->btime = le32(r + 24);
    a->etime_us = (uint64_t)etime;
    a->utime_us = comp_t(le16(r + 32)) * (1000000 / LINUX_AHZ);
    a->stime_us = comp_t(le16(r + 34)) * (1000000 / LINUX_AHZ);
    a->mem_kb = comp_t(le16(r + 36));
    return 0;
}

/* acctv2 and acctv3 agree up to ac_io; the tail differs (size given). */
static int parse_freebsd(const unsigned char *r, size_t size, int version,
                         struct vmprobe_acct *a)
{
    int64_t ut = float_us(lefloat(r + 20), 1);
    int64_t st = float_us(lefloat(r + 24), 1);
    int64_t et = float_us(lefloat(r + 28), 1);
    int64_t mem = float_us(lefloat(r + 48), 1);
    int64_t io = float_us(lefloat(r + 52), 1);
    uint8_t flag = r[size - 8];

    if (!is_freebsd(r, size, version, size) || ut < 0 || st < 0 || et < 0 ||
        mem < 0 || io < 0 || (flag & ~FREEBSD_FLAGS) ||
        !(flag & FREEBSD_ANVER) || copy_comm(a->comm, r + 4, 16) < 0 ||
        a->comm[0] == '\0')
        return -1;
    a->utime_us = (uint64_t)ut;
    a->stime_us = (uint64_t)st;
    a->etime_us = (uint64_t)et;
    a->btime = (int64_t)le64(r + 32);
    a->uid = le32(r + 40);
    a->gid = le32(r + 44);
    a->mem_kb = (uint64_t)mem;
    a->io_blocks = (uint64_t)io;
    a->has_io = 1;
    a->flags = flag;
    return 0;
}

size_t vmprobe_acct_parse(int format, const unsigned char *buf, size_t len,
                          struct vmprobe_acct *out, size_t max,
                          size_t *consumed, size_t *skipped)
{
    size_t size = vmprobe_acct_record_size(format), off = 0, n = 0;
    int rc;

    *consumed = *skipped = 0;
    if (size == 0) {
        errno = EINVAL;
        return 0;
    }
    for (; off + size <= len && n < max; off += size) {
        struct vmprobe_acct *a = &out[n];
        memset(a, 0, sizeof(*a));
        a->format = format;
        if (format == VMPROBE_ACCT_LINUX_V3)
            rc = parse_linux_v3(buf + off, a);
        else
            rc = parse_freebsd(buf + off, size,
                               format == VMPROBE_ACCT_FREEBSD_V3 ? 3 : 2, a);
        if (rc < 0)
            (*skipped)++;
        else
            n++;
    }
    *consumed = off;
    return n;
}
