/*
 * Decoders for what FreeBSD's kernel hands a bhyve host's agent: VM_STATS
 * and VM_STAT_DESC replies (sys/amd64/include/vmm_dev.h; 14+ and 13
 * layouts), struct if_data (sys/net/if.h), packed kinfo_file records
 * (sys/sys/user.h, KERN_PROC_FILEDESC), rctl_get_racct(2) strings
 * (sys/kern/kern_rctl.c) and /dev/devstat pages (sys/sys/devicestat.h).  Pure and portable: explicit little-endian loads
 * (amd64, arm64), so they are compiled and tested on Linux too.  The
 * syscalls that produce these buffers live in native/freebsd/.
 */
#include <errno.h>
#include <string.h>

#include "le.h"
#include "vmprobe.h"

/* sys/sys/user.h: kf_structsize @0, kf_type @4, kf_fd @8, kf_flags @16;
 * kf_path[PATH_MAX] is the last member of the 1392-byte KINFO_FILE_SIZE
 * (amd64), at 368.  Packed records (KERN_FILEDESC_PACK_KINFO) are cut to
 * roundup(offsetof(kf_path) + strlen(kf_path) + 1, 8). */
#define KF_PATH_OFFSET VMPROBE_KF_PATH_OFFSET
#define KF_HEADER 24

static int einval(void)
{
    errno = EINVAL;
    return -1;
}

int vmprobe_vm_stats_decode(int layout, const unsigned char *buf, size_t len,
                            struct vmprobe_vm_stats *out)
{
    /* 14+: cpuid@0 index@4 num_entries@8 tv@16 statbuf@32 (544 bytes);
     * 13:  cpuid@0 num_entries@4 tv@8 statbuf@24 (536 bytes) */
    size_t size = layout == VMPROBE_VM_STATS_14 ? VMPROBE_VM_STATS_14_SIZE
                                                 : VMPROBE_VM_STATS_13_SIZE;
    size_t tv = layout == VMPROBE_VM_STATS_14 ? 16 : 8;
    size_t stats = tv + 16;
    int i;

    if ((layout != VMPROBE_VM_STATS_14 && layout != VMPROBE_VM_STATS_13) ||
        len < size)
        return einval();
    memset(out, 0, sizeof(*out));
    out->cpuid = (int)le32(buf);
    if (layout == VMPROBE_VM_STATS_14) {
        out->index = (int)le32(buf + 4);
        out->num_entries = (int)le32(buf + 8);
    } else {
        out->num_entries = (int)le32(buf + 4);
    }
    if (out->num_entries < 0 || out->num_entries > VMPROBE_MAX_VM_STATS)
        return einval();
    out->tv_sec = (int64_t)le64(buf + tv);
    out->tv_usec = (int64_t)le64(buf + tv + 8);
    for (i = 0; i < out->num_entries; i++)
        out->values[i] = le64(buf + stats + 8 * (size_t)i);
    return 0;
}

int vmprobe_vm_stat_desc_decode(const unsigned char *buf, size_t len,
                                int *index, char *desc, size_t desc_len)
{
    /* struct vm_stat_desc { int index; char desc[128]; } */
    const unsigned char *text = buf + 4;
    const unsigned char *nul;

    if (len < VMPROBE_VM_STAT_DESC_SIZE || desc_len == 0)
        return einval();
    nul = memchr(text, 0, 128);
    if (nul == NULL || (size_t)(nul - text) >= desc_len)
        return einval();
    *index = (int)le32(buf);
    memcpy(desc, text, (size_t)(nul - text) + 1);
    return 0;
}

int vmprobe_if_data_decode(const unsigned char *buf, size_t len,
                           struct vmprobe_if_data *out)
{
    if (len < VMPROBE_IF_DATA_SIZE || /* ifi_datalen @6 */
        le32(buf + 4) >> 16 != VMPROBE_IF_DATA_SIZE)
        return einval();
    out->link_state = buf[4];
    out->mtu = le32(buf + 8);
    out->ipackets = le64(buf + 24);
    out->ierrors = le64(buf + 32);
    out->opackets = le64(buf + 40);
    out->oerrors = le64(buf + 48);
    out->ibytes = le64(buf + 64);
    out->obytes = le64(buf + 72);
    out->iqdrops = le64(buf + 96);
    out->oqdrops = le64(buf + 104);
    return 0;
}

