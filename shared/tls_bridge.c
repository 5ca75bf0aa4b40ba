/*
 * tls_bridge.c - the unix socket to TLS relay of rediss:// (contract in
 * tls_bridge.h).
 *
 * One struct link per accepted connection: a uv_pipe_t (the client) and
 * the current struct tls_stream (Redis). Its TLS side: resolve HOST
 * (uv_getaddrinfo, unless it is an address), connect to each address in
 * turn until one answers, start TLS (TLS_VERIFY_HOST), then relay.
 *
 * Queues: client -> Redis is the stream's own write queue (bounded by
 * write_max), and before the handshake the link's pending buffer; Redis
 * -> client is the uv_write requests on the pipe (to_client bytes). A
 * queue at buf_max stops reads of the side that fills it; reads resume
 * when it is below half.
 *
 * A link is freed when its pipe is closed, every stream it made has
 * called on_close and no resolve is in flight (link_maybe_free()); the
 * bridge when its listener is closed and no link is left.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "tls.h"
#include "tls_bridge.h"

#define COMP "shared"
#define ADDRS_MAX 8

struct link {
    struct tls_bridge *b;
    struct link *prev, *next;
    uv_pipe_t pipe;
    uv_shutdown_t shut;
    uv_getaddrinfo_t gai;
    struct tls_stream *up; /* the current TLS side; NULL once closed or shut down */
    unsigned streams;      /* streams made and not yet closed */
    struct sockaddr_storage addrs[ADDRS_MAX];
    size_t naddrs, next_addr;
    int last_uv;        /* the last connect error */
    struct buf pending; /* client bytes before the handshake is over */
    size_t to_client;   /* bytes in uv_write requests on the pipe */
    bool resolving, hs_done, client_paused, up_paused;
    bool client_ended; /* the client closed (or was closed): no error reports */
    bool closing, pipe_closed, reported;
};

struct tls_bridge {
    uv_loop_t *loop;
    uv_pipe_t listener;
    struct tls_ctx *ctx;
    char host[256];
    char port[8];
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    size_t buf_max;
    tls_bridge_error_cb *on_error;
    tls_bridge_up_cb *on_up;
    void *arg;
    struct link *links;
    size_t nlinks;
    bool closing, listener_closed;
    char rbuf[64 * 1024]; /* pipe reads: consumed inside the read callback */
};

struct wreq {
    uv_write_t req;
    struct link *l;
    size_t n;
    char data[];
};

static void link_close(struct link *l);

static void bridge_maybe_free(struct tls_bridge *b)
{
    if (b->closing && b->listener_closed && !b->links) {
        tls_ctx_free(b->ctx);
        free(b);
    }
}

static void link_maybe_free(struct link *l)
{
    if (!l->pipe_closed || l->streams || l->resolving)
        return;
    struct tls_bridge *b = l->b;
    if (l->prev)
        l->prev->next = l->next;
    else
        b->links = l->next;
    if (l->next)
        l->next->prev = l->prev;
    b->nlinks--;
    buf_free(&l->pending);
    free(l);
    bridge_maybe_free(b);
}

/* The TLS side failed: report once (unless the client ended first), then
 * end the link. */
static void link_fail_as(struct link *l, bool handshake, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void link_fail_as(struct link *l, bool handshake, const char *fmt, ...)
{
    struct tls_bridge *b = l->b;
    if (!l->reported && !l->client_ended && !l->closing && !b->closing && b->on_error) {
        l->reported = true;
        char why[300];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        b->on_error(b->arg, why, handshake);
    }
    link_close(l);
}

#define link_fail(l, ...) link_fail_as((l), false, __VA_ARGS__)

static void up_drop(struct link *l)
{
    if (l->up) {
        tls_stream_close(l->up);
        l->up = NULL;
    }
}

static void on_pipe_closed(uv_handle_t *h)
{
    struct link *l = h->data;
    l->pipe_closed = true;
    link_maybe_free(l);
}

static void link_close(struct link *l)
{
    if (l->closing)
        return;
    l->closing = true;
    up_drop(l);
    if (l->resolving)
        uv_cancel((uv_req_t *)&l->gai);
    if (!uv_is_closing((uv_handle_t *)&l->pipe))
        uv_close((uv_handle_t *)&l->pipe, on_pipe_closed);
}

/* ---- Redis -> client -------------------------------------------------- */

static void on_client_written(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct link *l = w->l;
    l->to_client -= w->n;
    free(w);
    if (status < 0) {
        l->client_ended = true;
        link_close(l);
        return;
    }
    if (l->up_paused && l->up && l->to_client < l->b->buf_max / 2) {
        l->up_paused = false;
        tls_stream_read_start(l->up);
    }
}

static void up_read(void *arg, const void *data, size_t n)
{
    struct link *l = arg;
    if (!l->up || l->closing || n == 0)
        return;
    struct wreq *w = malloc(sizeof(*w) + n);
    if (!w) {
        link_fail(l, "out of memory");
        return;
    }
    w->l = l;
    w->n = n;
    memcpy(w->data, data, n);
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)n);
    int rc = uv_write(&w->req, (uv_stream_t *)&l->pipe, &buf, 1, on_client_written);
    if (rc < 0) {
        free(w);
        l->client_ended = true;
        link_close(l);
        return;
    }
    l->to_client += n;
    if (l->to_client >= l->b->buf_max && !l->up_paused) {
        l->up_paused = true;
        tls_stream_read_stop(l->up);
    }
}

