/*
 * Run modes: DEFAULT until ql_loop_stop, stop before run, ONCE blocks until
 * something happens, NOWAIT never blocks, ql_loop_break, nested runs, the
 * check hook.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "qloop_check.h"

typedef struct counter {
    int runs;
    int stop_at;  /* ql_loop_stop() on this run */
    int break_at; /* ql_loop_break() on this run */
    int requeue;  /* queue itself again */
    int saw_running;
} counter;

static void counter_cb(ql_loop *loop, void *arg)
{
    counter *c = arg;
    c->runs++;
    if (ql_loop_is_running(loop))
        c->saw_running++;
    if (c->runs == c->stop_at)
        ql_loop_stop(loop);
    if (c->runs == c->break_at)
        ql_loop_break(loop);
    if (c->requeue)
        ck_assert_int_eq(ql_call_soon(loop, counter_cb, c), 0);
}

static uint64_t iterations(ql_loop *loop)
{
    ql_stats st;
    ql_loop_stats(loop, &st);
    return st.iterations;
}

static void arm_far_timer(ql_loop *loop, ql_timer *t)
{
    ql_timer_init(t, NULL, NULL);
    ck_assert_int_eq(ql_timer_start(loop, t, ql_time_ns() + 10 * QL_SEC), 0);
}

START_TEST(run_default_until_stop)
{
    /* X and W queue themselves every iteration; X stops the loop on its
     * 10th run; W, behind X in that iteration, still runs: the run ends
     * after the iteration. */
    ql_loop *loop = ql_test_loop_new();
    counter x = {.stop_at = 10, .requeue = 1};
    counter w = {.requeue = 1};
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &x), 0);
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &w), 0);
    ck_assert(!ql_loop_is_running(loop));
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert(!ql_loop_is_running(loop));
    ck_assert_int_eq(x.runs, 10);
    ck_assert_int_eq(w.runs, 10);
    ck_assert_int_eq(x.saw_running, 10);
    ck_assert_uint_eq(iterations(loop), 10);
    /* The stop was used up: the next DEFAULT run goes on until the next
     * stop. */
    x.stop_at = 15;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_eq(x.runs, 15);
    ck_assert_int_eq(w.runs, 15);
    x.requeue = w.requeue = 0;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ql_test_loop_free(loop);
}
END_TEST

static void stop_timer_cb(ql_loop *loop, ql_timer *timer)
{
    (*(int *)timer->data)++;
    ql_loop_stop(loop);
}

START_TEST(run_default_stop_from_timer)
{
    ql_loop *loop = ql_test_loop_new();
    int fired = 0;
    ql_timer t;
    ql_timer_init(&t, stop_timer_cb, &fired);
    int64_t t0 = ql_loop_update_time(loop);
    ck_assert_int_eq(ql_timer_start(loop, &t, t0 + 30 * QL_MS), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_eq(fired, 1);
    ck_assert_int_ge(ql_time_ns() - t0, 30 * QL_MS);
    /* Blocked in the poll, not spinning. */
    ck_assert_uint_le(iterations(loop), 10);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(run_stop_before_run)
{
    /* Stop before run: the run does one iteration and returns, without
     * blocking on the far timer. */
    ql_loop *loop = ql_test_loop_new();
    ql_timer far;
    arm_far_timer(loop, &far);
    counter x = {.requeue = 1};
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &x), 0);
    ql_loop_stop(loop);
    int64_t t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_lt(ql_time_ns() - t0, ql_test_slack(QL_SEC));
    ck_assert_int_eq(x.runs, 1);
    ck_assert_uint_eq(iterations(loop), 1);

    /* With nothing queued either. */
    x.requeue = 0;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(x.runs, 2);
    ql_loop_stop(loop);
    t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_lt(ql_time_ns() - t0, ql_test_slack(QL_SEC));
    ck_assert_uint_eq(iterations(loop), 3);

    /* The stop does not linger into later runs. */
    x.requeue = 1;
    x.stop_at = 7;
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &x), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_eq(x.runs, 7);
    x.requeue = 0;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ql_timer_stop(loop, &far);
    ql_test_loop_free(loop);
}
END_TEST

static void count_timer_cb(ql_loop *loop, ql_timer *timer)
{
    (void)loop;
    (*(int *)timer->data)++;
}

