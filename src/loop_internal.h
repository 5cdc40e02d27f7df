/* The loop's private state, shared by the core and the backends. */
#ifndef QL_LOOP_INTERNAL_H
#define QL_LOOP_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "qloop.h"
#include "ready_ring.h"
#include "timer_heap.h"

struct ql_backend; /* private to the backend file */

typedef struct {
    uint32_t gen;    /* the generation its events carry */
    unsigned events; /* what it asks for; 0: nothing parked */
} ql__parked;

struct ql_loop {
    int64_t now;
    ql__ready_ring ready;
    ql__timer_heap timers;
    uint64_t timer_seq;
    int in_timer_pass; /* run_timers() is firing timers */
    int lag_by_caller; /* see ql_loop_set_lag_at_fire */

    /* fd -> watcher, NULL where nothing watches. */
    ql_io **watchers;
    uint32_t nwatchers; /* size of the table */
    uint32_t io_count;  /* active watchers */
    uint32_t io_gen;    /* next registration generation */
    /* fd -> a registration ql_io_stop() left in the kernel (backends with
     * ql__backend_parks), events 0 where none: see ql_io_stop. */
    ql__parked *parked;
    /* Stale-event tracking: the same fd reporting stale events in two
     * consecutive polls means the kernel holds a registration we cannot
     * remove by fd (the old file lives on through a dup): rebuild. */
    int stale_fd_prev, stale_fd_cur;
    int need_rebuild;

    struct ql_backend *backend;

    int running;
    int stop_requested;
    int broken;

    /* Wakeup protocol (see ql_loop_wakeup): `polling` is set while the loop
     * is in, or about to enter, the poll; `wakeup_pending` by posters. */
    atomic_int polling;
    atomic_int wakeup_pending;
    ql_callback_fn wakeup_cb;
    void *wakeup_arg;

    /* Callbacks queued from other threads; spliced into the ring by the
     * loop thread under the lock. */
    pthread_mutex_t tsq_lock;
    ql__ready_entry *tsq;
    size_t tsq_len, tsq_cap;

    ql_poll_enter_fn poll_enter;
    ql_poll_leave_fn poll_leave;
    void *poll_hook_data;
    ql_callback_fn check_hook;
    void *check_hook_data;

    ql_stats stats;

    /* The heartbeat (ql_loop_busy_since): written by the loop thread with
     * plain stores, read by any thread. */
    _Atomic int64_t busy_since;
    _Atomic int64_t idle_since;
};

#endif
