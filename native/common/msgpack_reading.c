/* A sample record's readings, straight from its msgpack bytes: what the
 * ledger's fold takes from it (agent/vmagent/ledger/readings.py says the
 * rules) without building the record.  Only the usual shape is vouched
 * for: every field the fold reads an integer, absent or nil where it may
 * be missing, each map key once, no big or bool numbers, every string
 * valid; anything else returns 1 and the caller decodes the record, so
 * that what comes out is always what decoding would give. */
#include <string.h>

#include "msgpack_scan.h"
#include "vmprobe.h"

#define OTHER 1  /* not the usual shape: decoded by the caller */

/* The meters in the order Python sorts their names (out[] meter ids). */
enum meter { CPU_NS, DISK_RD_BYTES, DISK_RD_OPS, DISK_WR_BYTES, DISK_WR_OPS,
             IO_RD_BYTES, IO_WR_BYTES, NET_RX_BYTES, NET_RX_PACKETS,
             NET_TX_BYTES, NET_TX_PACKETS };

struct counter {
    int meter, dev;  /* dev: an index into devs, -1 for none */
    int64_t value;
};

struct reading {
    const unsigned char *buf;
    struct mp_cursor c;
    struct mp_object devs[VMPROBE_READING_DEVS];
    int ndevs;
    struct counter counters[VMPROBE_READING_COUNTERS];
    int n;
};

/* A field's value, as the fold reads one: an integer, else absent. */
enum { ABSENT, NUMBER };

static int number_or_nil(struct mp_cursor *c, int64_t *v)
{
    struct mp_object o;

    if (mp_header(c, &o) < 0)
        return -1;
    if (o.kind == MP_INT) {
        *v = o.i;
        return NUMBER;
    }
    return o.kind == MP_NIL ? ABSENT : OTHER + 1;
}

/* A string field: 1 with ``o`` set, 0 for nil, else OTHER + 1. */
static int string_or_nil(struct mp_cursor *c, struct mp_object *o)
{
    if (mp_header(c, o) < 0)
        return -1;
    if (o->kind == MP_STR)
        return mp_utf8_ok(o->s, o->n) ? 1 : OTHER + 1;
    return o->kind == MP_NIL ? 0 : OTHER + 1;
}

static int add(struct reading *r, int meter, int dev, int64_t value)
{
    if (r->n == VMPROBE_READING_COUNTERS)
        return OTHER;
    r->counters[r->n++] = (struct counter){meter, dev, value};
    return 0;
}

/* A map's next key: its index in ``names`` (each taken once), or -2 for
 * another key (its value is then skipped by the caller). */
static int next_key(struct reading *r, const char *const *names,
                    unsigned *seen)
{
    struct mp_object key;

    if (mp_header(&r->c, &key) < 0)
        return -1;
    if (key.kind != MP_STR || !mp_utf8_ok(key.s, key.n))
        return -OTHER - 2;
    for (int k = 0; names[k]; k++) {
        if (mp_is_key(&key, names[k])) {
            if (*seen & 1u << k)
                return -OTHER - 2;  /* twice: the last one would win */
            *seen |= 1u << k;
            return k;
        }
    }
    return -2;
}

static int skip_value(struct reading *r)
{
    if (mp_skip(&r->c, 2) < 0)
        return -1;
    return r->c.plain ? 0 : OTHER;
}

/* Walks a map whose header was read (``n`` pairs): ``field`` is called
 * for each key of ``names``, the rest skipped. */
typedef int (*field_fn)(struct reading *r, int which, void *arg);

static int map_fields(struct reading *r, uint64_t n, const char *const *names,
                      field_fn field, void *arg)
{
    unsigned seen = 0;

    for (uint64_t i = 0; i < n; i++) {
        int which = next_key(r, names, &seen), rc;

        if (which == -1)
            return -1;
        if (which == -OTHER - 2)
            return OTHER;
        rc = which == -2 ? skip_value(r) : field(r, which, arg);
        if (rc)
            return rc;
    }
    return 0;
}

static int map_header(struct reading *r, uint64_t *n, int may_be_absent)
{
    struct mp_object o;

    if (mp_header(&r->c, &o) < 0)
        return -1;
    if (o.kind == MP_MAP) {
        *n = o.n;
        return 0;
    }
    if (o.kind == MP_NIL && may_be_absent) {
        *n = 0;
        return 0;
    }
    return OTHER;
}

