/*
 * Timers through the loop: deadline order, FIFO ties, cancel and re-arm
 * from callbacks, no starvation, never early, ql_loop_timer_count.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qloop_check.h"

typedef struct fire_log {
    int ids[4096];
    int n;
    int stop_after; /* ql_loop_stop() once this many fired; 0: never */
} fire_log;

typedef struct test_timer {
    ql_timer timer;
    int id;
    int fired;
    fire_log *log;
    int64_t early_by; /* > 0: fired before its deadline by this much */
    /* what the callback does besides logging */
    ql_timer *cancel;  /* stop this one */
    ql_timer *rearm;   /* re-arm this one... */
    int64_t rearm_at;  /* ...for this deadline */
    int rearm_self;    /* re-arm itself for ql_loop_now() this many times */
    int rearm_self_at_old_deadline; /* re-arm itself, same (past) deadline */
    int64_t rearm_self_delay; /* > 0: re-arm itself for now + this */
} test_timer;

static void test_timer_cb(ql_loop *loop, ql_timer *timer)
{
    test_timer *t = timer->data;
    ck_assert_ptr_eq(&t->timer, timer);
    t->fired++;
    if (ql_loop_now(loop) < timer->deadline)
        t->early_by = timer->deadline - ql_loop_now(loop);
    if (ql_time_ns() < timer->deadline)
        t->early_by = timer->deadline - ql_time_ns();
    /* A fired timer is disarmed before its callback runs. */
    ck_assert(!ql_timer_active(timer));
    if (t->log) {
        ck_assert_int_lt(t->log->n, 4096);
        t->log->ids[t->log->n++] = t->id;
        if (t->log->stop_after && t->log->n == t->log->stop_after)
            ql_loop_stop(loop);
    }
    if (t->cancel)
        ql_timer_stop(loop, t->cancel);
    if (t->rearm)
        ck_assert_int_eq(ql_timer_start(loop, t->rearm, t->rearm_at), 0);
    if (t->rearm_self > 0) {
        t->rearm_self--;
        ck_assert_int_eq(ql_timer_start(loop, timer, ql_loop_now(loop)), 0);
    }
    if (t->rearm_self_delay > 0)
        ck_assert_int_eq(ql_timer_start(loop, timer, ql_loop_now(loop) +
                                                         t->rearm_self_delay),
                         0);
    if (t->rearm_self_at_old_deadline)
        ck_assert_int_eq(ql_timer_start(loop, timer, timer->deadline), 0);
}

static void tt_init(test_timer *t, int id, fire_log *log)
{
    *t = (test_timer){.id = id, .log = log};
    ql_timer_init(&t->timer, test_timer_cb, t);
}

/* A guard against hanging: a timer that stops the loop after `ns`. */
static void guard_cb(ql_loop *loop, ql_timer *timer)
{
    *(int *)timer->data = 1;
    ql_loop_stop(loop);
}

