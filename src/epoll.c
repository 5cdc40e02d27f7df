/*
 * The epoll backend (Linux).
 *
 * Quirks worth knowing:
 *  - epoll registers an (fd number, open file description) pair.  Closing
 *    the fd removes the registration only when it was the last reference
 *    to the description; a dup() elsewhere keeps it reporting under the
 *    old number, and nothing can remove it by fd any more.  Events carry a
 *    generation in the upper half of data.u64 so the core drops them, and
 *    the core asks for a rebuild when they persist.
 *  - MOD on an fd the kernel already dropped (closed, the number reused)
 *    fails with ENOENT: retry as ADD.  DEL after such a close fails with
 *    EBADF or ENOENT: the registration is gone, which is what we wanted.
 *  - EPOLLERR and EPOLLHUP are always reported, whatever the interest.
 *  - epoll_wait() takes milliseconds; round up, or a timer due in 0.4 ms
 *    makes the loop spin with zero timeouts.  epoll_pwait2() (Linux 5.11)
 *    takes a timespec and is used when the kernel has it.
 *  - An epoll fd survives fork() and the child shares the instance with
 *    the parent: the child must build its own before touching interest.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "backend.h"
#include "loop_internal.h"

#define MAX_EVENTS 1024
#define WAKEUP_TAG UINT64_MAX

struct ql_backend {
    int epfd;
    int wakeup_fd; /* eventfd */
    struct epoll_event events[MAX_EVENTS];
};

/* 1 until epoll_pwait2 turns out not to exist (old kernel, seccomp). */
static int pwait2_usable = 1;

const char *ql_backend_name(void) { return "epoll"; }

static uint32_t to_epoll(unsigned events)
{
    return ((events & QL_READABLE) ? EPOLLIN : 0) |
           ((events & QL_WRITABLE) ? EPOLLOUT : 0);
}

static unsigned from_epoll(uint32_t ev)
{
    return ((ev & (EPOLLIN | EPOLLPRI)) ? QL_READABLE : 0) |
           ((ev & EPOLLOUT) ? QL_WRITABLE : 0) |
           ((ev & EPOLLERR) ? QL_ERROR : 0) |
           ((ev & (EPOLLHUP | EPOLLRDHUP)) ? QL_HANGUP : 0);
}

static int add_wakeup(int epfd, int wakeup_fd)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKEUP_TAG};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, wakeup_fd, &ev) < 0 ? -errno : 0;
}

/* A new epoll instance holding the wakeup fd and every active watcher. */
static int build_epoll(ql_loop *loop, int wakeup_fd)
{
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return -errno;
    int rc = add_wakeup(epfd, wakeup_fd);
    for (uint32_t fd = 0; rc == 0 && fd < loop->nwatchers; fd++) {
        ql_io *io = loop->watchers[fd];
        if (!io || !io->active)
            continue;
        struct epoll_event ev = {
            .events = to_epoll(io->events),
            .data.u64 = (uint64_t)(uint32_t)io->fd | ((uint64_t)io->gen << 32),
        };
        /* A watcher whose fd was closed behind our back stays in the table
         * until stopped; it simply gets no events. */
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, io->fd, &ev) < 0 &&
            errno != EBADF && errno != EPERM)
            rc = -errno;
    }
    if (rc < 0) {
        close(epfd);
        return rc;
    }
    return epfd;
}

