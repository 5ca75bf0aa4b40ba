/*
 * ctl_client.c - convoyctl's side of the control socket, and the commands
 * that only talk to the daemon: status and reload.
 *
 * One request per connection: connect, send a line, read a line, close.
 * Blocking I/O with a poll(2) deadline is right for a command-line tool.
 */
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctl.h"

#define RESPONSE_MAX (64u << 20)

/* The name of the group that may use the control socket: the socket's, or
 * (when its directory is closed to us, as queue_directory is to strangers)
 * the directory's; a number when it has no name. */
static void daemon_group(const struct conf *c, const char *sock, char *out, size_t size)
{
    struct stat st;
    if (stat(sock, &st) != 0 && stat(c->queue_directory, &st) != 0) {
        str_copy(out, "of convoyd", size);
        return;
    }
    struct group *gr = getgrgid(st.st_gid);
    if (gr && gr->gr_name && gr->gr_name[0])
        str_copy(out, gr->gr_name, size);
    else
        snprintf(out, size, "%lu", (unsigned long)st.st_gid);
}

int ctl_request(const struct conf *c, json_t *request, json_t **response, int timeout_ms)
{
    char path[256];
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (settings_control_socket_path(c, path, sizeof(path)) != 0 ||
        strlen(path) >= sizeof(sun.sun_path)) {
        fprintf(stderr, "convoyctl: control socket path under %s is too long\n",
                c->queue_directory);
        return 1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "convoyctl: socket: %s\n", strerror(errno));
        return 1;
    }
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
        int e = errno;
        close(fd);
        if (e == ENOENT || e == ECONNREFUSED) {
            fprintf(stderr, "convoyctl: convoyd is not running (no control socket at %s)\n", path);
            return EXIT_NOT_RUNNING;
        }
        if (e == EACCES || e == EPERM) {
            char group[64];
            daemon_group(c, path, group, sizeof(group));
            fprintf(stderr,
                    "convoyctl: permission denied on %s: run as root or as a member of group %s "
                    "(only they may control convoyd)\n",
                    path, group);
            return 1;
        }
        fprintf(stderr, "convoyctl: connect %s: %s\n", path, strerror(e));
        return 1;
    }
    char *text = json_dumps(request, JSON_COMPACT);
    struct buf out;
    buf_init(&out, RESPONSE_MAX);
    int rc = 1;
    if (!text || buf_append_str(&out, text) || buf_append(&out, "\n", 1))
        goto done;
    for (size_t off = 0; off < out.len;) {
        ssize_t w = send(fd, out.data + off, out.len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "convoyctl: write to control socket: %s\n", strerror(errno));
            goto done;
        }
        off += (size_t)w;
    }
    buf_reset(&out);
    int64_t deadline = time_mono_ms() + timeout_ms;
    for (;;) {
        char *nl = out.len ? memchr(out.data, '\n', out.len) : NULL;
        if (nl) {
            json_error_t jerr;
            *response = json_loadb(out.data, (size_t)(nl - out.data), 0, &jerr);
            if (!*response || !json_is_object(*response)) {
                fprintf(stderr, "convoyctl: bad answer from convoyd: %s\n", jerr.text);
                json_decref(*response);
                *response = NULL;
                goto done;
            }
            rc = 0;
            goto done;
        }
        int64_t left = deadline - time_mono_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, (int)left) == 0) {
            fprintf(stderr, "convoyctl: no answer from convoyd within %d s\n", timeout_ms / 1000);
            goto done;
        }
        char chunk[65536];
        ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "convoyctl: convoyd closed the control connection\n");
            goto done;
        }
        if (buf_append(&out, chunk, (size_t)n) != 0) {
            fprintf(stderr, "convoyctl: answer from convoyd too large\n");
            goto done;
        }
    }
done:
    free(text);
    buf_free(&out);
    close(fd);
    return rc;
}

static bool has_flag(int argc, char **argv, const char *flag)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], flag) == 0)
            return true;
    return false;
}

/* "paused: example.com for 1h59m more: their MX is moving" per pause. */
static void print_pauses(json_t *a)
{
    if (json_array_size(a) == 0)
        printf("paused: no\n");
    size_t i;
    json_t *p;
    json_array_foreach(a, i, p)
    {
        const char *d = json_string_value(json_object_get(p, CTL_F_DOMAIN));
        json_t *left = json_object_get(p, CTL_F_REMAINING);
        char dur[48] = "";
        if (json_is_integer(left)) {
            long long t = json_integer_value(left), h = t / 3600, mi = t / 60 % 60, se = t % 60;
            if (t < 0)
                t = h = mi = se = 0;
            /* 1h59m5s; zero parts left out (a zero value prints no digits
             * with precision 0). */
            snprintf(dur, sizeof(dur), "%.0lld%s%.0lld%s%.0lld%s", h, h ? "h" : "", mi,
                     mi ? "m" : "", se, se || t == 0 ? "s" : "");
            if (t == 0)
                str_copy(dur, "0s", sizeof(dur));
        }
        printf("paused: %s%s%s%s: %s\n", d ? d : "all delivery", dur[0] ? " for " : "", dur,
               dur[0] ? " more" : " until resumed",
               json_string_value(json_object_get(p, CTL_F_REASON)));
    }
}

