/*
 * fork(): the child calls ql_loop_fork() and its watchers, timers and
 * thread-safe wakeups work; the parent's loop is unaffected by what the
 * child does with its copy.
 *
 * The child reports through its exit status (no Check calls in it).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qloop_check.h"

typedef struct forked {
    ql_io io;
    ql_timer timer;
    ql_timer guard;
    int io_calls;
    int timer_calls;
    int guard_hit;
    int posted_calls;
    int want_posted;
} forked;

static void maybe_done(ql_loop *loop, forked *f)
{
    if (f->io_calls >= 1 && f->timer_calls >= 1 &&
        f->posted_calls >= f->want_posted)
        ql_loop_stop(loop);
}

static void forked_io_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    forked *f = io->data;
    if (events & QL_READABLE)
        ql_test_drain(io->fd);
    f->io_calls++;
    maybe_done(loop, f);
}

static void forked_timer_cb(ql_loop *loop, ql_timer *timer)
{
    forked *f = timer->data;
    f->timer_calls++;
    maybe_done(loop, f);
}

static void forked_guard_cb(ql_loop *loop, ql_timer *timer)
{
    forked *f = timer->data;
    f->guard_hit = 1;
    ql_loop_stop(loop);
}

static void posted_cb(ql_loop *loop, void *arg)
{
    forked *f = arg;
    f->posted_calls++;
    maybe_done(loop, f);
}

typedef struct post_arg {
    ql_loop *loop;
    forked *f;
    int rc;
} post_arg;

static void *post_thread(void *arg)
{
    post_arg *pa = arg;
    ql_test_sleep_ns(30 * QL_MS); /* let the loop block first */
    pa->rc = ql_call_soon_threadsafe(pa->loop, posted_cb, pa->f);
    return NULL;
}

/* Exit codes of the child. */
enum {
    CHILD_OK = 0,
    CHILD_FORK_FAILED = 10,
    CHILD_RUN_FAILED,
    CHILD_GUARD,
    CHILD_NO_IO,
    CHILD_NO_TIMER,
    CHILD_NO_POST,
    CHILD_STOP_FAILED,
    CHILD_THREAD_FAILED,
    CHILD_FREE_FAILED,
    CHILD_WRITE_FAILED,
};

static int child_main(ql_loop *loop, forked *f, int wfd)
{
    if (ql_loop_fork(loop) != 0)
        return CHILD_FORK_FAILED;
    /* The watcher registered before fork() fires in the child. */
    char c = 'c';
    if (write(wfd, &c, 1) != 1)
        return CHILD_WRITE_FAILED;
    /* And a wakeup from a thread reaches the child's loop. */
    f->want_posted = 1;
    post_arg pa = {loop, f, -1};
    pthread_t th;
    if (pthread_create(&th, NULL, post_thread, &pa) != 0)
        return CHILD_THREAD_FAILED;
    int rc = ql_loop_run(loop, QL_RUN_DEFAULT);
    pthread_join(th, NULL);
    if (rc != 0 || pa.rc != 0)
        return CHILD_RUN_FAILED;
    if (f->guard_hit)
        return CHILD_GUARD;
    if (f->io_calls < 1)
        return CHILD_NO_IO;
    if (f->timer_calls != 1)
        return CHILD_NO_TIMER;
    if (f->posted_calls != 1)
        return CHILD_NO_POST;
    /* Stopping in the child must not touch the parent's registration. */
    if (ql_io_stop(loop, &f->io) != 0)
        return CHILD_STOP_FAILED;
    ql_timer_stop(loop, &f->guard);
    if (ql_loop_free(loop) != 0)
        return CHILD_FREE_FAILED;
    return CHILD_OK;
}

