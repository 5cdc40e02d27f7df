/*
 * TEST-ONLY: BSD kqueue emulated on Linux epoll, so that qloop's kqueue
 * backend builds and its tests run on Linux (meson -Dbackend=kqueue).
 * Never ship it: a BSD kernel is the only reference for kqueue.
 *
 * What is emulated, after FreeBSD's kevent(2):
 *  - kevent() applies the changelist first, in order.  A change that fails
 *    (or any change with EV_RECEIPT) is reported as an EV_ERROR event with
 *    data = errno while the eventlist has room; with no room left the call
 *    returns -1/errno at once and the later changes are not applied.  When
 *    any EV_ERROR entry was written, kevent() returns their count without
 *    collecting events; with nevents == 0 it never waits.
 *  - EVFILT_READ and EVFILT_WRITE on fds, kept as two knotes per fd; the
 *    fd is registered with epoll for the union of its enabled knotes.
 *    READ: data = FIONREAD, EV_EOF on EPOLLRDHUP/EPOLLHUP.  WRITE: data =
 *    free space (sockets and pipes), EV_EOF on EPOLLHUP, and on EPOLLERR
 *    for non-sockets (a pipe whose reader went away).  EV_ADD on an
 *    existing knote updates it; EV_DELETE, EV_ENABLE or EV_DISABLE of a
 *    missing one is ENOENT; a closed fd is EBADF.  EV_ONESHOT, EV_DISPATCH.
 *  - EV_CLEAR maps to EPOLLET, but only when every enabled knote of the
 *    fd has it: an fd mixing clear and level knotes is reported
 *    level-triggered (a limitation: epoll's edge flag is per fd).  With
 *    EPOLLET, new data for the reader also re-reports a writable fd.
 *  - Regular files and directories, which epoll refuses, are always ready
 *    as on a BSD (READ data = bytes left to the end of the file).
 *  - EVFILT_USER: any ident, NOTE_TRIGGER, NOTE_FFNOP/FFAND/FFOR/FFCOPY on
 *    the low 24 fflags bits, data copied from the last change, EV_CLEAR
 *    resetting the trigger after delivery.  Triggering from another thread
 *    wakes a thread blocked in kevent(): every state change happens under
 *    a per-kqueue mutex, never held across the wait, and a trigger writes
 *    an eventfd that sits in the epoll set.
 *  - Timeouts: NULL blocks, {0, 0} polls, a timespec out of range is
 *    EINVAL; waits never end early (epoll_pwait2 where available, else
 *    milliseconds rounded up, and a wake-up that yields nothing waits on
 *    for the rest of the timeout).  EINTR is -1/EINTR; the changes stay
 *    applied.
 *  - close() removes knotes on a BSD.  Epoll keeps a registration as long
 *    as the file lives (a dup elsewhere), under the old fd number: each
 *    fd's registration carries a generation, every event is checked
 *    against the fd's identity (fstat dev/ino), and a registration that
 *    outlived its fd makes the emulation rebuild its epoll set and dup3()
 *    it onto the same number.  A knote whose fd was closed is dropped the
 *    next time the emulation looks at it, as the kernel would have done.
 *  - fork(): a kqueue is not inherited.  A pthread_atfork() child handler
 *    closes every emulated kqueue in the child and frees its state.
 *
 * Known limits: fflags on EV_EOF is EIO when epoll reports EPOLLERR, not
 * the socket's error: Linux reads SO_ERROR only by clearing it, which
 * would steal it from the program (a failed connect() would look fine).
 * Anonymous-inode fds (eventfd, timerfd, ...) share one identity, so one
 * closed and replaced by another at the same number between two looks is
 * caught only when epoll itself notices (ENOENT).  READ data on a
 * listening socket is 1, not the backlog length.  A knote is reported at
 * most once per kevent() call; when the eventlist fills up in the middle
 * of an fd, the rest waits for the next call.  One thread at a time may
 * wait on a given kqueue.  No EVFILT_TIMER, _SIGNAL, _PROC, _VNODE, ...
 * (EINVAL), no NOTE_LOWAT.  The kqueue fd is an epoll fd: close it with
 * kqueue_emul_close() (QL_KQ_CLOSE), not close(), or its state leaks
 * until the number is reused by another kqueue().
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/sockios.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sys/event.h"

#if defined(__GLIBC__) &&                                                  \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
#define HAVE_EPOLL_PWAIT2 1
#endif

#define WAKE_TAG UINT64_MAX
/* epoll events fetched per wait (the stack buffer). */
#define WAIT_BATCH 256
/* sync_fd(): epoll no longer holds the registration (the file was closed
 * and the number reused by a file of the same identity). */