START_TEST(timers_order_by_deadline)
{
    /* Deadlines shuffled over ~30 ms (with some ties) fire in (deadline,
     * start order) order across however many iterations it takes, never
     * before their deadline. */
    enum { N = 64 };
    ql_loop *loop = ql_test_loop_new();
    uint64_t rng = ql_test_seed();
    static fire_log log;
    log = (fire_log){.stop_after = N};
    test_timer *t = calloc(N, sizeof(*t));
    ck_assert_ptr_nonnull(t);
    int64_t base = ql_loop_update_time(loop);
    for (int i = 0; i < N; i++) {
        tt_init(&t[i], i, &log);
        int64_t d = base + (int64_t)ql_test_below(&rng, 16) * 2 * QL_MS;
        ck_assert_int_eq(ql_timer_start(loop, &t[i].timer, d), 0);
    }
    ck_assert_uint_eq(ql_loop_timer_count(loop), N);
    int guard_hit = 0;
    ql_timer guard;
    ql_timer_init(&guard, guard_cb, &guard_hit);
    ck_assert_int_eq(ql_timer_start(loop, &guard, base + 20 * QL_SEC), 0);

    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_eq(guard_hit, 0);
    ck_assert_int_eq(log.n, N);
    for (int k = 1; k < N; k++) {
        const test_timer *a = &t[log.ids[k - 1]], *b = &t[log.ids[k]];
        ck_assert_msg(a->timer.deadline < b->timer.deadline ||
                          (a->timer.deadline == b->timer.deadline &&
                           a->id < b->id),
                      "timer %d fired before timer %d", a->id, b->id);
    }
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(t[i].fired, 1);
        ck_assert_msg(t[i].early_by == 0, "timer %d fired %lld ns early", i,
                      (long long)t[i].early_by);
        ck_assert(!ql_timer_active(&t[i].timer));
    }
    ck_assert_uint_eq(ql_loop_timer_count(loop), 1);
    ql_timer_stop(loop, &guard);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 0);
    free(t);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(timers_due_fire_in_one_pass_sorted)
{
    /* Already due timers, armed out of order, all fire in one NOWAIT pass
     * sorted by deadline. */
    ql_loop *loop = ql_test_loop_new();
    static fire_log log;
    log = (fire_log){0};
    test_timer t[5];
    int64_t now = ql_loop_update_time(loop);
    const int64_t offs[5] = {-3, -10, -1, -7, -5};
    for (int i = 0; i < 5; i++) {
        tt_init(&t[i], i, &log);
        ck_assert_int_eq(
            ql_timer_start(loop, &t[i].timer, now + offs[i] * QL_MS), 0);
    }
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(log.n, 5);
    const int want[5] = {1, 3, 4, 0, 2};
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(log.ids[i], want[i]);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 0);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(timers_fifo_ties)
{
    /* Equal deadlines fire in start order; re-arming moves a timer behind
     * the others with the same deadline (it gets a new start order). */
    enum { N = 200 };
    ql_loop *loop = ql_test_loop_new();
    static fire_log log;
    log = (fire_log){0};
    test_timer *t = calloc(N, sizeof(*t));
    ck_assert_ptr_nonnull(t);
    int64_t d = ql_loop_update_time(loop) - QL_MS;
    for (int i = 0; i < N; i++) {
        tt_init(&t[i], i, &log);
        ck_assert_int_eq(ql_timer_start(loop, &t[i].timer, d), 0);
    }
    /* Re-arm 0 and 7, same deadline: they go last, 0 then 7. */
    ck_assert_int_eq(ql_timer_start(loop, &t[0].timer, d), 0);
    ck_assert_int_eq(ql_timer_start(loop, &t[7].timer, d), 0);
    ck_assert_uint_eq(ql_loop_timer_count(loop), N);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(log.n, N);
    int k = 0;
    for (int i = 1; i < N; i++)
        if (i != 7)
            ck_assert_int_eq(log.ids[k++], i);
    ck_assert_int_eq(log.ids[k++], 0);
    ck_assert_int_eq(log.ids[k++], 7);
    free(t);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(timers_cancel_from_callback)
{
    /* A, B, C due in the same pass; A cancels B (due, later in the pass)
     * and D (not due).  B and D never fire; C does. */
    ql_loop *loop = ql_test_loop_new();
    static fire_log log;
    log = (fire_log){0};
    test_timer a, b, c, d;
    tt_init(&a, 0, &log);
    tt_init(&b, 1, &log);
    tt_init(&c, 2, &log);
    tt_init(&d, 3, &log);
    a.cancel = &b.timer;
    int64_t now = ql_loop_update_time(loop);
    ck_assert_int_eq(ql_timer_start(loop, &a.timer, now - 3 * QL_MS), 0);
    ck_assert_int_eq(ql_timer_start(loop, &b.timer, now - 2 * QL_MS), 0);
    ck_assert_int_eq(ql_timer_start(loop, &c.timer, now - 1 * QL_MS), 0);
    ck_assert_int_eq(ql_timer_start(loop, &d.timer, now + 50 * QL_MS), 0);
    /* second cancel via C: D (armed, not due) */
    c.cancel = &d.timer;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(log.n, 2);
    ck_assert_int_eq(log.ids[0], 0);
    ck_assert_int_eq(log.ids[1], 2);
    ck_assert_int_eq(b.fired, 0);
    ck_assert(!ql_timer_active(&b.timer));
    ck_assert(!ql_timer_active(&d.timer));
    ck_assert_uint_eq(ql_loop_timer_count(loop), 0);
    /* Nothing left to fire, even after D's deadline. */
    ql_test_sleep_ns(60 * QL_MS);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(log.n, 2);
    /* Stopping an inactive timer is a no-op. */
    ql_timer_stop(loop, &b.timer);
    ql_timer_stop(loop, &a.timer);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 0);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(timers_cancel_then_rearm_due_from_callback)
{
    /* A cancels due B and re-arms it for "now": B, armed from a timer
     * callback for a due deadline, waits for the next iteration. */
    ql_loop *loop = ql_test_loop_new();
    static fire_log log;
    log = (fire_log){0};
    test_timer a, b;
    tt_init(&a, 0, &log);
    tt_init(&b, 1, &log);
    int64_t now = ql_loop_update_time(loop);
    a.cancel = &b.timer;
    a.rearm = &b.timer;
    a.rearm_at = now - QL_MS;
    ck_assert_int_eq(ql_timer_start(loop, &a.timer, now - 3 * QL_MS), 0);
    ck_assert_int_eq(ql_timer_start(loop, &b.timer, now - 2 * QL_MS), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.fired, 1);
    ck_assert_int_eq(b.fired, 0);
    ck_assert(ql_timer_active(&b.timer));
    ck_assert_uint_eq(ql_loop_timer_count(loop), 1);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(b.fired, 1);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 0);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(timers_rearm_from_callback)
{
    /* A re-arms itself 5 ms past ql_loop_now() on every firing: each ONCE
     * run blocks until the next firing, never early. */
    ql_loop *loop = ql_test_loop_new();
    static fire_log log;
    log = (fire_log){.stop_after = 6};
    test_timer a;
    tt_init(&a, 0, &log);
    ck_assert_int_eq(
        ql_timer_start(loop, &a.timer, ql_loop_update_time(loop) + QL_MS), 0);
    int guard_hit = 0;
    ql_timer guard;
    ql_timer_init(&guard, guard_cb, &guard_hit);
    ck_assert_int_eq(ql_timer_start(loop, &guard, ql_loop_now(loop) +
                                                      20 * QL_SEC),
                     0);
    int64_t t0 = ql_time_ns();
    a.rearm_self_delay = 5 * QL_MS;
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
        ck_assert_int_eq(a.fired, i + 1);
        ck_assert(ql_timer_active(&a.timer));
        ck_assert_int_eq(a.early_by, 0);
    }
    ck_assert_int_ge(ql_time_ns() - t0, 25 * QL_MS);
    ck_assert_int_eq(guard_hit, 0);
    ql_timer_stop(loop, &a.timer);
    ql_timer_stop(loop, &guard);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 0);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct ticker {
    int runs;
    int requeue;
} ticker;

