/*
 * fuzz_readings: the sample-readings scanner (native/common/msgpack_reading.c)
 * as hostile input.  A mutation loop over seed records (bit and byte flips,
 * truncations, insertions, deletions, length and count fields set to their
 * largest or one past the end, 0-300 levels of nesting, map pairs given
 * twice, objects replaced by others, random bytes), each input in an
 * exactly-sized heap buffer, the outputs too, so that AddressSanitizer sees
 * any access outside them; a result of 0 is checked for sanity (offsets in
 * the buffer, at most 64 counters, the signature's length).
 *
 * Rerun (from the top of the repository; build/ is not tracked):
 *   .venv/bin/python bench/fuzz_readings.py seeds build/fuzz
 *   gcc -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
 *     -DVMPROBE_VERSION='"fuzz"' -Inative -Inative/common \
 *     bench/fuzz_readings.c native/common/msgpack_scan.c \
 *     native/common/msgpack_reading.c -o build/fuzz/fuzz_readings
 *   build/fuzz/fuzz_readings 10000000 1 build/fuzz/seed-*.mp
 * (arguments: inputs, the random generator's seed, the seed records).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msgpack_scan.h"
#include "vmprobe.h"

#define ROOM (1 << 20)   /* a mutated input's largest size */
#define MAX_OBJECTS 65536

static uint64_t rng_state;

static uint64_t rnd(void)  /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t below(size_t n)
{
    return n ? (size_t)(rnd() % n) : 0;
}

/* The objects of one input: where each header starts, its end, its kind,
 * and for a map or array where its count is. */
struct obj {
    size_t at, end;
    enum mp_kind kind;
};

static struct obj objs[MAX_OBJECTS];
static size_t nobjs;

static int walk(const unsigned char *b, struct mp_cursor *c, int depth)
{
    struct mp_object o;
    size_t me = nobjs, at = (size_t)(c->p - b);

    if (mp_header(c, &o) < 0 || depth > 80)
        return -1;
    if (nobjs < MAX_OBJECTS)
        objs[nobjs++] = (struct obj){at, 0, o.kind};
    if (o.kind == MP_ARRAY || o.kind == MP_MAP)
        for (uint64_t k = 0; k < o.n * (o.kind == MP_MAP ? 2 : 1); k++)
            if (walk(b, c, depth + 1) < 0)
                return -1;
    if (me < MAX_OBJECTS)
        objs[me].end = (size_t)(c->p - b);
    return 0;
}

static void objects(const unsigned char *b, size_t len)
{
    struct mp_cursor c = {b, b + len, 1};

    nobjs = 0;
    walk(b, &c, 0);
}

static void insert(unsigned char *b, size_t *len, size_t at,
                   const unsigned char *what, size_t n)
{
    if (*len + n > ROOM || at > *len)
        return;
    memmove(b + at + n, b + at, *len - at);
    memcpy(b + at, what, n);
    *len += n;
}

static void erase(unsigned char *b, size_t *len, size_t at, size_t n)
{
    if (at >= *len)
        return;
    if (n > *len - at)
        n = *len - at;
    memmove(b + at, b + at + n, *len - at - n);
    *len -= n;
}

/* A length or count field set to its largest, or to one past what is
 * left, or to exactly what is left: the object's first byte replaced by
 * a header in the widest form of a kind like its own. */
static void big_length(unsigned char *b, size_t *len, const struct obj *o)
{
    static const unsigned char sized[] = {0xdb, 0xc6, 0xc9};
    unsigned char head[5];
    size_t left = *len - o->at - 1;  /* after the replaced byte */
    uint64_t v;
    int n = 5;

    if (o->kind == MP_MAP || o->kind == MP_ARRAY)
        head[0] = o->kind == MP_MAP ? 0xdf : 0xdd;
    else
        head[0] = sized[below(sizeof sized)];
    switch (rnd() % 4) {
    case 0: v = 0xffffffffu; break;
    case 1: v = left + 1; break;
    case 2: v = left; break;
    default:  /* the one-byte form, its largest */
        head[0] = o->kind == MP_MAP ? 0x8f : o->kind == MP_ARRAY ? 0x9f
                                                                 : 0xbf;
        v = 0;
        n = 1;
    }
    for (int k = 0; k < 4; k++)
        head[1 + k] = (unsigned char)(v >> (24 - 8 * k));
    erase(b, len, o->at, 1);
    insert(b, len, o->at, head, (size_t)n);
}

/* 0 to 300 levels of [[...]] or {"a": {"a": ...}} around an object. */
static void nest(unsigned char *b, size_t *len, size_t at)
{
    static unsigned char deep[900];
    size_t n = below(301);
    int as_map = (int)(rnd() & 1);

    for (size_t k = 0; k < n; k++) {
        if (as_map) {
            deep[3 * k] = 0x81;
            deep[3 * k + 1] = 0xa1;
            deep[3 * k + 2] = 'a';
        } else {
            deep[k] = 0x91;
        }
    }
    insert(b, len, at, deep, as_map ? 3 * n : n);
}

/* A map's pair given twice (its count one more). */
static void twice(unsigned char *b, size_t *len)
{
    static unsigned char copy[ROOM];
    size_t maps[256], nmaps = 0, start, n;
    const struct obj *m;
    struct mp_cursor c;

    for (size_t k = 0; k < nobjs && nmaps < 256; k++)
        if (objs[k].kind == MP_MAP && (b[objs[k].at] & 0xf0) == 0x80 &&
            (b[objs[k].at] & 0x0f) % 15 != 0 && objs[k].end)
            maps[nmaps++] = k;
    if (nmaps == 0)
        return;
    m = &objs[maps[below(nmaps)]];
    c = (struct mp_cursor){b + m->at + 1, b + *len, 1};
    for (size_t k = below(b[m->at] & 0x0f); k > 0; k--)
        if (mp_skip(&c, 0) < 0 || mp_skip(&c, 0) < 0)
            return;
    start = (size_t)(c.p - b);
    if (mp_skip(&c, 0) < 0 || mp_skip(&c, 0) < 0)
        return;
    n = (size_t)(c.p - b) - start;
    memcpy(copy, b + start, n);
    b[m->at]++;
    insert(b, len, m->end, copy, n);
}

