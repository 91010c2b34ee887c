/* Small helpers for reading kernel text files: numbers and cached-fd reads. */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "vmprobe.h"

int _vmprobe_u64(const char *s, const char *e, uint64_t *out)
{
    uint64_t v = 0;

    if (s >= e) {
        errno = EINVAL;
        return -1;
    }
    for (; s < e; s++) {
        unsigned d = (unsigned char)*s - '0';
        if (d > 9 || v > (UINT64_MAX - d) / 10) {
            errno = EINVAL;
            return -1;
        }
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* One decimal number, optionally followed by a newline (sysfs, debugfs). */
int vmprobe_parse_u64(const char *buf, size_t len, uint64_t *out)
{
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
        len--;
    return _vmprobe_u64(buf, buf + len, out);
}

ssize_t _vmprobe_pread_text(int fd, char *buf, size_t cap)
{
    ssize_t n;

    do {
        n = pread(fd, buf, cap - 1, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return n;
}

int _vmprobe_open_ro(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}
