/*
 * Thread-safe entry points: a million ql_call_soon_threadsafe posts from
 * four threads with none lost, the loop never sleeping past a posted
 * wakeup, ql_loop_wakeup with ql_loop_set_wakeup_cb.
 *
 * No ck_assert in the posting threads: they record failures, and the test
 * thread checks them after the join.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "qloop_check.h"

enum { NTHREADS = 4 };

typedef struct flood {
    ql_loop *loop;
    unsigned long per_thread;
    unsigned long total;   /* loop thread only */
    unsigned long next[NTHREADS];
    unsigned long out_of_order;
    atomic_int post_errors;
    atomic_int go;
} flood;

typedef struct poster {
    flood *f;
    uintptr_t id;
} poster;

static flood *the_flood;

static void flood_cb(ql_loop *loop, void *arg)
{
    flood *f = the_flood;
    uintptr_t v = (uintptr_t)arg;
    uintptr_t id = v & 0xff;
    uintptr_t seq = v >> 8;
    /* Each poster's callbacks arrive in its posting order. */
    if (id >= NTHREADS || seq != f->next[id])
        f->out_of_order++;
    if (id < NTHREADS)
        f->next[id] = seq + 1;
    if (++f->total == f->per_thread * NTHREADS)
        ql_loop_stop(loop);
}

static void *flood_thread(void *arg)
{
    poster *p = arg;
    flood *f = p->f;
    while (!atomic_load(&f->go))
        ;
    for (unsigned long i = 0; i < f->per_thread; i++) {
        void *v = (void *)(((uintptr_t)i << 8) | p->id);
        if (ql_call_soon_threadsafe(f->loop, flood_cb, v) != 0)
            atomic_fetch_add(&f->post_errors, 1);
    }
    return NULL;
}

static void guard_cb(ql_loop *loop, ql_timer *timer)
{
    *(int *)timer->data = 1;
    ql_loop_stop(loop);
}

START_TEST(wakeup_million_threadsafe_calls)
{
    ql_loop *loop = ql_test_loop_new();
    static flood f;
    f = (flood){.loop = loop};
    f.per_thread = ql_test_iterations(250000, 5000);
    atomic_init(&f.post_errors, 0);
    atomic_init(&f.go, 0);
    the_flood = &f;
    int guard_hit = 0;
    ql_timer guard;
    ql_timer_init(&guard, guard_cb, &guard_hit);
    ck_assert_int_eq(ql_timer_start(loop, &guard, ql_time_ns() + 200 * QL_SEC),
                     0);

    pthread_t th[NTHREADS];
    poster ps[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        ps[i] = (poster){&f, (uintptr_t)i};
        ck_assert_int_eq(pthread_create(&th[i], NULL, flood_thread, &ps[i]),
                         0);
    }
    atomic_store(&f.go, 1);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);

    ck_assert_int_eq(guard_hit, 0);
    ck_assert_int_eq(atomic_load(&f.post_errors), 0);
    ck_assert_uint_eq(f.total, f.per_thread * NTHREADS);
    ck_assert_uint_eq(f.out_of_order, 0);
    for (int i = 0; i < NTHREADS; i++)
        ck_assert_uint_eq(f.next[i], f.per_thread);
    /* nothing extra is left over */
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_uint_eq(f.total, f.per_thread * NTHREADS);
    ck_assert_uint_eq(ql_loop_ready_count(loop), 0);
    ql_stats st;
    ql_loop_stats(loop, &st);
    ck_assert_uint_ge(st.callbacks_run, f.per_thread * NTHREADS);
    ql_timer_stop(loop, &guard);
    ql_test_loop_free(loop);
}
END_TEST

/* ---- never sleeps past a posted wakeup ---------------------------------- */

typedef struct late_post {
    ql_loop *loop;
    int64_t delay_ns;     /* sleep this long first (0: spin instead) */
    unsigned spin;        /* busy iterations when delay_ns == 0 */
    int use_wakeup;       /* ql_loop_wakeup instead of a callback */
    _Atomic int64_t posted_at;
    int rc;
} late_post;

static void late_cb(ql_loop *loop, void *arg)
{
    (*(int *)arg)++;
    ql_loop_stop(loop);
}

static int late_calls;

static void *late_thread(void *arg)
{
    late_post *lp = arg;
    if (lp->delay_ns > 0) {
        ql_test_sleep_ns(lp->delay_ns);
    } else {
        for (volatile unsigned i = 0; i < lp->spin; i++)
            ;
    }
    atomic_store(&lp->posted_at, ql_time_ns());
    lp->rc = lp->use_wakeup ? ql_loop_wakeup(lp->loop)
                            : ql_call_soon_threadsafe(lp->loop, late_cb,
                                                      &late_calls);
    return NULL;
}

