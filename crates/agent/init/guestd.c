/*
 * shellwego-guestd: runs commands for the agent inside a microVM guest
 * (`exec` and interactive sessions; the agent's end is
 * src/microvm/guest.rs).
 *
 *   /.shellwego/sw-guestd /dev/ttyS2
 *
 * The guest's init starts it in the background, with the instance's
 * environment and working directory, just before the app. It speaks lines
 * over the serial port it is given (set to raw mode), one message per line,
 * fields separated by one space, bytes in base64:
 *
 *   agent -> guest
 *     p <token>                          ping, answered "P <token>"
 *     z                                  reset: every running command is
 *                                        killed (a new agent took over)
 *     x <id> <tty> <cols> <rows> <argv>  start a command; argv is the base64
 *                                        of its arguments, each ended by NUL
 *     i <id> <data>                      bytes for its standard input
 *     e <id>                             end of its standard input
 *     k <id> <signal>                    a signal to its process group
 *     r <id> <cols> <rows>               its terminal's new size
 *   guest -> agent
 *     P <token>
 *     o <id> <data>                      its standard output (a terminal's
 *                                        output is all "o")
 *     2 <id> <data>                      its standard error
 *     X <id> <code>                      it ended: its exit code, or 128 + the
 *                                        signal that killed it; always after
 *                                        the last of its output
 *     f <id> <message>                   it could not be started (base64 text)
 *
 * A command runs in a session of its own (setsid), so a signal reaches all
 * it started; with a terminal (tty 1) it gets a pseudo-terminal as its
 * controlling terminal (Ctrl-C is SIGINT, the size is set). When the
 * command itself ends, what is left of its process group is killed (as the
 * agent does on the host) and its output drained, then "X" is sent. A
 * program that cannot be run makes its command exit 127 (not found) or 126,
 * with the reason on its standard error, as shells do.
 *
 * Lines longer than 256 KiB are dropped whole; messages for unknown ids are
 * ignored. Output is read in pieces of at most 3 KiB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAXS 32
#define CHUNK 3072
#define LINE_CAP (256 * 1024)
#define PEND_CAP (16 * 1024 * 1024)
#define DRAIN_MS 2000

struct sess {
    int used;
    unsigned long long id;
    pid_t pid;
    int tty;
    int reaped;
    int code;
    int in;  /* standard input (pipe), -1 when closed or a terminal */
    int out; /* standard output, or the terminal's master */
    int err; /* standard error, -1 with a terminal */
    char *pend;
    size_t plen;
    int in_eof;
    long long drain_until;
};

static struct sess S[MAXS];
static int port = -1;
static int chld[2];

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void warn(const char *what) {
    char buf[256];
    int n = snprintf(buf, sizeof buf, "shellwego-guestd: %s: %s\n", what, strerror(errno));
    if (n > 0)
        (void)!write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

static const char B64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64enc(const unsigned char *in, size_t n, char *out) {
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = B64[v >> 18 & 63];
        out[o++] = B64[v >> 12 & 63];
        out[o++] = B64[v >> 6 & 63];
        out[o++] = B64[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = B64[v >> 18 & 63];
        out[o++] = B64[v >> 12 & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = B64[v >> 18 & 63];
        out[o++] = B64[v >> 12 & 63];
        out[o++] = B64[v >> 6 & 63];
        out[o++] = '=';
    }
    return o;
}

static int b64val(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes `in` (padding optional) into `out`; -1 when it is not base64. */
static long b64dec(const char *in, size_t n, unsigned char *out) {
    unsigned v = 0;
    int bits = 0;
    long o = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        if (in[i] == '=')
            break;
        int d = b64val((unsigned char)in[i]);
        if (d < 0)
            return -1;
        v = v << 6 | (unsigned)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(v >> bits & 0xff);
        }
    }
    return o;
}

/* The whole of `s` to the serial port. */
static void put(const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(port, s, n);
        if (w > 0) {
            s += w;
            n -= (size_t)w;
        } else if (w < 0 && errno != EINTR && errno != EAGAIN) {
            warn("cannot write to the agent's port");
            return;
        } else if (w < 0 && errno == EAGAIN) {
            struct pollfd p = {port, POLLOUT, 0};
            poll(&p, 1, 100);
        }
    }
}