int ql__backend_init(ql_loop *loop)
{
    struct ql_backend *b = malloc(sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->wakeup_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (b->wakeup_fd < 0) {
        int rc = -errno;
        free(b);
        return rc;
    }
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    int rc = b->epfd < 0 ? -errno : add_wakeup(b->epfd, b->wakeup_fd);
    if (rc < 0) {
        if (b->epfd >= 0)
            close(b->epfd);
        close(b->wakeup_fd);
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
    close(b->epfd);
    close(b->wakeup_fd);
    free(b);
    loop->backend = NULL;
}

/* A MOD verifies a parked registration: ENOENT when the kernel dropped it
 * with its file, and we ADD.  It costs less than the DEL and ADD it
 * replaces (no epitem freed and allocated): a socket waited on again and
 * again (sock_recv in a loop) costs one epoll_ctl per wait, not two. */
const int ql__backend_parks = 1;

int ql__backend_modify(ql_loop *loop, ql_io *io, unsigned old_events,
                       unsigned new_events)
{
    struct ql_backend *b = loop->backend;
    struct epoll_event ev = {
        .events = to_epoll(new_events),
        .data.u64 = (uint64_t)(uint32_t)io->fd | ((uint64_t)io->gen << 32),
    };
    if (old_events == 0 && new_events == 0)
        return 0;
    if (new_events == 0) {
        if (epoll_ctl(b->epfd, EPOLL_CTL_DEL, io->fd, &ev) < 0 &&
            errno != EBADF && errno != ENOENT)
            return -errno;
        return 0;
    }
    int op = old_events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(b->epfd, op, io->fd, &ev) == 0)
        return 0;
    if (op == EPOLL_CTL_MOD && errno == ENOENT)
        op = EPOLL_CTL_ADD; /* closed and reused behind our back */
    else if (op == EPOLL_CTL_ADD && errno == EEXIST)
        op = EPOLL_CTL_MOD; /* a registration left behind by a dup */
    else
        return -errno;
    return epoll_ctl(b->epfd, op, io->fd, &ev) < 0 ? -errno : 0;
}

int ql__backend_wait(ql_loop *loop, int64_t timeout_ns)
{
    struct ql_backend *b = loop->backend;
    int n;
#ifdef QL_HAVE_EPOLL_PWAIT2
    /* Only a positive timeout needs the timespec; 0 and "forever" are
     * exact in milliseconds and epoll_wait copies nothing in. */
    if (timeout_ns > 0 && pwait2_usable) {
        struct timespec ts, *tsp = NULL;
        if (timeout_ns >= 0) {
            ts.tv_sec = timeout_ns / 1000000000;
            ts.tv_nsec = timeout_ns % 1000000000;
            tsp = &ts;
        }
        n = epoll_pwait2(b->epfd, b->events, MAX_EVENTS, tsp, NULL);
        if (n >= 0)
            return n;
        if (errno != ENOSYS)
            return -errno;
        pwait2_usable = 0;
    }
#endif
    int ms;
    if (timeout_ns < 0)
        ms = -1;
    else if (timeout_ns >= (int64_t)INT32_MAX * 1000000)
        ms = INT32_MAX;
    else
        ms = (int)((timeout_ns + 999999) / 1000000);
    n = epoll_wait(b->epfd, b->events, MAX_EVENTS, ms);
    return n < 0 ? -errno : n;
}

void ql__backend_dispatch(ql_loop *loop, int n)
{
    struct ql_backend *b = loop->backend;
    for (int i = 0; i < n; i++) {
        uint64_t data = b->events[i].data.u64;
        if (data == WAKEUP_TAG) {
            uint64_t count;
            /* Only drains: the core already looked at its pending flag. */
            while (read(b->wakeup_fd, &count, sizeof(count)) < 0 &&
                   errno == EINTR) {
            }
            continue;
        }
        ql__io_dispatch(loop, (int)(uint32_t)data, (uint32_t)(data >> 32),
                        from_epoll(b->events[i].events));
        if (loop->broken)
            return;
    }
}

int ql__backend_reinit(ql_loop *loop, int after_fork)
{
    struct ql_backend *b = loop->backend;
    if (after_fork) {
        /* The parent owns the eventfd we inherited; posters in the parent
         * must not wake us, nor we them. */
        int wfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (wfd < 0)
            return -errno;
        close(b->wakeup_fd);
        b->wakeup_fd = wfd;
    }
    /* Posters only ever touch the eventfd, so replacing the epoll fd
     * needs no care about its number. */
    int epfd = build_epoll(loop, b->wakeup_fd);
    if (epfd < 0)
        return epfd;
    close(b->epfd);
    b->epfd = epfd;
    return 0;
}

int ql__backend_wakeup(ql_loop *loop)
{
    struct ql_backend *b = loop->backend;
    uint64_t one = 1;
    for (;;) {
        if (write(b->wakeup_fd, &one, sizeof(one)) >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        /* EAGAIN: the counter is saturated, the loop will wake anyway. */
        return errno == EAGAIN ? 0 : -errno;
    }
}
