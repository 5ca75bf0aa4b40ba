/*
 * convoyd.c - the Convoy daemon: configuration, the event loop, signals,
 * systemd readiness, and the start and orderly stop of the services.
 *
 * Signals:
 *  - SIGTERM/SIGINT: stop accepting, let in-flight sessions and deliveries
 *    finish within daemon_shutdown_timeout, close the queue, exit 0. A second
 *    such signal exits at once (the queue's durability does not depend on an
 *    orderly stop: nothing is acknowledged before it is synced).
 *  - SIGHUP: reload. The new file is parsed into a new snapshot; if it is
 *    broken, every error is logged and the old snapshot stays in force.
 *
 * Exit status: 0 after a stop, 78 (EX_CONFIG) for a bad configuration, 1 for
 * other start-up failures, 2 for bad usage.
 *
 * Readiness: when NOTIFY_SOCKET is set (systemd Type=notify), READY=1,
 * RELOADING=1, STOPPING=1 and STATUS= are sent by a hand-written sd_notify
 * (no libsystemd). Without -f the daemon detaches, and the parent exits only
 * once the child is ready (or with the child's failure status). With
 * WatchdogSec= (WATCHDOG_USEC set, WATCHDOG_PID ours or absent), a loop
 * timer sends WATCHDOG=1 at half the interval: a stuck loop stops sending
 * and systemd restarts the daemon.
 *
 * Privileges: with mail_owner set and started as root, convoyd binds its
 * listeners, opens the queue and the control socket, gives the state
 * directory to mail_owner, then becomes mail_owner for good (base/privs.c)
 * before it says READY=1. Started as another user it changes nothing;
 * running as root without mail_owner is logged as a warning.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "delivery.h"
#include "mta.h"
#include "settings.h"

#define MAX_OVERRIDES 256

static struct mta g_mta;
static const char *g_overrides[MAX_OVERRIDES];
static size_t g_n_overrides;
static int g_ready_fd = -1; /* write end of the detach pipe, or -1 */
static int g_lock_fd = -1;

static uv_signal_t sig_term, sig_int, sig_hup;
static uv_timer_t stop_timer, watchdog_timer;
static int64_t stop_deadline;
static int signals_seen;

/* ---- sd_notify -------------------------------------------------------- */

