/*
 * Poll hooks: enter and leave bracket a poll that may block (no callback
 * runs between them), and only such a poll; leave returning a negative
 * value ends ql_loop_run at once with that value, without dispatching
 * that poll's events or firing timers.
 */
#include <errno.h>
#include <unistd.h>

#include "qloop_check.h"

typedef struct hooks {
    int in_poll;
    int enters, leaves;
    int misuse; /* enter inside a poll, leave outside one, wrong data */
    int fail_on_leave; /* leave returns leave_rc on this call (1-based) */
    int leave_rc;
    int64_t entered_at, left_at;
    int callbacks_in_poll;
} hooks;

static hooks *expected_data;

static void hook_enter(ql_loop *loop, void *data)
{
    hooks *h = data;
    if (h != expected_data || h->in_poll || !ql_loop_is_running(loop))
        h->misuse++;
    h->in_poll = 1;
    h->enters++;
    h->entered_at = ql_time_ns();
}

static int hook_leave(ql_loop *loop, void *data)
{
    hooks *h = data;
    (void)loop;
    if (h != expected_data || !h->in_poll)
        h->misuse++;
    h->in_poll = 0;
    h->leaves++;
    h->left_at = ql_time_ns();
    if (h->leaves == h->fail_on_leave)
        return h->leave_rc;
    return h->leaves % 3; /* non-negative values mean nothing */
}

typedef struct probe {
    hooks *h;
    int calls;
} probe;

static void probe_cb(ql_loop *loop, void *arg)
{
    (void)loop;
    probe *p = arg;
    p->calls++;
    if (p->h->in_poll)
        p->h->callbacks_in_poll++;
}

static void probe_timer_cb(ql_loop *loop, ql_timer *timer)
{
    probe_cb(loop, timer->data);
}

static void probe_io_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    (void)events;
    ql_test_drain(io->fd);
    probe_cb(loop, io->data);
}