static void on_client_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    link_close(req->data);
}

static void up_end(void *arg, int status, int uv_status)
{
    struct link *l = arg;
    if (!l->up || l->closing)
        return;
    struct tls_bridge *b = l->b;
    const char *how = status == 0           ? "closed by the server (close_notify)"
                      : status == ERR_TLS   ? "ended by a TLS error"
                      : uv_status == UV_EOF ? "closed by the server"
                      : uv_status != 0      ? uv_strerror(uv_status)
                                            : "lost";
    if (!l->reported && !l->client_ended && !b->closing && b->on_error) {
        l->reported = true;
        char why[300];
        snprintf(why, sizeof(why), "TLS connection to %s:%s %s", b->host, b->port, how);
        b->on_error(b->arg, why, false);
    }
    up_drop(l);
    /* What Redis sent goes to the client first, then the client's end. */
    l->shut.data = l;
    if (uv_shutdown(&l->shut, (uv_stream_t *)&l->pipe, on_client_shutdown) != 0)
        link_close(l);
}

/* ---- client -> Redis -------------------------------------------------- */

static void client_pause_if_full(struct link *l)
{
    size_t queued = l->hs_done && l->up ? tls_stream_queued(l->up) : l->pending.len;
    if (queued >= l->b->buf_max && !l->client_paused) {
        l->client_paused = true;
        uv_read_stop((uv_stream_t *)&l->pipe);
    }
}

static int client_read_start(struct link *l);

static void client_resume_if_room(struct link *l)
{
    size_t queued = l->hs_done && l->up ? tls_stream_queued(l->up) : l->pending.len;
    if (l->client_paused && !l->closing && queued < l->b->buf_max / 2) {
        l->client_paused = false;
        client_read_start(l);
    }
}

static void client_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct link *l = h->data;
    *buf = uv_buf_init(l->b->rbuf, sizeof(l->b->rbuf));
}

static void on_client_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct link *l = st->data;
    if (l->closing)
        return;
    if (nread < 0) {
        /* The client is done: flush what it sent, then close_notify. */
        l->client_ended = true;
        if (l->up && l->hs_done) {
            tls_stream_shutdown(l->up);
            l->up = NULL;
        }
        link_close(l);
        return;
    }
    if (nread == 0)
        return;
    if (!l->hs_done) {
        if (buf_append(&l->pending, buf->base, (size_t)nread) != 0) {
            link_fail(l, "out of memory");
            return;
        }
    } else if (l->up) {
        int rc = tls_stream_write(l->up, buf->base, (size_t)nread);
        if (rc != 0) {
            link_fail(l, "TLS connection to %s:%s: write: %s", l->b->host, l->b->port, err_str(rc));
            return;
        }
    }
    client_pause_if_full(l);
}

static int client_read_start(struct link *l)
{
    return uv_read_start((uv_stream_t *)&l->pipe, client_alloc, on_client_read);
}

static void up_written(void *arg, int status)
{
    struct link *l = arg;
    if (!l->up || l->closing)
        return;
    if (status != 0) {
        link_fail(l, "TLS connection to %s:%s: write: %s", l->b->host, l->b->port,
                  uv_strerror(status));
        return;
    }
    client_resume_if_room(l);
}

/* ---- the TLS side ----------------------------------------------------- */