static void random_delay(uint64_t *rng, late_post *lp)
{
    lp->delay_ns = 0;
    lp->spin = 0;
    switch (ql_test_below(rng, 8)) {
    case 0:
        lp->delay_ns = 50 * QL_MS;
        break;
    case 1:
    case 2:
        lp->delay_ns = 1 + (int64_t)ql_test_below(rng, 2 * QL_MS);
        break;
    case 3:
        break; /* at once */
    default:
        lp->spin = (unsigned)ql_test_below(rng, 200000);
        break;
    }
}

static void wakeup_stop_cb(ql_loop *loop, void *arg)
{
    (*(int *)arg)++;
    ql_loop_stop(loop);
}

static void run_late_posts(int use_wakeup, unsigned long rounds)
{
    ql_loop *loop = ql_test_loop_new();
    uint64_t rng = ql_test_seed() ^ (use_wakeup ? 0x77 : 0x55);
    int wakeups = 0;
    if (use_wakeup)
        ql_loop_set_wakeup_cb(loop, wakeup_stop_cb, &wakeups);
    ql_timer far;
    int far_fired = 0;
    ql_timer_init(&far, guard_cb, &far_fired);
    ck_assert_int_eq(ql_timer_start(loop, &far, ql_time_ns() + 10 * QL_SEC),
                     0);
    int64_t worst = 0;
    late_calls = 0;
    for (unsigned long r = 0; r < rounds; r++) {
        late_post lp = {.loop = loop, .use_wakeup = use_wakeup};
        atomic_init(&lp.posted_at, 0);
        random_delay(&rng, &lp);
        pthread_t th;
        ck_assert_int_eq(pthread_create(&th, NULL, late_thread, &lp), 0);
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
        int64_t done = ql_time_ns();
        pthread_join(th, NULL);
        ck_assert_int_eq(lp.rc, 0);
        int64_t late = done - atomic_load(&lp.posted_at);
        if (late > worst)
            worst = late;
        ck_assert_msg(late < ql_test_slack(QL_SEC),
                      "round %lu: returned %lld ms after the post", r,
                      (long long)(late / QL_MS));
        ck_assert_int_eq(far_fired, 0);
        ck_assert_int_eq(use_wakeup ? wakeups : late_calls, (int)r + 1);
    }
    ql_timer_stop(loop, &far);
    ql_test_loop_free(loop);
}

START_TEST(wakeup_threadsafe_never_sleeps_past_post)
{
    run_late_posts(0, ql_test_iterations(300, 30));
}
END_TEST

START_TEST(wakeup_never_sleeps_past_wakeup)
{
    run_late_posts(1, ql_test_iterations(300, 30));
}
END_TEST