static void notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void notify(const char *fmt, ...)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@'))
        return;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof(sun.sun_path))
        return;
    memcpy(sun.sun_path, path, len);
    if (sun.sun_path[0] == '@')
        sun.sun_path[0] = '\0'; /* abstract namespace */
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    (void)sendto(fd, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1, MSG_NOSIGNAL,
                 (struct sockaddr *)&sun,
                 (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    close(fd);
}

static uint64_t monotonic_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The watchdog interval systemd asks for, in ms; 0 when there is none
 * (sd_watchdog_enabled(3): WATCHDOG_USEC, for us when WATCHDOG_PID is
 * absent or our pid). */
static uint64_t watchdog_ms(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    uint64_t u = 0, p = 0;
    if (!usec || str_to_u64(usec, &u) != 0 || u == 0)
        return 0;
    if (pid && (str_to_u64(pid, &p) != 0 || p != (uint64_t)getpid()))
        return 0;
    return u / 1000 ? u / 1000 : 1;
}

static void watchdog_cb(uv_timer_t *t)
{
    (void)t;
    notify("WATCHDOG=1");
}

/* ---- configuration ---------------------------------------------------- */

static const char *default_conf_path(void)
{
    static const char sys[] = "/etc/convoy/convoy.conf";
    return access(sys, F_OK) == 0 ? sys : NULL;
}

static struct conf *load(const char *path, struct buf *errors)
{
    struct conf *c = conf_load(path, g_overrides, g_n_overrides, errors);
    if (c && settings_conf_check(c, errors) != 0) {
        conf_unref(c);
        c = NULL;
    }
    return c;
}

/* Log each line of a multi-line error text. */
static void log_lines(enum log_level level, const char *prefix, const struct buf *text)
{
    const char *p = text->data ? text->data : "";
    while (*p) {
        const char *nl = strchr(p, '\n');
        int n = nl ? (int)(nl - p) : (int)strlen(p);
        log_msg(level, "convoyd", "%s%.*s", prefix, n, p);
        p += n + (nl ? 1 : 0);
    }
}

static int setup_logging(const struct conf *c, bool foreground, bool debug)
{
    unsigned targets = foreground ? LOG_TO_STDERR : LOG_TO_SYSLOG;
    return log_setup(c->syslog_name, c->syslog_facility, targets, debug);
}

static bool g_foreground, g_debug;

static int mta_reload(struct mta *m, struct buf *errors)
{
    notify("RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long)monotonic_usec());
    struct conf *c = load(m->conf_path, errors);
    /* The queue, the MTA-STS policy cache, the pause table and the control
     * socket are open in queue_directory: it cannot move under them. */
    if (c && strcmp(c->queue_directory, m->conf->queue_directory) != 0) {
        buf_printf(errors,
                   "queue_directory: cannot change from %s to %s while convoyd runs (the "
                   "queue, the MTA-STS policy cache, the pauses and the control socket are "
                   "there); restart convoyd to use it\n",
                   m->conf->queue_directory, c->queue_directory);
        conf_unref(c);
        c = NULL;
    }
    /* Every part checks the new snapshot before any part applies it. */
    struct delivery_update *du = NULL;
    struct submission_update *su = NULL;
    if (c && (delivery_reload_prepare(m->delivery, c, &du, errors) != 0 ||
              submission_reload_prepare(m, c, &su, errors) != 0)) {
        delivery_reload_cancel(du);
        conf_unref(c);
        c = NULL;
    }
    if (c) {
        delivery_reload_apply(m->delivery, du);
        submission_reload_apply(m, su);
    }
    if (!c) {
        log_lines(LOGL_ERR, "reload failed, configuration unchanged: ", errors);
        notify("READY=1\nSTATUS=reload failed; previous configuration in force");
        return ERR_INVAL;
    }
    struct conf *old = m->conf;
    m->conf = c;
    conf_unref(old);
    setup_logging(c, g_foreground, g_debug);
    log_info("convoyd", "reload: configuration %s in force",
             m->conf_path ? m->conf_path : "(built-in defaults)");
    notify("READY=1\nSTATUS=running; configuration reloaded");
    return 0;
}

static void reload(void)
{
    struct buf errors;
    buf_init(&errors, 64 * 1024);
    mta_reload(&g_mta, &errors);
    buf_free(&errors);
}

/* ---- stopping --------------------------------------------------------- */

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void finish_stop(void)
{
    submission_close(&g_mta);
    mta_delivery_close(&g_mta);
    control_stop(&g_mta);
    metrics_stop(&g_mta);
    uv_timer_stop(&stop_timer);
    uv_timer_stop(&watchdog_timer);
    uv_signal_stop(&sig_term);
    uv_signal_stop(&sig_int);
    uv_signal_stop(&sig_hup);
    uv_stop(g_mta.loop);
}

static void stop_timer_cb(uv_timer_t *t)
{
    (void)t;
    size_t active = submission_active(&g_mta) + delivery_active(g_mta.delivery);
    if (active == 0) {
        finish_stop();
        return;
    }
    if (time_mono_ms() >= stop_deadline) {
        log_warn("convoyd",
                 "shutdown timeout: closing %zu sessions and deliveries still in progress", active);
        finish_stop();
    }
}

static void begin_stop(int signum)
{
    g_mta.stopping = true;
    log_info("convoyd", "terminating on signal %d", signum);
    notify("STOPPING=1\nSTATUS=stopping");
    submission_stop(&g_mta);
    delivery_stop(g_mta.delivery);
    mta_tlsrpt_stop(&g_mta);
    metrics_stop(&g_mta);
    stop_deadline = time_mono_ms() + g_mta.conf->daemon_shutdown_timeout * 1000;
    uv_timer_start(&stop_timer, stop_timer_cb, 0, 100);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    (void)h;
    if (signum == SIGHUP) {
        if (!g_mta.stopping)
            reload();
        return;
    }
    if (++signals_seen > 1) {
        log_warn("convoyd", "second signal %d: exiting at once", signum);
        _exit(0);
    }
    begin_stop(signum);
}

/* ---- start-up --------------------------------------------------------- */

static int make_dirs(const char *path)
{
    char tmp[4096];
    if (str_copy(tmp, path, sizeof(tmp)) >= sizeof(tmp))
        return ERR_TOOBIG;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return ERR_IO;
        *p = '/';
    }
    if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
        return ERR_IO;
    return 0;
}

/* One daemon per queue: an exclusive lock on queue_directory/convoyd.pid. */
static int take_lock(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/convoyd.pid", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "convoyd: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = read(fd, pid, sizeof(pid) - 1);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        fprintf(stderr, "convoyd: another convoyd (pid %s) is running on %s\n", *pid ? pid : "?",
                dir);
        close(fd);
        return -1;
    }
    return fd;
}

