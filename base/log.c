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
 */
#include "base.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

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
    log_debug_on = debug;
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

    pthread_mutex_lock(&log_lock);
    bool debug = log_debug_on;
    unsigned targets = log_targets;
    int facility = log_facility;
    int fd = log_fd;
    char name[64];
    str_copy(name, log_name, sizeof(name));
    pthread_mutex_unlock(&log_lock);

    if (level == LOGL_DEBUG && !debug)
        return;
    int n = vsnprintf(body, sizeof(body), fmt, ap);
    if (n < 0)
        return;
    /* One line per record: embedded newlines would split it for parsers. */
    for (char *p = body; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';

    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    char stamp[32];
    strftime(stamp, sizeof(stamp), "%b %e %H:%M:%S", &tm);

    if ((targets & LOG_TO_SYSLOG) && fd >= 0) {
        int len =
            snprintf(line, sizeof(line), "<%d>%s %s/%s[%ld]: %s%s", facility * 8 + severity[level],
                     stamp, name, component, (long)getpid(), prefix[level], body);
        if (len > 0)
            (void)send(fd, line, (size_t)len < sizeof(line) ? (size_t)len : sizeof(line) - 1,
                       MSG_NOSIGNAL);
    }
    if (targets & LOG_TO_STDERR) {
        int len = snprintf(line, sizeof(line), "%s %s/%s[%ld]: %s%s\n", stamp, name, component,
                           (long)getpid(), prefix[level], body);
        if (len > 0) {
            size_t l = (size_t)len < sizeof(line) ? (size_t)len : sizeof(line) - 1;
            if ((size_t)len >= sizeof(line))
                line[l - 1] = '\n';
            ssize_t w;
            do
                w = write(STDERR_FILENO, line, l);
            while (w < 0 && errno == EINTR);
        }
    }
}

void log_msg(enum log_level level, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, component, fmt, ap);
    va_end(ap);
}
