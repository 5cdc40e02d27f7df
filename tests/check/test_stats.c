/*
 * ql_loop_stats: iterations, callbacks_run, timers_fired, io_events and
 * poll_ns count what happened, no more, no less.
 */
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qloop_check.h"

static void nop_cb(ql_loop *loop, void *arg)
{
    (void)loop;
    (void)arg;
}

static void nop_timer_cb(ql_loop *loop, ql_timer *timer)
{
    (void)loop;
    (void)timer;
}

static void drain_io_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    (void)loop;
    (void)events;
    ql_test_drain(io->fd);
    (*(int *)io->data)++;
}

static void stop_other_io_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    (void)events;
    ql_io *other = io->data;
    ql_test_drain(io->fd);
    if (ql_io_active(other))
        ck_assert_int_eq(ql_io_stop(loop, other), 0);
}

static ql_stats stats(ql_loop *loop)
{
    ql_stats st;
    memset(&st, 0xa5, sizeof st);
    ql_loop_stats(loop, &st);
    return st;
}

START_TEST(stats_fresh_loop)
{
    ql_loop *loop = ql_test_loop_new();
    ql_stats st = stats(loop);
    ck_assert_uint_eq(st.iterations, 0);
    ck_assert_uint_eq(st.callbacks_run, 0);
    ck_assert_uint_eq(st.io_events, 0);
    ck_assert_uint_eq(st.timers_fired, 0);
    ck_assert_int_eq(st.poll_ns, 0);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(stats_count_what_happened)
{
    ql_loop *loop = ql_test_loop_new();

    /* iterations */
    for (int i = 0; i < 7; i++)
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ql_stats st = stats(loop);
    ck_assert_uint_eq(st.iterations, 7);
    ck_assert_uint_eq(st.callbacks_run, 0);
    ck_assert_uint_eq(st.io_events, 0);
    ck_assert_uint_eq(st.timers_fired, 0);
    ck_assert_int_ge(st.poll_ns, 0);

    /* callbacks_run: ring callbacks, the thread-safe ones included */
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(ql_call_soon(loop, nop_cb, NULL), 0);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(ql_call_soon_threadsafe(loop, nop_cb, NULL), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    st = stats(loop);
    ck_assert_uint_eq(st.iterations, 9);
    ck_assert_uint_eq(st.callbacks_run, 8);
    /* popped without running: not counted */
    ck_assert_int_eq(ql_call_soon(loop, nop_cb, NULL), 0);
    ql_callback_fn fn;
    void *arg;
    ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 1);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    st = stats(loop);
    ck_assert_uint_eq(st.callbacks_run, 8);

    /* timers_fired: three due, one stopped, one far */
    ql_timer t[5];
    int64_t now = ql_loop_update_time(loop);
    for (int i = 0; i < 5; i++) {
        ql_timer_init(&t[i], nop_timer_cb, NULL);
        ck_assert_int_eq(
            ql_timer_start(loop, &t[i], i == 4 ? now + 10 * QL_SEC : now - i),
            0);
    }
    ql_timer_stop(loop, &t[3]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    st = stats(loop);
    ck_assert_uint_eq(st.timers_fired, 3);
    ql_timer_stop(loop, &t[4]);

    /* io_events: two readable, then one removed by the other in the same
     * batch (one dispatched), and a watcher not ready (none) */
    int p1[2], p2[2], p3[2];
    ql_test_pipe(p1);
    ql_test_pipe(p2);
    ql_test_pipe(p3);
    int calls = 0;
    ql_io a, b, c;
    ql_io_init(&a, p1[0], drain_io_cb, &calls);
    ql_io_init(&b, p2[0], drain_io_cb, &calls);
    ql_io_init(&c, p3[0], drain_io_cb, &calls);
    ck_assert_int_eq(ql_io_start(loop, &a, QL_READABLE), 0);
    ck_assert_int_eq(ql_io_start(loop, &b, QL_READABLE), 0);
    ck_assert_int_eq(ql_io_start(loop, &c, QL_READABLE), 0);
    ql_test_write_byte(p1[1]);
    ql_test_write_byte(p2[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    st = stats(loop);
    ck_assert_int_eq(calls, 2);
    ck_assert_uint_eq(st.io_events, 2);
    a.cb = stop_other_io_cb;
    a.data = &b;
    b.cb = stop_other_io_cb;
    b.data = &a;
    ql_test_write_byte(p1[1]);
    ql_test_write_byte(p2[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    st = stats(loop);
    ck_assert_uint_eq(st.io_events, 3);
    ck_assert_uint_eq(st.iterations, 13);
    ck_assert_uint_eq(st.callbacks_run, 8);
    ck_assert_uint_eq(st.timers_fired, 3);
    ql_io_stop(loop, &a);
    ql_io_stop(loop, &b);
    ql_io_stop(loop, &c);
    for (int i = 0; i < 2; i++) {
        close(p1[i]);
        close(p2[i]);
        close(p3[i]);
    }
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(stats_poll_time)
{
    /* A 40 ms blocking poll shows in poll_ns; NOWAIT polls add little. */
    ql_loop *loop = ql_test_loop_new();
    ql_timer t;
    ql_timer_init(&t, nop_timer_cb, NULL);
    ck_assert_int_eq(
        ql_timer_start(loop, &t, ql_loop_update_time(loop) + 40 * QL_MS), 0);
    int64_t t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    int64_t wall = ql_time_ns() - t0;
    ql_stats st = stats(loop);
    ck_assert_uint_eq(st.timers_fired, 1);
    ck_assert_int_ge(st.poll_ns, 35 * QL_MS);
    ck_assert_int_le(st.poll_ns, wall);
    int64_t before = st.poll_ns;
    t0 = ql_time_ns();
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    wall = ql_time_ns() - t0;
    st = stats(loop);
    ck_assert_int_ge(st.poll_ns, before);
    ck_assert_int_le(st.poll_ns - before, wall);
    ql_test_loop_free(loop);
}
END_TEST

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {ns / QL_SEC, ns % QL_SEC};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* A callback that blocks for `*(int64_t *)arg` ns, noting the heartbeat. */
static int64_t seen_busy_since, seen_now;
static void busy_cb(ql_loop *loop, void *arg)
{
    seen_busy_since = ql_loop_busy_since(loop);
    seen_now = ql_loop_now(loop);
    sleep_ns(*(int64_t *)arg);
}

START_TEST(stats_lag_bucket_edges)
{
    ck_assert_uint_eq(ql_lag_bucket(0), 0);
    ck_assert_uint_eq(ql_lag_bucket(999), 0);
    ck_assert_uint_eq(ql_lag_bucket(1000), 1);
    ck_assert_uint_eq(ql_lag_bucket(1999), 1);
    ck_assert_uint_eq(ql_lag_bucket(2000), 2);
    ck_assert_uint_eq(ql_lag_bucket(3999), 2);
    ck_assert_uint_eq(ql_lag_bucket(4000), 3);
    /* 5 ms = 5000 us, in [4096, 8192) */
    ck_assert_uint_eq(ql_lag_bucket(5 * QL_MS), 13);
    ck_assert_uint_eq(ql_lag_bucket(INT64_MAX), QL_LAG_BUCKETS - 1);
}
END_TEST

START_TEST(stats_timer_lag)
{
    /* Timers due 5 ms and 40 ms ago fire with at least that lag; the
     * histogram counts each fired timer once; max is the largest. */
    ql_loop *loop = ql_test_loop_new();
    ql_stats st = stats(loop);
    ck_assert_int_eq(st.lag_max_ns, 0);
    for (int k = 0; k < QL_LAG_BUCKETS; k++)
        ck_assert_uint_eq(st.lag_hist[k], 0);
    ql_timer t[3];
    int64_t now = ql_loop_update_time(loop);
    int64_t due[3] = {now - 5 * QL_MS, now - 40 * QL_MS, now + 10 * QL_SEC};
    for (int i = 0; i < 3; i++) {
        ql_timer_init(&t[i], nop_timer_cb, NULL);
        ck_assert_int_eq(ql_timer_start(loop, &t[i], due[i]), 0);
    }
    int64_t before = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    int64_t after = ql_time_ns();
    st = stats(loop);
    uint64_t total = 0;
    for (int k = 0; k < QL_LAG_BUCKETS; k++)
        total += st.lag_hist[k];
    ck_assert_uint_eq(total, 2);
    ck_assert_int_ge(st.lag_max_ns, before - due[1]);
    ck_assert_int_le(st.lag_max_ns, after - due[1]);
    /* each lag sits in the bucket of a value between its bounds */
    unsigned lo5 = ql_lag_bucket(before - due[0]);
    unsigned hi5 = ql_lag_bucket(after - due[0]);
    uint64_t in5 = 0;
    for (unsigned k = lo5; k <= hi5; k++)
        in5 += st.lag_hist[k];
    ck_assert_uint_ge(in5, 1);
    ck_assert_uint_eq(st.lag_hist[ql_lag_bucket(st.lag_max_ns)] > 0, 1);
    ql_timer_stop(loop, &t[2]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(stats_callback_time)
{
    /* A 30 ms callback alone in its pass: callback_ns and longest_single_ns
     * both see it.  Three 10 ms callbacks in one pass add 30 ms to
     * callback_ns but are no "single" callback. */
    ql_loop *loop = ql_test_loop_new();
    int64_t d30 = 30 * QL_MS, d10 = 10 * QL_MS;
    ck_assert_int_eq(ql_call_soon(loop, busy_cb, &d30), 0);
    int64_t t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    int64_t wall = ql_time_ns() - t0;
    ql_stats st = stats(loop);
    ck_assert_int_ge(st.callback_ns, d30);
    ck_assert_int_le(st.callback_ns, wall);
    ck_assert_int_ge(st.longest_single_ns, d30);
    ck_assert_int_le(st.longest_single_ns, wall);
    int64_t single = st.longest_single_ns, cbns = st.callback_ns;
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(ql_call_soon(loop, busy_cb, &d10), 0);
    t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    wall = ql_time_ns() - t0;
    st = stats(loop);
    ck_assert_int_ge(st.callback_ns - cbns, 3 * d10);
    ck_assert_int_le(st.callback_ns - cbns, wall);
    ck_assert_int_eq(st.longest_single_ns, single);
    /* an iteration that ran nothing adds nothing */
    cbns = st.callback_ns;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(stats(loop).callback_ns, cbns);
    ql_test_loop_free(loop);
}
END_TEST

struct hb_probe {
    ql_loop *loop;
    int64_t busy, idle;
};

static void *hb_reader(void *arg)
{
    struct hb_probe *p = arg;
    sleep_ns(20 * QL_MS); /* the loop is inside busy_cb by then */
    p->busy = ql_loop_busy_since(p->loop);
    p->idle = ql_loop_idle_since(p->loop);
    return NULL;
}

START_TEST(stats_heartbeat)
{
    /* busy_since: the poll's return while callbacks run, seen from another
     * thread too; 0 once the run is over, with idle_since after it. */
    ql_loop *loop = ql_test_loop_new();
    ck_assert_int_eq(ql_loop_busy_since(loop), 0);
    int64_t d60 = 60 * QL_MS;
    struct hb_probe p = {loop, -1, -1};
    pthread_t th;
    ck_assert_int_eq(ql_call_soon(loop, busy_cb, &d60), 0);
    ck_assert_int_eq(pthread_create(&th, NULL, hb_reader, &p), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    int64_t end = ql_time_ns();
    pthread_join(th, NULL);
    ck_assert_int_ne(seen_busy_since, 0);
    ck_assert_int_eq(seen_busy_since, seen_now);
    ck_assert_int_eq(p.busy, seen_busy_since);
    ck_assert_int_eq(ql_loop_busy_since(loop), 0);
    ck_assert_int_ge(ql_loop_idle_since(loop), seen_busy_since + d60);
    ck_assert_int_le(ql_loop_idle_since(loop), end);
    /* a poll that blocks is idle: busy_since 0 during it, idle_since its
     * start; a timer 30 ms away bounds it */
    ql_timer t;
    ql_timer_init(&t, nop_timer_cb, NULL);
    ck_assert_int_eq(
        ql_timer_start(loop, &t, ql_loop_update_time(loop) + 30 * QL_MS), 0);
    p.busy = p.idle = -1;
    int64_t t0 = ql_time_ns();
    ck_assert_int_eq(pthread_create(&th, NULL, hb_reader, &p), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    pthread_join(th, NULL);
    if (ql_time_ns() - t0 > 25 * QL_MS + 20 * QL_MS) {
        /* the reader ran after the poll under load: nothing to conclude */
    } else if (p.busy == 0) {
        ck_assert_int_ge(p.idle, t0);
    }
    ck_assert_int_eq(ql_loop_busy_since(loop), 0);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(stats_lag_noted_by_caller)
{
    /* With lag at fire off, firing records nothing; the caller's notes
     * do, and a deadline of INT64_MIN lands in the last bucket without
     * overflowing. */
    ql_loop *loop = ql_test_loop_new();
    ql_loop_set_lag_at_fire(loop, 0);
    ql_timer t;
    ql_timer_init(&t, nop_timer_cb, NULL);
    int64_t now = ql_loop_update_time(loop);
    ck_assert_int_eq(ql_timer_start(loop, &t, now - 3 * QL_MS), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ql_stats st = stats(loop);
    ck_assert_uint_eq(st.timers_fired, 1);
    ck_assert_int_eq(st.lag_max_ns, 0);
    for (int k = 0; k < QL_LAG_BUCKETS; k++)
        ck_assert_uint_eq(st.lag_hist[k], 0);
    ql_loop_note_timer_lag(loop, now, now + 3 * QL_MS);
    ql_loop_note_timer_lag(loop, now, now - 5); /* early: no lag */
    ql_loop_note_timer_lag(loop, INT64_MIN, now);
    st = stats(loop);
    ck_assert_uint_eq(st.lag_hist[ql_lag_bucket(3 * QL_MS)], 1);
    ck_assert_uint_eq(st.lag_hist[0], 1);
    ck_assert_uint_eq(st.lag_hist[QL_LAG_BUCKETS - 1], 1);
    ck_assert_int_eq(st.lag_max_ns, INT64_MAX);
    /* back on: the next timer's firing is counted, once */
    ql_loop_set_lag_at_fire(loop, 1);
    ck_assert_int_eq(ql_timer_start(loop, &t, ql_loop_update_time(loop)), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    st = stats(loop);
    uint64_t total = 0;
    for (int k = 0; k < QL_LAG_BUCKETS; k++)
        total += st.lag_hist[k];
    ck_assert_uint_eq(total, 4);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(stats_diagnostics_compiled_out)
{
    /* QL_DIAG 0: timers, blocking callbacks, polls and explicit notes
     * leave no lag, no callback time and no heartbeat; the counts stay. */
    ql_loop *loop = ql_test_loop_new();
    ql_timer t;
    ql_timer_init(&t, nop_timer_cb, NULL);
    int64_t now = ql_loop_update_time(loop);
    ck_assert_int_eq(ql_timer_start(loop, &t, now - 3 * QL_MS), 0);
    int64_t d10 = 10 * QL_MS;
    ck_assert_int_eq(ql_call_soon(loop, busy_cb, &d10), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(seen_busy_since, 0);
    ck_assert_int_eq(ql_timer_start(loop, &t, ql_loop_update_time(loop) +
                                                  5 * QL_MS), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0); /* blocks */
    ql_loop_note_timer_lag(loop, now, now + 3 * QL_MS);
    ql_stats st = stats(loop);
    ck_assert_uint_eq(st.iterations, 2);
    ck_assert_uint_eq(st.timers_fired, 2);
    ck_assert_uint_eq(st.callbacks_run, 1);
    ck_assert_int_gt(st.poll_ns, 0);
    ck_assert_int_eq(st.callback_ns, 0);
    ck_assert_int_eq(st.longest_single_ns, 0);
    ck_assert_int_eq(st.lag_max_ns, 0);
    for (int k = 0; k < QL_LAG_BUCKETS; k++)
        ck_assert_uint_eq(st.lag_hist[k], 0);
    ck_assert_int_eq(ql_loop_busy_since(loop), 0);
    ck_assert_int_eq(ql_loop_idle_since(loop), 0);
    ql_test_loop_free(loop);
}
END_TEST

Suite *stats_suite(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("stats");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, stats_fresh_loop);
    tcase_add_test(tc, stats_count_what_happened);
    tcase_add_test(tc, stats_poll_time);
    tcase_add_test(tc, stats_lag_bucket_edges);
    if (QL_DIAG) { /* meson -Ddiagnostics=false compiles them out */
        tcase_add_test(tc, stats_timer_lag);
        tcase_add_test(tc, stats_callback_time);
        tcase_add_test(tc, stats_heartbeat);
        tcase_add_test(tc, stats_lag_noted_by_caller);
    } else {
        tcase_add_test(tc, stats_diagnostics_compiled_out);
    }
    suite_add_tcase(s, tc);
    return s;
}