START_TEST(wakeup_once_returns_on_post)
{
    /* ONCE with only a far timer: a post from another thread ends the
     * iteration promptly; the callback runs then or in the next pass. */
    ql_loop *loop = ql_test_loop_new();
    ql_timer far;
    int far_fired = 0;
    ql_timer_init(&far, guard_cb, &far_fired);
    ck_assert_int_eq(ql_timer_start(loop, &far, ql_time_ns() + 10 * QL_SEC),
                     0);
    late_calls = 0;
    late_post lp = {.loop = loop, .delay_ns = 50 * QL_MS};
    atomic_init(&lp.posted_at, 0);
    pthread_t th;
    int64_t t0 = ql_time_ns();
    ck_assert_int_eq(pthread_create(&th, NULL, late_thread, &lp), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    int64_t elapsed = ql_time_ns() - t0;
    pthread_join(th, NULL);
    ck_assert_int_eq(lp.rc, 0);
    ck_assert_int_ge(elapsed, 40 * QL_MS);
    ck_assert_int_lt(elapsed, ql_test_slack(QL_SEC));
    if (late_calls == 0)
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(late_calls, 1);
    ck_assert_int_eq(far_fired, 0);
    ql_timer_stop(loop, &far);
    ql_test_loop_free(loop);
}
END_TEST

static void count_cb(ql_loop *loop, void *arg)
{
    (void)loop;
    (*(int *)arg)++;
}

START_TEST(wakeup_cb_from_loop_thread)
{
    /* A wakeup posted while the loop is not polling is not lost: the next
     * run calls the wakeup callback, and does not block for it. */
    ql_loop *loop = ql_test_loop_new();
    int wakeups = 0;
    ql_loop_set_wakeup_cb(loop, count_cb, &wakeups);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(wakeups, 0);
    ck_assert_int_eq(ql_loop_wakeup(loop), 0);
    ck_assert_int_eq(ql_loop_wakeup(loop), 0); /* coalesced */
    ql_timer far;
    ql_timer_init(&far, NULL, NULL);
    ck_assert_int_eq(ql_timer_start(loop, &far, ql_time_ns() + 10 * QL_SEC),
                     0);
    int64_t t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_lt(ql_time_ns() - t0, ql_test_slack(QL_SEC));
    ck_assert_int_ge(wakeups, 1);
    ck_assert_int_le(wakeups, 2);
    /* Consumed: the next NOWAIT calls nothing. */
    int before = wakeups;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(wakeups, before);
    /* With the callback cleared a wakeup still ends a blocking ONCE. */
    ql_loop_set_wakeup_cb(loop, NULL, NULL);
    ck_assert_int_eq(ql_loop_wakeup(loop), 0);
    t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
    ck_assert_int_lt(ql_time_ns() - t0, ql_test_slack(QL_SEC));
    ck_assert_int_eq(wakeups, before);
    ql_timer_stop(loop, &far);
    ql_test_loop_free(loop);
}
END_TEST

static void threadsafe_chain_cb(ql_loop *loop, void *arg)
{
    int *n = arg;
    if (++*n < 5)
        ck_assert_int_eq(ql_call_soon_threadsafe(loop, threadsafe_chain_cb,
                                                 n),
                         0);
    else
        ql_loop_stop(loop);
}

START_TEST(wakeup_threadsafe_from_loop_callback)
{
    /* ql_call_soon_threadsafe from the loop thread, inside a callback: the
     * loop does not block on the far timer waiting for it. */
    ql_loop *loop = ql_test_loop_new();
    ql_timer far;
    ql_timer_init(&far, NULL, NULL);
    ck_assert_int_eq(ql_timer_start(loop, &far, ql_time_ns() + 10 * QL_SEC),
                     0);
    int n = 0;
    ck_assert_int_eq(ql_call_soon_threadsafe(loop, threadsafe_chain_cb, &n),
                     0);
    int64_t t0 = ql_time_ns();
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ck_assert_int_lt(ql_time_ns() - t0, ql_test_slack(QL_SEC));
    ck_assert_int_eq(n, 5);
    ql_timer_stop(loop, &far);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct storm {
    ql_loop *loop;
    atomic_int stop;
    atomic_int errors;
} storm;

static void *storm_thread(void *arg)
{
    storm *s = arg;
    while (!atomic_load(&s->stop))
        if (ql_loop_wakeup(s->loop) != 0)
            atomic_fetch_add(&s->errors, 1);
    return NULL;
}

START_TEST(wakeup_storm_during_iterations)
{
    /* Wakeups hammered from two threads while the loop runs ONCE after
     * ONCE: every run returns (the wakeup callback runs each time a
     * wakeup is seen) and nothing breaks. */
    ql_loop *loop = ql_test_loop_new();
    int wakeups = 0;
    ql_loop_set_wakeup_cb(loop, count_cb, &wakeups);
    ql_timer far;
    int far_fired = 0;
    ql_timer_init(&far, guard_cb, &far_fired);
    ck_assert_int_eq(ql_timer_start(loop, &far, ql_time_ns() + 10 * QL_SEC),
                     0);
    static storm s;
    s.loop = loop;
    atomic_init(&s.stop, 0);
    atomic_init(&s.errors, 0);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, storm_thread, &s), 0);
    unsigned long rounds = ql_test_iterations(20000, 500);
    int64_t worst = 0;
    for (unsigned long i = 0; i < rounds; i++) {
        int64_t t0 = ql_time_ns();
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_ONCE), 0);
        int64_t took = ql_time_ns() - t0;
        if (took > worst)
            worst = took;
    }
    atomic_store(&s.stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    ck_assert_int_eq(atomic_load(&s.errors), 0);
    ck_assert_int_ge(wakeups, 1);
    /* each ONCE ended because of a wakeup, not the 10 s timer */
    ck_assert_int_eq(far_fired, 0);
    ck_assert_msg(worst < ql_test_slack(QL_SEC), "slowest ONCE took %lld ms",
                  (long long)(worst / QL_MS));
    ql_timer_stop(loop, &far);
    ql_test_loop_free(loop);
}
END_TEST

Suite *wakeup_suite(void)
{
    Suite *s = suite_create("wakeup");
    TCase *tc = tcase_create("wakeup");
    tcase_set_timeout(tc, 280);
    tcase_add_test(tc, wakeup_million_threadsafe_calls);
    tcase_add_test(tc, wakeup_threadsafe_never_sleeps_past_post);
    tcase_add_test(tc, wakeup_never_sleeps_past_wakeup);
    tcase_add_test(tc, wakeup_once_returns_on_post);
    tcase_add_test(tc, wakeup_cb_from_loop_thread);
    tcase_add_test(tc, wakeup_threadsafe_from_loop_callback);
    tcase_add_test(tc, wakeup_storm_during_iterations);
    suite_add_tcase(s, tc);
    return s;
}
