/*
 * The timer heap against a reference model.
 *
 * The model is a plain linear scan over a pool of timers with an "armed"
 * flag each: the minimum is the armed timer with the smallest (deadline,
 * seq).  Every randomized step (insert, remove, pop-min, re-arm with a new
 * seq, update of the deadline alone) is followed by ql__heap_verify() and
 * by our own check that the heap holds exactly the armed timers.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "qloop_check.h"

typedef struct heap_model {
    ql__timer_heap heap;
    ql_timer *pool;
    unsigned char *armed;
    uint32_t npool;
    uint32_t narmed;
    uint64_t seq;
    uint64_t rng;
} heap_model;

static void noop_timer(ql_loop *loop, ql_timer *timer)
{
    (void)loop;
    (void)timer;
}

static void model_init(heap_model *m, uint32_t npool, uint64_t seed)
{
    ql__heap_init(&m->heap);
    m->pool = calloc(npool, sizeof(*m->pool));
    m->armed = calloc(npool, 1);
    ck_assert_ptr_nonnull(m->pool);
    ck_assert_ptr_nonnull(m->armed);
    for (uint32_t i = 0; i < npool; i++)
        ql_timer_init(&m->pool[i], noop_timer, NULL);
    m->npool = npool;
    m->narmed = 0;
    m->seq = 0;
    m->rng = seed;
}

static void model_free(heap_model *m)
{
    ql__heap_free(&m->heap);
    free(m->pool);
    free(m->armed);
}

static int before(const ql_timer *a, const ql_timer *b)
{
    if (a->deadline != b->deadline)
        return a->deadline < b->deadline;
    return a->seq < b->seq;
}

static ql_timer *model_min(const heap_model *m)
{
    ql_timer *best = NULL;
    for (uint32_t i = 0; i < m->npool; i++)
        if (m->armed[i] && (best == NULL || before(&m->pool[i], best)))
            best = &m->pool[i];
    return best;
}

/* Deadlines from a narrow range (many ties, so the seq tie-break matters),
 * a wide one, and now and then the extremes. */
static int64_t random_deadline(heap_model *m)
{
    switch (ql_test_below(&m->rng, 8)) {
    case 0:
        return INT64_MAX - (int64_t)ql_test_below(&m->rng, 4);
    case 1:
        return INT64_MIN + (int64_t)ql_test_below(&m->rng, 4);
    case 2:
    case 3:
        return (int64_t)ql_test_rand(&m->rng);
    default:
        return (int64_t)ql_test_below(&m->rng, 64);
    }
}

/* The heap holds exactly the armed timers, each where its index says. */
static void model_check(const heap_model *m, unsigned long step)
{
    QL_REQUIRE(ql__heap_verify(&m->heap), "heap invalid after step %lu",
               step);
    QL_REQUIRE(m->heap.count == m->narmed, "step %lu: count %u, model %u",
               step, m->heap.count, m->narmed);
    for (uint32_t i = 0; i < m->npool; i++) {
        const ql_timer *t = &m->pool[i];
        if (!m->armed[i]) {
            QL_REQUIRE(!ql_timer_active(t),
                       "step %lu: disarmed timer %u still has index %u",
                       step, i, t->heap_index);
            continue;
        }
        QL_REQUIRE(ql_timer_active(t), "step %lu: armed timer %u inactive",
                   step, i);
        QL_REQUIRE(t->heap_index >= QL_HEAP0 &&
                       t->heap_index < QL_HEAP0 + m->heap.count &&
                       m->heap.slots[t->heap_index].timer == t,
                   "step %lu: timer %u not at its index %u", step, i,
                   t->heap_index);
    }
    QL_REQUIRE(ql__heap_top(&m->heap) == model_min(m),
               "step %lu: top is not the model's minimum", step);
}

static uint32_t random_index(heap_model *m, int want_armed)
{
    /* Rejection sampling; callers make sure such a timer exists. */
    for (;;) {
        uint32_t i = (uint32_t)ql_test_below(&m->rng, m->npool);
        if (m->armed[i] == want_armed)
            return i;
    }
}

static void step_insert(heap_model *m)
{
    uint32_t i = random_index(m, 0);
    ql_timer *t = &m->pool[i];
    t->deadline = random_deadline(m);
    t->seq = m->seq++;
    QL_REQUIRE(ql__heap_insert(&m->heap, t) == 0, "insert failed");
    m->armed[i] = 1;
    m->narmed++;
}

static void step_remove(heap_model *m)
{
    uint32_t i = random_index(m, 1);
    ql__heap_remove(&m->heap, &m->pool[i]);
    m->armed[i] = 0;
    m->narmed--;
}

