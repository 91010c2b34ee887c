/*
 * Disk devices (zvols, GEOM providers): their size (DIOCGMEDIASIZE,
 * sys/sys/disk.h), also how big /dev/devstat is; their counters come from
 * /dev/devstat's pages, decoded by common/bhyve.c in the layout checked
 * here.
 */
#ifdef __FreeBSD__
#include <sys/types.h>
#include <sys/devicestat.h>
#include <sys/disk.h>
#include <sys/ioctl.h>

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <unistd.h>

#include "vmprobe.h"

_Static_assert(sizeof(struct devstat) == VMPROBE_DEVSTAT_SIZE, "devstat");
_Static_assert(offsetof(struct devstat, allocated) == 4, "allocated");
_Static_assert(offsetof(struct devstat, device_name) == 44, "device_name");
_Static_assert(offsetof(struct devstat, unit_number) == 60, "unit_number");
_Static_assert(offsetof(struct devstat, bytes) == 64, "bytes");
_Static_assert(offsetof(struct devstat, operations) == 96, "operations");
_Static_assert(offsetof(struct devstat, id) == 272, "id");
_Static_assert(offsetof(struct devstat, sequence1) == 280, "sequence1");
_Static_assert(DEVSTAT_READ == 1 && DEVSTAT_WRITE == 2 && DEVSTAT_FREE == 3,
               "DEVSTAT_READ");
_Static_assert(DEVSTAT_NAME_LEN == 16, "DEVSTAT_NAME_LEN");

int vmprobe_fbsd_media_size(const char *path, uint64_t *bytes)
{
    off_t size;
    int fd, saved;

    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    if (ioctl(fd, DIOCGMEDIASIZE, &size) < 0) {
        saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    close(fd);
    *bytes = (uint64_t)size;
    return 0;
}
#endif /* __FreeBSD__ */
