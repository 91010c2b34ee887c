/* The msgpack scanner (msgpack_scan.h). */
#include <string.h>

#include "msgpack_scan.h"

static uint64_t be(const unsigned char *p, int width)
{
    uint64_t v = 0;

    for (int k = 0; k < width; k++)
        v = v << 8 | p[k];
    return v;
}

static int take(struct mp_cursor *c, uint64_t n, const unsigned char **at)
{
    if ((uint64_t)(c->end - c->p) < n)
        return -1;
    *at = c->p;
    c->p += n;
    return 0;
}

/* A length (1, 2 or 4 bytes) then that many bytes. */
static int sized(struct mp_cursor *c, int width, struct mp_object *o)
{
    const unsigned char *at;

    if (take(c, (uint64_t)width, &at) < 0)
        return -1;
    o->n = be(at, width);
    return take(c, o->n, &o->s);
}

static int ext(struct mp_cursor *c, int width, uint64_t fixed,
               struct mp_object *o)
{
    const unsigned char *at;

    o->kind = MP_EXT;
    if (width) {
        if (take(c, (uint64_t)width, &at) < 0)
            return -1;
        fixed = be(at, width);
    }
    o->n = fixed;
    return take(c, 1 + fixed, &o->s);  /* the type byte, the data */
}

static int number(struct mp_cursor *c, int width, int is_signed,
                  struct mp_object *o)
{
    const unsigned char *at;
    uint64_t v;

    if (take(c, (uint64_t)width, &at) < 0)
        return -1;
    v = be(at, width);
    o->kind = MP_INT;
    if (is_signed) {
        int shift = 64 - 8 * width;
        o->i = shift ? (int64_t)(v << shift) >> shift : (int64_t)v;
    } else if (v > INT64_MAX) {
        o->kind = MP_BIG;  /* a Python int, beyond what the head holds */
    } else {
        o->i = (int64_t)v;
    }
    return 0;
}

int mp_header(struct mp_cursor *c, struct mp_object *o)
{
    const unsigned char *at;
    unsigned b;

    if (take(c, 1, &at) < 0)
        return -1;
    b = *at;
    o->n = 0;
    if (b <= 0x7f || b >= 0xe0) {
        o->kind = MP_INT;
        o->i = b <= 0x7f ? (int64_t)b : (int64_t)b - 256;
        return 0;
    }
    if (b <= 0x8f || (b >= 0x90 && b <= 0x9f)) {
        o->kind = b <= 0x8f ? MP_MAP : MP_ARRAY;
        o->n = b & 0x0f;
        return 0;
    }
    if (b <= 0xbf) {
        o->kind = MP_STR;
        o->n = b & 0x1f;
        return take(c, o->n, &o->s);
    }
    switch (b) {
    case 0xc0: o->kind = MP_NIL; return 0;
    case 0xc2: case 0xc3: o->kind = MP_BOOL; return 0;
    case 0xc4: o->kind = MP_BIN; return sized(c, 1, o);
    case 0xc5: o->kind = MP_BIN; return sized(c, 2, o);
    case 0xc6: o->kind = MP_BIN; return sized(c, 4, o);
    case 0xc7: return ext(c, 1, 0, o);
    case 0xc8: return ext(c, 2, 0, o);
    case 0xc9: return ext(c, 4, 0, o);
    case 0xca: o->kind = MP_FLOAT; return take(c, 4, &at);
    case 0xcb: o->kind = MP_FLOAT; return take(c, 8, &at);
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
    case 0xd9: o->kind = MP_STR; return sized(c, 1, o);
    case 0xda: o->kind = MP_STR; return sized(c, 2, o);
    case 0xdb: o->kind = MP_STR; return sized(c, 4, o);
    case 0xdc: case 0xdd:
    case 0xde: case 0xdf:
        o->kind = b <= 0xdd ? MP_ARRAY : MP_MAP;
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
int mp_utf8_ok(const unsigned char *s, uint64_t n)
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

/* One whole object; notes in c->plain what only a full decode judges. */
int mp_skip(struct mp_cursor *c, int depth)
{
    struct mp_object o;

    if (mp_header(c, &o) < 0)
        return -1;
    return mp_skip_body(c, &o, depth);
}

int mp_skip_body(struct mp_cursor *c, const struct mp_object *o, int depth)
{
    if (o->kind == MP_STR && !mp_utf8_ok(o->s, o->n))
        c->plain = 0;
    if (o->kind == MP_EXT)
        c->plain = 0;  /* timestamps and their rules: decoded in full */
    if (o->kind != MP_ARRAY && o->kind != MP_MAP)
        return 0;
    if (depth >= MP_MAX_DEPTH)
        return -1;
    for (uint64_t k = 0; k < o->n; k++) {
        if (o->kind == MP_MAP) {
            struct mp_object key;

            if (mp_header(c, &key) < 0)
                return -1;
            if (key.kind != MP_STR && key.kind != MP_BIN)
                c->plain = 0;  /* strict_map_key refuses it */
            if (mp_skip_body(c, &key, depth + 1) < 0)
                return -1;
        }
        if (mp_skip(c, depth + 1) < 0)
            return -1;
    }
    return 0;
}

int mp_is_key(const struct mp_object *key, const char *name)
{
    size_t n = strlen(name);

    return key->kind == MP_STR && key->n == n && memcmp(key->s, name, n) == 0;
}