START_TEST(run_once_blocks_until_timer)
{
    ql_loop *loop = ql_test_loop_new();
    int fired = 0;
    ql_timer t;
    ql_timer_init(&t, count_timer_cb, &fired);
    int64_t t0 = ql_loop_update_time(loop);
    ck_assert_int_eq(ql_timer_start(loop, &t, t0 + 50 * QL_MS), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_eq(fired, 1);
    ck_assert_int_ge(ql_time_ns() - t0, 50 * QL_MS);
    ck_assert_uint_eq(iterations(loop), 1);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct delayed_write {
    int fd;
    int64_t delay_ns;
} delayed_write;

static void *delayed_write_thread(void *arg)
{
    delayed_write *dw = arg;
    ql_test_sleep_ns(dw->delay_ns);
    char c = 'x';
    if (write(dw->fd, &c, 1) != 1)
        abort();
    return NULL;
}

static void count_io_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    (void)loop;
    if (events & QL_READABLE)
        ql_test_drain(io->fd);
    (*(int *)io->data)++;
}

START_TEST(run_once_blocks_until_fd)
{
    ql_loop *loop = ql_test_loop_new();
    int fds[2];
    ql_test_pipe(fds);
    int calls = 0;
    ql_io io;
    ql_io_init(&io, fds[0], count_io_cb, &calls);
    ck_assert_int_eq(ql_io_start(loop, &io, QL_READABLE), 0);
    ql_timer far;
    arm_far_timer(loop, &far);
    delayed_write dw = {fds[1], 50 * QL_MS};
    pthread_t th;
    int64_t t0 = ql_time_ns();
    ck_assert_int_eq(pthread_create(&th, NULL, delayed_write_thread, &dw), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    int64_t elapsed = ql_time_ns() - t0;
    pthread_join(th, NULL);
    ck_assert_int_eq(calls, 1);
    ck_assert_int_ge(elapsed, 40 * QL_MS);
    ck_assert_int_lt(elapsed, ql_test_slack(QL_SEC));
    ck_assert_int_eq(ql_io_stop(loop, &io), 0);
    ql_timer_stop(loop, &far);
    close(fds[0]);
    close(fds[1]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(run_nowait_never_blocks)
{
    ql_loop *loop = ql_test_loop_new();
    ql_timer far;
    int fired = 0;
    ql_timer_init(&far, count_timer_cb, &fired);
    ck_assert_int_eq(ql_timer_start(loop, &far, ql_time_ns() + 10 * QL_SEC),
                     0);
    int fds[2];
    ql_test_pipe(fds);
    int calls = 0;
    ql_io io;
    ql_io_init(&io, fds[0], count_io_cb, &calls);
    ck_assert_int_eq(ql_io_start(loop, &io, QL_READABLE), 0);
    int64_t t0 = ql_time_ns();
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_lt(ql_time_ns() - t0, ql_test_slack(QL_SEC));
    ck_assert_int_eq(fired, 0);
    ck_assert_int_eq(calls, 0);
    ck_assert_uint_eq(iterations(loop), 100);
    /* and with nothing at all to wait for */
    ql_timer_stop(loop, &far);
    ck_assert_int_eq(ql_io_stop(loop, &io), 0);
    t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_lt(ql_time_ns() - t0, ql_test_slack(QL_SEC));
    close(fds[0]);
    close(fds[1]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(run_break_ready)
{
    /* A, B, C queued; B breaks: QL_BROKEN, C stays queued and runs in the
     * next run. */
    ql_loop *loop = ql_test_loop_new();
    counter a = {0}, b = {.break_at = 1}, c = {0};
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &a), 0);
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &b), 0);
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &c), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), QL_BROKEN);
    ck_assert(!ql_loop_is_running(loop));
    ck_assert_int_eq(a.runs, 1);
    ck_assert_int_eq(b.runs, 1);
    ck_assert_int_eq(c.runs, 0);
    ck_assert_uint_eq(ql_loop_ready_count(loop), 1);
    ql_callback_fn fn;
    void *arg;
    /* peek: it is C */
    ck_assert_int_eq(ql_loop_pop_ready(loop, &fn, &arg), 1);
    ck_assert_ptr_eq(arg, &c);
    ck_assert_int_eq(ql_call_soon(loop, fn, arg), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(c.runs, 1);
    ck_assert_int_eq(b.runs, 1);
    /* Break also ends NOWAIT and ONCE runs. */
    b.break_at = 2;
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &b), 0);
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &c), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), QL_BROKEN);
    ck_assert_int_eq(c.runs, 1);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(c.runs, 2);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct break_timer {
    ql_timer timer;
    int fired;
    int do_break;
} break_timer;

static void break_timer_cb(ql_loop *loop, ql_timer *timer)
{
    break_timer *t = timer->data;
    t->fired++;
    if (t->do_break)
        ql_loop_break(loop);
}

START_TEST(run_break_timer)
{
    /* Three due timers, the second breaks: the third stays armed and
     * fires in the next run. */
    ql_loop *loop = ql_test_loop_new();
    break_timer t[3] = {{.fired = 0}};
    int64_t now = ql_loop_update_time(loop);
    for (int i = 0; i < 3; i++) {
        ql_timer_init(&t[i].timer, break_timer_cb, &t[i]);
        ck_assert_int_eq(
            ql_timer_start(loop, &t[i].timer, now - (3 - i) * QL_MS), 0);
    }
    t[1].do_break = 1;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), QL_BROKEN);
    ck_assert_int_eq(t[0].fired, 1);
    ck_assert_int_eq(t[1].fired, 1);
    ck_assert_int_eq(t[2].fired, 0);
    ck_assert(ql_timer_active(&t[2].timer));
    ck_assert_uint_eq(ql_loop_timer_count(loop), 1);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(t[2].fired, 1);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct break_io {
    ql_io io;
    int calls;
} break_io;

