/*
 * Ad-hoc self-test of the kqueue emulation (not part of the meson suite):
 *
 *   cc -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Itests/kqueue_emul \
 *      tests/kqueue_emul/emul_selftest.c tests/kqueue_emul/kqueue_emul.c \
 *      -lpthread -o /tmp/kq-selftest && /tmp/kq-selftest
 *
 * Each check states what FreeBSD's kevent(2) documents or does.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sys/event.h"

static int failures, checks;

#define CHECK(cond)                                                         \
    do {                                                                    \
        checks++;                                                           \
        if (!(cond)) {                                                      \
            failures++;                                                     \
            fprintf(stderr, "%s:%d: FAILED: %s (errno %d)\n", __FILE__,    \
                    __LINE__, #cond, errno);                                \
        }                                                                   \
    } while (0)

static const struct timespec zero_ts = {0, 0};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int change(int kq, uintptr_t ident, short filter, unsigned short flags,
                  unsigned fflags, void *udata)
{
    struct kevent ev;
    EV_SET(&ev, ident, filter, flags, fflags, 0, udata);
    return kevent(kq, &ev, 1, NULL, 0, NULL);
}

static int poll_now(int kq, struct kevent *out, int n)
{
    return kevent(kq, NULL, 0, out, n, &zero_ts);
}

static void test_basics(void)
{
    struct kevent ev, out[4];
    errno = 0;
    CHECK(kevent(12345, NULL, 0, out, 4, &zero_ts) == -1 && errno == EBADF);

    int kq = kqueue();
    CHECK(kq >= 0);
    CHECK(poll_now(kq, out, 4) == 0);

    /* A failed change goes to the eventlist when there is room. */
    EV_SET(&ev, 0, EVFILT_READ, EV_DELETE, 0, 0, (void *)7);
    CHECK(kevent(kq, &ev, 1, out, 4, NULL) == 1);
    CHECK(out[0].flags == EV_ERROR && out[0].data == ENOENT &&
          out[0].udata == (void *)7 && out[0].filter == EVFILT_READ);
    /* Else kevent fails with it. */
    errno = 0;
    CHECK(kevent(kq, &ev, 1, NULL, 0, NULL) == -1 && errno == ENOENT);
    errno = 0;
    CHECK(change(kq, 9999, EVFILT_READ, EV_ADD, 0, NULL) == -1 &&
          errno == EBADF);
    errno = 0;
    CHECK(change(kq, 1, -7, EV_ADD, 0, NULL) == -1 && errno == EINVAL);

    /* With no room, the failing change stops the list. */
    int p[2];
    CHECK(pipe2(p, O_NONBLOCK) == 0);
    struct kevent ch[2];
    EV_SET(&ch[0], 9999, EVFILT_READ, EV_ADD, 0, 0, NULL);
    EV_SET(&ch[1], p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
    errno = 0;
    CHECK(kevent(kq, ch, 2, NULL, 0, NULL) == -1 && errno == EBADF);
    errno = 0;
    CHECK(change(kq, p[0], EVFILT_READ, EV_DELETE, 0, NULL) == -1 &&
          errno == ENOENT);
    /* With room, both are tried, the list aliasing the eventlist. */
    EV_SET(&ch[0], 9999, EVFILT_READ, EV_ADD, 0, 0, NULL);
    EV_SET(&ch[1], p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
    CHECK(kevent(kq, ch, 2, ch, 2, NULL) == 1);
    CHECK(ch[0].flags == EV_ERROR && ch[0].data == EBADF);
    CHECK(change(kq, p[0], EVFILT_READ, EV_DELETE, 0, NULL) == 0);

    /* EV_RECEIPT: every change answers, data 0 on success; no scan. */
    CHECK(write(p[1], "x", 1) == 1);
    EV_SET(&ch[0], p[0], EVFILT_READ, EV_ADD | EV_RECEIPT, 0, 0, NULL);
    EV_SET(&ch[1], p[0], EVFILT_WRITE, EV_DELETE | EV_RECEIPT, 0, 0, NULL);
    CHECK(kevent(kq, ch, 2, out, 4, NULL) == 2);
    CHECK(out[0].flags == EV_ERROR && out[0].data == 0);
    CHECK(out[1].flags == EV_ERROR && out[1].data == ENOENT);
    CHECK(change(kq, p[0], EVFILT_READ, EV_DELETE, 0, NULL) == 0);

    /* Timeouts. */
    struct timespec bad = {0, 1000000000};
    errno = 0;
    CHECK(kevent(kq, NULL, 0, out, 4, &bad) == -1 && errno == EINVAL);
    struct timespec t50 = {0, 50000000};
    int64_t t0 = now_ns();
    CHECK(kevent(kq, NULL, 0, out, 4, &t50) == 0);
    CHECK(now_ns() - t0 >= 50000000);
    /* nevents == 0 never waits, even with a NULL timeout. */
    CHECK(kevent(kq, NULL, 0, NULL, 0, NULL) == 0);

    close(p[0]);
    close(p[1]);
    CHECK(kqueue_emul_close(kq) == 0);
    errno = 0;
    CHECK(poll_now(kq, out, 4) == -1 && errno == EBADF);
}

static void test_pipe(void)
{
    struct kevent out[4];
    int kq = kqueue(), p[2];
    CHECK(pipe2(p, O_NONBLOCK) == 0);
    CHECK(change(kq, p[0], EVFILT_READ, EV_ADD, 0, (void *)0x11) == 0);
    CHECK(change(kq, p[1], EVFILT_WRITE, EV_ADD, 0, (void *)0x22) == 0);
    CHECK(poll_now(kq, out, 4) == 1);
    CHECK(out[0].filter == EVFILT_WRITE && out[0].ident == (uintptr_t)p[1] &&
          out[0].udata == (void *)0x22 && out[0].data > 0 &&
          !(out[0].flags & EV_EOF));
    CHECK(change(kq, p[1], EVFILT_WRITE, EV_DISABLE, 0, (void *)0x22) == 0);
    CHECK(poll_now(kq, out, 4) == 0);

    CHECK(write(p[1], "abc", 3) == 3);
    CHECK(poll_now(kq, out, 4) == 1);
    CHECK(out[0].filter == EVFILT_READ && out[0].data == 3 &&
          out[0].udata == (void *)0x11);
    /* Level-triggered: again. */
    CHECK(poll_now(kq, out, 4) == 1);
    close(p[1]);
    CHECK(poll_now(kq, out, 4) == 1);
    CHECK(out[0].filter == EVFILT_READ && (out[0].flags & EV_EOF) &&
          out[0].data == 3 && out[0].fflags == 0);
    close(p[0]);
    /* Closed: the knotes are gone. */
    CHECK(poll_now(kq, out, 4) == 0);

    /* Writer sees EV_EOF when the reader goes away. */
    CHECK(pipe2(p, O_NONBLOCK) == 0);
    CHECK(change(kq, p[1], EVFILT_WRITE, EV_ADD, 0, NULL) == 0);
    close(p[0]);
    CHECK(poll_now(kq, out, 4) == 1);
    CHECK(out[0].filter == EVFILT_WRITE && (out[0].flags & EV_EOF));
    close(p[1]);
    kqueue_emul_close(kq);
}

static void test_socketpair(void)
{
    struct kevent out[4];
    int kq = kqueue(), s[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, s) == 0);
    CHECK(write(s[1], "hello", 5) == 5);
    CHECK(change(kq, s[0], EVFILT_READ, EV_ADD, 0, NULL) == 0);
    CHECK(change(kq, s[0], EVFILT_WRITE, EV_ADD, 0, NULL) == 0);
    CHECK(poll_now(kq, out, 4) == 2);
    /* One slot at a time: READ, then WRITE, never the same twice. */
    CHECK(poll_now(kq, out, 1) == 1);
    short first = out[0].filter;
    CHECK(poll_now(kq, out, 1) == 1);
    CHECK(out[0].filter != first);

    /* Half-close: READ with EV_EOF, data still readable. */
    CHECK(change(kq, s[0], EVFILT_WRITE, EV_DELETE, 0, NULL) == 0);
    CHECK(shutdown(s[1], SHUT_WR) == 0);
    CHECK(poll_now(kq, out, 4) == 1);
    CHECK(out[0].filter == EVFILT_READ && (out[0].flags & EV_EOF) &&
          out[0].data == 5);

    /* EV_CLEAR: once per change of state. */
    int t[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, t) == 0);
    CHECK(change(kq, t[0], EVFILT_READ, EV_ADD | EV_CLEAR, 0, NULL) == 0);
    CHECK(poll_now(kq, out, 4) == 1); /* s[0] still at EOF, level */
    CHECK(write(t[1], "a", 1) == 1);
    CHECK(poll_now(kq, out, 4) == 2);
    CHECK(poll_now(kq, out, 4) == 1);
    CHECK(write(t[1], "b", 1) == 1);
    CHECK(poll_now(kq, out, 4) == 2);

    /* EV_ONESHOT is deleted after delivery. */
    CHECK(change(kq, t[0], EVFILT_WRITE, EV_ADD | EV_ONESHOT, 0, NULL) == 0);
    int n = poll_now(kq, out, 4), writes = 0;
    for (int i = 0; i < n; i++)
        writes += out[i].filter == EVFILT_WRITE;
    CHECK(writes == 1);
    errno = 0;
    CHECK(change(kq, t[0], EVFILT_WRITE, EV_DELETE, 0, NULL) == -1 &&
          errno == ENOENT);

    /* EV_DISPATCH is disabled after delivery, EV_ENABLE re-arms it. */
    CHECK(change(kq, s[0], EVFILT_READ, EV_DELETE, 0, NULL) == 0);
    CHECK(change(kq, t[0], EVFILT_READ, EV_DELETE, 0, NULL) == 0);
    CHECK(change(kq, t[0], EVFILT_WRITE, EV_ADD | EV_DISPATCH, 0, NULL) == 0);
    CHECK(poll_now(kq, out, 4) == 1);
    CHECK(poll_now(kq, out, 4) == 0);
    CHECK(change(kq, t[0], EVFILT_WRITE, EV_ENABLE, 0, NULL) == 0);
    CHECK(poll_now(kq, out, 4) == 1);

    /* The peer closes: EV_EOF on both filters. */
    CHECK(change(kq, t[0], EVFILT_WRITE, EV_DELETE, 0, NULL) == 0);
    CHECK(change(kq, t[0], EVFILT_READ, EV_ADD, 0, NULL) == 0);
    CHECK(change(kq, t[0], EVFILT_WRITE, EV_ADD, 0, NULL) == 0);
    close(t[1]);
    n = poll_now(kq, out, 4);
    CHECK(n == 2);
    for (int i = 0; i < n; i++)
        CHECK(out[i].flags & EV_EOF);
    close(t[0]);
    close(s[0]);
    close(s[1]);
    kqueue_emul_close(kq);
}