#define LOST (-1)
/* Stand-in for the socket error on EV_EOF (see "Known limits"). */
#define EOF_ERROR EIO

/* The flags a knote keeps from the change that added it. */
#define KEPT_FLAGS (EV_CLEAR | EV_ONESHOT | EV_DISPATCH | EV_RECEIPT)

/* EVFILT_READ or EVFILT_WRITE on one fd. */
struct knote {
    unsigned char exists;
    unsigned char disabled;
    unsigned char spent;    /* always-ready EV_CLEAR knote, delivered */
    unsigned short flags;   /* KEPT_FLAGS */
    unsigned int sfflags;
    int64_t sdata;
    void *udata;
    uint64_t stamp;         /* the scan that last reported it */
};

struct fd_note {
    struct knote rd, wr;
    uint32_t gen;      /* tag of its epoll registration */
    uint32_t in_epoll; /* the registered epoll mask, 0 when not registered */
    int always;        /* epoll refused it (regular file): always ready */
    dev_t dev;         /* identity when the first knote was added */
    ino_t ino;
    mode_t mode;
};

struct user_note {
    uintptr_t ident;
    unsigned short flags;
    unsigned char disabled;
    unsigned char triggered;
    unsigned int sfflags;
    int64_t sdata;
    void *udata;
    uint64_t stamp;
};

/* An fd's epoll event that did not fit in the caller's eventlist. */
struct carry {
    uint64_t tag;
    uint32_t revents;
    int skip_read; /* the READ half went out already */
};