static void break_io_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    (void)events;
    ql_test_drain(io->fd);
    ((break_io *)io->data)->calls++;
    ql_loop_break(loop);
}

START_TEST(run_break_io)
{
    /* Two readable fds, whichever callback runs first drains its fd and
     * breaks: the other is not called in this run; level-triggered, it is
     * called in the next. */
    ql_loop *loop = ql_test_loop_new();
    int p1[2], p2[2];
    ql_test_pipe(p1);
    ql_test_pipe(p2);
    break_io a, b;
    a.calls = b.calls = 0;
    ql_io_init(&a.io, p1[0], break_io_cb, &a);
    ql_io_init(&b.io, p2[0], break_io_cb, &b);
    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE), 0);
    ck_assert_int_eq(ql_io_start(loop, &b.io, QL_READABLE), 0);
    ql_test_write_byte(p1[1]);
    ql_test_write_byte(p2[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), QL_BROKEN);
    ck_assert_int_eq(a.calls + b.calls, 1);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), QL_BROKEN);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(b.calls, 1);
    ck_assert_int_eq(ql_io_stop(loop, &a.io), 0);
    ck_assert_int_eq(ql_io_stop(loop, &b.io), 0);
    close(p1[0]);
    close(p1[1]);
    close(p2[0]);
    close(p2[1]);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct nested {
    int run_rc[3];
    int free_rc;
    int running;
    int ran;
} nested;

static void nested_cb(ql_loop *loop, void *arg)
{
    nested *n = arg;
    n->ran++;
    n->running = ql_loop_is_running(loop);
    n->run_rc[0] = ql_loop_run(loop, QL_RUN_NOWAIT);
    n->run_rc[1] = ql_loop_run(loop, QL_RUN_ONCE);
    n->run_rc[2] = ql_loop_run(loop, QL_RUN_DEFAULT);
    n->free_rc = ql_loop_free(loop);
    /* still running after the refused calls */
    n->running &= ql_loop_is_running(loop);
}

START_TEST(run_nested_is_refused)
{
    ql_loop *loop = ql_test_loop_new();
    nested n = {{0}, 0, 0, 0};
    ck_assert_int_eq(ql_call_soon(loop, nested_cb, &n), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(n.ran, 1);
    ck_assert_int_eq(n.running, 1);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(n.run_rc[i], -EBUSY);
    ck_assert_int_eq(n.free_rc, -EBUSY);
    ck_assert(!ql_loop_is_running(loop));
    /* The loop still works. */
    counter c = {0};
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &c), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(c.runs, 1);
    ql_test_loop_free(loop);
}
END_TEST

/* The check hook runs at the end of every iteration, after the ready pass
 * (so after what the pass ran), also after a callback broke the run; what
 * it queues runs in the next iteration, whose poll then does not block. */
typedef struct hook_log {
    int calls;
    int ran_before_first; /* callback runs seen by the first call */
    int requeue_left;
    counter *c;
} hook_log;

static void check_hook_cb(ql_loop *loop, void *arg)
{
    hook_log *h = arg;
    if (h->calls++ == 0)
        h->ran_before_first = h->c->runs;
    if (h->requeue_left > 0) {
        h->requeue_left--;
        ck_assert_int_eq(ql_call_soon(loop, counter_cb, h->c), 0);
    }
}

START_TEST(run_check_hook_after_each_pass)
{
    ql_loop *loop = ql_test_loop_new();
    counter c = {0};
    hook_log h = {.requeue_left = 2, .c = &c};
    ql_loop_set_check_hook(loop, check_hook_cb, &h);
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &c), 0);
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &c), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_int_eq(h.ran_before_first, 2);
    /* The hook queued c: two more iterations that do not block (a far
     * timer would hold a blocking poll for 10 s). */
    ql_timer far;
    arm_far_timer(loop, &far);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_eq(c.runs, 4);
    ck_assert_int_eq(h.calls, 3);
    /* A callback that breaks the run: the hook still ends the pass. */
    counter b = {.break_at = 1};
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &b), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), QL_BROKEN);
    ck_assert_int_eq(h.calls, 4);
    ql_timer_stop(loop, &far);
    ql_loop_set_check_hook(loop, NULL, NULL);
    ck_assert_int_eq(ql_call_soon(loop, counter_cb, &c), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(h.calls, 4);
    ql_test_loop_free(loop);
}
END_TEST

Suite *run_suite(void)
{
    Suite *s = suite_create("run");
    TCase *tc = tcase_create("run");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, run_default_until_stop);
    tcase_add_test(tc, run_default_stop_from_timer);
    tcase_add_test(tc, run_stop_before_run);
    tcase_add_test(tc, run_once_blocks_until_timer);
    tcase_add_test(tc, run_once_blocks_until_fd);
    tcase_add_test(tc, run_nowait_never_blocks);
    tcase_add_test(tc, run_break_ready);
    tcase_add_test(tc, run_break_timer);
    tcase_add_test(tc, run_break_io);
    tcase_add_test(tc, run_nested_is_refused);
    tcase_add_test(tc, run_check_hook_after_each_pass);
    suite_add_tcase(s, tc);
    return s;
}
