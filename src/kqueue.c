/*
 * The kqueue backend (FreeBSD, macOS, NetBSD, DragonFly; on Linux it
 * builds against the test-only emulation in tests/kqueue_emul).
 *
 * Quirks worth knowing:
 *  - Filters are separate knotes: an fd watched for reading and writing
 *    is two registrations (EVFILT_READ, EVFILT_WRITE) and reports as two
 *    events.  Changing interest is a list of EV_ADD/EV_DELETE changes,
 *    submitted together in one kevent() call.
 *  - With no room in the eventlist, a change that fails makes kevent()
 *    fail and skip the rest of the list.  With EV_RECEIPT on every change
 *    and room for each, every change reports its own result as an
 *    EV_ERROR entry (data 0 on success), and no event is dequeued.
 *  - EV_EOF marks a hang-up (the peer closed, the pipe's other end went
 *    away); fflags then holds the socket error, if any.
 *  - close() removes the fd's knotes, whatever dups remain: there is no
 *    stale registration to drop as with epoll.  Deleting a knote of a
 *    closed fd fails with EBADF (or ENOENT once the number is reused),
 *    which for us means success.
 *  - A kqueue is not inherited across fork(): the child has no such fd,
 *    and may already have reused the number.  So the child never closes
 *    the old one; it builds a new queue.
 *  - The wakeup is an EVFILT_USER knote with EV_CLEAR, triggered from any
 *    thread with NOTE_TRIGGER on the kqueue itself: no extra fd, and the
 *    kqueue's number must stay put while other threads may post.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/event.h>
#include <sys/time.h>
#include <unistd.h>

#include "backend.h"
#include "loop_internal.h"

#ifndef EVFILT_USER
#error "the kqueue backend needs EVFILT_USER for its wakeup"
#endif

/* Plain close() on a BSD; the emulation frees its state as well. */
#ifndef QL_KQ_CLOSE
#define QL_KQ_CLOSE(fd) close(fd)
#endif

#define MAX_EVENTS 1024
#define WAKEUP_IDENT 0
/* Changes per kevent() call when registering every watcher again. */
#define REINIT_BATCH 64

/* Per fd, while one batch is dispatched: the READ and WRITE events of one
 * registration folded into one callback (see ql__backend_dispatch). */
struct fold {
    uint32_t gen;
    uint32_t first; /* index of the fd's first event in the batch */
    unsigned events;
};

struct ql_backend {
    int kq;
    pid_t pid;           /* the process that owns kq */
    struct fold *folds;  /* indexed by fd */
    uint32_t nfolds;
    struct kevent events[MAX_EVENTS];
};

const char *ql_backend_name(void) { return "kqueue"; }

/* A kqueue with the wakeup knote, close-on-exec. */
static int new_kqueue(void)
{
    int kq = kqueue();
    if (kq < 0)
        return -errno;
    struct kevent ev;
    EV_SET(&ev, WAKEUP_IDENT, EVFILT_USER, EV_ADD | EV_CLEAR, 0, 0, NULL);
    if (fcntl(kq, F_SETFD, FD_CLOEXEC) < 0 ||
        kevent(kq, &ev, 1, NULL, 0, NULL) < 0) {
        int rc = -errno;
        QL_KQ_CLOSE(kq);
        return rc;
    }
    return kq;
}

/* Make room for `fd` in the fold table.  Only for fds the kernel accepted
 * (bounded by the fd limit); on ENOMEM the fd's events are simply not
 * folded. */
static void grow_folds(struct ql_backend *b, int fd)
{
    if ((uint32_t)fd < b->nfolds)
        return;
    uint32_t n = b->nfolds ? b->nfolds : 64;
    while (n <= (uint32_t)fd)
        n *= 2;
    struct fold *f = realloc(b->folds, sizeof(*f) * n);
    if (!f)
        return;
    for (uint32_t i = b->nfolds; i < n; i++)
        f[i].events = 0;
    b->folds = f;
    b->nfolds = n;
}

