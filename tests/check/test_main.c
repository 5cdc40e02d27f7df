/*
 * The Check runner: one explicit list of suites.  With no argument every
 * suite runs; `qloop-check NAME` runs one suite (meson runs one test()
 * per suite this way).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "qloop_check.h"

static const struct {
    const char *name;
    Suite *(*make)(void);
} suites[] = {
    {"heap", heap_suite},
    {"ring", ring_suite},
    {"timers", timers_suite},
    {"run", run_suite},
    {"io", io_suite},
    {"wakeup", wakeup_suite},
    {"fork", fork_suite},
    {"hooks", hooks_suite},
    {"stats", stats_suite},
    {"errors", errors_suite},
};
#define NSUITES (sizeof(suites) / sizeof(suites[0]))

#define DEFAULT_SEED UINT64_C(0x5eed0f0e1100b00f)

int ql_test_valgrind(void)
{
    const char *v = getenv("QL_TEST_VALGRIND");
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

unsigned long ql_test_iterations(unsigned long full, unsigned long reduced)
{
    return ql_test_valgrind() ? reduced : full;
}

int64_t ql_test_slack(int64_t bound_ns)
{
    return ql_test_valgrind() ? bound_ns * 5 : bound_ns;
}

uint64_t ql_test_seed(void)
{
    const char *s = getenv("QL_TEST_SEED");
    if (s != NULL && s[0] != '\0')
        return strtoull(s, NULL, 0);
    return DEFAULT_SEED;
}

uint64_t ql_test_rand(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

uint64_t ql_test_below(uint64_t *state, uint64_t n)
{
    return ql_test_rand(state) % n;
}

ql_loop *ql_test_loop_new(void)
{
    ql_loop *loop = NULL;
    int rc = ql_loop_new(&loop);
    ck_assert_int_eq(rc, 0);
    ck_assert_ptr_nonnull(loop);
    return loop;
}

void ql_test_loop_free(ql_loop *loop)
{
    ck_assert_int_eq(ql_loop_free(loop), 0);
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    ck_assert_int_ge(fl, 0);
    ck_assert_int_eq(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

void ql_test_pipe(int fds[2])
{
    ck_assert_int_eq(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
}

void ql_test_socketpair(int fds[2])
{
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds),
                     0);
    set_nonblock(fds[0]);
    set_nonblock(fds[1]);
}

void ql_test_write_byte(int fd)
{
    char c = 'x';
    ck_assert_int_eq(write(fd, &c, 1), 1);
}

long ql_test_drain(int fd)
{
    char buf[4096];
    long total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            total += n;
            continue;
        }
        if (n == 0)
            return total;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return total;
        return total ? total : -errno;
    }
}

void ql_test_sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / QL_SEC), (long)(ns % QL_SEC)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int main(int argc, char **argv)
{
    /* Writes to a closed pipe must fail with EPIPE, not kill the test. */
    signal(SIGPIPE, SIG_IGN);

    if (argc > 2) {
        fprintf(stderr, "usage: %s [suite]\n", argv[0]);
        return 2;
    }
    SRunner *sr = NULL;
    for (size_t i = 0; i < NSUITES; i++) {
        if (argc == 2 && strcmp(argv[1], suites[i].name) != 0)
            continue;
        if (sr == NULL)
            sr = srunner_create(suites[i].make());
        else
            srunner_add_suite(sr, suites[i].make());
    }
    if (sr == NULL) {
        fprintf(stderr, "unknown suite '%s'; suites:", argv[1]);
        for (size_t i = 0; i < NSUITES; i++)
            fprintf(stderr, " %s", suites[i].name);
        fprintf(stderr, "\n");
        return 2;
    }
    /* Printed here, once: Check forks each test, so a test printing it
     * would print it once per test. */
    printf("backend %s%s\n", ql_backend_name(),
           ql_test_valgrind() ? " (valgrind: reduced iteration counts)" : "");
    printf("seed %" PRIu64 " (%s; override with QL_TEST_SEED)\n",
           ql_test_seed(),
           getenv("QL_TEST_SEED") ? "from QL_TEST_SEED" : "default");
    fflush(stdout);
    if (strcmp(ql_backend_name(), QL_TEST_BACKEND) != 0) {
        fprintf(stderr, "built for backend %s, library says %s\n",
                QL_TEST_BACKEND, ql_backend_name());
        srunner_free(sr);
        return EXIT_FAILURE;
    }
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