static void ticker_cb(ql_loop *loop, void *arg)
{
    ticker *t = arg;
    t->runs++;
    if (t->requeue)
        ck_assert_int_eq(ql_call_soon(loop, ticker_cb, t), 0);
}

START_TEST(timers_no_starvation_rearm_now)
{
    /* A timer re-arming itself for ql_loop_now() fires once per iteration;
     * a ready callback and another self re-arming timer keep running. */
    ql_loop *loop = ql_test_loop_new();
    test_timer a, b;
    tt_init(&a, 0, NULL);
    tt_init(&b, 1, NULL);
    a.rearm_self = 1000000;
    b.rearm_self = 1000000;
    int64_t now = ql_loop_update_time(loop);
    ck_assert_int_eq(ql_timer_start(loop, &a.timer, now), 0);
    ck_assert_int_eq(ql_timer_start(loop, &b.timer, now), 0);
    ticker tick = {.requeue = 1};
    ck_assert_int_eq(ql_call_soon(loop, ticker_cb, &tick), 0);
    for (int i = 1; i <= 50; i++) {
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
        ck_assert_int_eq(a.fired, i);
        ck_assert_int_eq(b.fired, i);
        ck_assert_int_eq(tick.runs, i);
    }
    /* ONCE never blocks with such a timer armed, and fires it once. */
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_eq(a.fired, 51);
    ql_timer_stop(loop, &a.timer);
    ql_timer_stop(loop, &b.timer);
    tick.requeue = 0;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ql_test_loop_free(loop);
}
END_TEST

