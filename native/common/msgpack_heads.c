/* Heads of msgpack records: each record's seq, kind and t and where it ends,
 * without building the rest (the collector stores only these and the
 * record's bytes).  Whatever the fast path does not vouch for is flagged
 * (no VMPROBE_HEAD_PLAIN) and decoded in full by the caller; a buffer that is
 * not whole msgpack objects is refused whole (-1), and the caller decodes it
 * as before.  The rules mirror msgpack-python's unpacking with raw=False and
 * strict_map_key=True: map keys str or bin, str valid UTF-8 (strict). */
#include <errno.h>
#include <string.h>

#include "msgpack_scan.h"
#include "vmprobe.h"

/* What the last of a map's equal keys holds (as a dict keeps it). */
struct heads_seen {
    struct mp_object seq, kind, t;
    int has_seq, has_kind, has_t;
};

static int value(struct mp_cursor *c, struct mp_object *v)
{
    if (mp_header(c, v) < 0)
        return -1;
    return mp_skip_body(c, v, 1);
}

/* The head of one record into h[0..5] (see vmprobe.h). */
static int record(struct mp_cursor *c, const unsigned char *buf, int64_t *h)
{
    struct heads_seen seen = {0};
    struct mp_object o;
    int64_t flags = 0;

    c->plain = 1;
    if (mp_header(c, &o) < 0)
        return -1;
    if (o.kind != MP_MAP) {  /* not a record: decoded in full */
        if (mp_skip_body(c, &o, 0) < 0)
            return -1;
        c->plain = 0;
    }
    for (uint64_t k = 0; o.kind == MP_MAP && k < o.n; k++) {
        struct mp_object key, v;

        if (mp_header(c, &key) < 0 || mp_skip_body(c, &key, 1) < 0)
            return -1;
        if (key.kind != MP_STR && key.kind != MP_BIN)
            c->plain = 0;
        if (value(c, &v) < 0)
            return -1;
        if (mp_is_key(&key, "seq")) {
            seen.seq = v;
            seen.has_seq = 1;
        } else if (mp_is_key(&key, "kind")) {
            seen.kind = v;
            seen.has_kind = 1;
        } else if (mp_is_key(&key, "t")) {
            seen.t = v;
            seen.has_t = 1;
        }
    }
    memset(h, 0, VMPROBE_HEAD_WORDS * sizeof(*h));
    h[0] = c->p - buf;
    if (!seen.has_seq || seen.seq.kind != MP_INT)
        c->plain = 0;
    if (!seen.has_kind || seen.kind.kind != MP_STR ||
        (seen.kind.n == 3 && memcmp(seen.kind.s, "gap", 3) == 0))
        c->plain = 0;  /* gap records: their range is needed */
    if (seen.has_t && (seen.t.kind == MP_BOOL || seen.t.kind == MP_BIG))
        c->plain = 0;  /* Python counts them as ints: decided in full */
    if (seen.has_t && seen.t.kind == MP_INT) {
        h[2] = seen.t.i;
        flags |= VMPROBE_HEAD_T;
    }
    if (c->plain) {
        h[1] = seen.seq.i;
        h[3] = seen.kind.s - buf;
        h[4] = (int64_t)seen.kind.n;
        flags |= VMPROBE_HEAD_PLAIN;
    }
    h[5] = flags;
    return 0;
}

long vmprobe_msgpack_heads(const unsigned char *buf, size_t len,
                           int64_t *out, size_t max)
{
    struct mp_cursor c = {buf, buf + len, 1};
    size_t n = 0;

    while (c.p < c.end) {
        if (n == max) {
            errno = E2BIG;
            return -1;
        }
        if (record(&c, buf, out + n * VMPROBE_HEAD_WORDS) < 0) {
            errno = EINVAL;
            return -1;
        }
        n++;
    }
    return (long)n;
}