START_TEST(fork_child_and_parent)
{
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    static forked f;
    f = (forked){.io_calls = 0};
    ql_io_init(&f.io, p[0], forked_io_cb, &f);
    ck_assert_int_eq(ql_io_start(loop, &f.io, QL_READABLE), 0);
    ql_timer_init(&f.timer, forked_timer_cb, &f);
    ql_timer_init(&f.guard, forked_guard_cb, &f);
    int64_t now = ql_loop_update_time(loop);
    ck_assert_int_eq(ql_timer_start(loop, &f.timer, now + 50 * QL_MS), 0);
    ck_assert_int_eq(ql_timer_start(loop, &f.guard, now + 20 * QL_SEC), 0);
    /* The parent's poller is live and has been polled. */
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(f.io_calls, 0);

    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
        _exit(child_main(loop, &f, p[1]));

    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status), "child died (status 0x%x)", status);
    ck_assert_msg(WEXITSTATUS(status) == CHILD_OK, "child failed with %d",
                  WEXITSTATUS(status));

    /* The parent's loop still works: its watcher (which the child stopped
     * in its own copy) and its timer fire here too. */
    ck_assert_int_eq(ql_loop_io_count(loop), 1);
    ql_test_write_byte(p[1]);
    f.want_posted = 0;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_eq(f.guard_hit, 0);
    ck_assert_int_ge(f.io_calls, 1);
    ck_assert_int_eq(f.timer_calls, 1);
    ck_assert_int_eq(f.posted_calls, 0);

    /* and a thread-safe post still wakes the parent */
    f.want_posted = 1;
    post_arg pa = {loop, &f, -1};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, post_thread, &pa), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    pthread_join(th, NULL);
    ck_assert_int_eq(pa.rc, 0);
    ck_assert_int_eq(f.posted_calls, 1);
    ck_assert_int_eq(f.guard_hit, 0);

    ck_assert_int_eq(ql_io_stop(loop, &f.io), 0);
    ql_timer_stop(loop, &f.guard);
    close(p[0]);
    close(p[1]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(fork_child_watcher_added_after_fork)
{
    /* In the child, after ql_loop_fork(), new watchers work, and the
     * parent never hears of them. */
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    static forked f;
    f = (forked){.io_calls = 0};
    ql_io_init(&f.io, p[0], forked_io_cb, &f);
    ql_timer_init(&f.timer, forked_timer_cb, &f);
    ql_timer_init(&f.guard, forked_guard_cb, &f);

    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (ql_loop_fork(loop) != 0)
            _exit(CHILD_FORK_FAILED);
        if (ql_io_start(loop, &f.io, QL_READABLE) != 0)
            _exit(CHILD_NO_IO);
        int64_t now = ql_loop_update_time(loop);
        if (ql_timer_start(loop, &f.timer, now + 10 * QL_MS) != 0 ||
            ql_timer_start(loop, &f.guard, now + 20 * QL_SEC) != 0)
            _exit(CHILD_NO_TIMER);
        char c = 'c';
        if (write(p[1], &c, 1) != 1)
            _exit(CHILD_WRITE_FAILED);
        if (ql_loop_run(loop, QL_RUN_DEFAULT) != 0)
            _exit(CHILD_RUN_FAILED);
        if (f.guard_hit)
            _exit(CHILD_GUARD);
        if (f.io_calls < 1)
            _exit(CHILD_NO_IO);
        ql_io_stop(loop, &f.io);
        ql_timer_stop(loop, &f.guard);
        _exit(ql_loop_free(loop) == 0 ? CHILD_OK : CHILD_FREE_FAILED);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status), "child died (status 0x%x)", status);
    ck_assert_msg(WEXITSTATUS(status) == CHILD_OK, "child failed with %d",
                  WEXITSTATUS(status));
    /* The parent has no watcher; the child's registration must not be
     * in the parent's poller. */
    ck_assert_uint_eq(ql_loop_io_count(loop), 0);
    ql_test_write_byte(p[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(f.io_calls, 0);
    ql_stats st;
    ql_loop_stats(loop, &st);
    ck_assert_uint_eq(st.io_events, 0);
    close(p[0]);
    close(p[1]);
    ql_test_loop_free(loop);
}
END_TEST

Suite *fork_suite(void)
{
    Suite *s = suite_create("fork");
    TCase *tc = tcase_create("fork");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, fork_child_and_parent);
    tcase_add_test(tc, fork_child_watcher_added_after_fork);
    suite_add_tcase(s, tc);
    return s;
}