static void say(const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0)
        put(buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

static void send_data(char kind, unsigned long long id, const unsigned char *d, size_t n) {
    static char line[64 + (CHUNK / 3 + 1) * 4 + 2];
    int h = snprintf(line, 64, "%c %llu ", kind, id);
    size_t m = b64enc(d, n, line + h);
    line[h + m] = '\n';
    put(line, (size_t)h + m + 1);
}

static void send_failed(unsigned long long id, const char *msg) {
    send_data('f', id, (const unsigned char *)msg, strlen(msg));
}

static struct sess *find(unsigned long long id) {
    for (int i = 0; i < MAXS; i++)
        if (S[i].used && S[i].id == id)
            return &S[i];
    return NULL;
}

static void close_fd(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void drop_input(struct sess *s) {
    free(s->pend);
    s->pend = NULL;
    s->plen = 0;
    if (!s->tty)
        close_fd(&s->in);
}

static void release(struct sess *s) {
    drop_input(s);
    close_fd(&s->out);
    close_fd(&s->err);
    memset(s, 0, sizeof *s);
    s->in = s->out = s->err = -1;
}

static void nonblock(int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void start(unsigned long long id, int tty, int cols, int rows, const char *argv64) {
    struct sess *s = NULL;
    if (find(id)) {
        send_failed(id, "a command with this id is running");
        return;
    }
    for (int i = 0; i < MAXS; i++)
        if (!S[i].used) {
            s = &S[i];
            break;
        }
    if (!s) {
        send_failed(id, "too many commands at once in this instance (32)");
        return;
    }
    size_t alen = strlen(argv64);
    unsigned char *buf = malloc(alen + 1);
    char **argv = calloc(alen / 2 + 2, sizeof *argv);
    long n = buf ? b64dec(argv64, alen, buf) : -1;
    int argc = 0;
    if (n > 0 && argv && buf[n - 1] == '\0') {
        for (long i = 0; i < n; i += (long)strlen((char *)buf + i) + 1)
            argv[argc++] = (char *)buf + i;
    }
    if (argc == 0) {
        send_failed(id, "no command (argv must be NUL-terminated arguments)");
        free(buf);
        free(argv);
        return;
    }
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, master = -1;
    char slave[128] = "";
    if (tty) {
        struct winsize ws = {(unsigned short)rows, (unsigned short)cols, 0, 0};
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 ||
            ptsname_r(master, slave, sizeof slave) != 0) {
            send_failed(id, "cannot open a terminal (is /dev/pts mounted?)");
            if (master >= 0)
                close(master);
            free(buf);
            free(argv);
            return;
        }
        if (rows > 0 && cols > 0)
            ioctl(master, TIOCSWINSZ, &ws);
    } else if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        send_failed(id, "cannot make pipes");
        for (int i = 0; i < 2; i++) {
            if (in[i] >= 0) close(in[i]);
            if (out[i] >= 0) close(out[i]);
            if (err[i] >= 0) close(err[i]);
        }
        free(buf);
        free(argv);
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* Default dispositions: init's shell started us in the background,
         * with SIGINT and SIGQUIT ignored, which a command would inherit. */
        for (int i = 1; i < NSIG; i++)
            signal(i, SIG_DFL);
        setsid();
        if (tty) {
            int sl = open(slave, O_RDWR);
            if (sl < 0)
                _exit(126);
            ioctl(sl, TIOCSCTTY, 0);
            dup2(sl, 0);
            dup2(sl, 1);
            dup2(sl, 2);
            if (sl > 2)
                close(sl);
            if (!getenv("TERM"))
                setenv("TERM", "xterm-256color", 1);
        } else {
            dup2(in[0], 0);
            dup2(out[1], 1);
            dup2(err[1], 2);
        }
        execvp(argv[0], argv);
        int e = errno;
        dprintf(2, "%s: %s\n", argv[0], strerror(e));
        _exit(e == ENOENT ? 127 : 126);
    }
    free(buf);
    free(argv);
    if (pid < 0) {
        send_failed(id, "cannot fork");
        if (tty)
            close(master);
        for (int i = 0; i < 2; i++) {
            close(in[i]);
            close(out[i]);
            close(err[i]);
        }
        return;
    }
    memset(s, 0, sizeof *s);
    s->used = 1;
    s->id = id;
    s->pid = pid;
    s->tty = tty;
    if (tty) {
        s->in = -1;
        s->out = master;
        s->err = -1;
    } else {
        close(in[0]);
        close(out[1]);
        close(err[1]);
        s->in = in[1];
        s->out = out[0];
        s->err = err[0];
        nonblock(s->in);
    }
    nonblock(s->out);
    if (s->err >= 0)
        nonblock(s->err);
}

static void input(struct sess *s, const char *data64) {
    size_t n = strlen(data64);
    int fd = s->tty ? s->out : s->in;
    if (s->reaped || fd < 0 || s->in_eof)
        return;
    if (s->plen + n > PEND_CAP)
        return; /* the command does not read its input: dropped */
    char *p = realloc(s->pend, s->plen + n + 1);
    if (!p)
        return;
    s->pend = p;
    long got = b64dec(data64, n, (unsigned char *)s->pend + s->plen);
    if (got > 0)
        s->plen += (size_t)got;
}

static void flush_input(struct sess *s) {
    int fd = s->tty ? s->out : s->in;
    while (s->plen > 0 && fd >= 0) {
        ssize_t w = write(fd, s->pend, s->plen);
        if (w > 0) {
            memmove(s->pend, s->pend + w, s->plen - (size_t)w);
            s->plen -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN) {
            return;
        } else {
            /* The command closed its input. */
            drop_input(s);
            return;
        }
    }
    if (s->plen == 0 && s->in_eof && !s->tty)
        drop_input(s);
}

static void reset(void) {
    for (int i = 0; i < MAXS; i++)
        if (S[i].used) {
            if (!S[i].reaped)
                kill(-S[i].pid, SIGKILL);
            release(&S[i]);
        }
}

static void handle(char *line) {
    char *f[7];
    int nf = 0;
    for (char *p = strtok(line, " "); p && nf < 7; p = strtok(NULL, " "))
        f[nf++] = p;
    if (nf == 0 || strlen(f[0]) != 1)
        return;
    unsigned long long id = nf > 1 ? strtoull(f[1], NULL, 10) : 0;
    struct sess *s = nf > 1 ? find(id) : NULL;
    switch (f[0][0]) {
    case 'p':
        say("P %s\n", nf > 1 ? f[1] : "0");
        break;
    case 'z':
        reset();
        break;
    case 'x':
        if (nf == 6)
            start(id, atoi(f[2]) != 0, atoi(f[3]), atoi(f[4]), f[5]);
        else if (nf > 1)
            send_failed(id, "a malformed start message");
        break;
    case 'i':
        if (s && nf == 3) {
            input(s, f[2]);
            flush_input(s);
        }
        break;
    case 'e':
        if (s) {
            s->in_eof = 1;
            flush_input(s);
        }
        break;
    case 'k':
        if (s && !s->reaped && nf == 3) {
            int sig = atoi(f[2]);
            if (sig > 0 && sig < NSIG)
                kill(-s->pid, sig);
        }
        break;
    case 'r':
        if (s && s->tty && nf == 4) {
            struct winsize ws = {(unsigned short)atoi(f[3]), (unsigned short)atoi(f[2]), 0, 0};
            ioctl(s->out, TIOCSWINSZ, &ws);
        }
        break;
    }
}

static void on_chld(int sig) {
    (void)sig;
    int e = errno;
    (void)!write(chld[1], "c", 1);
    errno = e;
}

static void reap(void) {
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < MAXS; i++) {
            struct sess *s = &S[i];
            if (!s->used || s->reaped || s->pid != pid)
                continue;
            s->reaped = 1;
            s->code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            /* What it left behind does not outlive it. */
            kill(-pid, SIGKILL);
            s->drain_until = now_ms() + DRAIN_MS;
            drop_input(s);
        }
    }
}

