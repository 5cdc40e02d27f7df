/*
 * The timer heap: a 4-ary min-heap in one array.
 *
 * As in libev, the root sits at HEAP0 = DHEAP - 1 so that the four children
 * of a node are contiguous.  Each slot caches the deadline and the start
 * sequence next to the timer pointer, so sifting never dereferences a
 * timer: equal deadlines are common (many timers armed with one delay from
 * one cached clock) and the tie-break (start order: first-in first-out)
 * would otherwise miss the cache on every timer it touches.  Every move
 * writes the new index back into the timer, which makes removal O(log n).
 */
#ifndef QL_TIMER_HEAP_H
#define QL_TIMER_HEAP_H

#include "qloop.h"

#define QL_DHEAP 4
#define QL_HEAP0 (QL_DHEAP - 1)

typedef struct ql__heap_slot {
    int64_t deadline;
    uint64_t seq;
    ql_timer *timer;
} ql__heap_slot;

typedef struct ql__timer_heap {
    ql__heap_slot *slots; /* slots[QL_HEAP0 .. QL_HEAP0 + count - 1] */
    uint32_t count;
    uint32_t cap; /* allocated slots, including the QL_HEAP0 unused ones */
} ql__timer_heap;

void ql__heap_init(ql__timer_heap *heap);
void ql__heap_free(ql__timer_heap *heap);
/* timer->deadline and timer->seq must be set.  0 or -ENOMEM. */
int ql__heap_insert(ql__timer_heap *heap, ql_timer *timer);
void ql__heap_remove(ql__timer_heap *heap, ql_timer *timer);
/* Restore order after timer->deadline and timer->seq changed in place. */
void ql__heap_update(ql__timer_heap *heap, ql_timer *timer);
/* 1 when every parent orders before its children and every timer's
 * heap_index and cached deadline match its slot. */
int ql__heap_verify(const ql__timer_heap *heap);

static inline ql_timer *ql__heap_top(const ql__timer_heap *heap)
{
    return heap->count ? heap->slots[QL_HEAP0].timer : NULL;
}

#endif
