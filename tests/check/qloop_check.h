/*
 * Shared pieces of the Check suites: the suite constructors listed in
 * test_main.c, the valgrind scaling knob, the seeded generator and a few
 * fd and clock helpers.
 */
#ifndef QLOOP_CHECK_H
#define QLOOP_CHECK_H

#include <check.h>
#include <stdint.h>

#include "loop_internal.h"
#include "qloop.h"

/* For hot loops: Check's ck_assert_* reports every passing assertion to
 * the runner through a pipe (a system call each), which makes a check per
 * heap step cost more than the step.  This one is silent until it fails. */
#define QL_REQUIRE(cond, ...)                                          \
    do {                                                               \
        if (!(cond))                                                   \
            ck_abort_msg("requirement failed: " __VA_ARGS__);          \
    } while (0)

#define QL_MS ((int64_t)1000000)
#define QL_SEC ((int64_t)1000000000)

/* One constructor per suite; test_main.c holds the list. */
Suite *heap_suite(void);
Suite *ring_suite(void);
Suite *timers_suite(void);
Suite *run_suite(void);
Suite *io_suite(void);
Suite *wakeup_suite(void);
Suite *fork_suite(void);
Suite *hooks_suite(void);
Suite *stats_suite(void);
Suite *errors_suite(void);

/* 1 under the valgrind test setup (QL_TEST_VALGRIND=1). */
int ql_test_valgrind(void);
/* `full` normally, `reduced` under valgrind: the same paths, fewer laps. */
unsigned long ql_test_iterations(unsigned long full, unsigned long reduced);
/* Time bounds that prove "did not sleep through it" get this factor under
 * valgrind, where everything runs some 50 times slower. */
int64_t ql_test_slack(int64_t bound_ns);

/* The seed of the randomized tests: fixed unless QL_TEST_SEED is set.
 * Printed once, so a failing run can be replayed. */
uint64_t ql_test_seed(void);
/* splitmix64: small, good enough and the same everywhere. */
uint64_t ql_test_rand(uint64_t *state);
/* Uniform in [0, n), n > 0. */
uint64_t ql_test_below(uint64_t *state, uint64_t n);

/* A fresh loop or a failed test. */
ql_loop *ql_test_loop_new(void);
/* Free the loop, failing the test if that fails. */
void ql_test_loop_free(ql_loop *loop);

void ql_test_pipe(int fds[2]);       /* non-blocking, close-on-exec */
void ql_test_socketpair(int fds[2]); /* AF_UNIX stream, non-blocking */
void ql_test_write_byte(int fd);
/* Read everything available; returns the byte count, 0 on EOF, -errno. */
long ql_test_drain(int fd);
void ql_test_sleep_ns(int64_t ns);

#endif