/* An array's header (nil: an empty one). */
static int array_or_nil(struct reading *r, struct mp_object *o)
{
    if (mp_header(&r->c, o) < 0)
        return -1;
    if (o->kind == MP_NIL) {
        o->n = 0;
        return 0;
    }
    return o->kind == MP_ARRAY ? 0 : OTHER;
}

/* --- vm ----------------------------------------------------------------- */

struct vm {
    struct mp_object uuid, gen, name;
    int has_uuid, has_gen, has_name, has_started;
    int64_t started;
};

static const char *const VM_KEYS[] = {"uuid", "gen", "name", "started_ns",
                                      NULL};

static int vm_field(struct reading *r, int which, void *arg)
{
    struct vm *vm = arg;
    struct mp_object o;
    int rc;

    if (which == 3) {
        rc = number_or_nil(&r->c, &vm->started);
        vm->has_started = rc == NUMBER;
        return rc < 0 ? -1 : rc > NUMBER ? OTHER : 0;
    }
    rc = string_or_nil(&r->c, &o);
    if (rc < 0 || rc > 1)
        return rc < 0 ? -1 : OTHER;
    if (which == 2) {
        vm->name = o;
        vm->has_name = rc == 1;
        return 0;
    }
    if (rc == 0 || o.n == 0)
        return OTHER;  /* no uuid or gen: decoded (it names no gen) */
    if (which == 0) {
        vm->uuid = o;
        vm->has_uuid = 1;
    } else {
        vm->gen = o;
        vm->has_gen = 1;
    }
    return 0;
}

/* --- cpu, mem, io ------------------------------------------------------- */

struct cpu {
    int has_total;
    int64_t total, vhost, vcpus;
};

static const char *const CPU_KEYS[] = {"total_ns", "vhost_ns", "vcpus", NULL};

static int cpu_field(struct reading *r, int which, void *arg)
{
    struct cpu *cpu = arg;
    struct mp_object o;
    int64_t v = 0;
    int rc;

    if (which == 2) {  /* the vCPU threads: counted */
        rc = array_or_nil(r, &o);
        if (rc)
            return rc;
        cpu->vcpus = (int64_t)o.n;
        if (mp_skip_body(&r->c, &o, 2) < 0)
            return -1;
        return r->c.plain ? 0 : OTHER;
    }
    rc = number_or_nil(&r->c, &v);
    if (rc != ABSENT && rc != NUMBER)
        return rc < 0 ? -1 : OTHER;
    if (which == 0) {
        cpu->has_total = rc == NUMBER;
        cpu->total = v;
    } else {
        cpu->vhost = v;  /* absent: 0 */
    }
    return 0;
}

struct numbers {
    int has[2];
    int64_t v[2];
};

static int numbers_field(struct reading *r, int which, void *arg)
{
    struct numbers *nums = arg;
    int rc = number_or_nil(&r->c, &nums->v[which]);

    if (rc != ABSENT && rc != NUMBER)
        return rc < 0 ? -1 : OTHER;
    nums->has[which] = rc == NUMBER;
    return 0;
}

static const char *const MEM_KEYS[] = {"rss_bytes", "alloc_bytes", NULL};
static const char *const IO_KEYS[] = {"rd_bytes", "wr_bytes", NULL};

/* --- nics, disks -------------------------------------------------------- */

/* A device: its name fields first (in order of preference), then its
 * counters. */
struct device {
    int nnames;
    struct mp_object name[2];
    int has_name[2];
    int has[4];
    int64_t v[4];
};

