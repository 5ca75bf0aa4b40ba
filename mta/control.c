/*
 * control.c - the daemon's control socket: line-delimited JSON over a UNIX
 * stream socket, <queue_directory>/control.sock, mode 0660.
 *
 * Protocol: the client sends one JSON object per line,
 *   {"cmd": "status", ...arguments...}
 * and gets one JSON object per line back, in order:
 *   {"ok": true, ...} or {"ok": false, "error": "text"}.
 *
 * Commands (request fields besides "cmd" -> response fields besides "ok"):
 *   status        -> running, pid, version, uptime (s), config_file,
 *                    queue_directory, stopping, and what status hooks add:
 *                    queue {messages, queued, active, deferred, held,
 *                    delivered, bounced, map_size, map_used}, paused [{domain
 *                    (null: everything), reason, since, until, remaining}],
 *                    and the delivery engine's own (MTA-STS policy cache).
 *   reload        -> config_file; or ok false with "error": one problem a line.
 *   queue.retry, queue.hold, queue.release, queue.delete, queue.bounce
 *                 {ids: [ID...] (at most 100000), reason: TEXT (bounce only,
 *                 optional)} -> done (messages acted on), recipients (bounce:
 *                 recipients bounced), missing [ID] (not in the queue),
 *                 skipped [ID] (bounce: every open recipient in flight),
 *                 failed [{id, error}]. The answer comes when every change
 *                 is committed. A bad ID fails the whole request.
 *   pause         {domain: D or null (everything), for: seconds or null
 *                 (until resumed), reason: TEXT (required)} -> domain, until
 *                 (epoch seconds or null), saved (true once the pause
 *                 file is on disk; false with "warning": the pause is in
 *                 force but would not survive a restart).
 *   resume        {domain: D or null (every pause)} -> resumed (pauses
 *                 ended), saved and warning as for pause.
 *   reload        also refuses what cannot change while the daemon runs
 *                 (queue_directory), naming the parameter.
 * Errors are {"ok": false, "error": "text"}; unknown commands get one too.
 *
 * Who may use it: the kernel checks write permission on the socket file
 * (owner and group of the daemon, mode 0660), so root and members of the
 * daemon's group get in and others get EACCES, which convoyctl explains.
 *
 * Invariants: a request line is at most CTL_LINE_MAX bytes (longer input
 * closes the connection with an error reply); handlers may answer later
 * (control_reply() from any loop callback); a connection that goes away
 * while a handler works is freed only after that handler has replied.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "mta.h"

#define CONTROL_MAX_HANDLERS 64
#define CONTROL_MAX_HOOKS 16
#define CONTROL_MAX_CLIENTS 64

struct control_conn;

struct control_req {
    struct control_conn *conn;
};

struct control_conn {
    uv_pipe_t pipe;
    struct mta *m;
    struct buf in;
    struct control_req *pending; /* the request being handled, if any */
    bool closing;
    bool read_paused;
};

static struct {
    const char *cmd;
    control_handler fn;
} handlers[CONTROL_MAX_HANDLERS];
static size_t n_handlers;

static control_status_hook status_hooks[CONTROL_MAX_HOOKS];
static size_t n_hooks;

static uv_pipe_t listener;
static bool listening;
static size_t n_clients;
static char sock_path[256];

void control_register(const char *cmd, control_handler fn)
{
    for (size_t i = 0; i < n_handlers; i++) {
        if (strcmp(handlers[i].cmd, cmd) == 0) {
            handlers[i].fn = fn;
            return;
        }
    }
    if (n_handlers < CONTROL_MAX_HANDLERS) {
        handlers[n_handlers].cmd = cmd;
        handlers[n_handlers].fn = fn;
        n_handlers++;
    }
}

void control_add_status_hook(control_status_hook fn)
{
    if (n_hooks < CONTROL_MAX_HOOKS)
        status_hooks[n_hooks++] = fn;
}

/* ---- connections ------------------------------------------------------ */

