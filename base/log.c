/*
 * log.c - Postfix-shaped logging to syslog and/or standard error.
 *
 * Lines are tagged "name/component[pid]:" so tools that parse Postfix logs
 * (pflogsumm, qshape-like scripts) read ours. Syslog is spoken directly on
 * the /dev/log datagram socket in the RFC 3164 format that local syslog
 * daemons accept, because syslog(3) has one ident per process and we want a
 * tag per component.
 *
 * Thread safety: the settings are guarded by a mutex; each line is formatted
 * into a private buffer and written with one send(2)/write(2).
 *
 * Batching (log_batch_begin): a daemon's loop thread logs several lines per
 * message, and one system call per line was the largest share of its
 * write(2) calls. While batching is on, lines are appended to one shared
 * buffer, in the order they were logged by any thread, and written out by
 * log_flush(): standard error with one write(2), syslog with one
 * sendmmsg(2) of one datagram per line. The loop calls log_flush() before
 * it blocks (a uv_prepare handle in convoyd), so a line waits at most for
 * the rest of its loop iteration. A line logged by any other thread
 * flushes at once, with the lines before it, so nothing sits in the buffer
 * while the loop sleeps, and the order of lines is the order they were
 * logged. A full buffer flushes; log_batch_end() and exit() flush.
 *
 * The pid in every line is read once (and again in a forked child), not
 * per line; the time stamp is formatted once per second.
 */
#include "base.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096
#define LOG_BATCH_BYTES (64u * 1024)
#define LOG_BATCH_LINES 128

static const struct {
    const char *name;
    int code;
} facilities[] = {
    {"kern", 0},      {"user", 1},    {"mail", 2},    {"daemon", 3},  {"auth", 4},
    {"syslog", 5},    {"lpr", 6},     {"news", 7},    {"uucp", 8},    {"cron", 9},
    {"authpriv", 10}, {"ftp", 11},    {"local0", 16}, {"local1", 17}, {"local2", 18},
    {"local3", 19},   {"local4", 20}, {"local5", 21}, {"local6", 22}, {"local7", 23},
};

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_name[64] = "convoy";
static int log_facility = 2;
static unsigned log_targets = LOG_TO_STDERR;
static bool log_debug_on = false;
static int log_fd = -1;

/* The cached pid (0: read it again) and time stamp. */
static long log_pid;
static time_t stamp_time = (time_t)-1;
static char stamp_text[32];

/* The batch: formatted lines for each target, and where each ends. */
static bool batch_on;
static pthread_t batch_thread;
static char batch_err[LOG_BATCH_BYTES];
static size_t batch_err_len;
static char batch_sys[LOG_BATCH_BYTES];
static size_t batch_sys_end[LOG_BATCH_LINES]; /* end offset of each datagram */
static size_t batch_sys_n;
static bool atfork_done;

static void pid_forget(void)
{
    log_pid = 0;
}

/* Called with log_lock held. */
static long cached_pid(void)
{
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, pid_forget);
        atfork_done = true;
    }
    if (log_pid == 0)
        log_pid = (long)getpid();
    return log_pid;
}