/* "dead": the destinations convoyd marked dead, one a line. */
static void print_dead(json_t *a)
{
    if (json_array_size(a) == 0) {
        printf("dead: none\n");
        return;
    }
    size_t i;
    json_t *d;
    json_array_foreach(a, i, d)
    {
        printf("dead: %s failures=%lld queued=%lld%s\n",
               json_string_value(json_object_get(d, "destination")),
               (long long)json_integer_value(json_object_get(d, "failures")),
               (long long)json_integer_value(json_object_get(d, "queued")),
               json_is_true(json_object_get(d, "probing")) ? " probing" : "");
    }
}

/* "shared_state": one line for the connection, one per node of the fleet. */
static void print_shared(json_t *o)
{
    printf("shared_state: %s %s node=%s rtt=%.2fms avg=%.2fms fallback_share=%.3g "
           "fleet_size=%lld\n",
           json_string_value(json_object_get(o, "url")),
           json_string_value(json_object_get(o, "state")),
           json_string_value(json_object_get(o, "node")),
           json_number_value(json_object_get(o, "rtt_ms")),
           json_number_value(json_object_get(o, "rtt_avg_ms")),
           json_number_value(json_object_get(o, "fallback_share")),
           (long long)json_integer_value(json_object_get(o, "fleet_size")));
    json_t *tls_version = json_object_get(o, "tls_version");
    printf("shared_state.tls: %s%s%s\n", json_is_true(json_object_get(o, "tls")) ? "on" : "off",
           tls_version ? " " : "", tls_version ? json_string_value(tls_version) : "");
    json_t *last_error = json_object_get(o, "last_error");
    if (last_error)
        printf("shared_state.last_error: %s\n", json_string_value(last_error));
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(o, "fleet"), i, n)
    {
        printf("fleet: %s (seen %llds ago)\n", json_string_value(json_object_get(n, "node")),
               (long long)json_integer_value(json_object_get(n, "seen_ago")));
    }
}