static const char *const NIC_KEYS[] = {
    "mac", "name", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", NULL};
static const int NIC_METERS[] = {NET_RX_BYTES, NET_TX_BYTES, NET_RX_PACKETS,
                                 NET_TX_PACKETS};
static const char *const DISK_KEYS[] = {
    "path", "rd_bytes", "wr_bytes", "rd_ops", "wr_ops", NULL};
static const int DISK_METERS[] = {DISK_RD_BYTES, DISK_WR_BYTES, DISK_RD_OPS,
                                  DISK_WR_OPS};

static int device_field(struct reading *r, int which, void *arg)
{
    struct device *d = arg;
    int rc;

    if (which < d->nnames) {
        rc = string_or_nil(&r->c, &d->name[which]);
        if (rc < 0 || rc > 1)
            return rc < 0 ? -1 : OTHER;
        d->has_name[which] = rc == 1 && d->name[which].n > 0;
        return 0;
    }
    which -= d->nnames;
    rc = number_or_nil(&r->c, &d->v[which]);
    if (rc != ABSENT && rc != NUMBER)
        return rc < 0 ? -1 : OTHER;
    d->has[which] = rc == NUMBER;
    return 0;
}

/* Each device's counters under its first non-empty name (none: none). */
static int devices(struct reading *r, const char *const *keys, int nnames,
                   const int *meters)
{
    struct mp_object o;
    int rc = array_or_nil(r, &o);

    if (rc)
        return rc;
    for (uint64_t i = 0; i < o.n; i++) {
        struct device d = {nnames, {{0}}, {0}, {0}, {0}};
        uint64_t n;
        int name = -1;

        rc = map_header(r, &n, 0);
        if (rc)
            return rc;
        rc = map_fields(r, n, keys, device_field, &d);
        if (rc)
            return rc;
        for (int k = nnames - 1; k >= 0; k--)
            if (d.has_name[k])
                name = k;
        if (name < 0)
            continue;
        if (r->ndevs == VMPROBE_READING_DEVS)
            return OTHER;
        r->devs[r->ndevs] = d.name[name];
        for (int k = 0; k < 4; k++)
            if (d.has[k] && add(r, meters[k], r->ndevs, d.v[k]))
                return OTHER;
        r->ndevs++;
    }
    return 0;
}

/* --- the record --------------------------------------------------------- */

struct top {
    struct vm vm;
    const unsigned char *vm_at, *vm_end;  /* the vm map's bytes */
    struct cpu cpu;
    struct numbers mem, io;
    int has_t, is_sample;
    int64_t t;
};

static const char *const TOP_KEYS[] = {"kind", "t", "vm", "cpu", "mem", "io",
                                       "nics", "disks", "samples", NULL};

static int top_field(struct reading *r, int which, void *arg)
{
    struct top *top = arg;
    struct mp_object o;
    uint64_t n;
    int rc;

    switch (which) {
    case 0:
        rc = string_or_nil(&r->c, &o);
        if (rc < 0)
            return -1;
        top->is_sample = rc == 1 && mp_is_key(&o, "sample");
        return top->is_sample ? 0 : OTHER;
    case 1:
        rc = number_or_nil(&r->c, &top->t);
        top->has_t = rc == NUMBER;
        return rc < 0 ? -1 : top->has_t ? 0 : OTHER;
    case 2:
        top->vm_at = r->c.p;
        rc = map_header(r, &n, 0);
        if (rc == 0)
            rc = map_fields(r, n, VM_KEYS, vm_field, &top->vm);
        top->vm_end = r->c.p;
        return rc;
    case 3:
        rc = map_header(r, &n, 1);
        return rc ? rc : map_fields(r, n, CPU_KEYS, cpu_field, &top->cpu);
    case 4:
        rc = map_header(r, &n, 1);
        return rc ? rc : map_fields(r, n, MEM_KEYS, numbers_field, &top->mem);
    case 5:
        rc = map_header(r, &n, 1);
        return rc ? rc : map_fields(r, n, IO_KEYS, numbers_field, &top->io);
    case 6:
        return devices(r, NIC_KEYS, 2, NIC_METERS);
    case 7:
        return devices(r, DISK_KEYS, 1, DISK_METERS);
    default:  /* a sample holding samples: decoded */
        return OTHER;
    }
}

static int64_t span(const struct reading *r, const struct mp_object *o)
{
    return o->s - r->buf;
}

/* Python's order of (meter, device) keys: the meter's name, then the
 * device's (UTF-8 bytes compare as code points do). */
static int before(const struct reading *r, const struct counter *a,
                  const struct counter *b)
{
    const struct mp_object *x, *y;
    size_t n;
    int cmp;

    if (a->meter != b->meter)
        return a->meter < b->meter ? -1 : 1;
    if (a->dev < 0 || b->dev < 0)
        return (a->dev >= 0) - (b->dev >= 0);
    x = &r->devs[a->dev];
    y = &r->devs[b->dev];
    n = x->n < y->n ? x->n : y->n;
    cmp = memcmp(x->s, y->s, n);
    if (cmp)
        return cmp;
    return (x->n > y->n) - (x->n < y->n);
}

static int sorted_once(struct reading *r)
{
    for (int i = 1; i < r->n; i++) {  /* a handful: insertion sort */
        struct counter c = r->counters[i];
        int j = i;

        for (; j > 0 && before(r, &c, &r->counters[j - 1]) < 0; j--)
            r->counters[j] = r->counters[j - 1];
        r->counters[j] = c;
    }
    for (int i = 1; i < r->n; i++)
        if (before(r, &r->counters[i - 1], &r->counters[i]) == 0)
            return OTHER;  /* two devices of one name: a dict merges them */
    return 0;
}

static int cpu_counter(struct reading *r, const struct cpu *cpu)
{
    int64_t sum;

    if (!cpu->has_total)
        return 0;
    if (__builtin_add_overflow(cpu->total, cpu->vhost, &sum))
        return OTHER;
    return add(r, CPU_NS, -1, sum);
}

/* The counters' keys as bytes (meter id, device name length as two
 * bytes, the name; 0xffff: no device), in sig; its length or -1. */
static int64_t signature(const struct reading *r, unsigned char *sig)
{
    size_t at = 0;

    for (int k = 0; k < r->n; k++) {
        const struct counter *c = &r->counters[k];
        size_t n = c->dev < 0 ? 0 : r->devs[c->dev].n;

        if (n >= 0xffff || at + 3 + n > VMPROBE_READING_SIG)
            return -1;
        sig[at] = (unsigned char)c->meter;
        sig[at + 1] = c->dev < 0 ? 0xff : (unsigned char)(n >> 8);
        sig[at + 2] = c->dev < 0 ? 0xff : (unsigned char)n;
        if (n)
            memcpy(sig + at + 3, r->devs[c->dev].s, n);
        at += 3 + n;
    }
    return (int64_t)at;
}

int vmprobe_sample_reading(const unsigned char *buf, size_t len, int64_t *out,
                           unsigned char *sig)
{
    struct reading r = {buf, {buf, buf + len, 1}, {{0}}, 0, {{0}}, 0};
    struct top top = {0};
    uint64_t n;
    int64_t siglen;
    int rc = map_header(&r, &n, 0);

    if (rc == 0)
        rc = map_fields(&r, n, TOP_KEYS, top_field, &top);
    if (rc == 0 && r.c.p != r.c.end)
        rc = OTHER;  /* more than one object */
    if (rc)
        return rc < 0 ? -1 : OTHER;
    if (!top.is_sample || !top.has_t || !top.vm.has_uuid || !top.vm.has_gen)
        return OTHER;
    if (cpu_counter(&r, &top.cpu))
        return OTHER;
    for (int k = 0; k < 2; k++)
        if (top.io.has[k] &&
            add(&r, k ? IO_WR_BYTES : IO_RD_BYTES, -1, top.io.v[k]))
            return OTHER;
    if (sorted_once(&r) || (siglen = signature(&r, sig)) < 0)
        return OTHER;
    out[0] = top.t;
    out[1] = top.vm_at - buf;
    out[2] = top.vm_end - top.vm_at;
    out[3] = span(&r, &top.vm.uuid);
    out[4] = (int64_t)top.vm.uuid.n;
    out[5] = span(&r, &top.vm.gen);
    out[6] = (int64_t)top.vm.gen.n;
    out[7] = top.vm.has_name ? span(&r, &top.vm.name) : 0;
    out[8] = top.vm.has_name ? (int64_t)top.vm.name.n : 0;
    out[9] = (top.vm.has_started ? VMPROBE_READING_STARTED : 0) |
             (top.mem.has[0] ? VMPROBE_READING_RSS : 0) |
             (top.mem.has[1] ? VMPROBE_READING_ALLOC : 0);
    out[10] = top.vm.started;
    out[11] = top.mem.v[0];
    out[12] = top.mem.v[1];
    out[13] = top.cpu.vcpus;
    out[14] = r.n;
    out[15] = siglen;
    for (int k = 0; k < r.n; k++)
        out[VMPROBE_READING_HEAD + k] = r.counters[k].value;
    return 0;
}
