/* The size of a disk device (a zvol, a GEOM provider): DIOCGMEDIASIZE,
 * sys/sys/disk.h. */
#ifdef __FreeBSD__
#include <sys/types.h>
#include <sys/disk.h>
#include <sys/ioctl.h>

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "vmprobe.h"

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