struct kq {
    int epfd; /* the kqueue's fd */
    int evfd; /* wakes a waiter on EVFILT_USER triggers */
    pthread_mutex_t lock;
    struct fd_note *fds;
    int nfds;
    int nalways; /* fds with the `always` flag */
    struct user_note *users;
    size_t nusers, capusers;
    struct carry *carry;
    size_t ncarry, capcarry;
    uint32_t next_gen;
    uint64_t scans;
    int need_rebuild;
    struct kq *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kq *registry;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* ---- registry and fork ------------------------------------------------ */

static void free_state(struct kq *q)
{
    free(q->fds);
    free(q->users);
    free(q->carry);
    free(q);
}

static void atfork_prepare(void) { pthread_mutex_lock(&registry_lock); }

static void atfork_parent(void) { pthread_mutex_unlock(&registry_lock); }

/* A kqueue is not inherited by the child: close them all.  Their locks may
 * be held by threads that do not exist here, so they are not touched. */
static void atfork_child(void)
{
    struct kq *q = registry;
    registry = NULL;
    while (q) {
        struct kq *next = q->next;
        close(q->epfd);
        close(q->evfd);
        free_state(q);
        q = next;
    }
    pthread_mutex_unlock(&registry_lock);
}

static void install_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* Unlink the state of `kq` from the registry; NULL if there is none.
 * Called with registry_lock held. */
static struct kq *unlink_state(int kq)
{
    for (struct kq **pp = &registry; *pp; pp = &(*pp)->next) {
        if ((*pp)->epfd == kq) {
            struct kq *q = *pp;
            *pp = q->next;
            return q;
        }
    }
    return NULL;
}

static struct kq *lookup(int kq)
{
    pthread_mutex_lock(&registry_lock);
    struct kq *q = registry;
    while (q && q->epfd != kq)
        q = q->next;
    pthread_mutex_unlock(&registry_lock);
    return q;
}

int kqueue(void)
{
    pthread_once(&atfork_once, install_atfork);
    struct kq *q = calloc(1, sizeof(*q));
    if (!q) {
        errno = ENOMEM;
        return -1;
    }
    q->next_gen = 1;
    q->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    q->epfd = q->evfd < 0 ? -1 : epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
    if (q->epfd < 0 || epoll_ctl(q->epfd, EPOLL_CTL_ADD, q->evfd, &ev) < 0) {
        int err = errno;
        if (q->epfd >= 0)
            close(q->epfd);
        if (q->evfd >= 0)
            close(q->evfd);
        free(q);
        errno = err;
        return -1;
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_mutex_lock(&registry_lock);
    /* A kqueue once closed with plain close() left its state behind. */
    struct kq *stale = unlink_state(q->epfd);
    q->next = registry;
    registry = q;
    pthread_mutex_unlock(&registry_lock);
    if (stale) {
        close(stale->evfd);
        pthread_mutex_destroy(&stale->lock);
        free_state(stale);
    }
    return q->epfd;
}

int kqueue_emul_close(int kq)
{
    pthread_mutex_lock(&registry_lock);
    struct kq *q = unlink_state(kq);
    pthread_mutex_unlock(&registry_lock);
    if (!q)
        return close(kq);
    close(q->evfd);
    pthread_mutex_destroy(&q->lock);
    free_state(q);
    return close(kq);
}

/* ---- fd knotes ------------------------------------------------------- */

static uint64_t make_tag(int fd, uint32_t gen)
{
    return (uint64_t)(uint32_t)fd | ((uint64_t)gen << 32);
}

static int fd_live(const struct fd_note *fn)
{
    return fn->rd.exists || fn->wr.exists;
}

static void wake(struct kq *q)
{
    uint64_t one = 1;
    /* EAGAIN: the counter is saturated, the waiter wakes anyway. */
    while (write(q->evfd, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
}

/* Forget every knote of `fd`: on a BSD they died when the fd was closed.
 * A registration epoll may still hold for the old file is no longer
 * reachable by fd; its generation gives it away if it ever reports. */
static void drop_fd(struct kq *q, int fd)
{
    struct fd_note *fn = &q->fds[fd];
    if (fn->always)
        q->nalways--;
    memset(fn, 0, sizeof(*fn));
}

static int grow_fds(struct kq *q, int fd)
{
    if (fd < q->nfds)
        return 0;
    int n = q->nfds ? q->nfds : 64;
    while (n <= fd)
        n = n > INT_MAX / 2 ? INT_MAX : n * 2;
    struct fd_note *fds = realloc(q->fds, sizeof(*fds) * (size_t)n);
    if (!fds)
        return ENOMEM;
    memset(fds + q->nfds, 0, sizeof(*fds) * (size_t)(n - q->nfds));
    q->fds = fds;
    q->nfds = n;
    return 0;
}

static uint32_t wanted_mask(const struct fd_note *fn)
{
    uint32_t want = 0;
    int all_clear = 1;
    if (fn->rd.exists && !fn->rd.disabled) {
        want |= EPOLLIN | EPOLLRDHUP;
        all_clear &= !!(fn->rd.flags & EV_CLEAR);
    }
    if (fn->wr.exists && !fn->wr.disabled) {
        want |= EPOLLOUT;
        all_clear &= !!(fn->wr.flags & EV_CLEAR);
    }
    if (want && all_clear)
        want |= EPOLLET;
    return want;
}

/* Bring epoll in line with the fd's knotes.  0, an errno, or LOST. */
static int sync_fd(struct kq *q, int fd)
{
    struct fd_note *fn = &q->fds[fd];
    uint32_t want = wanted_mask(fn);
    if (fn->always) {
        if (!fd_live(fn)) {
            fn->always = 0;
            q->nalways--;
        } else {
            wake(q); /* a waiter may have to report it now */
        }
        return 0;
    }
    if (want == fn->in_epoll)
        return 0;
    struct epoll_event ev = {.events = want, .data.u64 = make_tag(fd, fn->gen)};
    int op = !want ? EPOLL_CTL_DEL
                   : fn->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(q->epfd, op, fd, &ev) == 0) {
        fn->in_epoll = want;
        return 0;
    }
    int err = errno;
    if (op == EPOLL_CTL_ADD && err == EEXIST) {
        /* The same file, left registered under this number by a knote we
         * dropped (the fd was closed, then the file dup'ed back here). */
        if (epoll_ctl(q->epfd, EPOLL_CTL_MOD, fd, &ev) == 0) {
            fn->in_epoll = want;
            return 0;
        }
        err = errno;
    }
    if (op == EPOLL_CTL_ADD && err == EPERM &&
        (S_ISREG(fn->mode) || S_ISDIR(fn->mode))) {
        fn->always = 1;
        q->nalways++;
        wake(q);
        return 0;
    }
    if (op != EPOLL_CTL_ADD && err == ENOENT)
        return LOST;
    return err;
}

static int fd_change(struct kq *q, const struct kevent *kev)
{
    if (kev->ident > INT_MAX)
        return EBADF;
    int fd = (int)kev->ident;
    int retried = 0;
    struct stat st;
retry:
    if (fstat(fd, &st) < 0) {
        int err = errno;
        if (fd < q->nfds && fd_live(&q->fds[fd]))
            drop_fd(q, fd);
        return err;
    }
    struct fd_note *fn = fd < q->nfds ? &q->fds[fd] : NULL;
    if (fn && fd_live(fn) && (fn->dev != st.st_dev || fn->ino != st.st_ino))
        drop_fd(q, fd); /* closed and reused: its knotes died at close() */
    struct knote *kn = NULL;
    if (fn)
        kn = kev->filter == EVFILT_READ ? &fn->rd : &fn->wr;

    if (!kn || !kn->exists) {
        if (!(kev->flags & EV_ADD))
            return ENOENT;
        int err = grow_fds(q, fd);
        if (err)
            return err;
        fn = &q->fds[fd];
        kn = kev->filter == EVFILT_READ ? &fn->rd : &fn->wr;
        if (!fd_live(fn)) {
            memset(fn, 0, sizeof(*fn));
            fn->gen = q->next_gen++;
            if (q->next_gen == 0)
                q->next_gen = 1;
            fn->dev = st.st_dev;
            fn->ino = st.st_ino;
            fn->mode = st.st_mode;
        }
        *kn = (struct knote){
            .exists = 1,
            .disabled = !!(kev->flags & EV_DISABLE),
            .flags = kev->flags & KEPT_FLAGS,
            .sfflags = kev->fflags,
            .sdata = kev->data,
            .udata = kev->udata,
        };
        err = sync_fd(q, fd);
        if (err == LOST && !retried) {
            drop_fd(q, fd);
            retried = 1;
            goto retry;
        }
        if (err) {
            kn->exists = 0;
            if (!fd_live(fn))
                drop_fd(q, fd);
            return err == LOST ? ENOENT : err;
        }
        return 0;
    }

    struct knote saved = *kn;
    if (kev->flags & EV_DELETE) {
        kn->exists = 0;
    } else {
        if (kev->flags & EV_ENABLE)
            kn->disabled = 0;
        else if (kev->flags & EV_DISABLE)
            kn->disabled = 1;
        kn->udata = kev->udata;
        kn->sfflags = kev->fflags;
        kn->sdata = kev->data;
        kn->spent = 0;
    }
    int err = sync_fd(q, fd);
    if (err == LOST) {
        drop_fd(q, fd);
        if ((kev->flags & EV_ADD) && !(kev->flags & EV_DELETE) && !retried) {
            retried = 1;
            goto retry;
        }
        return ENOENT;
    }
    if (err) {
        *kn = saved;
        return err;
    }
    if (!fd_live(fn))
        drop_fd(q, fd);
    return 0;
}

/* ---- user knotes ------------------------------------------------------ */

static struct user_note *find_user(struct kq *q, uintptr_t ident)
{
    for (size_t i = 0; i < q->nusers; i++)
        if (q->users[i].ident == ident)
            return &q->users[i];
    return NULL;
}

static void user_fflags(struct user_note *un, unsigned int fflags)
{
    unsigned int v = fflags & NOTE_FFLAGSMASK;
    switch (fflags & NOTE_FFCTRLMASK) {
    case NOTE_FFAND:
        un->sfflags &= v;
        break;
    case NOTE_FFOR:
        un->sfflags |= v;
        break;
    case NOTE_FFCOPY:
        un->sfflags = v;
        break;
    default: /* NOTE_FFNOP */
        break;
    }
}

static int user_change(struct kq *q, const struct kevent *kev)
{
    struct user_note *un = find_user(q, kev->ident);
    if (!un) {
        if (!(kev->flags & EV_ADD))
            return ENOENT;
        if (q->nusers == q->capusers) {
            size_t cap = q->capusers ? q->capusers * 2 : 4;
            struct user_note *u = realloc(q->users, sizeof(*u) * cap);
            if (!u)
                return ENOMEM;
            q->users = u;
            q->capusers = cap;
        }
        un = &q->users[q->nusers++];
        *un = (struct user_note){
            .ident = kev->ident,
            .flags = kev->flags & KEPT_FLAGS,
            .disabled = !!(kev->flags & EV_DISABLE),
            .triggered = !!(kev->fflags & NOTE_TRIGGER),
            .sdata = kev->data,
            .udata = kev->udata,
        };
        user_fflags(un, kev->fflags);
    } else if (kev->flags & EV_DELETE) {
        *un = q->users[--q->nusers];
        return 0;
    } else {
        if (kev->flags & EV_ENABLE)
            un->disabled = 0;
        else if (kev->flags & EV_DISABLE)
            un->disabled = 1;
        un->udata = kev->udata;
        if (kev->fflags & NOTE_TRIGGER)
            un->triggered = 1;
        user_fflags(un, kev->fflags);
        un->sdata = kev->data;
        /* As FreeBSD's filt_usertouch(): EV_CLEAR in a change resets. */
        if (kev->flags & EV_CLEAR)
            un->triggered = 0;
    }
    if (un->triggered && !un->disabled)
        wake(q);
    return 0;
}

static int apply_change(struct kq *q, const struct kevent *kev)
{
    switch (kev->filter) {
    case EVFILT_READ:
    case EVFILT_WRITE:
        return fd_change(q, kev);
    case EVFILT_USER:
        return user_change(q, kev);
    default:
        return EINVAL;
    }
}

/* ---- collecting events ------------------------------------------------ */

/* Where a scan writes its events. */
struct out {
    struct kevent *list;
    int n, room;
    uint64_t stamp;
};

static int64_t readable_bytes(int fd, const struct fd_note *fn)
{
    if (S_ISREG(fn->mode)) {
        struct stat st;
        off_t pos = lseek(fd, 0, SEEK_CUR);
        if (fstat(fd, &st) < 0 || pos < 0 || st.st_size < pos)
            return 0;
        return st.st_size - pos;
    }
    int v;
    /* FIONREAD fails on a listening socket: one connection at least. */
    if (ioctl(fd, FIONREAD, &v) < 0)
        return 1;
    return v;
}

static int64_t writable_space(int fd, const struct fd_note *fn)
{
    int size, used;
    if (S_ISSOCK(fn->mode)) {
        socklen_t len = sizeof(size);
        if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &len) < 0 ||
            ioctl(fd, SIOCOUTQ, &used) < 0)
            return 0;
    } else if (S_ISFIFO(fn->mode)) {
        size = fcntl(fd, F_GETPIPE_SZ);
        if (size < 0 || ioctl(fd, FIONREAD, &used) < 0)
            return 0;
    } else {
        return 0;
    }
    return size > used ? size - used : 0;
}

/* After a knote went out: EV_ONESHOT deletes it, EV_DISPATCH disables it,
 * EV_CLEAR on an always-ready fd spends it. */
static void delivered(struct kq *q, int fd, struct knote *kn)
{
    if (kn->flags & EV_ONESHOT)
        kn->exists = 0;
    else if (kn->flags & EV_DISPATCH)
        kn->disabled = 1;
    else if ((kn->flags & EV_CLEAR) && q->fds[fd].always)
        kn->spent = 1;
    if (kn->flags & (EV_ONESHOT | EV_DISPATCH)) {
        if (sync_fd(q, fd) == LOST || !fd_live(&q->fds[fd]))
            drop_fd(q, fd);
    }
}

static void emit(struct out *o, uintptr_t ident, short filter,
                 unsigned short flags, unsigned int fflags, int64_t data,
                 void *udata)
{
    struct kevent *ev = &o->list[o->n++];
    EV_SET(ev, ident, filter, flags, fflags, data, udata);
}

static int knote_wants(const struct knote *kn, const struct out *o)
{
    return kn->exists && !kn->disabled && !kn->spent && kn->stamp != o->stamp;
}

/* Translate one epoll event of an fd into its knotes' events.  Returns 1
 * when the eventlist filled up before the fd was done; *skip_read then
 * says whether the READ half went out. */
static int deliver_fd(struct kq *q, struct out *o, uint64_t tag,
                      uint32_t revents, int *skip_read, int fresh)
{
    int fd = (int)(uint32_t)tag;
    uint32_t gen = (uint32_t)(tag >> 32);
    struct fd_note *fn = fd < q->nfds ? &q->fds[fd] : NULL;
    if (!fn || !fd_live(fn) || fn->gen != gen || fn->always) {
        /* A registration we no longer know: only a fresh event proves it
         * is still in the epoll set (a carried one was fetched before). */
        if (fresh && !(fn && fn->gen == gen && fn->in_epoll == 0))
            q->need_rebuild = 1;
        return 0;
    }
    if (fn->in_epoll == 0)
        return 0; /* disabled after the event was fetched */
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_dev != fn->dev || st.st_ino != fn->ino) {
        /* The fd was closed (and maybe reused) behind our back: a BSD
         * removed its knotes then.  Its registration lives on in a dup. */
        drop_fd(q, fd);
        q->need_rebuild = 1;
        return 0;
    }