START_TEST(hooks_bracket_the_poll)
{
    /* Blocking polls, ended by a timer or by a readable fd: enter and
     * leave around each, nothing run in between. */
    ql_loop *loop = ql_test_loop_new();
    static hooks h;
    h = (hooks){0};
    expected_data = &h;
    ql_loop_set_poll_hooks(loop, hook_enter, hook_leave, &h);
    probe pt = {&h, 0}, pi = {&h, 0}, pf = {&h, 0};
    int p[2];
    ql_test_pipe(p);
    ql_io io;
    ql_io_init(&io, p[0], probe_io_cb, &pi);
    ck_assert_int_eq(ql_io_start(loop, &io, QL_READABLE), 0);
    ql_timer t, far;
    ql_timer_init(&t, probe_timer_cb, &pt);
    ql_timer_init(&far, probe_timer_cb, &pf);
    ck_assert_int_eq(ql_timer_start(loop, &far, ql_time_ns() + 10 * QL_SEC),
                     0);
    for (int i = 0; i < 10; i++) {
        if (i % 2 == 0) {
            int64_t d =
                ql_loop_update_time(loop) + ql_test_slack(20 * QL_MS);
            ck_assert_int_eq(ql_timer_start(loop, &t, d), 0);
            ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
            ck_assert_int_eq(pt.calls, i / 2 + 1);
            /* the wait lies between enter and leave */
            ck_assert_int_lt(h.entered_at, d);
            ck_assert_int_ge(h.left_at, d);
        } else {
            ql_test_write_byte(p[1]);
            ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
            ck_assert_int_eq(pi.calls, i / 2 + 1);
        }
        ck_assert_int_eq(h.enters, i + 1);
        ck_assert_int_eq(h.leaves, i + 1);
    }
    ck_assert_int_eq(h.misuse, 0);
    ck_assert_int_eq(h.in_poll, 0);
    ck_assert_int_eq(h.callbacks_in_poll, 0);
    ck_assert_int_eq(pf.calls, 0);

    /* Cleared hooks are no longer called. */
    ql_loop_set_poll_hooks(loop, NULL, NULL, NULL);
    ql_test_write_byte(p[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_eq(pi.calls, 6);
    ck_assert_int_eq(h.enters, 10);
    ck_assert_int_eq(h.leaves, 10);
    ck_assert_int_eq(ql_io_stop(loop, &io), 0);
    ql_timer_stop(loop, &far);
    close(p[0]);
    close(p[1]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(hooks_not_around_zero_timeout_polls)
{
    /* A poll that cannot block (NOWAIT, work queued, a due timer, a
     * pending stop) runs without the hooks. */
    ql_loop *loop = ql_test_loop_new();
    static hooks h;
    h = (hooks){0};
    expected_data = &h;
    ql_loop_set_poll_hooks(loop, hook_enter, hook_leave, &h);
    probe pr = {&h, 0}, pt = {&h, 0};
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(ql_call_soon(loop, probe_cb, &pr), 0);
    ck_assert_int_eq(ql_call_soon(loop, probe_cb, &pr), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ql_timer t;
    ql_timer_init(&t, probe_timer_cb, &pt);
    ck_assert_int_eq(ql_timer_start(loop, &t, ql_time_ns() - QL_MS), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ql_loop_stop(loop);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_eq(pr.calls, 2);
    ck_assert_int_eq(pt.calls, 1);
    ck_assert_int_eq(h.enters, 0);
    ck_assert_int_eq(h.leaves, 0);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(hooks_leave_negative_ends_run)
{
    /* A readable fd, a blocking poll (far timer); leave fails: the run
     * returns that value at once, the event is not dispatched.  Without
     * the hook the next run sees it (level-triggered). */
    ql_loop *loop = ql_test_loop_new();
    static hooks h;
    h = (hooks){.fail_on_leave = 1, .leave_rc = -ECANCELED};
    expected_data = &h;
    probe pi = {&h, 0}, pf = {&h, 0};
    int p[2];
    ql_test_pipe(p);
    ql_io io;
    ql_io_init(&io, p[0], probe_io_cb, &pi);
    ck_assert_int_eq(ql_io_start(loop, &io, QL_READABLE), 0);
    ql_timer far;
    ql_timer_init(&far, probe_timer_cb, &pf);
    ck_assert_int_eq(ql_timer_start(loop, &far, ql_time_ns() + 10 * QL_SEC),
                     0);
    ql_test_write_byte(p[1]);
    ql_loop_set_poll_hooks(loop, hook_enter, hook_leave, &h);
    int64_t t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), -ECANCELED);
    ck_assert_int_lt(ql_time_ns() - t0, ql_test_slack(QL_SEC));
    ck_assert(!ql_loop_is_running(loop));
    ck_assert_int_eq(h.enters, 1);
    ck_assert_int_eq(h.leaves, 1);
    ck_assert_int_eq(pi.calls, 0);

    ql_loop_set_poll_hooks(loop, NULL, NULL, NULL);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(pi.calls, 1);
    ck_assert_int_eq(pf.calls, 0);
    ck_assert_int_eq(ql_io_stop(loop, &io), 0);
    ql_timer_stop(loop, &far);
    close(p[0]);
    close(p[1]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(hooks_leave_negative_skips_due_timer)
{
    /* The poll blocks until a timer is due; leave fails: the timer does
     * not fire in that run, stays armed, and fires in the next. */
    ql_loop *loop = ql_test_loop_new();
    static hooks h;
    h = (hooks){.fail_on_leave = 1, .leave_rc = -ECANCELED};
    expected_data = &h;
    probe pt = {&h, 0};
    ql_timer t;
    ql_timer_init(&t, probe_timer_cb, &pt);
    ck_assert_int_eq(
        ql_timer_start(loop, &t, ql_loop_update_time(loop) +
                                    ql_test_slack(20 * QL_MS)),
        0);
    ql_loop_set_poll_hooks(loop, hook_enter, hook_leave, &h);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), -ECANCELED);
    ck_assert_int_eq(pt.calls, 0);
    ck_assert(ql_timer_active(&t));
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(pt.calls, 1);
    ck_assert_int_eq(h.leaves, 1);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct ticker {
    ql_timer timer;
    int fired;
    hooks *h;
    int fired_after_failed_leave;
} ticker;

static void ticker_cb(ql_loop *loop, ql_timer *timer)
{
    ticker *t = timer->data;
    t->fired++;
    if (t->h->leaves >= t->h->fail_on_leave)
        t->fired_after_failed_leave++;
    ck_assert_int_eq(
        ql_timer_start(loop, timer, ql_loop_now(loop) + 2 * QL_MS), 0);
}

START_TEST(hooks_leave_negative_ends_default_run_later)
{
    /* A DEFAULT run that blocks on a 2 ms periodic timer: the third leave
     * fails, so the run ends after three blocking polls with that value,
     * the timer having fired after the first two (and after any poll that
     * could not block because the timer was already due again, as happens
     * when the machine is slow) but not after the third. */
    ql_loop *loop = ql_test_loop_new();
    static hooks h;
    h = (hooks){.fail_on_leave = 3, .leave_rc = -EINTR};
    expected_data = &h;
    ticker tk = {.fired = 0, .h = &h};
    ql_timer_init(&tk.timer, ticker_cb, &tk);
    ck_assert_int_eq(
        ql_timer_start(loop, &tk.timer, ql_loop_update_time(loop) + 2 * QL_MS),
        0);
    ql_loop_set_poll_hooks(loop, hook_enter, hook_leave, &h);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), -EINTR);
    ck_assert_int_eq(h.leaves, 3);
    ck_assert_int_eq(h.enters, 3);
    ck_assert_int_ge(tk.fired, 2);
    ck_assert_int_eq(tk.fired_after_failed_leave, 0);
    ck_assert(ql_timer_active(&tk.timer));
    ck_assert_int_eq(h.misuse, 0);
    /* The loop runs again afterwards. */
    int before = tk.fired;
    ql_loop_set_poll_hooks(loop, NULL, NULL, NULL);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_eq(tk.fired, before + 1);
    ql_timer_stop(loop, &tk.timer);
    ql_test_loop_free(loop);
}
END_TEST

Suite *hooks_suite(void)
{
    Suite *s = suite_create("hooks");
    TCase *tc = tcase_create("hooks");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, hooks_bracket_the_poll);
    tcase_add_test(tc, hooks_not_around_zero_timeout_polls);
    tcase_add_test(tc, hooks_leave_negative_ends_run);
    tcase_add_test(tc, hooks_leave_negative_skips_due_timer);
    tcase_add_test(tc, hooks_leave_negative_ends_default_run_later);
    suite_add_tcase(s, tc);
    return s;
}