static void step_pop(heap_model *m, unsigned long step)
{
    ql_timer *expect = model_min(m);
    ql_timer *top = ql__heap_top(&m->heap);
    QL_REQUIRE(top == expect,
                  "step %lu: pop gave deadline %lld seq %llu, model min is "
                  "deadline %lld seq %llu",
                  step, top ? (long long)top->deadline : -1LL,
                  top ? (unsigned long long)top->seq : 0ULL,
                  (long long)expect->deadline,
                  (unsigned long long)expect->seq);
    ql__heap_remove(&m->heap, top);
    m->armed[top - m->pool] = 0;
    m->narmed--;
}

/* What ql_timer_start does to an armed timer: new deadline, new seq. */
static void step_rearm(heap_model *m)
{
    ql_timer *t = &m->pool[random_index(m, 1)];
    t->deadline = random_deadline(m);
    t->seq = m->seq++;
    ql__heap_update(&m->heap, t);
}

/* The deadline alone moves, up or down, keeping the seq. */
static void step_update(heap_model *m)
{
    ql_timer *t = &m->pool[random_index(m, 1)];
    int64_t delta = (int64_t)ql_test_below(&m->rng, 33) - 16;
    if ((delta > 0 && t->deadline > INT64_MAX - delta) ||
        (delta < 0 && t->deadline < INT64_MIN - delta))
        delta = -delta;
    t->deadline += delta;
    ql__heap_update(&m->heap, t);
}

static void run_random_ops(uint32_t npool, unsigned long nops,
                           uint64_t seed)
{
    heap_model m;
    model_init(&m, npool, seed);
    /* Drift between filling and draining phases so the heap also runs
     * near empty and near full. */
    unsigned long phase_len = nops / 16 + 1;
    for (unsigned long step = 0; step < nops; step++) {
        int filling = (step / phase_len) % 2 == 0;
        uint64_t r = ql_test_below(&m.rng, 100);
        if (m.narmed == 0 || (m.narmed < m.npool && r < (filling ? 45 : 20)))
            step_insert(&m);
        else if (r < 55)
            step_pop(&m, step);
        else if (r < 70)
            step_remove(&m);
        else if (r < 85)
            step_rearm(&m);
        else if (r < 100 && m.narmed == m.npool)
            step_pop(&m, step);
        else
            step_update(&m);
        model_check(&m, step);
    }
    /* Drain: every pop is the model's minimum. */
    unsigned long step = nops;
    while (m.narmed) {
        step_pop(&m, step);
        model_check(&m, step++);
    }
    ck_assert_ptr_null(ql__heap_top(&m.heap));
    model_free(&m);
}

START_TEST(heap_random_small_pool)
{
    /* A small pool keeps the heap shallow and churning: removal from the
     * middle, the root and the last slot all happen constantly. */
    run_random_ops(64, ql_test_iterations(150000, 15000), ql_test_seed());
}
END_TEST

START_TEST(heap_random_large_pool)
{
    /* Deeper heap, grows through several reallocations. */
    run_random_ops(3000, ql_test_iterations(120000, 8000),
                   ql_test_seed() ^ UINT64_C(0xa5a5a5a5a5a5a5a5));
}
END_TEST

