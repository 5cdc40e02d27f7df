/*
 * fd watchers: readable, writable and hang-up on pipes and socketpairs,
 * interest changes, one watcher per fd, removal of another watcher inside
 * the same batch, closed and reused fds, ql_loop_io_count.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "qloop_check.h"

typedef struct watch {
    ql_io io;
    int calls;
    unsigned last_events;
    unsigned all_events;
    int drain; /* read everything when readable */
    long last_read; /* what the drain returned: bytes, 0 on EOF, -errno */
} watch;

static void watch_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    (void)loop;
    watch *w = io->data;
    ck_assert_ptr_eq(&w->io, io);
    w->calls++;
    w->last_events = events;
    w->all_events |= events;
    if (w->drain && (events & (QL_READABLE | QL_HANGUP)))
        w->last_read = ql_test_drain(io->fd);
}

static void watch_init(watch *w, int fd, int drain)
{
    *w = (watch){.drain = drain, .last_read = -1};
    ql_io_init(&w->io, fd, watch_cb, w);
}

static void close_pair(int fds[2])
{
    close(fds[0]);
    close(fds[1]);
}

START_TEST(io_pipe_readable)
{
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    watch w;
    watch_init(&w, p[0], 1);
    ck_assert_int_eq(ql_io_start(loop, &w.io, QL_READABLE), 0);
    ck_assert(ql_io_active(&w.io));
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 0);
    ql_test_write_byte(p[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 1);
    ck_assert_uint_eq(w.last_events, QL_READABLE);
    ck_assert_int_eq(w.last_read, 1);
    /* drained: level-triggered, no more calls */
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 1);
    /* not drained: level-triggered, called on every iteration */
    w.drain = 0;
    ql_test_write_byte(p[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 3);
    ck_assert_int_eq(ql_io_stop(loop, &w.io), 0);
    ck_assert(!ql_io_active(&w.io));
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 3);
    close_pair(p);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_pipe_writable)
{
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    watch w;
    watch_init(&w, p[1], 0);
    ck_assert_int_eq(ql_io_start(loop, &w.io, QL_WRITABLE), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 1);
    ck_assert_uint_eq(w.last_events, QL_WRITABLE);
    /* Fill the pipe: no longer writable. */
    char buf[4096] = {0};
    while (write(p[1], buf, sizeof buf) > 0)
        ;
    ck_assert_int_eq(errno, EAGAIN);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 1);
    /* Drain it: writable again. */
    ql_test_drain(p[0]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 2);
    ck_assert_uint_eq(w.last_events, QL_WRITABLE);
    ck_assert_int_eq(ql_io_stop(loop, &w.io), 0);
    close_pair(p);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_socketpair_read_write)
{
    ql_loop *loop = ql_test_loop_new();
    int s[2];
    ql_test_socketpair(s);
    watch a, b;
    watch_init(&a, s[0], 0);
    watch_init(&b, s[1], 1);
    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE | QL_WRITABLE), 0);
    ck_assert_int_eq(ql_io_start(loop, &b.io, QL_READABLE), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_uint_eq(a.last_events, QL_WRITABLE);
    ck_assert_int_eq(b.calls, 0);
    ck_assert_int_eq(write(s[0], "hello", 5), 5);
    ql_test_write_byte(s[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 2);
    ck_assert_uint_eq(a.last_events, QL_READABLE | QL_WRITABLE);
    ck_assert_int_eq(b.calls, 1);
    ck_assert_uint_eq(b.last_events, QL_READABLE);
    ck_assert_int_eq(b.last_read, 5);
    ck_assert_int_eq(ql_io_stop(loop, &a.io), 0);
    ck_assert_int_eq(ql_io_stop(loop, &b.io), 0);
    close_pair(s);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_hangup_socketpair)
{
    /* Closing the peer: QL_HANGUP and/or readable, and the read sees EOF. */
    ql_loop *loop = ql_test_loop_new();
    int s[2];
    ql_test_socketpair(s);
    watch a;
    watch_init(&a, s[0], 1);
    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 0);
    close(s[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_msg(a.last_events & (QL_HANGUP | QL_READABLE),
                  "events 0x%x", a.last_events);
    ck_assert_uint_eq(a.last_events & QL_WRITABLE, 0);
    ck_assert_int_eq(a.last_read, 0);
    ck_assert_int_eq(ql_io_stop(loop, &a.io), 0);
    close(s[0]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_hangup_socketpair_write_interest)
{
    /* Interest in writing only: the hang-up is still passed. */
    ql_loop *loop = ql_test_loop_new();
    int s[2];
    ql_test_socketpair(s);
    watch a;
    watch_init(&a, s[0], 0);
    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_WRITABLE), 0);
    close(s[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_msg(a.last_events & (QL_HANGUP | QL_ERROR), "events 0x%x",
                  a.last_events);
    ck_assert_uint_eq(a.last_events & QL_READABLE, 0);
    ck_assert_int_eq(write(s[0], "x", 1), -1);
    ck_assert_int_eq(errno, EPIPE);
    ck_assert_int_eq(ql_io_stop(loop, &a.io), 0);
    close(s[0]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_hangup_pipe)
{
    /* The writer closes: the reader sees hang-up and/or readable, EOF. */
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    watch r;
    watch_init(&r, p[0], 1);
    ck_assert_int_eq(ql_io_start(loop, &r.io, QL_READABLE), 0);
    ql_test_write_byte(p[1]);
    close(p[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(r.calls, 1);
    ck_assert(r.last_events & QL_READABLE); /* data was there */
    ck_assert_int_eq(r.last_read, 1);        /* then EOF */
    r.last_read = -1;
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(r.calls, 2);
    ck_assert_msg(r.last_events & (QL_HANGUP | QL_READABLE), "events 0x%x",
                  r.last_events);
    ck_assert_int_eq(r.last_read, 0);
    ck_assert_int_eq(ql_io_stop(loop, &r.io), 0);
    close(p[0]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_pipe_reader_closed)
{
    /* The reader closes: the writer's watcher hears of it. */
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    watch w;
    watch_init(&w, p[1], 0);
    char buf[4096] = {0};
    while (write(p[1], buf, sizeof buf) > 0)
        ; /* full: not writable, so only the close can wake us */
    ck_assert_int_eq(ql_io_start(loop, &w.io, QL_WRITABLE), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 0);
    close(p[0]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 1);
    ck_assert_msg(w.last_events & (QL_ERROR | QL_HANGUP), "events 0x%x",
                  w.last_events);
    ck_assert_int_eq(write(p[1], "x", 1), -1);
    ck_assert_int_eq(errno, EPIPE);
    ck_assert_int_eq(ql_io_stop(loop, &w.io), 0);
    close(p[1]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_interest_changes)
{
    /* read -> write -> both -> read -> 0 on one socket that is writable
     * and, later, readable: each call sees exactly the current interest. */
    ql_loop *loop = ql_test_loop_new();
    int s[2];
    ql_test_socketpair(s);
    watch a;
    watch_init(&a, s[0], 0);

    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE), 0);
    ck_assert_uint_eq(a.io.events, QL_READABLE);
    ck_assert_uint_eq(ql_loop_io_count(loop), 1);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 0); /* writable, but not asked for */

    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_WRITABLE), 0);
    ck_assert_uint_eq(a.io.events, QL_WRITABLE);
    ck_assert_uint_eq(ql_loop_io_count(loop), 1);
    ql_test_write_byte(s[1]); /* now readable too */
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_uint_eq(a.last_events, QL_WRITABLE);

    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE | QL_WRITABLE), 0);
    ck_assert_uint_eq(a.io.events, QL_READABLE | QL_WRITABLE);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 2);
    ck_assert_uint_eq(a.last_events, QL_READABLE | QL_WRITABLE);

    /* the same interest again: no change */
    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE | QL_WRITABLE), 0);
    ck_assert_uint_eq(ql_loop_io_count(loop), 1);

    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 3);
    ck_assert_uint_eq(a.last_events, QL_READABLE);

    ck_assert_int_eq(ql_io_start(loop, &a.io, 0), 0);
    ck_assert(!ql_io_active(&a.io));
    ck_assert_uint_eq(ql_loop_io_count(loop), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 3);

    /* and back on after 0 */
    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE), 0);
    ck_assert_uint_eq(ql_loop_io_count(loop), 1);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 4);
    ck_assert_uint_eq(a.last_events, QL_READABLE);
    ck_assert_int_eq(ql_io_stop(loop, &a.io), 0);
    /* stop twice is fine */
    ck_assert_int_eq(ql_io_stop(loop, &a.io), 0);
    ck_assert_uint_eq(ql_loop_io_count(loop), 0);
    close_pair(s);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct flipper {
    ql_io io;
    int calls;
    unsigned seen[8];
} flipper;