    struct knote *kn = &fn->rd;
    if (!*skip_read && knote_wants(kn, o) &&
        (revents & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        if (o->n == o->room)
            return 1;
        unsigned short flags = kn->flags;
        unsigned int fflags = 0;
        if (revents & (EPOLLRDHUP | EPOLLHUP)) {
            flags |= EV_EOF;
            if (revents & EPOLLERR)
                fflags = EOF_ERROR;
        }
        emit(o, (uintptr_t)fd, EVFILT_READ, flags, fflags,
             readable_bytes(fd, fn), kn->udata);
        kn->stamp = o->stamp;
        delivered(q, fd, kn);
        if (!fd_live(fn) || fn->gen != gen)
            return 0;
    }
    *skip_read = 1;

    kn = &fn->wr;
    if (knote_wants(kn, o) && (revents & (EPOLLOUT | EPOLLHUP | EPOLLERR))) {
        if (o->n == o->room)
            return 1;
        unsigned short flags = kn->flags;
        unsigned int fflags = 0;
        int sock = S_ISSOCK(fn->mode);
        if ((revents & EPOLLHUP) || ((revents & EPOLLERR) && !sock)) {
            flags |= EV_EOF;
            if ((revents & EPOLLERR) && sock)
                fflags = EOF_ERROR;
        }
        emit(o, (uintptr_t)fd, EVFILT_WRITE, flags, fflags,
             writable_space(fd, fn), kn->udata);
        kn->stamp = o->stamp;
        delivered(q, fd, kn);
    }
    return 0;
}

static int push_carry(struct kq *q, uint64_t tag, uint32_t revents,
                      int skip_read)
{
    if (q->ncarry == q->capcarry) {
        size_t cap = q->capcarry ? q->capcarry * 2 : 16;
        struct carry *c = realloc(q->carry, sizeof(*c) * cap);
        if (!c)
            return ENOMEM;
        q->carry = c;
        q->capcarry = cap;
    }
    q->carry[q->ncarry++] = (struct carry){tag, revents, skip_read};
    return 0;
}

static void deliver_carry(struct kq *q, struct out *o)
{
    size_t i = 0;
    while (i < q->ncarry) {
        struct carry *c = &q->carry[i];
        if (deliver_fd(q, o, c->tag, c->revents, &c->skip_read, 0))
            break;
        i++;
    }
    if (i > 0) {
        memmove(q->carry, q->carry + i, (q->ncarry - i) * sizeof(*q->carry));
        q->ncarry -= i;
    }
}

static void deliver_users(struct kq *q, struct out *o)
{
    for (size_t i = 0; i < q->nusers && o->n < o->room; i++) {
        struct user_note *un = &q->users[i];
        if (!un->triggered || un->disabled || un->stamp == o->stamp)
            continue;
        emit(o, un->ident, EVFILT_USER, un->flags, un->sfflags, un->sdata,
             un->udata);
        un->stamp = o->stamp;
        if (un->flags & EV_CLEAR)
            un->triggered = 0;
        if (un->flags & EV_ONESHOT) {
            *un = q->users[--q->nusers];
            i--;
        } else if (un->flags & EV_DISPATCH) {
            un->disabled = 1;
        }
    }
}

static void deliver_always(struct kq *q, struct out *o)
{
    for (int fd = 0; q->nalways > 0 && fd < q->nfds && o->n < o->room;
         fd++) {
        struct fd_note *fn = &q->fds[fd];
        if (!fn->always)
            continue;
        struct stat st;
        if (fstat(fd, &st) < 0 || st.st_dev != fn->dev ||
            st.st_ino != fn->ino) {
            drop_fd(q, fd);
            continue;
        }
        struct knote *kn = &fn->rd;
        if (knote_wants(kn, o)) {
            emit(o, (uintptr_t)fd, EVFILT_READ, kn->flags, 0,
                 readable_bytes(fd, fn), kn->udata);
            kn->stamp = o->stamp;
            delivered(q, fd, kn);
        }
        kn = &fn->wr;
        if (fn->always && knote_wants(kn, o) && o->n < o->room) {
            emit(o, (uintptr_t)fd, EVFILT_WRITE, kn->flags, 0, 0, kn->udata);
            kn->stamp = o->stamp;
            delivered(q, fd, kn);
        }
    }
}

/* A new epoll set with the eventfd and every registration we know of,
 * dup3()ed onto the kqueue's number: the only way to be rid of one that
 * outlived its fd.  On failure the old set stays and we try again later. */
static void rebuild(struct kq *q)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, q->evfd, &ev) < 0) {
        close(ep);
        return;
    }
    for (int fd = 0; fd < q->nfds; fd++) {
        struct fd_note *fn = &q->fds[fd];
        if (!fn->in_epoll)
            continue;
        struct stat st;
        ev.events = fn->in_epoll;
        ev.data.u64 = make_tag(fd, fn->gen);
        if (fstat(fd, &st) < 0 || st.st_dev != fn->dev ||
            st.st_ino != fn->ino ||
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            drop_fd(q, fd); /* closed behind our back */
    }
    if (dup3(ep, q->epfd, O_CLOEXEC) < 0) {
        close(ep);
        return;
    }
    close(ep);
    q->need_rebuild = 0;
}