static void conn_free_cb(uv_handle_t *h)
{
    struct control_conn *cc = h->data;
    buf_free(&cc->in);
    free(cc);
    n_clients--;
}

static void conn_close(struct control_conn *cc)
{
    if (cc->closing)
        return;
    cc->closing = true;
    uv_read_stop((uv_stream_t *)&cc->pipe);
    /* A handler still working keeps the connection until it replies. */
    if (!cc->pending)
        uv_close((uv_handle_t *)&cc->pipe, conn_free_cb);
}

struct write_req {
    uv_write_t w;
    char *data;
    struct control_conn *cc;
    bool close_after;
};

static void write_cb(uv_write_t *w, int status)
{
    struct write_req *wr = (struct write_req *)w;
    struct control_conn *cc = wr->cc;
    bool close_after = wr->close_after;
    free(wr->data);
    free(wr);
    if (status < 0 || close_after)
        conn_close(cc);
}

static void send_json(struct control_conn *cc, json_t *obj, bool close_after)
{
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    struct write_req *wr = calloc(1, sizeof(*wr));
    if (!text || !wr) {
        free(text);
        free(wr);
        conn_close(cc);
        return;
    }
    size_t len = strlen(text);
    char *line = realloc(text, len + 2);
    if (!line) {
        free(text);
        free(wr);
        conn_close(cc);
        return;
    }
    line[len] = '\n';
    line[len + 1] = '\0';
    wr->data = line;
    wr->cc = cc;
    wr->close_after = close_after;
    uv_buf_t b = uv_buf_init(line, (unsigned)len + 1);
    if (uv_write(&wr->w, (uv_stream_t *)&cc->pipe, &b, 1, write_cb) != 0) {
        free(line);
        free(wr);
        conn_close(cc);
    }
}

static void process_lines(struct control_conn *cc);

void control_reply(struct control_req *req, json_t *response)
{
    struct control_conn *cc = req->conn;
    free(req);
    cc->pending = NULL;
    if (cc->closing) {
        json_decref(response);
        uv_close((uv_handle_t *)&cc->pipe, conn_free_cb);
        return;
    }
    if (!json_object_get(response, CTL_F_OK))
        json_object_set_new(response, CTL_F_OK, json_true());
    send_json(cc, response, false);
    process_lines(cc); /* pipelined requests wait their turn */
}

void control_reply_error(struct control_req *req, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    control_reply(req, json_pack("{s:b, s:s}", "ok", 0, "error", text));
}

static void handle_status(struct mta *m, struct control_req *req, json_t *request)
{
    (void)request;
    json_t *r = json_object();
    json_object_set_new(r, "running", json_true());
    json_object_set_new(r, "pid", json_integer(getpid()));
    json_object_set_new(r, "version", json_string(CONVOY_VERSION));
    json_object_set_new(r, "uptime", json_integer((time_now_ms() - m->started_ms) / 1000));
    json_object_set_new(r, CTL_F_CONFIG_FILE,
                        m->conf_path ? json_string(m->conf_path) : json_null());
    json_object_set_new(r, "queue_directory", json_string(m->conf->queue_directory));
    json_object_set_new(r, "stopping", json_boolean(m->stopping));
    for (size_t i = 0; i < n_hooks; i++)
        status_hooks[i](m, r);
    control_reply(req, r);
}

static void handle_reload(struct mta *m, struct control_req *req, json_t *request)
{
    (void)request;
    struct buf errors;
    buf_init(&errors, 64 * 1024);
    if (m->reload(m, &errors) != 0) {
        json_t *r =
            json_pack("{s:b, s:s}", "ok", 0, "error", errors.data ? errors.data : "reload failed");
        control_reply(req, r);
    } else {
        control_reply(req, json_pack("{s:b, s:s*}", "ok", 1, "config_file", m->conf_path));
    }
    buf_free(&errors);
}