static void up_handshake(void *arg, int status, const struct tls_facts *f)
{
    struct link *l = arg;
    if (!l->up || l->closing)
        return;
    struct tls_bridge *b = l->b;
    if (status != 0) {
        link_fail_as(l, true, "TLS to %s:%s: %s", b->host, b->port,
                     f && f->text[0] ? f->text : "the handshake failed");
        return;
    }
    l->hs_done = true;
    if (b->on_up)
        b->on_up(b->arg, f ? f->version : "", f ? f->cipher : "");
    if (l->pending.len) {
        int rc = tls_stream_write(l->up, l->pending.data, l->pending.len);
        buf_reset(&l->pending);
        if (rc != 0) {
            link_fail(l, "TLS connection to %s:%s: write: %s", b->host, b->port, err_str(rc));
            return;
        }
    }
    client_pause_if_full(l);
    client_resume_if_room(l);
}

static void up_closed(void *arg)
{
    struct link *l = arg;
    l->streams--;
    link_maybe_free(l);
}

static void connect_next(struct link *l);

static void up_connected(void *arg, int status)
{
    struct link *l = arg;
    if (!l->up || l->closing)
        return;
    if (status != 0) {
        l->last_uv = status;
        up_drop(l);
        l->next_addr++;
        connect_next(l);
        return;
    }
    struct tls_bridge *b = l->b;
    int rc = tls_stream_start_tls(l->up, b->ctx, b->host, TLS_VERIFY_HOST);
    if (rc == 0)
        rc = tls_stream_read_start(l->up) == 0 ? 0 : ERR_IO;
    if (rc != 0)
        link_fail(l, "TLS to %s:%s: cannot start: %s", b->host, b->port, err_str(rc));
}

static const struct tls_stream_callbacks up_cbs = {
    .on_connect = up_connected,
    .on_read = up_read,
    .on_handshake = up_handshake,
    .on_end = up_end,
    .on_written = up_written,
    .on_close = up_closed,
};

static void connect_next(struct link *l)
{
    struct tls_bridge *b = l->b;
    while (l->next_addr < l->naddrs) {
        struct tls_stream_opts opts = {.write_max = 2 * b->buf_max + sizeof(b->rbuf)};
        struct tls_stream *s = tls_stream_new(b->loop, &up_cbs, l, &opts);
        if (!s) {
            link_fail(l, "out of memory");
            return;
        }
        l->streams++;
        l->up = s;
        int rc = tls_stream_connect(s, (const struct sockaddr *)&l->addrs[l->next_addr]);
        if (rc == 0)
            return;
        l->last_uv = rc;
        up_drop(l);
        l->next_addr++;
    }
    link_fail(l, "connect to %s:%s: %s", b->host, b->port,
              l->last_uv ? uv_strerror(l->last_uv) : "no address");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct link *l = req->data;
    l->resolving = false;
    if (l->closing) {
        uv_freeaddrinfo(res);
        link_maybe_free(l);
        return;
    }
    if (status != 0) {
        link_fail(l, "resolve %s: %s", l->b->host, uv_strerror(status));
        return;
    }
    for (struct addrinfo *a = res; a && l->naddrs < ADDRS_MAX; a = a->ai_next) {
        if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) &&
            a->ai_addrlen <= sizeof(l->addrs[0]))
            memcpy(&l->addrs[l->naddrs++], a->ai_addr, a->ai_addrlen);
    }
    uv_freeaddrinfo(res);
    connect_next(l);
}

