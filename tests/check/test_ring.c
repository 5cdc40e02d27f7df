/*
 * The ready ring: its internals (wrap-around, growth while full and
 * wrapped) against a FIFO model, and through the loop (ql_call_soon, one
 * pass runs what was queued when it began, pop_ready, visit_ready).
 */
#include <stdint.h>
#include <stdlib.h>

#include "qloop_check.h"

static void dummy_cb(ql_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
}

#define TAG(i) ((void *)(uintptr_t)(i))
#define UNTAG(p) ((uintptr_t)(p))

static void expect_pop(ql__ready_ring *ring, uintptr_t want)
{
    ql__ready_entry e;
    QL_REQUIRE(ql__ring_pop(ring, &e) == 1, "ring empty, wanted %lu",
               (unsigned long)want);
    QL_REQUIRE(e.fn == dummy_cb && UNTAG(e.arg) == want,
               "popped %lu, wanted %lu", (unsigned long)UNTAG(e.arg),
               (unsigned long)want);
}

START_TEST(ring_wraparound)
{
    ql__ready_ring ring;
    ck_assert_int_eq(ql__ring_init(&ring, 8), 0);
    ck_assert_uint_eq(ql__ring_capacity(&ring), 8);
    uintptr_t next_in = 0, next_out = 0;
    /* Walk the head to near the end of the buffer. */
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(ql__ring_push(&ring, dummy_cb, TAG(next_in++)), 0);
    for (int i = 0; i < 6; i++)
        expect_pop(&ring, next_out++);
    ck_assert_uint_eq(ring.head, 6);
    ck_assert_uint_eq(ring.count, 0);
    /* Fill it exactly: entries 6, 7, 0 .. 5; no growth. */
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(ql__ring_push(&ring, dummy_cb, TAG(next_in++)), 0);
    ck_assert_uint_eq(ql__ring_capacity(&ring), 8);
    ck_assert_uint_eq(ring.count, 8);
    /* Pop across the end of the buffer, push again behind. */
    for (int i = 0; i < 3; i++)
        expect_pop(&ring, next_out++);
    ck_assert_uint_eq(ring.head, 1);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(ql__ring_push(&ring, dummy_cb, TAG(next_in++)), 0);
    while (next_out < next_in)
        expect_pop(&ring, next_out++);
    ql__ready_entry e;
    ck_assert_int_eq(ql__ring_pop(&ring, &e), 0);
    ck_assert_uint_eq(ql__ring_capacity(&ring), 8);
    ql__ring_free(&ring);
}
END_TEST

START_TEST(ring_grow_full_and_wrapped)
{
    /* For every head position: fill to capacity (wrapped unless head is
     * 0), push one more, and the ring doubles keeping the order. */
    for (uint32_t head = 0; head < 8; head++) {
        ql__ready_ring ring;
        ck_assert_int_eq(ql__ring_init(&ring, 8), 0);
        uintptr_t next_in = 0, next_out = 0;
        for (uint32_t i = 0; i < head; i++) {
            ck_assert_int_eq(ql__ring_push(&ring, dummy_cb, TAG(next_in++)),
                             0);
            expect_pop(&ring, next_out++);
        }
        ck_assert_uint_eq(ring.head, head);
        for (int i = 0; i < 8; i++)
            ck_assert_int_eq(ql__ring_push(&ring, dummy_cb, TAG(next_in++)),
                             0);
        ck_assert_uint_eq(ql__ring_capacity(&ring), 8);
        ck_assert_int_eq(ql__ring_push(&ring, dummy_cb, TAG(next_in++)), 0);
        ck_assert_uint_eq(ql__ring_capacity(&ring), 16);
        ck_assert_uint_eq(ring.count, 9);
        /* Keep going past the new end to wrap the grown buffer too. */
        for (int i = 0; i < 5; i++)
            expect_pop(&ring, next_out++);
        for (int i = 0; i < 12; i++)
            ck_assert_int_eq(ql__ring_push(&ring, dummy_cb, TAG(next_in++)),
                             0);
        ck_assert_uint_eq(ql__ring_capacity(&ring), 16);
        while (next_out < next_in)
            expect_pop(&ring, next_out++);
        ck_assert_uint_eq(ring.count, 0);
        ql__ring_free(&ring);
    }
}
END_TEST