static void drain_eventfd(struct kq *q)
{
    uint64_t count;
    while (read(q->evfd, &count, sizeof(count)) < 0 && errno == EINTR) {
    }
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#ifdef HAVE_EPOLL_PWAIT2
static int pwait2_usable = 1;
#endif

/* epoll_wait for `timeout_ns` (< 0: forever), never shorter. */
static int wait_epoll(int epfd, struct epoll_event *evs, int max,
                      int64_t timeout_ns)
{
#ifdef HAVE_EPOLL_PWAIT2
    if (pwait2_usable) {
        struct timespec ts, *tsp = NULL;
        if (timeout_ns >= 0) {
            ts.tv_sec = timeout_ns / 1000000000;
            ts.tv_nsec = timeout_ns % 1000000000;
            tsp = &ts;
        }
        int n = epoll_pwait2(epfd, evs, max, tsp, NULL);
        if (n >= 0 || errno != ENOSYS)
            return n;
        pwait2_usable = 0;
    }
#endif
    int ms;
    if (timeout_ns < 0)
        ms = -1;
    else if (timeout_ns >= (int64_t)INT_MAX * 1000000)
        ms = INT_MAX;
    else
        ms = (int)((timeout_ns + 999999) / 1000000);
    return epoll_wait(epfd, evs, max, ms);
}

static int scan(struct kq *q, struct kevent *list, int nevents,
                const struct timespec *timeout)
{
    int64_t deadline = -1;
    if (timeout) {
        if (timeout->tv_sec < 0 || timeout->tv_nsec < 0 ||
            timeout->tv_nsec >= 1000000000) {
            errno = EINVAL;
            return -1;
        }
        if (timeout->tv_sec >= INT64_MAX / 1000000000 / 2)
            timeout = NULL; /* centuries: forever */
        else
            deadline = mono_ns() + (int64_t)timeout->tv_sec * 1000000000 +
                       timeout->tv_nsec;
    }
    struct epoll_event evs[WAIT_BATCH];
    for (;;) {
        struct out o = {.list = list, .room = nevents};
        pthread_mutex_lock(&q->lock);
        o.stamp = ++q->scans;
        deliver_carry(q, &o);
        deliver_users(q, &o);
        deliver_always(q, &o);
        pthread_mutex_unlock(&q->lock);
        if (o.n == o.room)
            return o.n;

        int64_t wait_ns = -1;
        if (o.n > 0)
            wait_ns = 0;
        else if (timeout) {
            wait_ns = deadline - mono_ns();
            if (wait_ns < 0)
                wait_ns = 0;
        }
        int max = o.room - o.n;
        int r = wait_epoll(q->epfd, evs, max < WAIT_BATCH ? max : WAIT_BATCH,
                           wait_ns);
        if (r < 0) {
            if (o.n > 0)
                return o.n;
            return -1; /* errno from epoll: EINTR, ... */
        }

        pthread_mutex_lock(&q->lock);
        int woken = 0;
        for (int i = 0; i < r; i++) {
            if (evs[i].data.u64 == WAKE_TAG) {
                drain_eventfd(q);
                woken = 1;
                continue;
            }
            int skip_read = 0;
            if (o.n == o.room ||
                deliver_fd(q, &o, evs[i].data.u64, evs[i].events, &skip_read,
                           1)) {
                /* Out of room: the rest goes out with the next call.  On
                 * ENOMEM it is lost, which only edge-triggered knotes
                 * would notice. */
                push_carry(q, evs[i].data.u64, evs[i].events, skip_read);
            }
        }
        if (woken) {
            deliver_users(q, &o);
            deliver_always(q, &o);
        }
        if (q->need_rebuild)
            rebuild(q);
        pthread_mutex_unlock(&q->lock);
        if (o.n > 0)
            return o.n;
        /* Nothing for the caller (stale or filtered events): wait on. */
        if (timeout && mono_ns() >= deadline)
            return 0;
    }
}

int kevent(int kq, const struct kevent *changelist, int nchanges,
           struct kevent *eventlist, int nevents,
           const struct timespec *timeout)
{
    if (nchanges < 0 || nevents < 0) {
        errno = EINVAL;
        return -1;
    }
    if ((nchanges > 0 && !changelist) || (nevents > 0 && !eventlist)) {
        errno = EFAULT;
        return -1;
    }
    struct kq *q = lookup(kq);
    if (!q) {
        errno = EBADF;
        return -1;
    }

    int nerrors = 0;
    pthread_mutex_lock(&q->lock);
    for (int i = 0; i < nchanges; i++) {
        /* A copy: the eventlist may be the changelist. */
        struct kevent kev = changelist[i];
        if (kev.filter == 0)
            continue;
        kev.flags &= ~EV_SYSFLAGS;
        int err = apply_change(q, &kev);
        if (err || (kev.flags & EV_RECEIPT)) {
            if (nevents == 0) {
                pthread_mutex_unlock(&q->lock);
                if (!err)
                    return 0;
                errno = err;
                return -1;
            }
            kev.flags = EV_ERROR;
            kev.data = err;
            eventlist[nerrors++] = kev;
            nevents--;
        }
    }
    pthread_mutex_unlock(&q->lock);
    if (nerrors)
        return nerrors;
    if (nevents == 0)
        return 0;
    return scan(q, eventlist, nevents, timeout);
}
