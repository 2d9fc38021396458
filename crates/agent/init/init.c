/*
 * shellwego-init: pid 1 of every container instance (see the agent's
 * container.rs for how it is installed and called). tini's default
 * behaviour, in a static binary so it runs in any root filesystem:
 *
 *   /.shellwego/sw-init -- app argv...
 *
 * - runs the app as its only direct child (argv[0] looked up in PATH, with
 *   the environment and working directory it was given);
 * - forwards every signal it can catch (TERM, INT, HUP, QUIT, USR1, USR2,
 *   WINCH, ...) to that child, so an app without a SIGTERM handler stops on
 *   SIGTERM (pid 1 of a namespace would ignore it);
 * - reaps every process re-parented to it (it is pid 1, and a child
 *   subreaper when it is not), so no zombie piles up;
 * - exits with the app's exit code, or 128 + the signal that killed it;
 * - when fd 3 is open at start (the agent passes a file of the bundle with
 *   `runc run --preserve-fds 1`), writes the app's end there as
 *   "exited <code>\n" or "killed <signal>\n" before exiting; the app never
 *   inherits fd 3.
 *
 * When the app cannot be started it says why on stderr and exits 127
 * (not found) or 126 (not executable), as shells do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define STATUS_FD 3

static void say(const char *a, const char *b, const char *c) {
    char buf[512];
    int n = snprintf(buf, sizeof buf, "shellwego-init: %s%s%s\n", a, b, c);
    if (n > 0)
        (void)!write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* Record how the app ended on fd 3 (when the agent gave us one). */
static void record(int status_fd, const char *how, int n) {
    char buf[32];
    int len;
    if (status_fd < 0)
        return;
    len = snprintf(buf, sizeof buf, "%s %d\n", how, n);
    if (len > 0)
        (void)!write(status_fd, buf, (size_t)len);
    fsync(status_fd);
}

/* Signals that belong to whoever raised them (a fault of init itself). */
static int synchronous(int sig) {
    switch (sig) {
    case SIGFPE: case SIGILL: case SIGSEGV: case SIGBUS:
    case SIGABRT: case SIGTRAP: case SIGSYS:
        return 1;
    default:
        return 0;
    }
}

int main(int argc, char **argv) {
    sigset_t all, old;
    pid_t child;
    int status_fd = -1, i;

    for (i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        ;
    if (i + 1 >= argc) {
        say("usage: ", argv[0], " -- program [args...]");
        return 2;
    }
    char **app = argv + i + 1;

    if (fcntl(STATUS_FD, F_GETFD) != -1) {
        status_fd = STATUS_FD;
        fcntl(status_fd, F_SETFD, FD_CLOEXEC);
    }
    /* Orphans come to us even when we are not pid 1 of a namespace. */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

    /* Every signal is taken with sigtimedwait: block them all (blocked
     * signals are queued even for a namespace's pid 1, whose default
     * dispositions the kernel would otherwise drop). */
    sigfillset(&all);
    for (i = 1; i < NSIG; i++)
        if (synchronous(i))
            sigdelset(&all, i);
    sigprocmask(SIG_SETMASK, &all, &old);
    /* The child gets default dispositions and our original mask back. */
    signal(SIGTTIN, SIG_IGN);
    signal(SIGTTOU, SIG_IGN);

    child = fork();
    if (child < 0) {
        say("cannot fork: ", strerror(errno), "");
        record(status_fd, "exited", 126);
        return 126;
    }
    if (child == 0) {
        signal(SIGTTIN, SIG_DFL);
        signal(SIGTTOU, SIG_DFL);
        sigprocmask(SIG_SETMASK, &old, NULL);
        execvp(app[0], app);
        int err = errno;
        char what[300];
        snprintf(what, sizeof what, "%s: ", app[0]);
        say("cannot run ", what, strerror(err));
        _exit(err == ENOENT ? 127 : 126);
    }

    for (;;) {
        siginfo_t info;
        struct timespec tick = {1, 0};
        int sig = sigtimedwait(&all, &info, &tick);
        if (sig > 0 && sig != SIGCHLD) {
            /* ESRCH: the child is gone and not reaped yet; the loop below
             * sees it. */
            kill(child, sig);
            continue;
        }
        /* SIGCHLD, or the periodic tick (a SIGCHLD merged with another is
         * never lost for more than a second): reap whatever has ended. */
        for (;;) {
            int st;
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p <= 0)
                break;
            if (p != child)
                continue;
            if (WIFEXITED(st)) {
                record(status_fd, "exited", WEXITSTATUS(st));
                return WEXITSTATUS(st);
            }
            if (WIFSIGNALED(st)) {
                record(status_fd, "killed", WTERMSIG(st));
                return 128 + WTERMSIG(st);
            }
        }
    }
}