/* Handle complete lines while no request is pending. */
static void process_lines(struct control_conn *cc)
{
    while (!cc->pending && !cc->closing && cc->in.len) {
        char *nl = memchr(cc->in.data, '\n', cc->in.len);
        if (!nl)
            break;
        size_t n = (size_t)(nl - cc->in.data);
        json_error_t jerr;
        json_t *request = json_loadb(cc->in.data, n, 0, &jerr);
        buf_consume(&cc->in, n + 1);
        const char *cmd = request ? json_string_value(json_object_get(request, CTL_F_CMD)) : NULL;
        if (!request || !json_is_object(request) || !cmd) {
            json_decref(request);
            send_json(cc,
                      json_pack("{s:b, s:s}", "ok", 0, "error",
                                "bad request: expected a JSON object with \"cmd\""),
                      false);
            continue;
        }
        control_handler fn = NULL;
        for (size_t i = 0; i < n_handlers; i++)
            if (strcmp(handlers[i].cmd, cmd) == 0)
                fn = handlers[i].fn;
        if (!fn) {
            char text[300];
            snprintf(text, sizeof(text), "unknown command \"%.200s\"", cmd);
            json_decref(request);
            send_json(cc, json_pack("{s:b, s:s}", "ok", 0, "error", text), false);
            continue;
        }
        struct control_req *req = calloc(1, sizeof(*req));
        if (!req) {
            json_decref(request);
            conn_close(cc);
            return;
        }
        req->conn = cc;
        cc->pending = req;
        fn(cc->m, req, request);
        json_decref(request);
    }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    static char slab[65536];
    *b = uv_buf_init(slab, sizeof(slab));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct control_conn *cc = s->data;
    if (nread < 0) {
        conn_close(cc);
        return;
    }
    if (nread == 0)
        return;
    if (buf_append(&cc->in, b->base, (size_t)nread) != 0) {
        send_json(cc, json_pack("{s:b, s:s}", "ok", 0, "error", "request too long"), true);
        uv_read_stop(s);
        return;
    }
    process_lines(cc);
}

static void connection_cb(uv_stream_t *server, int status)
{
    struct mta *m = server->data;
    if (status < 0)
        return;
    struct control_conn *cc = calloc(1, sizeof(*cc));
    if (!cc)
        return;
    cc->m = m;
    buf_init(&cc->in, CTL_LINE_MAX);
    uv_pipe_init(m->loop, &cc->pipe, 0);
    cc->pipe.data = cc;
    n_clients++;
    if (uv_accept(server, (uv_stream_t *)&cc->pipe) != 0 || n_clients > CONTROL_MAX_CLIENTS) {
        uv_close((uv_handle_t *)&cc->pipe, conn_free_cb);
        return;
    }
    uv_read_start((uv_stream_t *)&cc->pipe, alloc_cb, read_cb);
}

/* ---- the listener ----------------------------------------------------- */

int control_start(struct mta *m, struct buf *err)
{
    control_register(CTL_CMD_STATUS, handle_status);
    control_register(CTL_CMD_RELOAD, handle_reload);
    control_queue_register();
    if (settings_control_socket_path(m->conf, sock_path, sizeof(sock_path)) != 0 ||
        strlen(sock_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        buf_printf(err, "control socket path %s/control.sock is too long",
                   m->conf->queue_directory);
        return ERR_TOOBIG;
    }
    /* We hold the queue lock, so a socket file left here is stale. */
    unlink(sock_path);
    uv_pipe_init(m->loop, &listener, 0);
    listener.data = m;
    mode_t old = umask(0117); /* the socket is created 0660 */
    int rc = uv_pipe_bind(&listener, sock_path);
    umask(old);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&listener, 16, connection_cb);
    if (rc != 0) {
        buf_printf(err, "control socket %s: %s", sock_path, uv_strerror(rc));
        uv_close((uv_handle_t *)&listener, NULL);
        return ERR_IO;
    }
    chmod(sock_path, 0660);
    listening = true;
    return 0;
}

void control_stop(struct mta *m)
{
    (void)m;
    if (!listening)
        return;
    listening = false;
    uv_close((uv_handle_t *)&listener, NULL);
    unlink(sock_path);
}