/* Called with log_lock held. */
static const char *cached_stamp(void)
{
    time_t now = time(NULL);
    if (now != stamp_time) {
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(stamp_text, sizeof(stamp_text), "%b %e %H:%M:%S", &tm);
        stamp_time = now;
    }
    return stamp_text;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* Write out the batch. Called with log_lock held. */
static void flush_locked(void)
{
    if (batch_err_len > 0) {
        write_all(STDERR_FILENO, batch_err, batch_err_len);
        batch_err_len = 0;
    }
    if (batch_sys_n > 0 && log_fd >= 0) {
        struct mmsghdr msgs[LOG_BATCH_LINES];
        struct iovec iov[LOG_BATCH_LINES];
        size_t start = 0;
        for (size_t i = 0; i < batch_sys_n; i++) {
            iov[i].iov_base = batch_sys + start;
            iov[i].iov_len = batch_sys_end[i] - start;
            memset(&msgs[i], 0, sizeof(msgs[i]));
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            start = batch_sys_end[i];
        }
        size_t sent = 0;
        while (sent < batch_sys_n) {
            int r = sendmmsg(log_fd, msgs + sent, (unsigned)(batch_sys_n - sent), MSG_NOSIGNAL);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break; /* a full or absent syslog socket drops, as send(2) did */
            sent += (size_t)r;
        }
    }
    batch_sys_n = 0;
}

static void flush_at_exit(void)
{
    log_flush();
}

void log_flush(void)
{
    pthread_mutex_lock(&log_lock);
    flush_locked();
    pthread_mutex_unlock(&log_lock);
}

void log_batch_begin(void)
{
    static bool registered;
    pthread_mutex_lock(&log_lock);
    if (!registered) {
        atexit(flush_at_exit);
        registered = true;
    }
    batch_on = true;
    batch_thread = pthread_self();
    pthread_mutex_unlock(&log_lock);
}

void log_batch_end(void)
{
    pthread_mutex_lock(&log_lock);
    flush_locked();
    batch_on = false;
    pthread_mutex_unlock(&log_lock);
}

static int facility_code(const char *facility)
{
    for (size_t i = 0; i < sizeof(facilities) / sizeof(facilities[0]); i++)
        if (strcmp(facilities[i].name, facility) == 0)
            return facilities[i].code;
    return -1;
}

bool log_facility_valid(const char *facility)
{
    return facility_code(facility) >= 0;
}

int log_setup(const char *name, const char *facility, unsigned targets, bool debug)
{
    int code = facility_code(facility ? facility : "mail");
    if (code < 0)
        return ERR_INVAL;
    pthread_mutex_lock(&log_lock);
    str_copy(log_name, name ? name : "convoy", sizeof(log_name));
    log_facility = code;
    log_targets = targets;
    __atomic_store_n(&log_debug_on, debug, __ATOMIC_RELAXED);
    if ((targets & LOG_TO_SYSLOG) && log_fd < 0) {
        log_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (log_fd >= 0) {
            struct sockaddr_un sun = {.sun_family = AF_UNIX};
            str_copy(sun.sun_path, "/dev/log", sizeof(sun.sun_path));
            if (connect(log_fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
                close(log_fd);
                log_fd = -1;
            }
        }
    }
    if (!(targets & LOG_TO_SYSLOG) && log_fd >= 0) {
        close(log_fd);
        log_fd = -1;
    }
    pthread_mutex_unlock(&log_lock);
    return 0;
}

void log_vmsg(enum log_level level, const char *component, const char *fmt, va_list ap)
{
    static const int severity[] = {3, 4, 6, 7}; /* err, warning, info, debug */
    static const char *prefix[] = {"error: ", "warning: ", "", "debug: "};
    char body[LOG_LINE_MAX];
    char line[LOG_LINE_MAX + 256];

    /* Unlocked peek: a stale value only formats a debug line for nothing. */
    if (level == LOGL_DEBUG && !__atomic_load_n(&log_debug_on, __ATOMIC_RELAXED))
        return;
    int n = vsnprintf(body, sizeof(body), fmt, ap);
    if (n < 0)
        return;
    /* One line per record: embedded newlines would split it for parsers. */
    for (char *p = body; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';

    pthread_mutex_lock(&log_lock);
    if (level == LOGL_DEBUG && !log_debug_on) {
        pthread_mutex_unlock(&log_lock);
        return;
    }
    const char *stamp = cached_stamp();
    long pid = cached_pid();
    bool batch = batch_on && pthread_equal(pthread_self(), batch_thread);

    if ((log_targets & LOG_TO_SYSLOG) && log_fd >= 0) {
        int len = snprintf(line, sizeof(line), "<%d>%s %s/%s[%ld]: %s%s",
                           log_facility * 8 + severity[level], stamp, log_name, component, pid,
                           prefix[level], body);
        if (len > 0) {
            size_t l = (size_t)len < sizeof(line) ? (size_t)len : sizeof(line) - 1;
            size_t used = batch_sys_n ? batch_sys_end[batch_sys_n - 1] : 0;
            if (batch_on && (batch_sys_n == LOG_BATCH_LINES || used + l > sizeof(batch_sys)))
                flush_locked();
            used = batch_sys_n ? batch_sys_end[batch_sys_n - 1] : 0;
            if (batch_on) {
                memcpy(batch_sys + used, line, l);
                batch_sys_end[batch_sys_n++] = used + l;
            } else {
                (void)send(log_fd, line, l, MSG_NOSIGNAL);
            }
        }
    }
    if (log_targets & LOG_TO_STDERR) {
        int len = snprintf(line, sizeof(line), "%s %s/%s[%ld]: %s%s\n", stamp, log_name, component,
                           pid, prefix[level], body);
        if (len > 0) {
            size_t l = (size_t)len < sizeof(line) ? (size_t)len : sizeof(line) - 1;
            if ((size_t)len >= sizeof(line))
                line[l - 1] = '\n';
            if (batch_on) {
                if (batch_err_len + l > sizeof(batch_err))
                    flush_locked();
                memcpy(batch_err + batch_err_len, line, l);
                batch_err_len += l;
            } else {
                write_all(STDERR_FILENO, line, l);
            }
        }
    }
    /* A line from any thread but the loop's goes out now, after the lines
     * logged before it: the loop may be asleep and would not flush. */
    if (batch_on && !batch)
        flush_locked();
    pthread_mutex_unlock(&log_lock);
}

void log_msg(enum log_level level, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, component, fmt, ap);
    va_end(ap);
}