static void write_pid(int fd)
{
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)n, 0) != n)
        log_warn("convoyd", "cannot write pid file: %s", strerror(errno));
}

/* Detach: the parent waits on a pipe for the child's readiness byte. */
static int detach(void)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid > 0) {
        close(fds[1]);
        unsigned char status = 1;
        ssize_t n;
        do
            n = read(fds[0], &status, 1);
        while (n < 0 && errno == EINTR);
        _exit(n == 1 ? status : 1);
    }
    close(fds[0]);
    setsid();
    g_ready_fd = fds[1];
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        dup2(devnull, STDIN_FILENO);
        dup2(devnull, STDOUT_FILENO);
        dup2(devnull, STDERR_FILENO);
        if (devnull > 2)
            close(devnull);
    }
    return 0;
}

static void tell_parent(unsigned char status)
{
    if (g_ready_fd >= 0) {
        (void)!write(g_ready_fd, &status, 1);
        close(g_ready_fd);
        g_ready_fd = -1;
    }
}

/* Everything that needs root is done: give the state directory to
 * mail_owner (files created since the first pass, as the queue and the
 * control socket), then become it for good. Without drop, only warn when
 * running as root. */
static int become_owner(bool drop, uid_t uid, gid_t gid, struct buf *err)
{
    const struct conf *c = g_mta.conf;
    if (!drop) {
        if (geteuid() == 0)
            log_warn("convoyd", "running as root: set mail_owner to the user convoyd should run "
                                "as once it has bound its listeners");
        return 0;
    }
    if (priv_chown_tree(c->queue_directory, uid, gid) != 0) {
        buf_printf(err, "cannot give queue_directory %s to %s: %s", c->queue_directory,
                   c->mail_owner, strerror(errno));
        return ERR_IO;
    }
    char why[512] = "";
    if (priv_drop(c->mail_owner, uid, gid, why, sizeof(why)) != 0) {
        buf_printf(err, "mail_owner: %s", why);
        return ERR_PERM;
    }
    log_info("convoyd", "running as %s (uid %ld, gid %ld)", c->mail_owner, (long)uid, (long)gid);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: convoyd [-c FILE] [-o name=value]... [-f|--foreground] [-d] "
               "[--check-config]\n"
               "  -c FILE           configuration file (default /etc/convoy/convoy.conf if it "
               "exists, else built-in defaults)\n"
               "  -o name=value     override a parameter (repeatable)\n"
               "  -f, --foreground  stay in the foreground and log to standard error\n"
               "  -d                foreground with debug logging\n"
               "  --check-config    check the configuration and exit (0 good, 78 bad)\n"
               "  -V, --version     print the version\n");
}