static void test_connect_refused(void)
{
    struct kevent out[4];
    int kq = kqueue();
    /* A port nobody listens on: bind, learn it, close. */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    CHECK(bind(l, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CHECK(getsockname(l, (struct sockaddr *)&sa, &len) == 0);
    close(l);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int rc = connect(c, (struct sockaddr *)&sa, sizeof(sa));
    CHECK(rc == -1 && (errno == EINPROGRESS || errno == ECONNREFUSED));
    CHECK(change(kq, c, EVFILT_WRITE, EV_ADD, 0, NULL) == 0);
    struct timespec t1 = {1, 0};
    CHECK(kevent(kq, NULL, 0, out, 4, &t1) == 1);
    CHECK(out[0].filter == EVFILT_WRITE && (out[0].flags & EV_EOF) &&
          out[0].fflags != 0);
    /* The error is still there for the program to read. */
    int err = 0;
    len = sizeof(err);
    CHECK(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
          err == ECONNREFUSED);
    close(c);
    kqueue_emul_close(kq);
}

struct trigger_arg {
    int kq;
    int64_t delay_ns;
};

static void *trigger_later(void *p)
{
    struct trigger_arg *a = p;
    struct timespec d = {0, (long)a->delay_ns};
    nanosleep(&d, NULL);
    change(a->kq, 42, EVFILT_USER, 0, NOTE_TRIGGER | NOTE_FFOR | 0x5, NULL);
    return NULL;
}

static void test_user(void)
{
    struct kevent out[4];
    int kq = kqueue();
    CHECK(change(kq, 42, EVFILT_USER, EV_ADD | EV_CLEAR, 0, (void *)3) == 0);
    CHECK(poll_now(kq, out, 4) == 0);
    CHECK(change(kq, 42, EVFILT_USER, 0, NOTE_TRIGGER, (void *)3) == 0);
    CHECK(poll_now(kq, out, 4) == 1);
    CHECK(out[0].ident == 42 && out[0].filter == EVFILT_USER &&
          out[0].udata == (void *)3 && (out[0].flags & EV_CLEAR));
    CHECK(poll_now(kq, out, 4) == 0); /* EV_CLEAR reset it */

    /* Another thread's trigger ends a blocking wait. */
    pthread_t th;
    struct trigger_arg a = {kq, 20000000};
    int64_t t0 = now_ns();
    pthread_create(&th, NULL, trigger_later, &a);
    CHECK(kevent(kq, NULL, 0, out, 4, NULL) == 1);
    CHECK(now_ns() - t0 >= 20000000);
    CHECK(out[0].ident == 42 && out[0].fflags == 0x5);
    pthread_join(th, NULL);

    /* FFAND / FFCOPY on the user flags. */
    CHECK(change(kq, 42, EVFILT_USER, 0, NOTE_TRIGGER | NOTE_FFAND | 0x4,
                 NULL) == 0);
    CHECK(poll_now(kq, out, 4) == 1 && out[0].fflags == 0x4);
    CHECK(change(kq, 42, EVFILT_USER, 0, NOTE_TRIGGER | NOTE_FFCOPY | 0x30,
                 NULL) == 0);
    CHECK(poll_now(kq, out, 4) == 1 && out[0].fflags == 0x30);

    /* Without EV_CLEAR it stays triggered. */
    CHECK(change(kq, 7, EVFILT_USER, EV_ADD, 0, NULL) == 0);
    CHECK(change(kq, 7, EVFILT_USER, 0, NOTE_TRIGGER, NULL) == 0);
    CHECK(poll_now(kq, out, 4) == 1);
    CHECK(poll_now(kq, out, 4) == 1);
    CHECK(change(kq, 7, EVFILT_USER, EV_DELETE, 0, NULL) == 0);
    CHECK(poll_now(kq, out, 4) == 0);
    errno = 0;
    CHECK(change(kq, 7, EVFILT_USER, 0, NOTE_TRIGGER, NULL) == -1 &&
          errno == ENOENT);
    kqueue_emul_close(kq);
}

static void on_alarm(int sig) { (void)sig; }

static void test_eintr(void)
{
    struct kevent out[4];
    int kq = kqueue();
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL); /* no SA_RESTART */
    struct itimerspec its = {.it_value = {0, 20000000}};
    timer_t tid;
    struct sigevent sev = {.sigev_notify = SIGEV_SIGNAL,
                           .sigev_signo = SIGALRM};
    CHECK(timer_create(CLOCK_MONOTONIC, &sev, &tid) == 0);
    CHECK(timer_settime(tid, 0, &its, NULL) == 0);
    errno = 0;
    CHECK(kevent(kq, NULL, 0, out, 4, NULL) == -1 && errno == EINTR);
    timer_delete(tid);
    signal(SIGALRM, SIG_DFL);
    kqueue_emul_close(kq);
}

/* Registrations in the epoll set behind `kq`, from /proc. */
static int epoll_entries(int kq)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", kq);
    FILE *f = fopen(path, "r");
    int n = 0;
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        n += strncmp(line, "tfd:", 4) == 0;
    fclose(f);
    return n;
}