START_TEST(ring_grow_explicit)
{
    /* ql__ring_grow on an empty ring whose head is not 0, and on a wrapped
     * ring that is not full. */
    ql__ready_ring ring;
    ck_assert_int_eq(ql__ring_init(&ring, 4), 0);
    uintptr_t next_in = 0, next_out = 0;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(ql__ring_push(&ring, dummy_cb, TAG(next_in++)), 0);
        expect_pop(&ring, next_out++);
    }
    ck_assert_int_eq(ql__ring_grow(&ring), 0);
    ck_assert_uint_eq(ql__ring_capacity(&ring), 8);
    ck_assert_uint_eq(ring.count, 0);
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(ql__ring_push(&ring, dummy_cb, TAG(next_in++)), 0);
    for (int i = 0; i < 4; i++)
        expect_pop(&ring, next_out++);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(ql__ring_push(&ring, dummy_cb, TAG(next_in++)), 0);
    ck_assert_int_eq(ql__ring_grow(&ring), 0);
    ck_assert_uint_eq(ql__ring_capacity(&ring), 16);
    while (next_out < next_in)
        expect_pop(&ring, next_out++);
    ql__ring_free(&ring);
}
END_TEST

START_TEST(ring_random_against_fifo)
{
    /* Random bursts of pushes and pops from a tiny start: many growths,
     * each at a different head position. */
    uint64_t rng = ql_test_seed();
    ql__ready_ring ring;
    ck_assert_int_eq(ql__ring_init(&ring, 2), 0);
    uintptr_t next_in = 0, next_out = 0;
    unsigned long rounds = ql_test_iterations(20000, 2000);
    for (unsigned long r = 0; r < rounds; r++) {
        uint64_t n = ql_test_below(&rng, 24);
        if (ql_test_below(&rng, 2)) {
            for (uint64_t i = 0; i < n; i++)
                QL_REQUIRE(ql__ring_push(&ring, dummy_cb, TAG(next_in++)) ==
                               0,
                           "push failed");
        } else {
            for (uint64_t i = 0; i < n && next_out < next_in; i++)
                expect_pop(&ring, next_out++);
        }
        QL_REQUIRE(ring.count == next_in - next_out, "count %u", ring.count);
        QL_REQUIRE(ring.count <= ql__ring_capacity(&ring), "over capacity");
        /* capacity stays a power of two */
        QL_REQUIRE((ring.mask & (ring.mask + 1)) == 0, "mask %u", ring.mask);
    }
    while (next_out < next_in)
        expect_pop(&ring, next_out++);
    ql__ring_free(&ring);
}
END_TEST

/* ---- through the loop --------------------------------------------------- */

typedef struct order_log {
    uintptr_t *seen;
    size_t n, cap;
} order_log;

static order_log *current_log;

static void log_cb(ql_loop *loop, void *arg)
{
    (void)loop;
    order_log *log = current_log;
    ck_assert_uint_lt(log->n, log->cap);
    log->seen[log->n++] = UNTAG(arg);
}

static void log_init(order_log *log, size_t cap)
{
    log->seen = calloc(cap, sizeof(*log->seen));
    ck_assert_ptr_nonnull(log->seen);
    log->n = 0;
    log->cap = cap;
    current_log = log;
}

static void log_free(order_log *log)
{
    free(log->seen);
    current_log = NULL;
}