int ql__backend_init(ql_loop *loop)
{
    struct ql_backend *b = malloc(sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->folds = NULL;
    b->nfolds = 0;
    b->pid = getpid();
    b->kq = new_kqueue();
    if (b->kq < 0) {
        int rc = b->kq;
        free(b);
        return rc;
    }
    loop->backend = b;
    return 0;
}

void ql__backend_close(ql_loop *loop)
{
    struct ql_backend *b = loop->backend;
    if (!b)
        return;
    /* In a child that never called ql_loop_fork() the number is not ours. */
    if (b->pid == getpid())
        QL_KQ_CLOSE(b->kq);
    free(b->folds);
    free(b);
    loop->backend = NULL;
}

static int filter_of(unsigned event)
{
    return event == QL_READABLE ? EVFILT_READ : EVFILT_WRITE;
}

const int ql__backend_parks = 0;

int ql__backend_modify(ql_loop *loop, ql_io *io, unsigned old_events,
                       unsigned new_events)
{
    struct ql_backend *b = loop->backend;
    unsigned added = new_events & ~old_events;
    unsigned removed = old_events & ~new_events;
    if (!added && !removed)
        return 0;

    /* Every change with EV_RECEIPT, so that each reports its own result
     * and a deletion failing on a closed fd cannot abort an addition. */
    struct kevent ch[2], res[2];
    unsigned what[2];
    void *udata = (void *)(uintptr_t)io->gen;
    int n = 0;
    for (unsigned ev = QL_READABLE; ev <= QL_WRITABLE; ev <<= 1) {
        if (!((added | removed) & ev))
            continue;
        unsigned short flags = ((added & ev) ? EV_ADD : EV_DELETE) | EV_RECEIPT;
        EV_SET(&ch[n], io->fd, filter_of(ev), flags, 0, 0, udata);
        what[n++] = ev;
    }
    static const struct timespec no_wait = {0, 0};
    int r = kevent(b->kq, ch, n, res, n, &no_wait);
    if (r < 0)
        return -errno;

    int rc = 0;
    unsigned done = 0; /* the changes that took effect */
    for (int i = 0; i < r; i++) {
        unsigned ev = res[i].filter == EVFILT_READ ? QL_READABLE : QL_WRITABLE;
        int err = (res[i].flags & EV_ERROR) ? (int)res[i].data : 0;
        if (err == 0) {
            done |= ev;
        } else if ((removed & ev) && (err == EBADF || err == ENOENT)) {
            /* The fd was closed behind our back: the knote is gone. */
        } else if (rc == 0) {
            rc = -err;
        }
    }
    if (rc < 0 && done) {
        /* Leave the kernel as the core believes it is: old_events.
         * Best effort, on a path that is already failing. */
        int m = 0;
        for (int i = 0; i < n; i++) {
            if (!(done & what[i]))
                continue;
            unsigned short flags = (added & what[i]) ? EV_DELETE : EV_ADD;
            EV_SET(&ch[m], io->fd, filter_of(what[i]), flags, 0, 0, udata);
            m++;
        }
        kevent(b->kq, ch, m, NULL, 0, NULL);
    } else if (done & added) {
        grow_folds(b, io->fd);
    }
    return rc;
}

int ql__backend_wait(ql_loop *loop, int64_t timeout_ns)
{
    struct ql_backend *b = loop->backend;
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tsp = &ts;
    }
    int n = kevent(b->kq, NULL, 0, b->events, MAX_EVENTS, tsp);
    return n < 0 ? -errno : n;
}

static unsigned from_kevent(const struct kevent *ev)
{
    if (ev->flags & EV_ERROR)
        return QL_ERROR;
    unsigned events = ev->filter == EVFILT_READ ? QL_READABLE : QL_WRITABLE;
    if (ev->flags & EV_EOF) {
        events |= QL_HANGUP;
        if (ev->fflags)
            events |= QL_ERROR;
    }
    return events;
}

/* Dispatch order: kqueue reports an fd that is both readable and writable
 * as two events, possibly far apart in the batch.  They are folded into
 * one callback, at the position of the fd's first event, so a watcher
 * sees what it would see on epoll: one call with both bits.  Events of a
 * different registration (generation) of the same fd are not folded. */