/* Reads what `*fd` has; closes it at its end. */
static void pump(struct sess *s, int *fd, char kind) {
    unsigned char buf[CHUNK];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n > 0)
        send_data(kind, s->id, buf, (size_t)n);
    else if (n == 0 || (errno != EAGAIN && errno != EINTR))
        close_fd(fd); /* EOF; EIO on a terminal's master: no slave left */
}

int main(int argc, char **argv) {
    static char lb[LINE_CAP];
    size_t ll = 0;
    int skipping = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s /dev/ttySn\n", argv[0]);
        return 2;
    }
    for (int i = 0; i < MAXS; i++)
        S[i].in = S[i].out = S[i].err = -1;
    port = open(argv[1], O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (port < 0) {
        warn(argv[1]);
        return 1;
    }
    struct termios t;
    if (tcgetattr(port, &t) == 0) {
        cfmakeraw(&t);
        t.c_cflag |= CLOCAL | CREAD;
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        tcsetattr(port, TCSANOW, &t);
    }
    if (pipe2(chld, O_CLOEXEC | O_NONBLOCK) < 0) {
        warn("pipe");
        return 1;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);

    for (;;) {
        struct pollfd p[2 + 3 * MAXS];
        int who[2 + 3 * MAXS], what[2 + 3 * MAXS];
        int np = 0, draining = 0;
        p[np] = (struct pollfd){port, POLLIN, 0}, who[np] = -1, what[np++] = 0;
        p[np] = (struct pollfd){chld[0], POLLIN, 0}, who[np] = -1, what[np++] = 1;
        for (int i = 0; i < MAXS; i++) {
            struct sess *s = &S[i];
            if (!s->used)
                continue;
            if (s->out >= 0)
                p[np] = (struct pollfd){s->out, POLLIN | (s->tty && s->plen ? POLLOUT : 0), 0},
                who[np] = i, what[np++] = 'o';
            if (s->err >= 0)
                p[np] = (struct pollfd){s->err, POLLIN, 0}, who[np] = i, what[np++] = '2';
            if (s->in >= 0 && s->plen)
                p[np] = (struct pollfd){s->in, POLLOUT, 0}, who[np] = i, what[np++] = 'i';
            if (s->reaped)
                draining = 1;
        }
        if (poll(p, (nfds_t)np, draining ? 100 : -1) < 0 && errno != EINTR) {
            warn("poll");
            sleep(1);
            continue;
        }
        for (int k = 0; k < np; k++) {
            if (!p[k].revents)
                continue;
            if (who[k] < 0 && what[k] == 1) {
                char c[64];
                while (read(chld[0], c, sizeof c) > 0)
                    ;
                reap();
            } else if (who[k] < 0) {
                ssize_t n = read(port, lb + ll, sizeof lb - ll);
                if (n <= 0)
                    continue;
                size_t end = ll + (size_t)n, start = 0;
                for (size_t j = ll; j < end; j++)
                    if (lb[j] == '\n' || lb[j] == '\r') {
                        lb[j] = '\0';
                        if (!skipping && j > start)
                            handle(lb + start);
                        skipping = 0;
                        start = j + 1;
                    }
                memmove(lb, lb + start, end - start);
                ll = end - start;
                if (ll == sizeof lb) {
                    ll = 0;
                    skipping = 1;
                }
            } else {
                struct sess *s = &S[who[k]];
                if (!s->used)
                    continue;
                if (what[k] == 'o' && (p[k].revents & POLLOUT))
                    flush_input(s);
                if (what[k] == 'o' && (p[k].revents & (POLLIN | POLLHUP | POLLERR)) && s->out >= 0)
                    pump(s, &s->out, 'o');
                else if (what[k] == '2' && s->err >= 0)
                    pump(s, &s->err, '2');
                else if (what[k] == 'i')
                    flush_input(s);
            }
        }
        /* A SIGCHLD may have come between the reads. */
        reap();
        long long now = now_ms();
        for (int i = 0; i < MAXS; i++) {
            struct sess *s = &S[i];
            if (s->used && s->reaped && ((s->out < 0 && s->err < 0) || now > s->drain_until)) {
                say("X %llu %d\n", s->id, s->code);
                release(s);
            }
        }
    }
}