static void flipper_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    /* Changes its own interest from inside its callback. */
    flipper *f = io->data;
    f->seen[f->calls++] = events;
    switch (f->calls) {
    case 1:
        ck_assert_int_eq(ql_io_start(loop, io, QL_WRITABLE), 0);
        break;
    case 2:
        ck_assert_int_eq(ql_io_stop(loop, io), 0);
        break;
    default:
        break;
    }
}

START_TEST(io_interest_change_in_callback)
{
    ql_loop *loop = ql_test_loop_new();
    int s[2];
    ql_test_socketpair(s);
    flipper f = {.calls = 0};
    ql_io_init(&f.io, s[0], flipper_cb, &f);
    ql_test_write_byte(s[1]);
    ck_assert_int_eq(ql_io_start(loop, &f.io, QL_READABLE), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(f.calls, 2);
    ck_assert_uint_eq(f.seen[0], QL_READABLE);
    ck_assert_uint_eq(f.seen[1], QL_WRITABLE);
    ck_assert(!ql_io_active(&f.io));
    ck_assert_uint_eq(ql_loop_io_count(loop), 0);
    close_pair(s);
    ql_test_loop_free(loop);
}
END_TEST

typedef struct narrower {
    ql_io io;
    int calls;
    unsigned seen[4];
    struct narrower *other;
} narrower;

static void narrower_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    narrower *me = io->data;
    if (me->calls < 4)
        me->seen[me->calls] = events;
    me->calls++;
    narrower *o = me->other;
    if (o == NULL)
        return;
    /* Whichever runs first narrows the other's interest to writing; the
     * other's pending "readable" in this batch is no longer wanted. */
    me->other = NULL;
    o->other = NULL;
    ck_assert_int_eq(ql_io_start(loop, &o->io, QL_WRITABLE), 0);
}