static void start_upstream(struct link *l)
{
    struct tls_bridge *b = l->b;
    unsigned port = (unsigned)atoi(b->port);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&l->addrs[0];
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&l->addrs[0];
    if (uv_ip4_addr(b->host, (int)port, v4) == 0 || uv_ip6_addr(b->host, (int)port, v6) == 0) {
        l->naddrs = 1;
        connect_next(l);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    l->gai.data = l;
    int rc = uv_getaddrinfo(b->loop, &l->gai, on_resolved, b->host, b->port, &hints);
    if (rc != 0) {
        link_fail(l, "resolve %s: %s", b->host, uv_strerror(rc));
        return;
    }
    l->resolving = true;
}

static void on_accept(uv_stream_t *server, int status)
{
    struct tls_bridge *b = server->data;
    if (status < 0 || b->closing)
        return;
    struct link *l = calloc(1, sizeof(*l));
    if (!l) {
        log_warn(COMP, "TLS bridge: out of memory for a connection");
        return;
    }
    buf_init(&l->pending, b->buf_max + sizeof(b->rbuf));
    l->b = b;
    l->next = b->links;
    if (b->links)
        b->links->prev = l;
    b->links = l;
    b->nlinks++;
    uv_pipe_init(b->loop, &l->pipe, 0);
    l->pipe.data = l;
    if (uv_accept(server, (uv_stream_t *)&l->pipe) != 0 || client_read_start(l) != 0) {
        l->client_ended = true;
        link_close(l);
        return;
    }
    start_upstream(l);
}

/* ---- the bridge ------------------------------------------------------- */

/* DIR exists as our directory, mode 0700; a stale socket in it is gone. */
static int prepare_dir(const char *dir, const char *path, struct buf *err)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        buf_printf(err, "shared_state: cannot make %s: %s", dir, strerror(errno));
        return ERR_IO;
    }
    struct stat st;
    /* Root starts convoyd and gives queue_directory to mail_owner after
     * (mta/convoyd.c): at the next start the directory is mail_owner's. */
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
        (st.st_uid != geteuid() && geteuid() != 0)) {
        buf_printf(err, "shared_state: %s is not a directory of this user", dir);
        return ERR_INVAL;
    }
    if ((st.st_mode & 0777) != 0700 && chmod(dir, 0700) != 0) {
        buf_printf(err, "shared_state: chmod 0700 %s: %s", dir, strerror(errno));
        return ERR_IO;
    }
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            buf_printf(err, "shared_state: %s exists and is not a socket", path);
            return ERR_INVAL;
        }
        unlink(path);
    }
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct tls_bridge *b = h->data;
    b->listener_closed = true;
    bridge_maybe_free(b);
}

int tls_bridge_new(const struct tls_bridge_options *o, struct tls_bridge **out, struct buf *err)
{
    *out = NULL;
    struct tls_bridge *b = calloc(1, sizeof(*b));
    if (!b)
        return ERR_NOMEM;
    b->loop = o->loop;
    b->buf_max = o->buf_max ? o->buf_max : TLS_BRIDGE_BUF_MAX;
    b->on_error = o->on_error;
    b->on_up = o->on_up;
    b->arg = o->arg;
    str_copy(b->host, o->host, sizeof(b->host));
    snprintf(b->port, sizeof(b->port), "%u", (unsigned)o->port);
    int n = snprintf(b->path, sizeof(b->path), "%s/%s", o->dir, TLS_BRIDGE_SOCKET);
    if (n < 0 || (size_t)n >= sizeof(b->path)) {
        buf_printf(err, "shared_state: the TLS socket path %s/%s is too long (queue_directory)",
                   o->dir, TLS_BRIDGE_SOCKET);
        free(b);
        return ERR_INVAL;
    }
    char why[256] = "";
    b->ctx = tls_ctx_client_new(o->ca_file && o->ca_file[0] ? o->ca_file : NULL, why, sizeof(why));
    if (!b->ctx) {
        buf_printf(err, "shared_state_tls_CAfile: %s", why[0] ? why : "cannot load");
        free(b);
        return ERR_INVAL;
    }
    int rc = prepare_dir(o->dir, b->path, err);
    if (rc != 0) {
        tls_ctx_free(b->ctx);
        free(b);
        return rc;
    }
    uv_pipe_init(b->loop, &b->listener, 0);
    b->listener.data = b;
    int uv = uv_pipe_bind(&b->listener, b->path);
    if (uv == 0 && chmod(b->path, 0600) != 0)
        uv = uv_translate_sys_error(errno);
    if (uv == 0)
        uv = uv_listen((uv_stream_t *)&b->listener, 64, on_accept);
    if (uv != 0) {
        buf_printf(err, "shared_state: TLS socket %s: %s", b->path, uv_strerror(uv));
        b->closing = true;
        uv_close((uv_handle_t *)&b->listener, on_listener_closed);
        unlink(b->path);
        return ERR_IO;
    }
    *out = b;
    return 0;
}

const char *tls_bridge_path(const struct tls_bridge *b)
{
    return b->path;
}

size_t tls_bridge_links(const struct tls_bridge *b)
{
    return b ? b->nlinks : 0;
}

size_t tls_bridge_queued(const struct tls_bridge *b)
{
    size_t n = 0;
    for (const struct link *l = b ? b->links : NULL; l; l = l->next)
        n += l->pending.len + l->to_client + (l->up ? tls_stream_queued(l->up) : 0);
    return n;
}

void tls_bridge_close(struct tls_bridge *b)
{
    if (!b || b->closing)
        return;
    b->closing = true;
    for (struct link *l = b->links; l; l = l->next) {
        l->client_ended = true;
        link_close(l);
    }
    unlink(b->path);
    uv_close((uv_handle_t *)&b->listener, on_listener_closed);
}
