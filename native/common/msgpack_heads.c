/* Heads of msgpack records: each record's seq, kind and t and where it ends,
 * without building the rest (the collector stores only these and the
 * record's bytes).  Whatever the fast path does not vouch for is flagged
 * (no VMPROBE_HEAD_PLAIN) and decoded in full by the caller; a buffer that is
 * not whole msgpack objects is refused whole (-1), and the caller decodes it
 * as before.  The rules mirror msgpack-python's unpacking with raw=False and
 * strict_map_key=True: map keys str or bin, str valid UTF-8 (strict). */
#include <errno.h>
#include <string.h>

#include "vmprobe.h"

#define MAX_DEPTH 64  /* deeper: refused whole, decoded by the caller */

struct cursor {
    const unsigned char *p, *end;
    int plain;  /* cleared by what only a full decode can judge */
};

/* One object's header: its type and, for scalars and strings, its value. */
enum kind { K_INT, K_BIG, K_BOOL, K_NIL, K_FLOAT, K_STR, K_BIN, K_ARRAY,
            K_MAP, K_EXT };

struct object {
    enum kind kind;
    int64_t i;                 /* K_INT */
    const unsigned char *s;    /* K_STR, K_BIN, K_EXT: the payload */
    uint64_t n;                /* payload length, or array/map count */
};

static uint64_t be(const unsigned char *p, int width)
{
    uint64_t v = 0;

    for (int k = 0; k < width; k++)
        v = v << 8 | p[k];
    return v;
}

static int take(struct cursor *c, uint64_t n, const unsigned char **at)
{
    if ((uint64_t)(c->end - c->p) < n)
        return -1;
    *at = c->p;
    c->p += n;
    return 0;
}

/* A length (1, 2 or 4 bytes) then that many bytes. */
static int sized(struct cursor *c, int width, struct object *o)
{
    const unsigned char *at;

    if (take(c, (uint64_t)width, &at) < 0)
        return -1;
    o->n = be(at, width);
    return take(c, o->n, &o->s);
}

static int ext(struct cursor *c, int width, uint64_t fixed, struct object *o)
{
    const unsigned char *at;

    o->kind = K_EXT;
    if (width) {
        if (take(c, (uint64_t)width, &at) < 0)
            return -1;
        fixed = be(at, width);
    }
    o->n = fixed;
    return take(c, 1 + fixed, &o->s);  /* the type byte, the data */
}

static int number(struct cursor *c, int width, int is_signed,
                  struct object *o)
{
    const unsigned char *at;
    uint64_t v;

    if (take(c, (uint64_t)width, &at) < 0)
        return -1;
    v = be(at, width);
    o->kind = K_INT;
    if (is_signed) {
        int shift = 64 - 8 * width;
        o->i = shift ? (int64_t)(v << shift) >> shift : (int64_t)v;
    } else if (v > INT64_MAX) {
        o->kind = K_BIG;  /* a Python int, beyond what the head holds */
    } else {
        o->i = (int64_t)v;
    }
    return 0;
}

static int header(struct cursor *c, struct object *o)
{
    const unsigned char *at;
    unsigned b;

    if (take(c, 1, &at) < 0)
        return -1;
    b = *at;
    o->n = 0;
    if (b <= 0x7f || b >= 0xe0) {
        o->kind = K_INT;
        o->i = b <= 0x7f ? (int64_t)b : (int64_t)b - 256;
        return 0;
    }
    if (b <= 0x8f || (b >= 0x90 && b <= 0x9f)) {
        o->kind = b <= 0x8f ? K_MAP : K_ARRAY;
        o->n = b & 0x0f;
        return 0;
    }
    if (b <= 0xbf) {
        o->kind = K_STR;
        o->n = b & 0x1f;
        return take(c, o->n, &o->s);
    }
    switch (b) {
    case 0xc0: o->kind = K_NIL; return 0;
    case 0xc2: case 0xc3: o->kind = K_BOOL; return 0;
    case 0xc4: o->kind = K_BIN; return sized(c, 1, o);
    case 0xc5: o->kind = K_BIN; return sized(c, 2, o);
    case 0xc6: o->kind = K_BIN; return sized(c, 4, o);
    case 0xc7: return ext(c, 1, 0, o);
    case 0xc8: return ext(c, 2, 0, o);
    case 0xc9: return ext(c, 4, 0, o);
    case 0xca: o->kind = K_FLOAT; return take(c, 4, &at);
    case 0xcb: o->kind = K_FLOAT; return take(c, 8, &at);
    case 0xcc: return number(c, 1, 0, o);
    case 0xcd: return number(c, 2, 0, o);
    case 0xce: return number(c, 4, 0, o);
    case 0xcf: return number(c, 8, 0, o);
    case 0xd0: return number(c, 1, 1, o);
    case 0xd1: return number(c, 2, 1, o);
    case 0xd2: return number(c, 4, 1, o);
    case 0xd3: return number(c, 8, 1, o);
    case 0xd4: return ext(c, 0, 1, o);
    case 0xd5: return ext(c, 0, 2, o);
    case 0xd6: return ext(c, 0, 4, o);
    case 0xd7: return ext(c, 0, 8, o);
    case 0xd8: return ext(c, 0, 16, o);
    case 0xd9: o->kind = K_STR; return sized(c, 1, o);
    case 0xda: o->kind = K_STR; return sized(c, 2, o);
    case 0xdb: o->kind = K_STR; return sized(c, 4, o);
    case 0xdc: case 0xdd:
    case 0xde: case 0xdf:
        o->kind = b <= 0xdd ? K_ARRAY : K_MAP;
        if (take(c, b & 1 ? 4 : 2, &at) < 0)
            return -1;
        o->n = be(at, b & 1 ? 4 : 2);
        return 0;
    default:  /* 0xc1: never used */
        return -1;
    }
}