static void stop_after_cb(ql_loop *loop, void *arg)
{
    ticker *t = arg;
    if (++t->runs >= t->requeue)
        ql_loop_stop(loop);
    else
        ck_assert_int_eq(ql_call_soon(loop, stop_after_cb, t), 0);
}

START_TEST(timers_no_starvation_default_run)
{
    /* DEFAULT run: a ready callback that stops the loop on its 100th run
     * gets there although a timer keeps re-arming itself for now. */
    ql_loop *loop = ql_test_loop_new();
    test_timer a;
    tt_init(&a, 0, NULL);
    a.rearm_self = 1000000000;
    ck_assert_int_eq(ql_timer_start(loop, &a.timer, ql_loop_now(loop)), 0);
    ticker tick = {.requeue = 100};
    ck_assert_int_eq(ql_call_soon(loop, stop_after_cb, &tick), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_eq(tick.runs, 100);
    ck_assert_int_ge(a.fired, 99);
    ck_assert_int_le(a.fired, 101);
    ql_timer_stop(loop, &a.timer);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(timers_no_starvation_rearm_past_deadline)
{
    /* A re-arms itself for its own (already past) deadline on each firing,
     * which orders it before B, due since the start.  B must still fire
     * within a few iterations: a timer armed from a timer callback waits
     * for the next iteration, it must not hold back a timer that was due
     * all along. */
    ql_loop *loop = ql_test_loop_new();
    test_timer a, b;
    tt_init(&a, 0, NULL);
    tt_init(&b, 1, NULL);
    a.rearm_self_at_old_deadline = 1;
    int64_t now = ql_loop_update_time(loop);
    ck_assert_int_eq(ql_timer_start(loop, &a.timer, now - 2 * QL_MS), 0);
    ck_assert_int_eq(ql_timer_start(loop, &b.timer, now - 1 * QL_MS), 0);
    for (int i = 0; i < 5 && b.fired == 0; i++)
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_msg(b.fired == 1,
                  "due timer B starved: A fired %d times, B %d times",
                  a.fired, b.fired);
    ql_timer_stop(loop, &a.timer);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(timers_never_early)
{
    /* Many short random deadlines: every callback sees both ql_loop_now()
     * and the clock at or past its deadline. */
    enum { N = 200 };
    ql_loop *loop = ql_test_loop_new();
    uint64_t rng = ql_test_seed() + 1;
    static fire_log log;
    log = (fire_log){.stop_after = N};
    test_timer *t = calloc(N, sizeof(*t));
    ck_assert_ptr_nonnull(t);
    int64_t base = ql_loop_update_time(loop);
    for (int i = 0; i < N; i++) {
        tt_init(&t[i], i, &log);
        /* sub-millisecond offsets catch a rounded-down poll timeout */
        int64_t d = base + (int64_t)ql_test_below(&rng, 20 * QL_MS);
        ck_assert_int_eq(ql_timer_start(loop, &t[i].timer, d), 0);
    }
    int guard_hit = 0;
    ql_timer guard;
    ql_timer_init(&guard, guard_cb, &guard_hit);
    ck_assert_int_eq(ql_timer_start(loop, &guard, base + 20 * QL_SEC), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_eq(guard_hit, 0);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(t[i].fired, 1);
        ck_assert_msg(t[i].early_by == 0, "timer %d fired %lld ns early", i,
                      (long long)t[i].early_by);
    }
    ql_timer_stop(loop, &guard);
    free(t);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(timers_once_waits_for_the_timer)
{
    /* ONCE with one timer 30 ms out (plus a sub-millisecond remainder):
     * a single run blocks until it fires, no early return. */
    ql_loop *loop = ql_test_loop_new();
    for (int round = 0; round < 5; round++) {
        test_timer a;
        tt_init(&a, 0, NULL);
        int64_t t0 = ql_loop_update_time(loop);
        int64_t d = t0 + 30 * QL_MS + 300000 + round * 137000;
        ck_assert_int_eq(ql_timer_start(loop, &a.timer, d), 0);
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
        ck_assert_int_eq(a.fired, 1);
        ck_assert_int_eq(a.early_by, 0);
        ck_assert_int_ge(ql_time_ns(), d);
    }
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(timers_count)
{
    ql_loop *loop = ql_test_loop_new();
    test_timer t[3];
    for (int i = 0; i < 3; i++)
        tt_init(&t[i], i, NULL);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 0);
    int64_t now = ql_loop_update_time(loop);
    ck_assert_int_eq(ql_timer_start(loop, &t[0].timer, now - 1), 0);
    ck_assert_int_eq(ql_timer_start(loop, &t[1].timer, now + 10 * QL_SEC), 0);
    ck_assert_int_eq(ql_timer_start(loop, &t[2].timer, now + 20 * QL_SEC), 0);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 3);
    /* re-arming an armed timer does not add one */
    ck_assert_int_eq(ql_timer_start(loop, &t[2].timer, now + 5 * QL_SEC), 0);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 3);
    ck_assert_ptr_eq(ql__heap_top(&loop->timers), &t[0].timer);
    ql_timer_stop(loop, &t[1].timer);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 2);
    ql_timer_stop(loop, &t[1].timer);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 2);
    /* firing removes it */
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(t[0].fired, 1);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 1);
    ql_timer_stop(loop, &t[2].timer);
    ck_assert_uint_eq(ql_loop_timer_count(loop), 0);
    /* Freeing the loop with a timer still armed is fine. */
    ck_assert_int_eq(ql_timer_start(loop, &t[1].timer, now + QL_SEC), 0);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(timers_clock)
{
    ql_loop *loop = ql_test_loop_new();
    int64_t a = ql_time_ns();
    int64_t cached = ql_loop_now(loop);
    ql_test_sleep_ns(2 * QL_MS);
    /* cached: unchanged until updated */
    ck_assert_int_eq(ql_loop_now(loop), cached);
    int64_t u = ql_loop_update_time(loop);
    ck_assert_int_ge(u, a + 2 * QL_MS);
    ck_assert_int_eq(ql_loop_now(loop), u);
    ck_assert_int_ge(ql_time_ns(), u);
    /* A run refreshes it. */
    ql_test_sleep_ns(2 * QL_MS);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_ge(ql_loop_now(loop), u + 2 * QL_MS);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct visit_ctx {
    test_timer *pool;
    int n;
    int seen[64];
    int visits;
    int stop_at_visit; /* return 9 on this visit (1-based); 0: never */
} visit_ctx;

static int visit_timer(ql_timer *timer, void *ctx)
{
    visit_ctx *v = ctx;
    test_timer *t = timer->data;
    ck_assert_ptr_eq(&t->timer, timer);
    ck_assert(ql_timer_active(timer));
    ck_assert_int_lt(t->id, v->n);
    v->seen[t->id]++;
    v->visits++;
    return v->visits == v->stop_at_visit ? 9 : 0;
}

START_TEST(timers_next_and_visit)
{
    enum { N = 50 };
    ql_loop *loop = ql_test_loop_new();
    uint64_t rng = ql_test_seed() + 7;
    test_timer t[N];
    visit_ctx v = {.pool = t, .n = N};
    ck_assert_ptr_null(ql_loop_next_timer(loop));
    ck_assert_int_eq(ql_loop_visit_timers(loop, visit_timer, &v), 0);
    ck_assert_int_eq(v.visits, 0);

    int64_t base = ql_loop_now(loop) + 3600 * QL_SEC;
    for (int i = 0; i < N; i++) {
        tt_init(&t[i], i, NULL);
        int64_t d = base + (int64_t)ql_test_below(&rng, 8);
        ck_assert_int_eq(ql_timer_start(loop, &t[i].timer, d), 0);
    }
    /* stop every third */
    int armed = 0;
    for (int i = 0; i < N; i++) {
        if (i % 3 == 0)
            ql_timer_stop(loop, &t[i].timer);
        else
            armed++;
    }
    for (int round = 0; round < 2 * N && armed > 0; round++) {
        /* next: the armed timer with the smallest (deadline, start order) */
        test_timer *best = NULL;
        for (int i = 0; i < N; i++) {
            if (!ql_timer_active(&t[i].timer))
                continue;
            if (best == NULL || t[i].timer.deadline < best->timer.deadline ||
                (t[i].timer.deadline == best->timer.deadline &&
                 t[i].timer.seq < best->timer.seq))
                best = &t[i];
        }
        ck_assert_ptr_eq(ql_loop_next_timer(loop), &best->timer);
        /* visit: each armed timer exactly once */
        memset(v.seen, 0, sizeof v.seen);
        v.visits = 0;
        v.stop_at_visit = 0;
        ck_assert_int_eq(ql_loop_visit_timers(loop, visit_timer, &v), 0);
        ck_assert_int_eq(v.visits, armed);
        for (int i = 0; i < N; i++)
            ck_assert_int_eq(v.seen[i], ql_timer_active(&t[i].timer) ? 1 : 0);
        /* early stop */
        if (armed >= 3) {
            v.visits = 0;
            v.stop_at_visit = 3;
            ck_assert_int_eq(ql_loop_visit_timers(loop, visit_timer, &v), 9);
            ck_assert_int_eq(v.visits, 3);
        }
        /* alternately stop the first and re-arm it behind the others */
        if (round % 2 == 0) {
            ql_timer_stop(loop, &best->timer);
            armed--;
        } else {
            ck_assert_int_eq(ql_timer_start(loop, &best->timer, base + 8), 0);
        }
    }
    for (int i = 0; i < N; i++)
        ql_timer_stop(loop, &t[i].timer);
    ck_assert_ptr_null(ql_loop_next_timer(loop));
    ql_test_loop_free(loop);
}
END_TEST

Suite *timers_suite(void)
{
    Suite *s = suite_create("timers");
    TCase *tc = tcase_create("timers");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, timers_order_by_deadline);
    tcase_add_test(tc, timers_due_fire_in_one_pass_sorted);
    tcase_add_test(tc, timers_fifo_ties);
    tcase_add_test(tc, timers_cancel_from_callback);
    tcase_add_test(tc, timers_cancel_then_rearm_due_from_callback);
    tcase_add_test(tc, timers_rearm_from_callback);
    tcase_add_test(tc, timers_no_starvation_rearm_now);
    tcase_add_test(tc, timers_no_starvation_default_run);
    tcase_add_test(tc, timers_no_starvation_rearm_past_deadline);
    tcase_add_test(tc, timers_never_early);
    tcase_add_test(tc, timers_once_waits_for_the_timer);
    tcase_add_test(tc, timers_count);
    tcase_add_test(tc, timers_clock);
    tcase_add_test(tc, timers_next_and_visit);
    suite_add_tcase(s, tc);
    return s;
}