static void log_prepare_cb(uv_prepare_t *h)
{
    (void)h;
    log_flush();
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"foreground", no_argument, NULL, 'f'},
        {"check-config", no_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *conf_path = NULL;
    bool check_only = false, have_conf = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:o:fdhV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            conf_path = optarg;
            have_conf = true;
            break;
        case 'o':
            if (g_n_overrides == MAX_OVERRIDES) {
                fprintf(stderr, "convoyd: too many -o options\n");
                return EXIT_USAGE;
            }
            g_overrides[g_n_overrides++] = optarg;
            break;
        case 'f':
            g_foreground = true;
            break;
        case 'd':
            g_foreground = true;
            g_debug = true;
            break;
        case 'C':
            check_only = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("convoyd %s\n", CONVOY_VERSION);
            return 0;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "convoyd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!have_conf)
        conf_path = default_conf_path();

    struct buf errors;
    buf_init(&errors, 64 * 1024);
    struct conf *c = load(conf_path, &errors);
    if (!c) {
        fprintf(stderr, "%s", errors.data ? errors.data : "configuration error\n");
        buf_free(&errors);
        return EXIT_CONFIG;
    }
    buf_free(&errors);
    if (check_only) {
        printf("%s: configuration OK\n", conf_path ? conf_path : "built-in defaults");
        conf_unref(c);
        return 0;
    }

    /* mail_owner was checked when the file was read (it exists and is not
     * root); look it up again for its ids. */
    bool drop = c->mail_owner[0] && geteuid() == 0;
    uid_t owner_uid = 0;
    gid_t owner_gid = 0;
    char why[512] = "";
    if (drop && priv_lookup(c->mail_owner, &owner_uid, &owner_gid, why, sizeof(why)) != 0) {
        fprintf(stderr, "convoyd: mail_owner: %s\n", why);
        conf_unref(c);
        return EXIT_CONFIG;
    }

    signal(SIGPIPE, SIG_IGN);
    if (make_dirs(c->queue_directory) != 0) {
        fprintf(stderr, "convoyd: cannot create queue_directory %s: %s\n", c->queue_directory,
                strerror(errno));
        conf_unref(c);
        return 1;
    }
    if (drop && priv_chown_tree(c->queue_directory, owner_uid, owner_gid) != 0) {
        fprintf(stderr, "convoyd: cannot give queue_directory %s to %s: %s\n", c->queue_directory,
                c->mail_owner, strerror(errno));
        conf_unref(c);
        return 1;
    }
    g_lock_fd = take_lock(c->queue_directory);
    if (g_lock_fd < 0) {
        conf_unref(c);
        return 1;
    }
    if (!g_foreground && detach() != 0) {
        fprintf(stderr, "convoyd: cannot detach: %s\n", strerror(errno));
        conf_unref(c);
        return 1;
    }
    write_pid(g_lock_fd);
    setup_logging(c, g_foreground, g_debug);

    g_mta.loop = uv_default_loop();
    g_mta.conf = c;
    g_mta.conf_path = conf_path;
    g_mta.started_ms = time_now_ms();
    g_mta.reload = mta_reload;

    uv_signal_init(g_mta.loop, &sig_term);
    uv_signal_init(g_mta.loop, &sig_int);
    uv_signal_init(g_mta.loop, &sig_hup);
    uv_timer_init(g_mta.loop, &stop_timer);
    uv_timer_init(g_mta.loop, &watchdog_timer);
    uv_signal_start(&sig_term, signal_cb, SIGTERM);
    uv_signal_start(&sig_int, signal_cb, SIGINT);
    uv_signal_start(&sig_hup, signal_cb, SIGHUP);

    int status = 0;
    struct buf err;
    buf_init(&err, 4096);
    if (mta_queue_open(&g_mta, &err) != 0 || control_start(&g_mta, &err) != 0 ||
        submission_start(&g_mta, &err) != 0 || metrics_start(&g_mta, &err) != 0 ||
        mta_tlsrpt_start(&g_mta, &err) != 0 || mta_delivery_start(&g_mta, &err) != 0 ||
        become_owner(drop, owner_uid, owner_gid, &err) != 0) {
        log_err("convoyd", "fatal: %s", err.data ? err.data : "start-up failed");
        if (g_foreground)
            fprintf(stderr, "convoyd: %s\n", err.data ? err.data : "start-up failed");
        status = 1;
        tell_parent(1);
    } else {
        log_info("convoyd", "daemon started -- version %s, configuration %s", CONVOY_VERSION,
                 conf_path ? conf_path : "(built-in defaults)");
        notify("READY=1\nSTATUS=running\nMAINPID=%ld", (long)getpid());
        tell_parent(0);
        uint64_t wd = watchdog_ms();
        if (wd) {
            notify("WATCHDOG=1");
            uv_timer_start(&watchdog_timer, watchdog_cb, wd / 2, wd / 2 ? wd / 2 : 1);
        }
        /* Log lines of the loop thread go out in one write per loop
         * iteration, just before the loop blocks (base/log.c). The handle
         * is unref'd: it never keeps the loop alive on its own. */
        static uv_prepare_t log_prepare;
        uv_prepare_init(g_mta.loop, &log_prepare);
        uv_prepare_start(&log_prepare, log_prepare_cb);
        uv_unref((uv_handle_t *)&log_prepare);
        log_batch_begin();
        uv_run(g_mta.loop, UV_RUN_DEFAULT);
        log_batch_end();
    }
    buf_free(&err);

    submission_close(&g_mta);
    mta_delivery_close(&g_mta);
    control_stop(&g_mta);
    metrics_stop(&g_mta);
    mta_tlsrpt_close(&g_mta);
    mta_queue_close(&g_mta);
    uv_walk(g_mta.loop, close_walk_cb, NULL);
    uv_run(g_mta.loop, UV_RUN_DEFAULT);
    uv_loop_close(g_mta.loop);
    if (status == 0)
        log_info("convoyd", "daemon stopped");
    conf_unref(g_mta.conf);
    close(g_lock_fd);
    return status;
}