static void test_closed_behind_back(void)
{
    struct kevent out[4];
    int kq = kqueue(), s[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, s) == 0);
    int keep = dup(s[0]);
    CHECK(change(kq, s[0], EVFILT_READ, EV_ADD, 0, NULL) == 0);
    int closed = s[0];
    close(s[0]);
    /* The file lives on through `keep`; a BSD removed the knote anyway. */
    CHECK(write(s[1], "z", 1) == 1);
    CHECK(epoll_entries(kq) == 2); /* the eventfd and the orphan */
    CHECK(poll_now(kq, out, 4) == 0);
    CHECK(epoll_entries(kq) == 1); /* rebuilt without the orphan */
    CHECK(poll_now(kq, out, 4) == 0);
    errno = 0;
    CHECK(change(kq, closed, EVFILT_READ, EV_DELETE, 0, NULL) == -1 &&
          errno == EBADF);

    /* The number reused by a new pipe: a fresh registration. */
    int p[2];
    CHECK(pipe2(p, O_NONBLOCK) == 0);
    CHECK(p[0] == closed);
    errno = 0;
    CHECK(change(kq, p[0], EVFILT_READ, EV_DELETE, 0, NULL) == -1 &&
          errno == ENOENT);
    CHECK(change(kq, p[0], EVFILT_READ, EV_ADD, 0, (void *)5) == 0);
    CHECK(poll_now(kq, out, 4) == 0); /* the dup'ed socket is not it */
    CHECK(write(p[1], "q", 1) == 1);
    CHECK(poll_now(kq, out, 4) == 1 && out[0].udata == (void *)5 &&
          out[0].data == 1);

    /* Closed and reused between two changes, no dup. */
    CHECK(change(kq, p[1], EVFILT_WRITE, EV_ADD, 0, NULL) == 0);
    int wnum = p[1];
    close(p[1]);
    int p2[2];
    CHECK(pipe2(p2, O_NONBLOCK) == 0);
    CHECK(p2[0] == wnum);
    CHECK(change(kq, p2[0], EVFILT_READ, EV_ADD, 0, (void *)6) == 0);
    int n = poll_now(kq, out, 4);
    /* p[0] is at EOF (its writer closed) and readable; p2[0] is not, and
     * no WRITE knote survived on the reused number. */
    CHECK(n == 1 && out[0].ident == (uintptr_t)p[0]);
    close(p[0]);
    close(p2[0]);
    close(p2[1]);
    close(keep);
    close(s[1]);
    kqueue_emul_close(kq);
}