/* An object replaced by another one of the input. */
static void replace(unsigned char *b, size_t *len)
{
    static unsigned char copy[ROOM];
    const struct obj *o, *p;

    if (nobjs < 2)
        return;
    o = &objs[1 + below(nobjs - 1)];
    p = &objs[below(nobjs)];
    if (p->end <= p->at || o->end <= o->at)
        return;
    memcpy(copy, b + p->at, p->end - p->at);
    erase(b, len, o->at, o->end - o->at);
    insert(b, len, o->at, copy, p->end - p->at);
}

static const unsigned char SPECIAL[] = {
    0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3,
    0xc4, 0xc7, 0xca, 0xcb, 0xcc, 0xcf, 0xd0, 0xd3, 0xd4, 0xd8, 0xd9, 0xda,
    0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff, 0xed, 0xf4, 0xf5};

static void mutate(unsigned char *b, size_t *len)
{
    unsigned char junk[16];
    size_t at = below(*len + 1);

    switch (rnd() % 11) {
    case 0:
        if (at < *len)
            b[at] ^= (unsigned char)(1u << below(8));
        break;
    case 1:
        if (at < *len)
            b[at] = rnd() & 1 ? SPECIAL[below(sizeof SPECIAL)]
                              : (unsigned char)rnd();
        break;
    case 2:
        *len = at;
        break;
    case 3:
        for (size_t k = 0; k < sizeof junk; k++)
            junk[k] = (unsigned char)rnd();
        insert(b, len, at, junk, 1 + below(sizeof junk));
        break;
    case 4:
        erase(b, len, at, 1 + below(16));
        break;
    case 5: case 6:
        objects(b, *len);
        if (nobjs)
            big_length(b, len, &objs[below(nobjs)]);
        break;
    case 7:
        objects(b, *len);
        if (nobjs)
            nest(b, len, objs[below(nobjs)].at);
        break;
    case 8: case 9:
        objects(b, *len);
        if (rnd() & 1)
            twice(b, len);
        else
            replace(b, len);
        break;
    default:
        *len = below(64);
        for (size_t k = 0; k < *len; k++)
            b[k] = rnd() & 3 ? SPECIAL[below(sizeof SPECIAL)]
                             : (unsigned char)rnd();
    }
}

/* A result of 0: what the header promises of out[] and sig. */
static void check(const int64_t *out, size_t len)
{
    int ok = out[14] >= 0 && out[14] <= VMPROBE_READING_COUNTERS &&
             out[15] >= 0 && out[15] <= VMPROBE_READING_SIG;

    for (int k = 1; k <= 7; k += 2)
        ok = ok && out[k] >= 0 && out[k + 1] >= 0 &&
             (uint64_t)out[k] + (uint64_t)out[k + 1] <= len;
    if (!ok) {
        fprintf(stderr, "fuzz_readings: bad output for %zu bytes\n", len);
        abort();
    }
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *b = malloc(ROOM);

    if (!f || !b) {
        fprintf(stderr, "fuzz_readings: cannot read %s\n", path);
        exit(2);
    }
    *len = fread(b, 1, ROOM, f);
    fclose(f);
    return b;
}

int main(int argc, char **argv)
{
    static unsigned char work[ROOM];
    unsigned char **seed;
    size_t *seed_len, nseeds = (size_t)(argc > 3 ? argc - 3 : 0);
    long long inputs = argc > 1 ? atoll(argv[1]) : 0, counts[3] = {0};

    if (nseeds == 0 || inputs <= 0) {
        fprintf(stderr, "usage: fuzz_readings INPUTS RNG_SEED SEED...\n");
        return 2;
    }
    rng_state = (uint64_t)atoll(argv[2]) * 0x9E3779B97F4A7C15ULL | 1;
    seed = calloc(nseeds, sizeof *seed);
    seed_len = calloc(nseeds, sizeof *seed_len);
    for (size_t k = 0; k < nseeds; k++)
        seed[k] = slurp(argv[3 + k], &seed_len[k]);
    for (long long i = 0; i < inputs; i++) {
        size_t s = below(nseeds), len = seed_len[s];
        unsigned char *buf, *sig = malloc(VMPROBE_READING_SIG);
        int64_t *out = malloc(VMPROBE_READING_WORDS * sizeof *out);
        int rc;

        memcpy(work, seed[s], len);
        for (size_t m = below(4); m > 0; m--)  /* 0 to 3: seeds as they are */
            mutate(work, &len);
        buf = malloc(len ? len : 1);
        memcpy(buf, work, len);
        rc = vmprobe_sample_reading(len ? buf : buf + 1, len, out, sig);
        if (rc < -1 || rc > 1) {
            fprintf(stderr, "fuzz_readings: returned %d\n", rc);
            abort();
        }
        counts[rc + 1]++;
        if (rc == 0)
            check(out, len);
        free(buf);
        free(sig);
        free(out);
    }
    printf("%lld inputs: %lld read, %lld not the usual shape, "
           "%lld not msgpack\n", inputs, counts[1], counts[2], counts[0]);
    for (size_t k = 0; k < nseeds; k++)
        free(seed[k]);
    free(seed);
    free(seed_len);
    return 0;
}