START_TEST(heap_fifo_ties)
{
    /* Equal deadlines come out in seq order whatever the insertion order. */
    enum { N = 500 };
    heap_model m;
    model_init(&m, N, ql_test_seed());
    uint32_t order[N];
    for (uint32_t i = 0; i < N; i++)
        order[i] = i;
    for (uint32_t i = N - 1; i > 0; i--) {
        uint32_t j = (uint32_t)ql_test_below(&m.rng, i + 1);
        uint32_t tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    for (uint32_t k = 0; k < N; k++) {
        ql_timer *t = &m.pool[order[k]];
        t->deadline = 42;
        t->seq = order[k]; /* seq = pool index, inserted shuffled */
        ck_assert_int_eq(ql__heap_insert(&m.heap, t), 0);
        m.armed[order[k]] = 1;
        m.narmed++;
        model_check(&m, k);
    }
    for (uint32_t i = 0; i < N; i++) {
        ql_timer *top = ql__heap_top(&m.heap);
        ck_assert_ptr_eq(top, &m.pool[i]);
        ql__heap_remove(&m.heap, top);
        m.armed[i] = 0;
        m.narmed--;
        model_check(&m, N + i);
    }
    model_free(&m);
}
END_TEST

static uint32_t top_ancestor(uint32_t k)
{
    while (k > QL_HEAP0 + QL_DHEAP) /* stop at a child of the root */
        k = (k - QL_HEAP0 - 1) / QL_DHEAP + QL_HEAP0;
    return k;
}

START_TEST(heap_remove_positions)
{
    /* A hand-built layout: inserted in slot order with deadlines that never
     * sift, the subtree under the root's first child holds large deadlines
     * and the others small ones.  Removing a node of the first subtree
     * then moves the last slot (small deadline, other subtree) into its
     * place, where it must sift up, not down.  Then the last slot and the
     * root are removed too. */
    enum { N = 40 };
    heap_model m;
    model_init(&m, N, 1);
    for (uint32_t i = 0; i < N; i++) {
        uint32_t k = QL_HEAP0 + i;
        ql_timer *t = &m.pool[i];
        t->deadline = k == QL_HEAP0 ? 0
                      : top_ancestor(k) == QL_HEAP0 + 1 ? 1000 + k
                                                         : 100 + k;
        t->seq = m.seq++;
        ck_assert_int_eq(ql__heap_insert(&m.heap, t), 0);
        m.armed[i] = 1;
        m.narmed++;
        ck_assert_uint_eq(t->heap_index, k);
    }
    model_check(&m, 0);

    uint32_t last_k = QL_HEAP0 + N - 1;
    ck_assert_uint_ne(top_ancestor(last_k), QL_HEAP0 + 1);
    ql_timer *moved = m.heap.slots[last_k].timer;
    uint32_t victim_k = QL_HEAP0 + QL_DHEAP + 1; /* first grandchild */
    ck_assert_uint_eq(top_ancestor(victim_k), QL_HEAP0 + 1);
    ql_timer *victim = m.heap.slots[victim_k].timer;
    ql__heap_remove(&m.heap, victim);
    m.armed[victim - m.pool] = 0;
    m.narmed--;
    model_check(&m, 1);
    /* It went above the victim's old parent. */
    ck_assert_uint_lt(moved->heap_index, victim_k);

    ql_timer *last = m.heap.slots[QL_HEAP0 + m.heap.count - 1].timer;
    ql__heap_remove(&m.heap, last);
    m.armed[last - m.pool] = 0;
    m.narmed--;
    model_check(&m, 2);

    unsigned long step = 3;
    while (m.narmed) {
        step_pop(&m, step);
        model_check(&m, step++);
    }
    model_free(&m);
}
END_TEST

START_TEST(heap_through_loop_api)
{
    /* The same checks through ql_timer_start/stop on a real loop. */
    enum { N = 256 };
    ql_loop *loop = ql_test_loop_new();
    ql_timer *timers = calloc(N, sizeof(*timers));
    ck_assert_ptr_nonnull(timers);
    uint64_t rng = ql_test_seed();
    int64_t base = ql_loop_now(loop) + 3600 * QL_SEC; /* never due */
    size_t armed = 0;
    for (uint32_t i = 0; i < N; i++)
        ql_timer_init(&timers[i], noop_timer, NULL);
    unsigned long nops = ql_test_iterations(20000, 2000);
    for (unsigned long step = 0; step < nops; step++) {
        ql_timer *t = &timers[ql_test_below(&rng, N)];
        if (ql_test_below(&rng, 3) == 0) {
            if (ql_timer_active(t))
                armed--;
            ql_timer_stop(loop, t);
            QL_REQUIRE(!ql_timer_active(t), "step %lu: still active", step);
        } else {
            if (!ql_timer_active(t))
                armed++;
            int64_t d = base + (int64_t)ql_test_below(&rng, 16);
            QL_REQUIRE(ql_timer_start(loop, t, d) == 0, "step %lu", step);
            QL_REQUIRE(ql_timer_active(t), "step %lu: not active", step);
        }
        QL_REQUIRE(ql__heap_verify(&loop->timers), "step %lu: heap invalid",
                   step);
        QL_REQUIRE(ql_loop_timer_count(loop) == armed,
                   "step %lu: timer count %zu, expected %zu", step,
                   ql_loop_timer_count(loop), armed);
    }
    for (uint32_t i = 0; i < N; i++)
        ql_timer_stop(loop, &timers[i]);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 0);
    ql_test_loop_free(loop);
    free(timers);
}
END_TEST

Suite *heap_suite(void)
{
    Suite *s = suite_create("heap");
    TCase *tc = tcase_create("heap");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, heap_random_small_pool);
    tcase_add_test(tc, heap_random_large_pool);
    tcase_add_test(tc, heap_fifo_ties);
    tcase_add_test(tc, heap_remove_positions);
    tcase_add_test(tc, heap_through_loop_api);
    suite_add_tcase(s, tc);
    return s;
}
