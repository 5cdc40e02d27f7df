/*
 * TEST-ONLY: the subset of the BSD kqueue API that qloop's kqueue backend
 * uses, emulated on Linux epoll so that the backend can be built and its
 * tests run on Linux.  Not a general kqueue: see kqueue_emul.c for what is
 * emulated and where it differs from a BSD kernel.
 *
 * Names, values and the shape of struct kevent follow FreeBSD's
 * <sys/event.h>; EV_SET, like FreeBSD's, casts nothing, so code that
 * compiles here without warnings compiles there too.
 */
#ifndef QL_KQUEUE_EMUL_SYS_EVENT_H
#define QL_KQUEUE_EMUL_SYS_EVENT_H

#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QL_KQUEUE_EMULATED 1

#define EVFILT_READ (-1)
#define EVFILT_WRITE (-2)
#define EVFILT_USER (-11)

/* Actions and flags (input). */
#define EV_ADD 0x0001
#define EV_DELETE 0x0002
#define EV_ENABLE 0x0004
#define EV_DISABLE 0x0008
#define EV_ONESHOT 0x0010    /* delete after the first delivery */
#define EV_CLEAR 0x0020      /* reset the state after delivery */
#define EV_RECEIPT 0x0040    /* report every change as EV_ERROR, data 0 or errno */
#define EV_DISPATCH 0x0080   /* disable after each delivery */
#define EV_SYSFLAGS 0xF000   /* stripped from changes */
/* Returned. */
#define EV_ERROR 0x4000      /* data holds an errno */
#define EV_EOF 0x8000

/* EVFILT_USER fflags. */
#define NOTE_FFNOP 0x00000000u
#define NOTE_FFAND 0x40000000u
#define NOTE_FFOR 0x80000000u
#define NOTE_FFCOPY 0xc0000000u
#define NOTE_FFCTRLMASK 0xc0000000u
#define NOTE_FFLAGSMASK 0x00ffffffu
#define NOTE_TRIGGER 0x01000000u

struct kevent {
    uintptr_t ident;     /* fd for READ/WRITE, any value for USER */
    short filter;
    unsigned short flags;
    unsigned int fflags;
    int64_t data;
    void *udata;
    uint64_t ext[4];     /* FreeBSD 12+; unused here */
};

#define EV_SET(kevp_, a, b, c, d, e, f)                                     \
    do {                                                                    \
        *(kevp_) = (struct kevent){                                         \
            .ident = (a),                                                   \
            .filter = (b),                                                  \
            .flags = (c),                                                   \
            .fflags = (d),                                                  \
            .data = (e),                                                    \
            .udata = (f),                                                   \
            .ext = {0},                                                     \
        };                                                                  \
    } while (0)

int kqueue(void);
int kevent(int kq, const struct kevent *changelist, int nchanges,
           struct kevent *eventlist, int nevents,
           const struct timespec *timeout);

/* close() for an emulated kqueue: closes the epoll fd behind it and frees
 * the emulation's state.  Code shared with real BSDs closes a kqueue with
 * QL_KQ_CLOSE(), which is plain close() there. */
int kqueue_emul_close(int kq);
#define QL_KQ_CLOSE(fd) kqueue_emul_close(fd)

#ifdef __cplusplus
}
#endif
#endif
