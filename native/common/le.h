/*
 * Explicit little-endian loads for the decoders of kernel buffers
 * (acct.c, bhyve.c): the same result on any host byte order and
 * alignment, so the decoders are tested on Linux with byte-exact vectors.
 */
#ifndef VMPROBE_LE_H
#define VMPROBE_LE_H

#include <stdint.h>

static inline uint16_t le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const unsigned char *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

#endif