void ql__backend_dispatch(ql_loop *loop, int n)
{
    struct ql_backend *b = loop->backend;
    for (int i = 0; i < n; i++) {
        struct kevent *ev = &b->events[i];
        if (ev->filter == EVFILT_USER)
            continue;
        uintptr_t fd = ev->ident;
        uint32_t gen = (uint32_t)(uintptr_t)ev->udata;
        if (fd >= b->nfolds)
            continue;
        struct fold *f = &b->folds[fd];
        if (!f->events) {
            f->gen = gen;
            f->first = (uint32_t)i;
            f->events = from_kevent(ev);
        } else if (f->gen == gen) {
            f->events |= from_kevent(ev);
            /* Folded into the first: now skipped like the wakeup.  (Not
             * filter 0, which is EVFILT_READ on NetBSD.) */
            ev->filter = EVFILT_USER;
        }
    }

    int i;
    for (i = 0; i < n && !loop->broken; i++) {
        struct kevent *ev = &b->events[i];
        /* The wakeup knote is EV_CLEAR: delivering it consumed it, and
         * the core already looked at its own pending flag. */
        if (ev->filter == EVFILT_USER)
            continue;
        uintptr_t fd = ev->ident;
        uint32_t gen = (uint32_t)(uintptr_t)ev->udata;
        unsigned events = from_kevent(ev);
        /* b->folds may move: a callback can start a watcher. */
        if (fd < b->nfolds && b->folds[fd].first == (uint32_t)i &&
            b->folds[fd].events) {
            events = b->folds[fd].events;
            b->folds[fd].events = 0;
        }
        ql__io_dispatch(loop, (int)fd, gen, events);
    }
    /* After a break, clear the folds of the events left undispatched. */
    for (; i < n; i++) {
        uintptr_t fd = b->events[i].ident;
        if (b->events[i].filter != EVFILT_USER && fd < b->nfolds)
            b->folds[fd].events = 0;
    }
}

/* EV_ADD every active watcher's filters into `kq`.  A watcher whose fd
 * was closed behind our back stays in the table until stopped; it simply
 * gets no events. */
static int register_all(ql_loop *loop, int kq)
{
    struct kevent ch[REINIT_BATCH], res[REINIT_BATCH];
    uint32_t fd = 0;
    while (fd < loop->nwatchers) {
        int n = 0;
        for (; fd < loop->nwatchers && n + 2 <= REINIT_BATCH; fd++) {
            ql_io *io = loop->watchers[fd];
            if (!io || !io->active)
                continue;
            void *udata = (void *)(uintptr_t)io->gen;
            for (unsigned ev = QL_READABLE; ev <= QL_WRITABLE; ev <<= 1)
                if (io->events & ev)
                    EV_SET(&ch[n++], io->fd, filter_of(ev),
                           EV_ADD | EV_RECEIPT, 0, 0, udata);
        }
        if (n == 0)
            continue;
        static const struct timespec no_wait = {0, 0};
        int r = kevent(kq, ch, n, res, n, &no_wait);
        if (r < 0)
            return -errno;
        for (int i = 0; i < r; i++) {
            int err = (res[i].flags & EV_ERROR) ? (int)res[i].data : 0;
            if (err != 0 && err != EBADF)
                return -err;
        }
    }
    return 0;
}

int ql__backend_reinit(ql_loop *loop, int after_fork)
{
    struct ql_backend *b = loop->backend;
    if (!after_fork) {
        /* The core asks for a rebuild when stale events persist.  kqueue
         * keeps no registration past close(), so a new queue would drop
         * nothing, and other threads may be triggering the wakeup on this
         * one: refresh the registrations in place. */
        return register_all(loop, b->kq);
    }
    int kq = new_kqueue();
    if (kq < 0)
        return kq;
    /* Called without a fork in between, the old queue is still ours. */
    if (b->pid == getpid())
        QL_KQ_CLOSE(b->kq);
    b->kq = kq;
    b->pid = getpid();
    for (uint32_t i = 0; i < b->nfolds; i++)
        b->folds[i].events = 0;
    return register_all(loop, kq);
}

int ql__backend_wakeup(ql_loop *loop)
{
    struct ql_backend *b = loop->backend;
    struct kevent ev;
    EV_SET(&ev, WAKEUP_IDENT, EVFILT_USER, 0, NOTE_TRIGGER, 0, NULL);
    for (;;) {
        if (kevent(b->kq, &ev, 1, NULL, 0, NULL) >= 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}