START_TEST(ring_loop_fifo_wrap_and_grow)
{
    /* Through ql_call_soon: move the head of the loop's ring near the end
     * of its buffer, fill it wrapped, overflow it (growth while full and
     * wrapped), then run: one pass runs everything in order. */
    ql_loop *loop = ql_test_loop_new();
    uint32_t cap = ql__ring_capacity(&loop->ready);
    ck_assert_uint_ge(cap, 4);
    order_log log;
    log_init(&log, 4 * (size_t)cap + 16);
    uintptr_t next_in = 0;
    for (uint32_t i = 0; i < cap - 3; i++)
        ck_assert_int_eq(ql_call_soon(loop, log_cb, TAG(next_in++)), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_uint_eq(log.n, cap - 3);
    ck_assert_uint_eq(loop->ready.head, cap - 3);
    ck_assert_uint_eq(ql_loop_ready_count(loop), 0);

    for (uint32_t i = 0; i < cap; i++)
        ck_assert_int_eq(ql_call_soon(loop, log_cb, TAG(next_in++)), 0);
    ck_assert_uint_eq(ql__ring_capacity(&loop->ready), cap);
    ck_assert_uint_eq(ql_loop_ready_count(loop), cap);
    for (uint32_t i = 0; i < cap + 5; i++)
        ck_assert_int_eq(ql_call_soon(loop, log_cb, TAG(next_in++)), 0);
    ck_assert_uint_eq(ql__ring_capacity(&loop->ready), 4 * cap);
    ck_assert_uint_eq(ql_loop_ready_count(loop), 2 * cap + 5);

    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_uint_eq(log.n, next_in);
    for (size_t i = 0; i < log.n; i++)
        ck_assert_uint_eq(log.seen[i], i);
    ck_assert_uint_eq(ql_loop_ready_count(loop), 0);
    log_free(&log);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct chain {
    int runs_a, runs_b, runs_c;
    ql_loop *loop;
} chain;

static void chain_b(ql_loop *loop, void *arg)
{
    (void)loop;
    ((chain *)arg)->runs_b++;
}

static void chain_a(ql_loop *loop, void *arg)
{
    chain *c = arg;
    c->runs_a++;
    ck_assert_int_eq(ql_call_soon(loop, chain_b, c), 0);
}

START_TEST(ring_callbacks_schedule_callbacks_nowait)
{
    ql_loop *loop = ql_test_loop_new();
    chain c = {0};
    ck_assert_int_eq(ql_call_soon(loop, chain_a, &c), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(c.runs_a, 1);
    ck_assert_int_eq(c.runs_b, 0);
    ck_assert_uint_eq(ql_loop_ready_count(loop), 1);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(c.runs_a, 1);
    ck_assert_int_eq(c.runs_b, 1);
    ck_assert_uint_eq(ql_loop_ready_count(loop), 0);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(ring_callbacks_schedule_callbacks_once)
{
    /* ONCE: the first pass runs A only; B, queued by A, is something to
     * do, so neither run blocks (a 10 s timer is armed to catch that). */
    ql_loop *loop = ql_test_loop_new();
    ql_timer far;
    ql_timer_init(&far, NULL, NULL);
    ck_assert_int_eq(ql_timer_start(loop, &far, ql_time_ns() + 10 * QL_SEC),
                     0);
    chain c = {0};
    ck_assert_int_eq(ql_call_soon(loop, chain_a, &c), 0);
    int64_t t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_eq(c.runs_a, 1);
    ck_assert_int_eq(c.runs_b, 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_eq(c.runs_b, 1);
    ck_assert_int_lt(ql_time_ns() - t0, ql_test_slack(QL_SEC));
    ql_timer_stop(loop, &far);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct spawner {
    order_log *log;
    uintptr_t id;
    ql_loop *loop;
} spawner;

static void spawn_child_cb(ql_loop *loop, void *arg)
{
    log_cb(loop, arg);
}

static void spawn_cb(ql_loop *loop, void *arg)
{
    spawner *s = arg;
    log_cb(loop, TAG(s->id));
    ck_assert_int_eq(ql_call_soon(loop, spawn_child_cb, TAG(100000 + s->id)),
                     0);
}

START_TEST(ring_pass_runs_only_what_was_queued)
{
    /* More callbacks than the ring holds, each queueing one more: the ring
     * grows and wraps during the pass, and the pass still runs exactly the
     * ones queued before it began. */
    ql_loop *loop = ql_test_loop_new();
    uint32_t n = ql__ring_capacity(&loop->ready) + 37;
    spawner *sp = calloc(n, sizeof(*sp));
    ck_assert_ptr_nonnull(sp);
    order_log log;
    log_init(&log, 2 * (size_t)n);
    for (uint32_t i = 0; i < n; i++) {
        sp[i].id = i;
        ck_assert_int_eq(ql_call_soon(loop, spawn_cb, &sp[i]), 0);
    }
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_uint_eq(log.n, n);
    ck_assert_uint_eq(ql_loop_ready_count(loop), n);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_uint_eq(log.n, 2 * (size_t)n);
    for (uint32_t i = 0; i < n; i++) {
        ck_assert_uint_eq(log.seen[i], i);
        ck_assert_uint_eq(log.seen[n + i], 100000 + i);
    }
    log_free(&log);
    free(sp);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(ring_pop_ready)
{
    ql_loop *loop = ql_test_loop_new();
    ql_callback_fn fn = NULL;
    void *arg = NULL;
    ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 0);
    for (uintptr_t i = 0; i < 10; i++)
        ck_assert_int_eq(ql_call_soon(loop, dummy_cb, TAG(i)), 0);
    for (uintptr_t i = 0; i < 4; i++) {
        ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 1);
        ck_assert_ptr_eq((void *)fn, (void *)dummy_cb);
        ck_assert_uint_eq(UNTAG(arg), i);
    }
    ck_assert_uint_eq(ql_loop_ready_count(loop), 6);
    /* What was not popped still runs, in order. */
    order_log log;
    log_init(&log, 16);
    for (uintptr_t i = 0; i < 3; i++)
        ck_assert_int_eq(ql_call_soon(loop, log_cb, TAG(100 + i)), 0);
    for (uintptr_t i = 4; i < 10; i++) {
        ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 1);
        ck_assert_uint_eq(UNTAG(arg), i);
    }
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_uint_eq(log.n, 3);
    for (size_t i = 0; i < 3; i++)
        ck_assert_uint_eq(log.seen[i], 100 + i);
    ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 0);
    log_free(&log);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(ring_pop_ready_drains_threadsafe_queue)
{
    /* Draining at close must also reach what other threads queued, or the
     * owner of those arguments leaks them: ring first, then the rest. */
    ql_loop *loop = ql_test_loop_new();
    ck_assert_int_eq(ql_call_soon(loop, dummy_cb, TAG(1)), 0);
    ck_assert_int_eq(ql_call_soon_threadsafe(loop, dummy_cb, TAG(2)), 0);
    ck_assert_int_eq(ql_call_soon_threadsafe(loop, dummy_cb, TAG(3)), 0);
    ql_callback_fn fn;
    void *arg;
    for (uintptr_t i = 1; i <= 3; i++) {
        ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 1);
        ck_assert_uint_eq(UNTAG(arg), i);
    }
    ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 0);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct visit_ctx {
    uintptr_t seen[16];
    int n;
    int stop_at; /* return non-zero when visiting this tag */
} visit_ctx;

static int visit_record(ql_callback_fn fn, void *arg, void *ctx)
{
    visit_ctx *v = ctx;
    ck_assert_ptr_eq((void *)fn, (void *)dummy_cb);
    ck_assert_int_lt(v->n, 16);
    v->seen[v->n++] = UNTAG(arg);
    return (int)UNTAG(arg) == v->stop_at ? 77 : 0;
}

START_TEST(ring_visit_ready)
{
    ql_loop *loop = ql_test_loop_new();
    visit_ctx v = {.stop_at = -1};
    ck_assert_int_eq(ql_loop_visit_ready(loop, visit_record, &v), 0);
    ck_assert_int_eq(v.n, 0);

    /* Wrap the ring first so visiting has to follow the mask. */
    uint32_t cap = ql__ring_capacity(&loop->ready);
    ql_callback_fn fn;
    void *arg;
    for (uint32_t i = 0; i < cap - 2; i++) {
        ck_assert_int_eq(ql_call_soon(loop, dummy_cb, TAG(0)), 0);
        ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 1);
    }
    for (uintptr_t i = 1; i <= 5; i++)
        ck_assert_int_eq(ql_call_soon(loop, dummy_cb, TAG(i)), 0);
    for (uintptr_t i = 6; i <= 8; i++)
        ck_assert_int_eq(ql_call_soon_threadsafe(loop, dummy_cb, TAG(i)), 0);

    ck_assert_int_eq(ql_loop_visit_ready(loop, visit_record, &v), 0);
    ck_assert_int_eq(v.n, 8);
    for (int i = 0; i < 8; i++)
        ck_assert_uint_eq(v.seen[i], (uintptr_t)i + 1);

    /* Stops at, and returns, the first non-zero result: in the ring... */
    v.n = 0;
    v.stop_at = 3;
    ck_assert_int_eq(ql_loop_visit_ready(loop, visit_record, &v), 77);
    ck_assert_int_eq(v.n, 3);
    /* ...and in the thread-safe queue. */
    v.n = 0;
    v.stop_at = 7;
    ck_assert_int_eq(ql_loop_visit_ready(loop, visit_record, &v), 77);
    ck_assert_int_eq(v.n, 7);

    /* Visiting consumed nothing. */
    for (uintptr_t i = 1; i <= 8; i++) {
        ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 1);
        ck_assert_uint_eq(UNTAG(arg), i);
    }
    ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 0);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(ring_free_with_pending)
{
    /* Pending callbacks are dropped by ql_loop_free (valgrind: no leak). */
    ql_loop *loop = ql_test_loop_new();
    for (uintptr_t i = 0; i < 1000; i++)
        ck_assert_int_eq(ql_call_soon(loop, dummy_cb, TAG(i)), 0);
    for (uintptr_t i = 0; i < 100; i++)
        ck_assert_int_eq(ql_call_soon_threadsafe(loop, dummy_cb, TAG(i)), 0);
    ql_test_loop_free(loop);
}
END_TEST

Suite *ring_suite(void)
{
    Suite *s = suite_create("ring");
    TCase *tc = tcase_create("internals");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, ring_wraparound);
    tcase_add_test(tc, ring_grow_full_and_wrapped);
    tcase_add_test(tc, ring_grow_explicit);
    tcase_add_test(tc, ring_random_against_fifo);
    suite_add_tcase(s, tc);
    tc = tcase_create("loop");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, ring_loop_fifo_wrap_and_grow);
    tcase_add_test(tc, ring_callbacks_schedule_callbacks_nowait);
    tcase_add_test(tc, ring_callbacks_schedule_callbacks_once);
    tcase_add_test(tc, ring_pass_runs_only_what_was_queued);
    tcase_add_test(tc, ring_pop_ready);
    tcase_add_test(tc, ring_pop_ready_drains_threadsafe_queue);
    tcase_add_test(tc, ring_visit_ready);
    tcase_add_test(tc, ring_free_with_pending);
    suite_add_tcase(s, tc);
    return s;
}
