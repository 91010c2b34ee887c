/*
 * The vmm(4) ioctls on /dev/vmm/<name> (sys/amd64/include/vmm_dev.h):
 * VM_STATS in both layouts, VM_STAT_DESC, VM_MMAP_GETNEXT + VM_GET_MEMSEG.  VM_STATS uses
 * vmagent's own copies of the two layouts, so one build speaks to 13.x
 * (536 bytes) and 14+ (544 bytes) kernels; the header's VM_STATS must be
 * one of them.
 */
#if defined(__FreeBSD__) && __has_include(<machine/vmm_dev.h>)
#include <sys/param.h>
#include <sys/types.h>
#include <sys/cpuset.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <machine/vmm.h>
#include <machine/vmm_dev.h>

#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "vmprobe.h"

#define IOCNUM_STATS 50  /* IOCNUM_VM_STATS */

struct stats14 {  /* 14+: with index */
    int cpuid, index, num_entries;
    struct timeval tv;
    uint64_t statbuf[VMPROBE_MAX_VM_STATS];
};

struct stats13 {  /* 13.x; 14 with COMPAT_FREEBSD13 as VM_STATS_OLD */
    int cpuid, num_entries;
    struct timeval tv;
    uint64_t statbuf[VMPROBE_MAX_VM_STATS];
};

#define STATS14 _IOWR('v', IOCNUM_STATS, struct stats14)
#define STATS13 _IOWR('v', IOCNUM_STATS, struct stats13)

_Static_assert(sizeof(struct stats14) == VMPROBE_VM_STATS_14_SIZE, "14");
_Static_assert(sizeof(struct stats13) == VMPROBE_VM_STATS_13_SIZE, "13");
_Static_assert(VM_STATS == STATS14 || VM_STATS == STATS13, "VM_STATS");
_Static_assert(sizeof(struct vm_stat_desc) == VMPROBE_VM_STAT_DESC_SIZE,
               "vm_stat_desc");

static int room(size_t len, size_t need)
{
    if (len >= need)
        return 0;
    errno = EINVAL;
    return -1;
}

int vmprobe_fbsd_vm_stats(int fd, int layout, int cpu, int index,
                          unsigned char *buf, size_t len)
{
    if (layout == VMPROBE_VM_STATS_14) {
        struct stats14 s = {.cpuid = cpu, .index = index};

        if (room(len, sizeof(s)) < 0 || ioctl(fd, STATS14, &s) < 0)
            return -1;
        memcpy(buf, &s, sizeof(s));
        return 0;
    }
    if (layout == VMPROBE_VM_STATS_13) {
        struct stats13 s = {.cpuid = cpu};

        if (room(len, sizeof(s)) < 0 || ioctl(fd, STATS13, &s) < 0)
            return -1;
        memcpy(buf, &s, sizeof(s));
        return 0;
    }
    errno = EINVAL;
    return -1;
}

int vmprobe_fbsd_vm_stat_desc(int fd, int index, unsigned char *buf,
                              size_t len)
{
    struct vm_stat_desc d;

    memset(&d, 0, sizeof(d));
    d.index = index;
    if (room(len, sizeof(d)) < 0 || ioctl(fd, VM_STAT_DESC, &d) < 0)
        return -1;
    memcpy(buf, &d, sizeof(d));
    return 0;
}

/* Guest RAM is the sum of the guest's mappings of system memory segments:
 * the segments without a name (devmem ones, bootrom and framebuffer, have
 * one).  Not the length of segment 0: bhyve maps RAM above 3 GiB at 4 GiB,
 * so that segment also spans the hole, and FreeBSD 15 has one segment per
 * guest NUMA domain.  VM_MMAP_GETNEXT walks the mappings by address and
 * answers ENOENT after the last (sys/dev/vmm/vmm_mem.c). */
int vmprobe_fbsd_vm_sysmem(int fd, uint64_t *bytes)
{
    struct vm_memmap map;
    struct vm_memseg seg;
    uint64_t total = 0;
    vm_paddr_t gpa = 0;

    for (;;) {
        memset(&map, 0, sizeof(map));
        map.gpa = gpa;
        if (ioctl(fd, VM_MMAP_GETNEXT, &map) < 0) {
            if (errno != ENOENT)
                return -1;
            break;
        }
        gpa = map.gpa + map.len;
#ifdef VM_MEMMAP_F_IOMMU
        if (map.flags & VM_MEMMAP_F_IOMMU)
            continue;  /* the passthrough view of memory mapped already */
#endif
        memset(&seg, 0, sizeof(seg));
        seg.segid = map.segid;
        if (ioctl(fd, VM_GET_MEMSEG, &seg) < 0)
            return -1;
        if (seg.name[0] == '\0')
            total += map.len;
    }
    if (total == 0) {
        errno = ENOENT;
        return -1;
    }
    *bytes = total;
    return 0;
}

#elif defined(__FreeBSD__) /* no vmm(4) headers on this architecture */
#include <errno.h>

#include "vmprobe.h"

int vmprobe_fbsd_vm_stats(int fd, int layout, int cpu, int index,
                          unsigned char *buf, size_t len)
{
    (void)fd, (void)layout, (void)cpu, (void)index, (void)buf, (void)len;
    errno = ENOTTY;
    return -1;
}

int vmprobe_fbsd_vm_stat_desc(int fd, int index, unsigned char *buf,
                              size_t len)
{
    (void)fd, (void)index, (void)buf, (void)len;
    errno = ENOTTY;
    return -1;
}

int vmprobe_fbsd_vm_sysmem(int fd, uint64_t *bytes)
{
    (void)fd, (void)bytes;
    errno = ENOTTY;
    return -1;
}
#endif