int vmprobe_kinfo_file_next(const unsigned char *buf, size_t len,
                            struct vmprobe_kinfo_file *out)
{
    uint32_t size;
    const unsigned char *path, *nul;
    size_t room;

    if (len == 0)
        return 0;
    if (len < KF_HEADER)
        return einval();
    size = le32(buf);
    if (size < KF_PATH_OFFSET + 1 || size > len || size % 8)
        return einval();
    out->type = (int)le32(buf + 4);
    out->fd = (int)le32(buf + 8);
    out->flags = (int)le32(buf + 16);
    path = buf + KF_PATH_OFFSET;
    room = size - KF_PATH_OFFSET;
    if (room > sizeof(out->path))
        room = sizeof(out->path);
    nul = memchr(path, 0, room);
    if (nul == NULL)
        return einval();
    memcpy(out->path, path, (size_t)(nul - path) + 1);
    return (int)size;
}

static int64_t *racct_slot(struct vmprobe_racct *r, const char *name,
                           size_t n, int **has)
{
#define SLOT(f)                                                              \
    if (n == sizeof(#f) - 1 && memcmp(name, #f, n) == 0) {                   \
        *has = &r->has_##f;                                                  \
        return &r->f;                                                        \
    }
    SLOT(cputime) SLOT(memoryuse) SLOT(vmemoryuse) SLOT(readbps)
    SLOT(writebps) SLOT(readiops) SLOT(writeiops) SLOT(wallclock) SLOT(pcpu)
#undef SLOT
    return NULL;
}

int vmprobe_racct_parse(const char *buf, size_t len, struct vmprobe_racct *out)
{
    const char *p = buf, *end = buf + len;

    memset(out, 0, sizeof(*out));
    while (end > p && (end[-1] == '\0' || end[-1] == '\n'))
        end--;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        const char *eq = memchr(p, '=', (size_t)(item_end - p));
        const char *v;
        int64_t value = 0;
        int *has = NULL, neg = 0;
        int64_t *slot;

        if (eq == NULL || eq == p || eq + 1 == item_end)
            return einval();
        v = eq + 1;
        if (*v == '-') {
            neg = 1;
            v++;
        }
        for (; v < item_end; v++) {
            if (*v < '0' || *v > '9' || value > (INT64_MAX - 9) / 10)
                return einval();
            value = value * 10 + (*v - '0');
        }
        slot = racct_slot(out, p, (size_t)(eq - p), &has);
        if (slot != NULL) {
            *slot = neg ? -value : value;
            *has = 1;
        }
        p = comma ? comma + 1 : end;
    }
    return 0;
}

/* struct devstat (LP64): sequence0 @0, allocated @4, device_name[16] @44,
 * unit_number @60, bytes[4] @64, operations[4] @96 (index DEVSTAT_READ 1,
 * WRITE 2, FREE 3), id @272, sequence1 @280; 288 bytes.  /dev/devstat
 * packs page_size / 288 of them into each page (sys/kern/subr_devstat.c
 * devstat_alloc, lib/libgeom/geom_stats.c). */
int vmprobe_devstat_decode(const unsigned char *buf, size_t len,
                           size_t page_size, struct vmprobe_devstat *out,
                           size_t max, size_t *torn)
{
    size_t n = 0, per_page;

    *torn = 0;
    if (page_size < VMPROBE_DEVSTAT_SIZE || len % page_size != 0)
        return einval();
    per_page = page_size / VMPROBE_DEVSTAT_SIZE;
    for (size_t page = 0; page < len; page += page_size) {
        for (size_t i = 0; i < per_page && n < max; i++) {
            const unsigned char *r = buf + page + i * VMPROBE_DEVSTAT_SIZE;
            struct vmprobe_devstat *o = &out[n];

            if (le32(r + 4) == 0 || le64(r + 272) == 0)
                continue;  /* a free slot, or not a GEOM provider */
            if (le32(r) != le32(r + 280)) {
                (*torn)++;
                continue;
            }
            memset(o, 0, sizeof(*o));
            memcpy(o->name, r + 44, 16);
            o->unit = (int)le32(r + 60);
            o->rd_bytes = le64(r + 64 + 8);
            o->wr_bytes = le64(r + 64 + 16);
            o->free_bytes = le64(r + 64 + 24);
            o->rd_ops = le64(r + 96 + 8);
            o->wr_ops = le64(r + 96 + 16);
            o->free_ops = le64(r + 96 + 24);
            o->id = le64(r + 272);
            n++;
        }
    }
    return (int)n;
}