int ctl_status(struct conf *c, int argc, char **argv)
{
    bool as_json = has_flag(argc, argv, "--json");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") != 0) {
            fprintf(stderr, "convoyctl: status: unknown argument %s\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    json_t *req = json_pack("{s:s}", CTL_F_CMD, CTL_CMD_STATUS);
    json_t *resp = NULL;
    int rc = ctl_request(c, req, &resp, 10000);
    json_decref(req);
    if (rc == EXIT_NOT_RUNNING && as_json)
        printf("{\"running\": false}\n");
    if (rc != 0)
        return rc;
    if (as_json) {
        json_object_del(resp, "ok");
        char *s = json_dumps(resp, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("%s\n", s ? s : "{}");
        free(s);
    } else {
        /* Scalars one per line, objects flattened one level: "queue.deferred: 3". */
        const char *key;
        json_t *v;
        json_object_foreach(resp, key, v)
        {
            if (strcmp(key, "ok") == 0)
                continue;
            if (strcmp(key, "paused") == 0 && json_is_array(v)) {
                print_pauses(v);
                continue;
            }
            if (strcmp(key, "dead") == 0 && json_is_array(v)) {
                print_dead(v);
                continue;
            }
            if (strcmp(key, "shared_state") == 0 && json_is_object(v)) {
                print_shared(v);
                continue;
            }
            if (json_is_object(v)) {
                const char *k2;
                json_t *v2;
                json_object_foreach(v, k2, v2)
                {
                    char *s = json_dumps(v2, JSON_ENCODE_ANY | JSON_COMPACT);
                    printf("%s.%s: %s\n", key, k2, s ? s : "?");
                    free(s);
                }
                continue;
            }
            if (json_is_string(v)) {
                printf("%s: %s\n", key, json_string_value(v));
                continue;
            }
            char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
            printf("%s: %s\n", key, s ? s : "?");
            free(s);
        }
    }
    json_decref(resp);
    return 0;
}

int ctl_reload(struct conf *c, int argc, char **argv)
{
    (void)argv;
    if (argc != 1) {
        fprintf(stderr, "convoyctl: reload takes no arguments\n");
        return EXIT_USAGE;
    }
    json_t *req = json_pack("{s:s}", CTL_F_CMD, CTL_CMD_RELOAD);
    json_t *resp = NULL;
    int rc = ctl_request(c, req, &resp, 60000);
    json_decref(req);
    if (rc != 0)
        return rc;
    if (!json_is_true(json_object_get(resp, CTL_F_OK))) {
        const char *e = json_string_value(json_object_get(resp, CTL_F_ERROR));
        fprintf(stderr, "convoyctl: reload rejected, configuration unchanged:\n%s",
                e ? e : "unknown error\n");
        json_decref(resp);
        return 1;
    }
    printf("Configuration reloaded.\n");
    json_decref(resp);
    return 0;
}

/* Print the daemon's error and return 1, or return 0 when it said ok. */
static int answer_ok(const char *what, json_t *resp)
{
    if (json_is_true(json_object_get(resp, CTL_F_OK)))
        return 0;
    const char *e = json_string_value(json_object_get(resp, CTL_F_ERROR));
    fprintf(stderr, "convoyctl: %s: %s\n", what, e ? e : "failed");
    return 1;
}

/* A warning that came with an answer (a pause not saved to disk). */
static void print_warning(json_t *resp)
{
    const char *w = json_string_value(json_object_get(resp, CTL_F_WARNING));
    if (w)
        fprintf(stderr, "convoyctl: warning: %s\n", w);
}

int ctl_pause(struct conf *c, int argc, char **argv)
{
    const char *domain = NULL, *reason = NULL, *dur = NULL;
    for (int i = 1; i < argc; i++) {
        const char **slot = strcmp(argv[i], "--domain") == 0   ? &domain
                            : strcmp(argv[i], "--for") == 0    ? &dur
                            : strcmp(argv[i], "--reason") == 0 ? &reason
                                                               : NULL;
        if (!slot || i + 1 >= argc) {
            fprintf(stderr, "usage: convoyctl pause [--domain D] [--for DURATION] --reason TEXT\n");
            return EXIT_USAGE;
        }
        *slot = argv[++i];
    }
    if (!reason || !reason[0]) {
        fprintf(stderr, "convoyctl: pause: say why with --reason (it is shown in status)\n");
        return EXIT_USAGE;
    }
    int64_t secs = 0;
    if (dur && (time_parse_duration(dur, &secs) != 0 || secs <= 0)) {
        fprintf(stderr, "convoyctl: pause: bad duration \"%s\" (like 30m, 2h, 1d)\n", dur);
        return EXIT_USAGE;
    }
    json_t *req = json_pack("{s:s, s:s}", CTL_F_CMD, CTL_CMD_PAUSE, CTL_F_REASON, reason);
    if (domain)
        json_object_set_new(req, CTL_F_DOMAIN, json_string(domain));
    if (secs)
        json_object_set_new(req, CTL_F_FOR, json_integer((json_int_t)secs));
    json_t *resp = NULL;
    int rc = ctl_request(c, req, &resp, 10000);
    json_decref(req);
    if (rc != 0)
        return rc;
    rc = answer_ok("pause", resp);
    print_warning(resp);
    json_decref(resp);
    if (rc)
        return rc;
    printf("Delivery%s%s paused%s%s.\n", domain ? " to " : "", domain ? domain : "",
           dur ? " for " : " until resumed", dur ? dur : "");
    return 0;
}

int ctl_resume(struct conf *c, int argc, char **argv)
{
    const char *domain = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--domain") != 0 || i + 1 >= argc) {
            fprintf(stderr, "usage: convoyctl resume [--domain D]\n");
            return EXIT_USAGE;
        }
        domain = argv[++i];
    }
    json_t *req = json_pack("{s:s}", CTL_F_CMD, CTL_CMD_RESUME);
    if (domain)
        json_object_set_new(req, CTL_F_DOMAIN, json_string(domain));
    json_t *resp = NULL;
    int rc = ctl_request(c, req, &resp, 60000);
    json_decref(req);
    if (rc != 0)
        return rc;
    rc = answer_ok("resume", resp);
    print_warning(resp);
    json_int_t n = json_integer_value(json_object_get(resp, CTL_F_RESUMED));
    json_decref(resp);
    if (rc)
        return rc;
    if (n == 0) {
        printf("Delivery%s%s was not paused.\n", domain ? " to " : "", domain ? domain : "");
        return 0;
    }
    printf("Resumed %lld pause%s.\n", (long long)n, n == 1 ? "" : "s");
    return 0;
}
