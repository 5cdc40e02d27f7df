/* The 4-ary timer heap; see timer_heap.h for the layout. */
#include <errno.h>
#include <stdlib.h>

#include "timer_heap.h"

#define HPARENT(k) ((((k) - QL_HEAP0 - 1) / QL_DHEAP) + QL_HEAP0)
#define HCHILD0(k) (QL_DHEAP * ((k) - QL_HEAP0) + QL_HEAP0 + 1)

/* Order by deadline, then by start sequence (FIFO for equal deadlines). */
static inline int slot_before(const ql__heap_slot *a, const ql__heap_slot *b)
{
    if (a->deadline != b->deadline)
        return a->deadline < b->deadline;
    return a->seq < b->seq;
}

static inline void place(ql__timer_heap *heap, uint32_t k, ql__heap_slot s)
{
    heap->slots[k] = s;
    s.timer->heap_index = k;
}

/* Sift from the hole at k: s moves up to its place, each parent it passes
 * moves down one level; s and every moved slot are written once. */
static void sift_up(ql__timer_heap *heap, uint32_t k, ql__heap_slot s)
{
    while (k > QL_HEAP0) {
        uint32_t p = HPARENT(k);
        if (!slot_before(&s, &heap->slots[p]))
            break;
        place(heap, k, heap->slots[p]);
        k = p;
    }
    place(heap, k, s);
}

/* The same downwards: the hole at k takes the smallest child while that
 * orders before s. */
static void sift_down(ql__timer_heap *heap, uint32_t k, ql__heap_slot s)
{
    uint32_t end = QL_HEAP0 + heap->count;
    for (;;) {
        uint32_t c = HCHILD0(k);
        if (c >= end)
            break;
        uint32_t last = c + QL_DHEAP < end ? c + QL_DHEAP : end;
        uint32_t best = c;
        for (uint32_t i = c + 1; i < last; i++)
            if (slot_before(&heap->slots[i], &heap->slots[best]))
                best = i;
        if (!slot_before(&heap->slots[best], &s))
            break;
        place(heap, k, heap->slots[best]);
        k = best;
    }
    place(heap, k, s);
}

/* s goes into the hole at k, above or below it. */
static void resift(ql__timer_heap *heap, uint32_t k, ql__heap_slot s)
{
    if (k > QL_HEAP0 && slot_before(&s, &heap->slots[HPARENT(k)]))
        sift_up(heap, k, s);
    else
        sift_down(heap, k, s);
}

void ql__heap_init(ql__timer_heap *heap)
{
    heap->slots = NULL;
    heap->count = 0;
    heap->cap = 0;
}

void ql__heap_free(ql__timer_heap *heap)
{
    free(heap->slots);
    ql__heap_init(heap);
}

int ql__heap_insert(ql__timer_heap *heap, ql_timer *timer)
{
    uint32_t k = QL_HEAP0 + heap->count;
    if (k >= heap->cap) {
        uint32_t cap = heap->cap ? heap->cap * 2 : 64;
        if (cap <= heap->cap)
            return -ENOMEM;
        ql__heap_slot *slots = realloc(heap->slots, sizeof(*slots) * cap);
        if (!slots)
            return -ENOMEM;
        heap->slots = slots;
        heap->cap = cap;
    }
    heap->count++;
    ql__heap_slot s = {timer->deadline, timer->seq, timer};
    sift_up(heap, k, s);
    return 0;
}

void ql__heap_remove(ql__timer_heap *heap, ql_timer *timer)
{
    uint32_t k = timer->heap_index;
    uint32_t last = QL_HEAP0 + heap->count - 1;
    timer->heap_index = QL_TIMER_INACTIVE;
    heap->count--;
    if (k == last)
        return;
    /* The last slot fills the hole; it may belong above or below it. */
    resift(heap, k, heap->slots[last]);
}

void ql__heap_update(ql__timer_heap *heap, ql_timer *timer)
{
    ql__heap_slot s = {timer->deadline, timer->seq, timer};
    resift(heap, timer->heap_index, s);
}

int ql__heap_verify(const ql__timer_heap *heap)
{
    uint32_t end = QL_HEAP0 + heap->count;
    for (uint32_t k = QL_HEAP0; k < end; k++) {
        const ql__heap_slot *s = &heap->slots[k];
        if (s->timer->heap_index != k || s->timer->deadline != s->deadline ||
            s->timer->seq != s->seq)
            return 0;
        if (k > QL_HEAP0 && slot_before(s, &heap->slots[HPARENT(k)]))
            return 0;
    }
    return 1;
}