/* Strict UTF-8 as Python decodes it: no overlong forms, no surrogates,
 * nothing past U+10FFFF. */
static int utf8_ok(const unsigned char *s, uint64_t n)
{
    uint64_t i = 0;

    while (i < n) {
        unsigned b = s[i], lo = 0x80, hi = 0xbf;
        int more;
        uint64_t word;

        if (n - i >= 8) {  /* eight ASCII bytes at a time */
            memcpy(&word, s + i, 8);
            if (!(word & 0x8080808080808080ULL)) {
                i += 8;
                continue;
            }
        }
        if (b < 0x80) {
            i++;
            continue;
        }
        if (b >= 0xc2 && b <= 0xdf)
            more = 1;
        else if (b >= 0xe0 && b <= 0xef)
            more = 2;
        else if (b >= 0xf0 && b <= 0xf4)
            more = 3;
        else
            return 0;
        if (b == 0xe0)
            lo = 0xa0;
        else if (b == 0xed)
            hi = 0x9f;
        else if (b == 0xf0)
            lo = 0x90;
        else if (b == 0xf4)
            hi = 0x8f;
        if (n - i <= (uint64_t)more || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (int k = 2; k <= more; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        i += (uint64_t)more + 1;
    }
    return 1;
}

static int skip_body(struct cursor *c, const struct object *o, int depth);

/* One whole object; notes in c->plain what only a full decode judges. */
static int skip(struct cursor *c, int depth)
{
    struct object o;

    if (header(c, &o) < 0)
        return -1;
    return skip_body(c, &o, depth);
}

static int skip_body(struct cursor *c, const struct object *o, int depth)
{
    if (o->kind == K_STR && !utf8_ok(o->s, o->n))
        c->plain = 0;
    if (o->kind == K_EXT)
        c->plain = 0;  /* timestamps and their rules: decoded in full */
    if (o->kind != K_ARRAY && o->kind != K_MAP)
        return 0;
    if (depth >= MAX_DEPTH)
        return -1;
    for (uint64_t k = 0; k < o->n; k++) {
        if (o->kind == K_MAP) {
            struct object key;

            if (header(c, &key) < 0)
                return -1;
            if (key.kind != K_STR && key.kind != K_BIN)
                c->plain = 0;  /* strict_map_key refuses it */
            if (skip_body(c, &key, depth + 1) < 0)
                return -1;
        }
        if (skip(c, depth + 1) < 0)
            return -1;
    }
    return 0;
}

static int is_key(const struct object *key, const char *name)
{
    size_t n = strlen(name);

    return key->kind == K_STR && key->n == n && memcmp(key->s, name, n) == 0;
}

/* What the last of a map's equal keys holds (as a dict keeps it). */
struct heads_seen {
    struct object seq, kind, t;
    int has_seq, has_kind, has_t;
};

static int value(struct cursor *c, struct object *v)
{
    if (header(c, v) < 0)
        return -1;
    return skip_body(c, v, 1);
}

/* The head of one record into h[0..5] (see vmprobe.h). */
static int record(struct cursor *c, const unsigned char *buf, int64_t *h)
{
    struct heads_seen seen = {0};
    struct object o;
    int64_t flags = 0;

    c->plain = 1;
    if (header(c, &o) < 0)
        return -1;
    if (o.kind != K_MAP) {  /* not a record: decoded in full */
        if (skip_body(c, &o, 0) < 0)
            return -1;
        c->plain = 0;
    }
    for (uint64_t k = 0; o.kind == K_MAP && k < o.n; k++) {
        struct object key, v;

        if (header(c, &key) < 0 || skip_body(c, &key, 1) < 0)
            return -1;
        if (key.kind != K_STR && key.kind != K_BIN)
            c->plain = 0;
        if (value(c, &v) < 0)
            return -1;
        if (is_key(&key, "seq")) {
            seen.seq = v;
            seen.has_seq = 1;
        } else if (is_key(&key, "kind")) {
            seen.kind = v;
            seen.has_kind = 1;
        } else if (is_key(&key, "t")) {
            seen.t = v;
            seen.has_t = 1;
        }
    }
    memset(h, 0, VMPROBE_HEAD_WORDS * sizeof(*h));
    h[0] = c->p - buf;
    if (!seen.has_seq || seen.seq.kind != K_INT)
        c->plain = 0;
    if (!seen.has_kind || seen.kind.kind != K_STR ||
        (seen.kind.n == 3 && memcmp(seen.kind.s, "gap", 3) == 0))
        c->plain = 0;  /* gap records: their range is needed */
    if (seen.has_t && (seen.t.kind == K_BOOL || seen.t.kind == K_BIG))
        c->plain = 0;  /* Python counts them as ints: decided in full */
    if (seen.has_t && seen.t.kind == K_INT) {
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
    struct cursor c = {buf, buf + len, 1};
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
