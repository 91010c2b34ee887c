/*
 * Parsers for the per-process files of procfs.  Layouts from proc(5) and
 * torvalds/linux:fs/proc/array.c (do_task_stat), fs/proc/task_mmu.c
 * (task_mem), fs/proc/base.c (proc_pid_schedstat, do_io_accounting).
 */
#include <errno.h>
#include <string.h>

#include "vmprobe.h"

/* Next space-separated token in [*p, e): sets [*ts, *te), advances *p. */
static int next_token(const char **p, const char *e, const char **ts,
                      const char **te)
{
    const char *s = *p;

    while (s < e && (*s == ' ' || *s == '\n'))
        s++;
    if (s >= e)
        return 0;
    *ts = s;
    while (s < e && *s != ' ' && *s != '\n')
        s++;
    *te = s;
    *p = s;
    return 1;
}

/* comm may hold spaces and ')', so the fields start after the LAST ')'. */
int vmprobe_parse_stat(const char *buf, size_t len, struct vmprobe_stat *out)
{
    const char *e = buf + len, *open = memchr(buf, '(', len), *close = NULL;
    const char *p, *ts, *te;
    uint64_t v;
    size_t n;
    int field;

    for (p = e; p > buf; p--)
        if (p[-1] == ')') {
            close = p - 1;
            break;
        }
    if (open == NULL || close == NULL || close < open) {
        errno = EINVAL;
        return -1;
    }
    memset(out, 0, sizeof(*out));
    n = (size_t)(close - open - 1);
    if (n > sizeof(out->comm) - 1)
        n = sizeof(out->comm) - 1;
    memcpy(out->comm, open + 1, n);

    p = close + 1;
    for (field = 3; next_token(&p, e, &ts, &te); field++) {
        if (field == 3) {
            out->state = *ts;
            continue;
        }
        if (field != 9 && field != 14 && field != 15 && field != 20 &&
            field != 22 && field != 24 && field != 43)
            continue;
        if (_vmprobe_u64(ts, te, &v) < 0)
            return -1;
        switch (field) {
        case 9: out->flags = (uint32_t)v; break;
        case 14: out->utime = v; break;
        case 15: out->stime = v; break;
        case 20: out->num_threads = (int64_t)v; break;
        case 22: out->starttime = v; break;
        case 24: out->rss_pages = v; break;
        case 43: out->guest_time = v; out->has_guest_time = 1; break;
        }
    }
    if (field <= 24) { /* too short to hold rss: not a stat file */
        errno = EINVAL;
        return -1;
    }
    return 0;
}

/* "Key:<spaces or tab>value[ kB]" lines; *found set when key is present. */
static int keyed_value(const char *buf, const char *e, const char *key,
                       uint64_t *out, int *found)
{
    size_t klen = strlen(key);
    const char *p = buf, *line_end, *s, *t;

    while (p < e) {
        line_end = memchr(p, '\n', (size_t)(e - p));
        if (line_end == NULL)
            line_end = e;
        if ((size_t)(line_end - p) > klen && memcmp(p, key, klen) == 0 &&
            p[klen] == ':') {
            s = p + klen + 1;
            while (s < line_end && (*s == ' ' || *s == '\t'))
                s++;
            t = s;
            while (t < line_end && *t >= '0' && *t <= '9')
                t++;
            if (_vmprobe_u64(s, t, out) < 0)
                return -1;
            *found = 1;
            return 0;
        }
        p = line_end + 1;
    }
    return 0;
}

int vmprobe_parse_status(const char *buf, size_t len,
                         struct vmprobe_status *out)
{
    const char *e = buf + len;

    memset(out, 0, sizeof(*out));
    if (keyed_value(buf, e, "VmRSS", &out->vm_rss_kb, &out->has_vm_rss) < 0 ||
        keyed_value(buf, e, "HugetlbPages", &out->hugetlb_kb,
                    &out->has_hugetlb) < 0)
        return -1;
    return 0;
}