START_TEST(io_interest_change_of_other_in_batch)
{
    ql_loop *loop = ql_test_loop_new();
    int sa[2], sb[2];
    ql_test_socketpair(sa);
    ql_test_socketpair(sb);
    narrower a = {.calls = 0}, b = {.calls = 0};
    a.other = &b;
    b.other = &a;
    ql_io_init(&a.io, sa[0], narrower_cb, &a);
    ql_io_init(&b.io, sb[0], narrower_cb, &b);
    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE), 0);
    ck_assert_int_eq(ql_io_start(loop, &b.io, QL_READABLE), 0);
    ql_test_write_byte(sa[1]);
    ql_test_write_byte(sb[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls + b.calls, 1);
    narrower *first = a.calls ? &a : &b, *second = a.calls ? &b : &a;
    ck_assert_uint_eq(first->seen[0], QL_READABLE);
    /* Next iteration: the narrowed one hears only of writability, though
     * its socket is still readable. */
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(second->calls, 1);
    ck_assert_uint_eq(second->seen[0], QL_WRITABLE);
    ck_assert_int_eq(ql_io_stop(loop, &a.io), 0);
    ck_assert_int_eq(ql_io_stop(loop, &b.io), 0);
    close_pair(sa);
    close_pair(sb);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_one_watcher_per_fd)
{
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    watch a, b;
    watch_init(&a, p[0], 1);
    watch_init(&b, p[0], 1);
    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE), 0);
    ck_assert_int_eq(ql_io_start(loop, &b.io, QL_READABLE), -EEXIST);
    ck_assert_int_eq(ql_io_start(loop, &b.io, QL_WRITABLE), -EEXIST);
    ck_assert(!ql_io_active(&b.io));
    ck_assert_uint_eq(ql_loop_io_count(loop), 1);
    /* a still works, b is never called */
    ql_test_write_byte(p[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(b.calls, 0);
    /* stopping b, never started, changes nothing */
    ck_assert_int_eq(ql_io_stop(loop, &b.io), 0);
    ck_assert(ql_io_active(&a.io));
    ql_test_write_byte(p[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 2);
    /* after a stops, b may take the fd */
    ck_assert_int_eq(ql_io_stop(loop, &a.io), 0);
    ck_assert_int_eq(ql_io_start(loop, &b.io, QL_READABLE), 0);
    ck_assert_int_eq(ql_io_start(loop, &a.io, QL_READABLE), -EEXIST);
    ql_test_write_byte(p[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(a.calls, 2);
    ck_assert_int_eq(b.calls, 1);
    ck_assert_int_eq(ql_io_stop(loop, &b.io), 0);
    close_pair(p);
    ql_test_loop_free(loop);
}
END_TEST

/* A fresh pipe whose read end has the number `fdnum`. */
static void pipe_at(int fdnum, int p[2])
{
    int np[2];
    ql_test_pipe(np);
    if (np[0] != fdnum) {
        ck_assert_int_eq(dup2(np[0], fdnum), fdnum);
        close(np[0]);
    }
    p[0] = fdnum;
    p[1] = np[1];
}

/* ---- removing another watcher in the same batch ------------------------- */

enum remove_mode {
    REMOVE_STOP,       /* stop the other */
    REMOVE_STOP_FREE,  /* stop it, close its fd, free its struct */
    REMOVE_STOP_REUSE, /* stop, close, and reuse struct and fd number */
    REMOVE_CLOSE_ONLY, /* close its fd, then stop it */
};

typedef struct rival {
    ql_io io;
    int calls;
    int reused_calls; /* calls after the struct was reused */
    int reused;
    int rfd, wfd;     /* its pipe */
    struct rival *other;
    enum remove_mode mode;
    ql_loop *loop;
} rival;

static rival *batch_winner;

static void rival_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    rival *me = io->data;
    (void)events;
    if (me->reused) {
        me->reused_calls++;
        ql_test_drain(io->fd);
        return;
    }
    me->calls++;
    ql_test_drain(io->fd);
    rival *o = me->other;
    if (o == NULL || !ql_io_active(&o->io))
        return;
    /* Whichever runs first removes the other, which was ready too. */
    batch_winner = me;
    me->other = NULL;
    o->other = NULL;
    switch (me->mode) {
    case REMOVE_STOP:
        ck_assert_int_eq(ql_io_stop(loop, &o->io), 0);
        break;
    case REMOVE_STOP_FREE:
        ck_assert_int_eq(ql_io_stop(loop, &o->io), 0);
        close(o->rfd);
        close(o->wfd);
        free(o);
        break;
    case REMOVE_STOP_REUSE: {
        ck_assert_int_eq(ql_io_stop(loop, &o->io), 0);
        int fdnum = o->rfd;
        close(o->rfd);
        close(o->wfd);
        int np[2];
        pipe_at(fdnum, np);
        o->rfd = np[0];
        o->wfd = np[1];
        o->reused = 1;
        /* the new fd is readable at once */
        ql_test_write_byte(o->wfd);
        ql_io_init(&o->io, fdnum, rival_cb, o);
        ck_assert_int_eq(ql_io_start(loop, &o->io, QL_READABLE), 0);
        break;
    }
    case REMOVE_CLOSE_ONLY:
        close(o->rfd);
        ck_assert_int_eq(ql_io_stop(loop, &o->io), 0);
        close(o->wfd);
        o->rfd = o->wfd = -1;
        break;
    }
}

static void run_remove_in_batch(enum remove_mode mode)
{
    ql_loop *loop = ql_test_loop_new();
    rival *r[2];
    batch_winner = NULL;
    for (int i = 0; i < 2; i++) {
        r[i] = calloc(1, sizeof(*r[i]));
        ck_assert_ptr_nonnull(r[i]);
        int p[2];
        ql_test_pipe(p);
        r[i]->rfd = p[0];
        r[i]->wfd = p[1];
        r[i]->mode = mode;
        ql_io_init(&r[i]->io, p[0], rival_cb, r[i]);
        ck_assert_int_eq(ql_io_start(loop, &r[i]->io, QL_READABLE), 0);
    }
    r[0]->other = r[1];
    r[1]->other = r[0];
    ql_test_write_byte(r[0]->wfd);
    ql_test_write_byte(r[1]->wfd);
    ck_assert_uint_eq(ql_loop_io_count(loop), 2);

    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);

    /* The loser may be freed: learn who won from the callback. */
    ck_assert_ptr_nonnull(batch_winner);
    ck_assert(batch_winner == r[0] || batch_winner == r[1]);
    rival *w = batch_winner, *loser = w == r[0] ? r[1] : r[0];
    ck_assert_int_eq(w->calls, 1);
    ql_stats st;
    ql_loop_stats(loop, &st);
    ck_assert_uint_eq(st.io_events, 1);
    if (mode != REMOVE_STOP_FREE) {
        ck_assert_int_eq(loser->calls, 0);
        ck_assert_int_eq(loser->reused_calls, 0);
    }

    switch (mode) {
    case REMOVE_STOP:
        ck_assert_uint_eq(ql_loop_io_count(loop), 1);
        ck_assert(!ql_io_active(&loser->io));
        /* still readable, but stopped: never called */
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
        ck_assert_int_eq(loser->calls, 0);
        close(loser->rfd);
        close(loser->wfd);
        free(loser);
        break;
    case REMOVE_STOP_FREE:
    case REMOVE_CLOSE_ONLY:
        ck_assert_uint_eq(ql_loop_io_count(loop), 1);
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
        if (mode == REMOVE_CLOSE_ONLY) {
            ck_assert_int_eq(loser->calls, 0);
            free(loser);
        }
        break;
    case REMOVE_STOP_REUSE:
        ck_assert_uint_eq(ql_loop_io_count(loop), 2);
        /* The new registration reports in the next poll. */
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
        ck_assert_int_eq(loser->calls, 0);
        ck_assert_int_eq(loser->reused_calls, 1);
        ck_assert_int_eq(ql_io_stop(loop, &loser->io), 0);
        close(loser->rfd);
        close(loser->wfd);
        free(loser);
        break;
    }
    ck_assert_int_eq(w->calls, 1);
    ck_assert_int_eq(ql_io_stop(loop, &w->io), 0);
    close(w->rfd);
    close(w->wfd);
    free(w);
    ck_assert_uint_eq(ql_loop_io_count(loop), 0);
    ql_test_loop_free(loop);
}

START_TEST(io_remove_other_in_batch_stop)
{
    run_remove_in_batch(REMOVE_STOP);
}
END_TEST

START_TEST(io_remove_other_in_batch_free)
{
    run_remove_in_batch(REMOVE_STOP_FREE);
}
END_TEST

START_TEST(io_remove_other_in_batch_reuse)
{
    run_remove_in_batch(REMOVE_STOP_REUSE);
}
END_TEST

START_TEST(io_remove_other_in_batch_close_first)
{
    run_remove_in_batch(REMOVE_CLOSE_ONLY);
}
END_TEST

/* ---- closed and reused fds ---------------------------------------------- */

START_TEST(io_fd_reused_after_stop)
{
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    int fdnum = p[0];
    watch old;
    watch_init(&old, fdnum, 1);
    ck_assert_int_eq(ql_io_start(loop, &old.io, QL_READABLE), 0);
    ql_test_write_byte(p[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(old.calls, 1);
    ck_assert_int_eq(ql_io_stop(loop, &old.io), 0);
    close_pair(p);

    int q[2];
    pipe_at(fdnum, q);
    watch fresh;
    watch_init(&fresh, fdnum, 1);
    ck_assert_int_eq(ql_io_start(loop, &fresh.io, QL_READABLE), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(fresh.calls, 0);
    ql_test_write_byte(q[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(fresh.calls, 1);
    ck_assert_int_eq(old.calls, 1);
    ck_assert_int_eq(ql_io_stop(loop, &fresh.io), 0);
    close_pair(q);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_fd_closed_behind_loop)
{
    /* The fd is closed while watched; ql_io_stop still returns 0, and a
     * new fd with the same number works with a new watcher. */
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    int fdnum = p[0];
    watch old;
    watch_init(&old, fdnum, 1);
    ck_assert_int_eq(ql_io_start(loop, &old.io, QL_READABLE), 0);
    ql_test_write_byte(p[1]);
    close_pair(p);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(old.calls, 0);
    ck_assert_int_eq(ql_io_stop(loop, &old.io), 0);
    ck_assert_uint_eq(ql_loop_io_count(loop), 0);

    int q[2];
    pipe_at(fdnum, q);
    watch fresh;
    watch_init(&fresh, fdnum, 1);
    ck_assert_int_eq(ql_io_start(loop, &fresh.io, QL_READABLE), 0);
    ql_test_write_byte(q[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(fresh.calls, 1);
    ck_assert_int_eq(old.calls, 0);
    ck_assert_int_eq(ql_io_stop(loop, &fresh.io), 0);
    close_pair(q);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_fd_closed_reused_then_stopped)
{
    /* Closed behind the loop's back and the number already reused by an
     * unrelated fd before the stop: the stop returns 0 and does not touch
     * the new file; a new watcher on the number gets only its events. */
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    int fdnum = p[0];
    watch old;
    watch_init(&old, fdnum, 1);
    ck_assert_int_eq(ql_io_start(loop, &old.io, QL_READABLE), 0);
    close_pair(p);
    int q[2];
    pipe_at(fdnum, q);
    ql_test_write_byte(q[1]);
    ck_assert_int_eq(ql_io_stop(loop, &old.io), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(old.calls, 0);
    watch fresh;
    watch_init(&fresh, fdnum, 1);
    ck_assert_int_eq(ql_io_start(loop, &fresh.io, QL_READABLE), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(fresh.calls, 1);
    ck_assert_int_eq(fresh.last_read, 1);
    ck_assert_int_eq(old.calls, 0);
    ck_assert_int_eq(ql_io_stop(loop, &fresh.io), 0);
    close_pair(q);
    ql_test_loop_free(loop);
}
END_TEST

static void stop_loop_timer_cb(ql_loop *loop, ql_timer *timer)
{
    (void)timer;
    ql_loop_stop(loop);
}

START_TEST(io_fd_closed_while_dup_alive)
{
    /* The watched fd is dup()ed, then closed behind the loop's back: the
     * file lives on, and (on epoll) so does the kernel registration under
     * the old number, which nothing can remove by fd.  The number is
     * reused for a new watcher.  When the old file becomes readable its
     * events must reach neither watcher, and the loop must not spin on
     * them. */
    ql_loop *loop = ql_test_loop_new();
    int p[2];
    ql_test_pipe(p);
    int fdnum = p[0];
    watch old;
    watch_init(&old, fdnum, 1);
    ck_assert_int_eq(ql_io_start(loop, &old.io, QL_READABLE), 0);
    int keep = dup(fdnum);
    ck_assert_int_ge(keep, 0);
    close(fdnum);
    ck_assert_int_eq(ql_io_stop(loop, &old.io), 0);

    int q[2];
    pipe_at(fdnum, q);
    watch fresh;
    watch_init(&fresh, fdnum, 0);
    ck_assert_int_eq(ql_io_start(loop, &fresh.io, QL_READABLE), 0);
    ql_test_write_byte(p[1]); /* the old file: readable via `keep` */

    ql_timer stop_timer;
    ql_timer_init(&stop_timer, stop_loop_timer_cb, NULL);
    ck_assert_int_eq(ql_timer_start(loop, &stop_timer,
                                    ql_loop_update_time(loop) + 100 * QL_MS),
                     0);
    ql_stats before, after;
    ql_loop_stats(loop, &before);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_DEFAULT), 0);
    ql_loop_stats(loop, &after);
    ck_assert_int_eq(old.calls, 0);
    ck_assert_int_eq(fresh.calls, 0);
    ck_assert_msg(after.iterations - before.iterations < 20,
                  "the loop spun %llu iterations on stale events in 100 ms",
                  (unsigned long long)(after.iterations - before.iterations));

    /* The new watcher still gets its own events. */
    fresh.drain = 1;
    ql_test_write_byte(q[1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(fresh.calls, 1);
    ck_assert_uint_eq(fresh.last_events, QL_READABLE);
    ck_assert_int_eq(old.calls, 0);
    ck_assert_int_eq(ql_io_stop(loop, &fresh.io), 0);
    close_pair(q);
    close(keep);
    close(p[1]);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_restart_after_stop)
{
    /* A stopped watcher gets nothing while its fd stays readable (epoll
     * keeps the registration parked until it reports an event), and
     * starting it again, with the same or another interest, works at once,
     * round after round. */
    ql_loop *loop = ql_test_loop_new();
    int s[2];
    ck_assert_int_eq(
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, s),
        0);
    watch w;
    watch_init(&w, s[0], 0);
    for (int round = 0; round < 3; round++) {
        ck_assert_int_eq(ql_io_start(loop, &w.io, QL_READABLE), 0);
        ql_test_write_byte(s[1]);
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
        ck_assert_int_eq(w.calls, 2 * round + 1);
        ck_assert_int_eq(ql_io_stop(loop, &w.io), 0);
        ck_assert_uint_eq(ql_loop_io_count(loop), 0);
        for (int i = 0; i < 3; i++)
            ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
        ck_assert_int_eq(w.calls, 2 * round + 1);
        ck_assert_int_eq(ql_io_start(loop, &w.io, QL_READABLE), 0);
        ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
        ck_assert_int_eq(w.calls, 2 * round + 2);
        ck_assert_uint_eq(w.last_events, QL_READABLE);
        ck_assert_int_eq(ql_test_drain(s[0]), 1);
        ck_assert_int_eq(ql_io_stop(loop, &w.io), 0);
    }
    ql_test_write_byte(s[1]);
    ck_assert_int_eq(ql_io_start(loop, &w.io, QL_WRITABLE), 0);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    ck_assert_int_eq(w.calls, 7);
    ck_assert_uint_eq(w.last_events, QL_WRITABLE);
    ck_assert_int_eq(ql_io_stop(loop, &w.io), 0);
    close_pair(s);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_many_fds)
{
    /* Enough watchers to grow the fd table several times. */
    enum { N = 300 };
    ql_loop *loop = ql_test_loop_new();
    int (*p)[2] = calloc(N, sizeof(*p));
    watch *w = calloc(N, sizeof(*w));
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(w);
    for (int i = 0; i < N; i++) {
        ql_test_pipe(p[i]);
        watch_init(&w[i], p[i][0], 1);
        ck_assert_int_eq(ql_io_start(loop, &w[i].io, QL_READABLE), 0);
        ck_assert_uint_eq(ql_loop_io_count(loop), (size_t)i + 1);
    }
    for (int i = 0; i < N; i += 2)
        ql_test_write_byte(p[i][1]);
    ck_assert_int_eq(ql_loop_run(loop, QL_RUN_NOWAIT), 0);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(w[i].calls, i % 2 == 0 ? 1 : 0);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(ql_io_stop(loop, &w[i].io), 0);
        ck_assert_uint_eq(ql_loop_io_count(loop), (size_t)(N - i - 1));
        close_pair(p[i]);
    }
    free(p);
    free(w);
    ql_test_loop_free(loop);
}
END_TEST

START_TEST(io_count)
{
    ql_loop *loop = ql_test_loop_new();
    int a[2], b[2];
    ql_test_pipe(a);
    ql_test_socketpair(b);
    watch wa, wb;
    watch_init(&wa, a[0], 1);
    watch_init(&wb, b[0], 1);
    ck_assert_uint_eq(ql_loop_io_count(loop), 0);
    /* start with 0 on an inactive watcher: nothing */
    ck_assert_int_eq(ql_io_start(loop, &wa.io, 0), 0);
    ck_assert_uint_eq(ql_loop_io_count(loop), 0);
    ck_assert_int_eq(ql_io_start(loop, &wa.io, QL_READABLE), 0);
    ck_assert_int_eq(ql_io_start(loop, &wb.io, QL_WRITABLE), 0);
    ck_assert_uint_eq(ql_loop_io_count(loop), 2);
    ck_assert_int_eq(ql_io_start(loop, &wb.io, QL_READABLE | QL_WRITABLE), 0);
    ck_assert_uint_eq(ql_loop_io_count(loop), 2);
    ck_assert_int_eq(ql_io_stop(loop, &wa.io), 0);
    ck_assert_uint_eq(ql_loop_io_count(loop), 1);
    ck_assert_int_eq(ql_io_stop(loop, &wa.io), 0);
    ck_assert_uint_eq(ql_loop_io_count(loop), 1);
    ck_assert_int_eq(ql_io_start(loop, &wb.io, 0), 0);
    ck_assert_uint_eq(ql_loop_io_count(loop), 0);
    /* Freeing the loop with a watcher still active is fine. */
    ck_assert_int_eq(ql_io_start(loop, &wa.io, QL_READABLE), 0);
    ql_test_loop_free(loop);
    close_pair(a);
    close_pair(b);
}
END_TEST

Suite *io_suite(void)
{
    Suite *s = suite_create("io");
    TCase *tc = tcase_create("readiness");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, io_pipe_readable);
    tcase_add_test(tc, io_pipe_writable);
    tcase_add_test(tc, io_socketpair_read_write);
    tcase_add_test(tc, io_hangup_socketpair);
    tcase_add_test(tc, io_hangup_socketpair_write_interest);
    tcase_add_test(tc, io_hangup_pipe);
    tcase_add_test(tc, io_pipe_reader_closed);
    suite_add_tcase(s, tc);

    tc = tcase_create("watchers");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, io_interest_changes);
    tcase_add_test(tc, io_interest_change_in_callback);
    tcase_add_test(tc, io_interest_change_of_other_in_batch);
    tcase_add_test(tc, io_one_watcher_per_fd);
    tcase_add_test(tc, io_remove_other_in_batch_stop);
    tcase_add_test(tc, io_remove_other_in_batch_free);
    tcase_add_test(tc, io_remove_other_in_batch_reuse);
    tcase_add_test(tc, io_remove_other_in_batch_close_first);
    tcase_add_test(tc, io_restart_after_stop);
    tcase_add_test(tc, io_many_fds);
    tcase_add_test(tc, io_count);
    suite_add_tcase(s, tc);

    tc = tcase_create("fd_reuse");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, io_fd_reused_after_stop);
    tcase_add_test(tc, io_fd_closed_behind_loop);
    tcase_add_test(tc, io_fd_closed_reused_then_stopped);
    tcase_add_test(tc, io_fd_closed_while_dup_alive);
    suite_add_tcase(s, tc);
    return s;
}
