/*
 * The ready ring: a FIFO of (function, argument) pairs in a power-of-two
 * array that doubles when full.  Push and pop are inline because call_soon
 * and the run pass are the hottest paths of the loop.
 */
#ifndef QL_READY_RING_H
#define QL_READY_RING_H

#include "qloop.h"

typedef struct ql__ready_entry {
    ql_callback_fn fn;
    void *arg;
} ql__ready_entry;

typedef struct ql__ready_ring {
    ql__ready_entry *buf;
    uint32_t head;  /* index of the oldest entry */
    uint32_t count;
    uint32_t mask;  /* capacity - 1; capacity is a power of two */
} ql__ready_ring;

int ql__ring_init(ql__ready_ring *ring, uint32_t capacity);
void ql__ring_free(ql__ready_ring *ring);
/* Double the capacity, keeping order.  0 or -ENOMEM. */
int ql__ring_grow(ql__ready_ring *ring);

static inline uint32_t ql__ring_capacity(const ql__ready_ring *ring)
{
    return ring->mask + 1;
}

static inline int ql__ring_push(ql__ready_ring *ring, ql_callback_fn fn,
                                void *arg)
{
    if (ring->count > ring->mask) {
        int rc = ql__ring_grow(ring);
        if (rc < 0)
            return rc;
    }
    ql__ready_entry *e = &ring->buf[(ring->head + ring->count) & ring->mask];
    e->fn = fn;
    e->arg = arg;
    ring->count++;
    return 0;
}

static inline int ql__ring_pop(ql__ready_ring *ring, ql__ready_entry *out)
{
    if (ring->count == 0)
        return 0;
    *out = ring->buf[ring->head];
    ring->head = (ring->head + 1) & ring->mask;
    ring->count--;
    return 1;
}

#endif
