/*
 * ql_loop_stats: iterations, callbacks_run, timers_fired, io_events and
 * poll_ns count what happened, no more, no less.
 */
#include <string.h>
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

Suite *stats_suite(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("stats");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, stats_fresh_loop);
    tcase_add_test(tc, stats_count_what_happened);
    tcase_add_test(tc, stats_poll_time);
    suite_add_tcase(s, tc);
    return s;
}
