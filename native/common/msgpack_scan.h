/* A msgpack scanner: objects walked without building them, with what only
 * a full decode can judge noted (``plain`` cleared).  The rules mirror
 * msgpack-python's unpacking with raw=False and strict_map_key=True: map
 * keys str or bin, str valid UTF-8 (strict).  Used by msgpack_heads.c and
 * msgpack_reading.c; not part of the cffi interface. */
#ifndef VMPROBE_MSGPACK_SCAN_H
#define VMPROBE_MSGPACK_SCAN_H

#include <stddef.h>
#include <stdint.h>

#define MP_MAX_DEPTH 64  /* deeper: refused whole, decoded by the caller */

struct mp_cursor {
    const unsigned char *p, *end;
    int plain;  /* cleared by what only a full decode can judge */
};

/* One object's header: its type and, for scalars and strings, its value. */
enum mp_kind { MP_INT, MP_BIG, MP_BOOL, MP_NIL, MP_FLOAT, MP_STR, MP_BIN,
               MP_ARRAY, MP_MAP, MP_EXT };

struct mp_object {
    enum mp_kind kind;
    int64_t i;                 /* MP_INT */
    const unsigned char *s;    /* MP_STR, MP_BIN, MP_EXT: the payload */
    uint64_t n;                /* payload length, or array/map count */
};

/* One object's header (a string's or bin's payload taken too): 0, or -1
 * when the bytes end or are not msgpack. */
int mp_header(struct mp_cursor *c, struct mp_object *o);

/* The rest of an object whose header is ``o`` (a container's items). */
int mp_skip_body(struct mp_cursor *c, const struct mp_object *o, int depth);

/* One whole object. */
int mp_skip(struct mp_cursor *c, int depth);

/* Strict UTF-8 as Python decodes it. */
int mp_utf8_ok(const unsigned char *s, uint64_t n);

/* ``key`` is the string ``name``. */
int mp_is_key(const struct mp_object *key, const char *name);

#endif