int vmprobe_parse_io(const char *buf, size_t len, struct vmprobe_io *out)
{
    const char *e = buf + len;
    int rc = 0, f_rchar = 0, f_wchar = 0, f_syscr = 0, f_syscw = 0;
    int f_read = 0, f_write = 0, f_cancel = 0;

    memset(out, 0, sizeof(*out));
    rc |= keyed_value(buf, e, "rchar", &out->rchar, &f_rchar);
    rc |= keyed_value(buf, e, "wchar", &out->wchar, &f_wchar);
    rc |= keyed_value(buf, e, "syscr", &out->syscr, &f_syscr);
    rc |= keyed_value(buf, e, "syscw", &out->syscw, &f_syscw);
    rc |= keyed_value(buf, e, "read_bytes", &out->read_bytes, &f_read);
    rc |= keyed_value(buf, e, "write_bytes", &out->write_bytes, &f_write);
    rc |= keyed_value(buf, e, "cancelled_write_bytes",
                      &out->cancelled_write_bytes, &f_cancel);
    if (rc < 0)
        return -1;
    if (!f_rchar || !f_wchar) { /* every kernel with this file has these */
        errno = EINVAL;
        return -1;
    }
    /* read_bytes/write_bytes need CONFIG_TASK_IO_ACCOUNTING. */
    out->has_storage = f_read && f_write;
    return 0;
}

/* "%llu %llu %lu\n": sum_exec_runtime, run_delay, pcount. */
int vmprobe_parse_schedstat(const char *buf, size_t len,
                            struct vmprobe_schedstat *out)
{
    const char *p = buf, *e = buf + len, *ts, *te;
    uint64_t *dst[3] = {&out->run_ns, &out->wait_ns, &out->timeslices};
    int i;

    for (i = 0; i < 3; i++)
        if (!next_token(&p, e, &ts, &te) || _vmprobe_u64(ts, te, dst[i]) < 0) {
            errno = EINVAL;
            return -1;
        }
    return 0;
}

/* What Python's bytes.split() and strip() take for whitespace. */
static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
           c == '\f';
}

static int is_blank(const char *s, const char *e)
{
    for (; s < e; s++)
        if (!is_space(*s))
            return 0;
    return 1;
}

/* One interface line [s, e) holding a ':': "name:" and the numbers.  The
 * name goes to name (VMPROBE_IFNAMSIZ bytes) unless NULL, the numbers to
 * v (VMPROBE_NET_DEV_FIELDS) unless NULL; -1 when it is not such a line. */
static int net_dev_line(const char *s, const char *e, char *name,
                        uint64_t *v)
{
    const char *colon = memchr(s, ':', (size_t)(e - s)), *p, *ts;
    uint64_t ignored;
    int i;

    while (s < colon && is_space(*s))
        s++;
    for (p = colon; p > s && is_space(p[-1]); p--)
        ;
    if (p - s >= VMPROBE_IFNAMSIZ) /* longer than the kernel allows */
        return -1;
    if (name != NULL) {
        memcpy(name, s, (size_t)(p - s));
        name[p - s] = '\0';
    }
    for (p = colon + 1, i = 0; i < VMPROBE_NET_DEV_FIELDS; i++) {
        while (p < e && is_space(*p))
            p++;
        for (ts = p; p < e && !is_space(*p); p++)
            ;
        if (_vmprobe_u64(ts, p, v != NULL ? &v[i] : &ignored) < 0)
            return -1;
    }
    return is_blank(p, e) ? 0 : -1;
}

/* torvalds/linux:net/core/net-procfs.c (dev_seq_show, dev_seq_printf_stats):
 * two header lines, then "%6s:" and sixteen numbers per interface.  A long
 * name leaves no space before its colon, and a name never holds ':' or
 * whitespace (dev_valid_name). */
int vmprobe_parse_net_dev(const char *buf, size_t len, char *names,
                          uint64_t *values, int max)
{
    static const char head[] = "Inter-|";
    const char *e = buf + len, *p = memchr(buf, '\n', len), *end;
    char *name = names;
    int n = 0;

    if (p == NULL || len < sizeof(head) - 1 ||
        memcmp(buf, head, sizeof(head) - 1) != 0)
        goto invalid;
    p = memchr(p + 1, '\n', (size_t)(e - p - 1)); /* the second header */
    for (p = p != NULL ? p + 1 : e; p < e; p = end < e ? end + 1 : e) {
        end = memchr(p, '\n', (size_t)(e - p));
        end = end != NULL ? end : e;
        if (memchr(p, ':', (size_t)(end - p)) == NULL) {
            if (!is_blank(p, end))
                goto invalid;
            continue;
        }
        if (net_dev_line(p, end, n < max ? name : NULL,
                         n < max ? values + n * VMPROBE_NET_DEV_FIELDS
                                 : NULL) < 0)
            goto invalid;
        if (n < max) { /* names, one after another, split by '\n' */
            name += strlen(name);
            *name++ = '\n';
        }
        n++;
    }
    if (name > names)
        name[-1] = '\0';
    else if (names != NULL && max > 0)
        names[0] = '\0';
    return n;
invalid:
    errno = EINVAL;
    return -1;
}