static void test_regular_file(void)
{
    struct kevent out[4];
    int kq = kqueue();
    char path[] = "/tmp/kq-selftest-XXXXXX";
    int fd = mkstemp(path);
    unlink(path);
    CHECK(write(fd, "0123456789", 10) == 10);
    CHECK(lseek(fd, 4, SEEK_SET) == 4);
    CHECK(change(kq, fd, EVFILT_READ, EV_ADD, 0, NULL) == 0);
    CHECK(poll_now(kq, out, 4) == 1 && out[0].data == 6);
    CHECK(change(kq, fd, EVFILT_READ, EV_DELETE, 0, NULL) == 0);
    CHECK(poll_now(kq, out, 4) == 0);
    close(fd);
    kqueue_emul_close(kq);
}

static void test_fork(void)
{
    int kq = kqueue(), p[2];
    CHECK(pipe2(p, O_NONBLOCK) == 0);
    CHECK(change(kq, p[0], EVFILT_READ, EV_ADD, 0, NULL) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        struct kevent out[4];
        int ok = poll_now(kq, out, 4) == -1 && errno == EBADF;
        int kq2 = kqueue();
        ok = ok && kq2 >= 0 && change(kq2, p[0], EVFILT_READ, EV_ADD, 0,
                                      NULL) == 0;
        /* Writing wakes the child's queue, and must not disturb the
         * parent's registration. */
        ok = ok && write(p[1], "c", 1) == 1 && poll_now(kq2, out, 4) == 1;
        char c;
        ok = ok && read(p[0], &c, 1) == 1;
        if (!ok)
            fprintf(stderr, "fork child: kq2=%d errno=%d\n", kq2, errno);
        _exit(ok ? 0 : 1);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
          WEXITSTATUS(status) == 0);
    struct kevent out[4];
    CHECK(poll_now(kq, out, 4) == 0);
    CHECK(write(p[1], "p", 1) == 1);
    CHECK(poll_now(kq, out, 4) == 1);
    close(p[0]);
    close(p[1]);
    kqueue_emul_close(kq);
}

int main(void)
{
    test_basics();
    test_pipe();
    test_socketpair();
    test_connect_refused();
    test_user();
    test_eintr();
    test_closed_behind_back();
    test_regular_file();
    test_fork();
    printf("kqueue emulation self-test: %d checks, %d failed\n", checks,
           failures);
    return failures ? 1 : 0;
}
