/* The ready ring; push and pop are inline in ready_ring.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ready_ring.h"

int ql__ring_init(ql__ready_ring *ring, uint32_t capacity)
{
    uint32_t cap = 1;
    while (cap < capacity)
        cap <<= 1;
    ring->buf = malloc(sizeof(*ring->buf) * cap);
    if (!ring->buf)
        return -ENOMEM;
    ring->head = 0;
    ring->count = 0;
    ring->mask = cap - 1;
    return 0;
}

void ql__ring_free(ql__ready_ring *ring)
{
    free(ring->buf);
    ring->buf = NULL;
    ring->head = ring->count = ring->mask = 0;
}

int ql__ring_grow(ql__ready_ring *ring)
{
    uint32_t cap = ql__ring_capacity(ring);
    if (cap > UINT32_MAX / 2)
        return -ENOMEM;
    ql__ready_entry *buf = malloc(sizeof(*buf) * cap * 2);
    if (!buf)
        return -ENOMEM;
    /* Unwrap: the oldest entry moves to index 0. */
    uint32_t first = cap - ring->head;
    if (first > ring->count)
        first = ring->count;
    memcpy(buf, ring->buf + ring->head, sizeof(*buf) * first);
    memcpy(buf + first, ring->buf, sizeof(*buf) * (ring->count - first));
    free(ring->buf);
    ring->buf = buf;
    ring->head = 0;
    ring->mask = cap * 2 - 1;
    return 0;
}
