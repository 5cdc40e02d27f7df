/*
 * Errors are negative errno values, never crashes: ql_io_start on invalid
 * fds, and a failed start leaves nothing behind.  Also: creating and
 * freeing loops leaks no fds.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "qloop_check.h"

static void never_io_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    (void)loop;
    (void)events;
    (*(int *)io->data)++;
}

static void expect_start_fails(ql_loop *loop, int fd, unsigned events)
{
    int calls = 0;
    ql_io io;
    ql_io_init(&io, fd, never_io_cb, &calls);
    size_t count = ql_loop_io_count(loop);
    int rc = ql_io_start(loop, &io, events);
    ck_assert_msg(rc < 0, "ql_io_start(fd %d) returned %d", fd, rc);
    ck_assert_msg(rc >= -4095, "not an errno: %d", rc);
    ck_assert(!ql_io_active(&io));
    ck_assert_uint_eq(ql_loop_io_count(loop), count);
    ck_assert_int_eq(ql_io_stop(loop, &io), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(calls, 0);
}

START_TEST(errors_io_start_negative_fd)
{
    ql_loop *loop = ql_test_loop_new();
    expect_start_fails(loop, -1, QL_READABLE);
    expect_start_fails(loop, -1, QL_WRITABLE);
    expect_start_fails(loop, INT_MIN, QL_READABLE);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(errors_io_start_closed_fd)
{
    /* A closed fd number fails with EBADF and does not claim the number:
     * once a real fd has it, a watcher starts there. */
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    int fdnum = p[0];
    close(p[0]);
    close(p[1]);
    int calls = 0;
    ql_io io;
    ql_io_init(&io, fdnum, never_io_cb, &calls);
    ck_assert_int_eq(ql_io_start(loop, &io, QL_READABLE), -EBADF);
    ck_assert(!ql_io_active(&io));
    ck_assert_uint_eq(ql_loop_io_count(loop), 0);

    int q[2];
    ql_test_pipe(q);
    if (q[0] != fdnum) {
        ck_assert_int_eq(dup2(q[0], fdnum), fdnum);
        close(q[0]);
        q[0] = fdnum;
    }
    /* the same watcher, retried */
    ck_assert_int_eq(ql_io_start(loop, &io, QL_READABLE), 0);
    ql_test_write_byte(q[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(calls, 1);
    ck_assert_int_eq(ql_io_stop(loop, &io), 0);
    close(q[0]);
    close(q[1]);
    ql_test_loop_free(loop);
}
END_TEST

/* A failed start on `fd` (not open, far above anything open) returns
 * -EBADF and leaves the fd table as it was: a bogus number must not cost
 * memory in proportion to its value. */
static int start_grows_table(ql_loop *loop, int fd)
{
    uint32_t before = loop->nwatchers;
    int calls = 0;
    ql_io io;
    ql_io_init(&io, fd, never_io_cb, &calls);
    int rc = ql_io_start(loop, &io, QL_READABLE);
    ck_assert_msg(rc == -EBADF, "ql_io_start(fd %d) returned %d", fd, rc);
    ck_assert(!ql_io_active(&io));
    return loop->nwatchers != before && loop->nwatchers > (uint32_t)fd;
}

START_TEST(errors_io_start_fd_above_limit)
{
    ql_loop *loop = ql_test_loop_new();
    expect_start_fails(loop, 1 << 20, QL_READABLE);
    expect_start_fails(loop, 1 << 20, QL_READABLE | QL_WRITABLE);
    ql_test_loop_free(loop);

    loop = ql_test_loop_new();
    ck_assert_msg(!start_grows_table(loop, 1 << 20),
                  "a failed ql_io_start(fd %d) grew the fd table to %u slots "
                  "(%zu bytes); with fd INT_MAX that is 16 GiB",
                  1 << 20, loop->nwatchers,
                  (size_t)loop->nwatchers * sizeof(ql_io *));
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(errors_io_start_fd_int_max)
{
    /* The largest fd number: must fail with a negative errno quickly.
     * Probed first with a smaller number: if the loop sizes its table for
     * the number before checking the fd, INT_MAX would allocate and clear
     * 16 GiB (the OOM killer's business, not a test's), so it is not
     * attempted. */
    ql_loop *loop = ql_test_loop_new();
    int grows = start_grows_table(loop, 1 << 20);
    ql_test_loop_free(loop);
    ck_assert_msg(!grows, "not attempted: ql_io_start would size the fd "
                          "table for fd INT_MAX (16 GiB)");
    loop = ql_test_loop_new();
    int64_t t0 = ql_time_ns();
    expect_start_fails(loop, INT_MAX, QL_READABLE);
    ck_assert_int_lt(ql_time_ns() - t0, ql_test_slack(QL_SEC));
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(errors_io_start_regular_file)
{
    /* epoll refuses regular files (EPERM); kqueue takes them, always
     * ready.  Either way: a clean result and a consistent watcher. */
    ql_loop *loop = ql_test_loop_new();
    char path[] = "/tmp/qloop-check-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    unlink(path);
    int calls = 0;
    ql_io io;
    ql_io_init(&io, fd, never_io_cb, &calls);
    int rc = ql_io_start(loop, &io, QL_READABLE);
    if (rc < 0) {
        ck_assert_int_ge(rc, -4095);
        ck_assert(!ql_io_active(&io));
        ck_assert_uint_eq(ql_loop_io_count(loop), 0);
    } else {
        ck_assert_int_eq(rc, 0);
        ck_assert(ql_io_active(&io));
        ck_assert_int_eq(ql_io_stop(loop, &io), 0);
    }
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    close(fd);
    ql_test_loop_free(loop);
}
END_TEST

static int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

START_TEST(errors_loop_new_free_no_fd_leak)
{
    int before = count_open_fds();
    if (before < 0)
        return; /* no /proc */
    for (int i = 0; i < 50; i++) {
        ql_loop *loop = ql_test_loop_new();
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
        ck_assert_int_eq(ql_loop_wakeup(loop), 0);
        ql_test_loop_free(loop);
    }
    ck_assert_int_eq(count_open_fds(), before);
}
END_TEST

Suite *errors_suite(void)
{
    Suite *s = suite_create("errors");
    TCase *tc = tcase_create("errors");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, errors_io_start_negative_fd);
    tcase_add_test(tc, errors_io_start_closed_fd);
    tcase_add_test(tc, errors_io_start_fd_above_limit);
    tcase_add_test(tc, errors_io_start_fd_int_max);
    tcase_add_test(tc, errors_io_start_regular_file);
    tcase_add_test(tc, errors_loop_new_free_no_fd_leak);
    suite_add_tcase(s, tc);
    return s;
}
