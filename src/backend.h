/*
 * The backend contract.  One file per kernel API (epoll.c, kqueue.c), chosen
 * by meson.  Each keeps a private `struct ql_backend` behind loop->backend.
 *
 * The backend owns the poller fd and the wakeup primitive.  It does not own
 * the watcher table: the core validates every event through
 * ql__io_dispatch(), which drops events for watchers removed earlier in the
 * same batch and for fds closed and reused (by registration generation).
 */
#ifndef QL_BACKEND_H
#define QL_BACKEND_H

#include "qloop.h"

/* Create the poller and the wakeup primitive. */
int ql__backend_init(ql_loop *loop);
void ql__backend_close(ql_loop *loop);
/* Change the kernel's interest for io->fd from `old_events` to
 * `new_events` (either may be 0) with at most one system call.
 * io->gen is the generation to attach to events. */
int ql__backend_modify(ql_loop *loop, ql_io *io, unsigned old_events,
                       unsigned new_events);
/* Nonzero when a registration may be left in the poller after its watcher
 * stops ("parked", see ql_io_stop): the backend then re-registers with
 * ql__backend_modify(old_events = the parked events, new_events) even when
 * the two are equal (the generation changes), and a registration the
 * kernel dropped meanwhile (its fd closed) is added again. */
extern const int ql__backend_parks;
/* The poll system call only (the core releases locks around it).
 * timeout_ns < 0 blocks indefinitely.  Returns the number of events
 * collected, or a negative errno (-EINTR included). */
int ql__backend_wait(ql_loop *loop, int64_t timeout_ns);
/* Dispatch the `n` events collected by the last wait through
 * ql__io_dispatch(), stopping early when loop->broken is set.  Drains the
 * wakeup primitive when it fired. */
void ql__backend_dispatch(ql_loop *loop, int n);
/* A fresh poller with every active watcher of the loop's table registered
 * again.  `after_fork`: in a child after fork(), where the wakeup primitive
 * must be new too (the parent shares it).  Otherwise (the core rebuilds
 * when the kernel keeps reporting a registration it cannot remove) other
 * threads may be posting wakeups at that moment: any fd they use must keep
 * its number (build the new poller aside, then dup2() it into place). */
int ql__backend_reinit(ql_loop *loop, int after_fork);
/* Thread-safe: make a concurrent or the next wait return. */
int ql__backend_wakeup(ql_loop *loop);

/* Implemented by the core, called by the backend. */
void ql__io_dispatch(ql_loop *loop, int fd, uint32_t gen, unsigned events);

#endif
