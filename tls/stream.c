/*
 * stream.c - one TCP connection with optional TLS on the libuv loop
 * (struct tls_stream, contract in tls.h). The one copy of the glue between a
 * uv_tcp_t and a tls_conn: every ciphertext byte read goes to
 * tls_conn_feed(), every byte tls/ produces goes to the socket.
 *
 * Write path: tls_stream_write() appends plaintext to a queue (plain_out
 * when TLS is on, else out) and starts an idle handle; the idle callback
 * (once per loop iteration, before the loop polls again) encrypts plain_out
 * as one tls_conn_write() into out, then writes out with one uv_try_write()
 * and whatever the kernel did not take with one uv_write(). So replies
 * produced in one iteration (pipelined SMTP answers, a command and its
 * body) cost one record and one write(2).
 *
 * Read path: each socket read is fed to tls/; the plaintext it yields is
 * gathered in plain_in and handed to the owner after the feed returns, then
 * the end of the session if tls/ reported one during the feed. The owner
 * thus sees the same shape with and without TLS: one on_read per read,
 * then on_end.
 *
 * Invariants:
 *  - queued bytes (plain_out + out + in uv_write) never pass write_max by
 *    a tls_stream_write(); tls/ adds at most a record's overhead to that.
 *  - Owner callbacks run from libuv callbacks only (read, connect, write,
 *    shutdown, idle, close), never from inside a tls_stream_* call, and
 *    none but on_close after tls_stream_close().
 *  - The stream is freed only in the close callback of its last handle,
 *    after on_close.
 */
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "tls.h"

#define PLAIN_IN_MAX (TLS_STREAM_READ_CHUNK + 32 * 1024)

struct wreq {
    uv_write_t req;
    struct tls_stream *s;
    size_t n;
    char data[];
};

struct tls_stream {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    uv_idle_t idle; /* flushes the write queue once per loop iteration */
    uv_connect_t creq;
    uv_shutdown_t shut;
    int handles; /* open handles: tcp and idle */
    struct tls_stream_callbacks cb;
    void *arg;
    size_t write_max;

    bool connected; /* connect or accept succeeded */
    bool is_server; /* accepted: TLS is the server side */
    bool reading;
    bool idle_on;
    bool shutting; /* tls_stream_shutdown() called */
    bool closing;  /* tls_stream_close() called */
    bool end_done; /* on_end ran */
    bool write_failed;
    bool write_reported; /* on_written ran with the failure */
    int write_err;       /* libuv code of the write failure */

    struct tls_conn *tls;
    bool hs_done;     /* on_handshake ran */
    bool tls_on;      /* handshake succeeded */
    bool tls_ended;   /* tls/ reported on_closed */
    int tls_end;      /* its status */
    bool cipher_full; /* out could not take ciphertext */

    char *rbuf;
    struct buf plain_in;  /* plaintext of the current read */
    struct buf plain_out; /* plaintext to encrypt at the next flush */
    struct buf out;       /* bytes for the socket (ciphertext or plain) */
    size_t inflight;      /* bytes in uv_write requests */
};

/* ---- tls/ callbacks ------------------------------------------------------ */

static void start_idle(struct tls_stream *s);
static void flush_cb(uv_idle_t *h);

static void tls_cipher_out(void *arg, const void *data, size_t n)
{
    struct tls_stream *s = arg;
    if (buf_append(&s->out, data, n) != 0)
        s->cipher_full = true; /* found by the next flush: the stream is broken */
    start_idle(s);
}

static void tls_plain_in(void *arg, const void *data, size_t n)
{
    struct tls_stream *s = arg;
    if (s->closing)
        return;
    if (buf_append(&s->plain_in, data, n) == 0)
        return;
    /* More plaintext than one read's worth (a record completed from an
     * earlier read): hand over what is gathered, then this, in order. */
    if (s->plain_in.len > 0) {
        s->cb.on_read(s->arg, s->plain_in.data, s->plain_in.len);
        buf_reset(&s->plain_in);
    }
    if (!s->closing)
        s->cb.on_read(s->arg, data, n);
}

static void tls_handshake(void *arg, int status, const struct tls_facts *facts)
{
    struct tls_stream *s = arg;
    s->hs_done = true;
    s->tls_on = status == 0;
    if (s->closing)
        return;
    s->cb.on_handshake(s->arg, status, facts);
}

static void tls_closed(void *arg, int status)
{
    struct tls_stream *s = arg;
    s->tls_ended = true;
    s->tls_end = status;
}

static const struct tls_callbacks tls_cbs = {
    .on_cipher_out = tls_cipher_out,
    .on_plain_in = tls_plain_in,
    .on_handshake = tls_handshake,
    .on_closed = tls_closed,
};

/* ---- freeing ---------------------------------------------------------------- */

static void handle_closed(uv_handle_t *h)
{
    struct tls_stream *s = h->data;
    if (--s->handles > 0)
        return;
    if (s->cb.on_close)
        s->cb.on_close(s->arg);
    tls_conn_free(s->tls);
    buf_free(&s->plain_in);
    buf_free(&s->plain_out);
    buf_free(&s->out);
    free(s->rbuf);
    free(s);
}

/* ---- writing ---------------------------------------------------------------- */

size_t tls_stream_queued(const struct tls_stream *s)
{
    return s->plain_out.len + s->out.len + s->inflight;
}

static void start_idle(struct tls_stream *s)
{
    if (s->idle_on || s->closing)
        return;
    s->idle_on = true;
    uv_idle_start(&s->idle, flush_cb);
}

static int fail_write(struct tls_stream *s, int uv_err)
{
    if (!s->write_failed) {
        s->write_failed = true;
        s->write_err = uv_err;
    }
    buf_reset(&s->plain_out);
    buf_reset(&s->out);
    return s->write_err;
}

/* Encrypt the queued plaintext as one run. */
static int encrypt_pending(struct tls_stream *s)
{
    if (!s->tls || !s->tls_on || s->plain_out.len == 0)
        return 0;
    int rc = tls_conn_write(s->tls, s->plain_out.data, s->plain_out.len);
    buf_reset(&s->plain_out);
    if (rc != 0)
        return fail_write(s, UV_EPROTO);
    return 0;
}

static void on_write(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct tls_stream *s = w->s;
    s->inflight -= w->n;
    free(w);
    if (s->closing)
        return;
    if (status < 0) {
        fail_write(s, status);
        if (!s->write_reported) {
            s->write_reported = true;
            if (s->cb.on_written)
                s->cb.on_written(s->arg, s->write_err);
        }
        return;
    }
    if (s->cb.on_written)
        s->cb.on_written(s->arg, 0);
}

/* Hand everything queued to the socket: encrypt, try to write it now, give
 * libuv the rest. 0 or a libuv error (the stream is then broken). */
static int flush(struct tls_stream *s)
{
    if (s->write_failed)
        return s->write_err;
    if (!s->connected)
        return 0;
    int rc = encrypt_pending(s);
    if (rc != 0)
        return rc;
    if (s->cipher_full)
        return fail_write(s, UV_ENOBUFS);
    if (s->out.len == 0)
        return 0;
    size_t off = 0;
    if (s->inflight == 0) {
        /* libuv refuses (UV_EAGAIN) while earlier writes are queued, so
         * trying only with nothing in flight keeps the order either way. */
        uv_buf_t b = uv_buf_init(s->out.data, (unsigned)s->out.len);
        int k = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
        if (k > 0)
            off = (size_t)k;
        else if (k != UV_EAGAIN && k != UV_ENOSYS)
            return fail_write(s, k);
    }
    if (off < s->out.len) {
        size_t n = s->out.len - off;
        struct wreq *w = malloc(sizeof(*w) + n);
        if (!w)
            return fail_write(s, UV_ENOMEM);
        w->s = s;
        w->n = n;
        memcpy(w->data, s->out.data + off, n);
        uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
        rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, on_write);
        if (rc != 0) {
            free(w);
            return fail_write(s, rc);
        }
        s->inflight += n;
    }
    buf_reset(&s->out);
    return 0;
}

static void flush_cb(uv_idle_t *h)
{
    struct tls_stream *s = h->data;
    uv_idle_stop(h);
    s->idle_on = false;
    if (s->closing || s->shutting || !s->connected)
        return;
    size_t before = tls_stream_queued(s);
    int rc = flush(s);
    if (rc != 0) {
        if (!s->write_reported) {
            s->write_reported = true;
            if (s->cb.on_written)
                s->cb.on_written(s->arg, rc);
        }
        return;
    }
    if (tls_stream_queued(s) < before && s->cb.on_written)
        s->cb.on_written(s->arg, 0);
}

int tls_stream_write(struct tls_stream *s, const void *data, size_t n)
{
    if (s->closing || s->shutting || s->write_failed)
        return ERR_CLOSED;
    if (s->tls) {
        if (!s->hs_done)
            return ERR_AGAIN;
        if (!s->tls_on || s->tls_ended || !tls_conn_established(s->tls))
            return ERR_CLOSED;
    }
    if (n == 0)
        return 0;
    if (n > s->write_max || tls_stream_queued(s) > s->write_max - n)
        return ERR_TOOBIG;
    if (buf_append(s->tls ? &s->plain_out : &s->out, data, n) != 0)
        return ERR_NOMEM;
    start_idle(s);
    return 0;
}

/* ---- reading ---------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct tls_stream *s = h->data;
    (void)suggested;
    if (!s->rbuf)
        s->rbuf = malloc(TLS_STREAM_READ_CHUNK);
    *b = uv_buf_init(s->rbuf, s->rbuf ? TLS_STREAM_READ_CHUNK : 0);
}

static void report_end(struct tls_stream *s, int status, int uv_status)
{
    if (s->end_done || s->closing)
        return;
    s->end_done = true;
    s->cb.on_end(s->arg, status, uv_status);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    struct tls_stream *s = st->data;
    if (s->closing || nread == 0)
        return;
    if (nread < 0) {
        tls_stream_read_stop(s);
        if (s->tls && !s->hs_done) {
            /* The handshake cannot finish: tls/ reports the failure through
             * on_handshake. */
            tls_conn_eof(s->tls);
            return;
        }
        report_end(s, ERR_CLOSED, (int)nread);
        return;
    }
    if (!s->tls) {
        s->cb.on_read(s->arg, b->base, (size_t)nread);
        return;
    }
    int rc = tls_conn_feed(s->tls, b->base, (size_t)nread);
    if (s->plain_in.len > 0 && !s->closing)
        s->cb.on_read(s->arg, s->plain_in.data, s->plain_in.len);
    buf_reset(&s->plain_in);
    if (s->closing)
        return;
    if (s->tls_ended)
        report_end(s, s->tls_end, 0);
    else if (rc != 0 && s->hs_done)
        report_end(s, ERR_TLS, 0); /* fed to a session that had failed */
}

int tls_stream_read_start(struct tls_stream *s)
{
    if (s->closing || s->shutting)
        return UV_EINVAL;
    if (s->reading)
        return 0;
    int rc = uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
    if (rc == 0)
        s->reading = true;
    return rc;
}

void tls_stream_read_stop(struct tls_stream *s)
{
    if (!s->reading)
        return;
    uv_read_stop((uv_stream_t *)&s->tcp);
    s->reading = false;
}

/* ---- life cycle ------------------------------------------------------------- */

struct tls_stream *tls_stream_new(uv_loop_t *loop, const struct tls_stream_callbacks *cb, void *arg,
                                  const struct tls_stream_opts *opts)
{
    if (!loop || !cb || !cb->on_read || !cb->on_end)
        return NULL;
    struct tls_stream *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->loop = loop;
    s->cb = *cb;
    s->arg = arg;
    s->write_max = opts && opts->write_max ? opts->write_max : TLS_STREAM_WRITE_MAX;
    buf_init(&s->plain_in, PLAIN_IN_MAX);
    buf_init(&s->plain_out, s->write_max);
    /* Ciphertext: the queued plaintext plus record overhead and the
     * handshake flights. */
    buf_init(&s->out, s->write_max + s->write_max / 8 + TLS_CIPHER_OUT_MAX);
    if (uv_tcp_init(loop, &s->tcp) != 0) {
        free(s);
        return NULL;
    }
    uv_idle_init(loop, &s->idle);
    s->tcp.data = s;
    s->idle.data = s;
    s->creq.data = s;
    s->shut.data = s;
    s->handles = 2;
    return s;
}

static void on_connect(uv_connect_t *req, int status)
{
    struct tls_stream *s = req->data;
    if (s->closing)
        return;
    if (status == 0) {
        s->connected = true;
        if (tls_stream_queued(s) > 0)
            start_idle(s);
    }
    if (s->cb.on_connect)
        s->cb.on_connect(s->arg, status);
}

int tls_stream_connect(struct tls_stream *s, const struct sockaddr *addr)
{
    if (s->closing || s->connected)
        return UV_EINVAL;
    s->is_server = false;
    return uv_tcp_connect(&s->creq, &s->tcp, addr, on_connect);
}

int tls_stream_accept(struct tls_stream *s, uv_stream_t *listener)
{
    if (s->closing || s->connected)
        return UV_EINVAL;
    int rc = uv_accept(listener, (uv_stream_t *)&s->tcp);
    if (rc == 0) {
        s->connected = true;
        s->is_server = true;
    }
    return rc;
}

uv_tcp_t *tls_stream_tcp(struct tls_stream *s)
{
    return &s->tcp;
}

int tls_stream_start_tls(struct tls_stream *s, struct tls_ctx *ctx, const char *host,
                         enum tls_verify verify)
{
    if (s->tls || s->closing || s->shutting || !ctx)
        return ERR_INVAL;
    s->tls = s->is_server ? tls_conn_server_new(ctx, &tls_cbs, s)
                          : tls_conn_client_new(ctx, host, verify, &tls_cbs, s);
    if (!s->tls)
        return ERR_NOMEM;
    /* A client's ClientHello lands in out behind the plaintext queued
     * before (the STARTTLS command's bytes went out earlier). */
    if (tls_conn_start(s->tls) != 0) {
        tls_conn_free(s->tls);
        s->tls = NULL;
        return ERR_INVAL;
    }
    return 0;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct tls_stream *s = req->data;
    (void)status;
    tls_stream_close(s);
}

void tls_stream_shutdown(struct tls_stream *s)
{
    if (s->closing || s->shutting)
        return;
    tls_stream_read_stop(s);
    int rc = encrypt_pending(s);
    if (rc == 0 && s->tls && s->tls_on && !s->write_failed)
        tls_conn_shutdown(s->tls); /* RFC 8446 6.1: close_notify */
    s->shutting = true;
    if (rc == 0)
        rc = flush(s);
    /* Everything already in the kernel: close(2) alone sends the FIN after
     * it, as shutdown(2) would; one system call per connection less. With
     * writes still queued in libuv, uv_shutdown() waits for them. */
    if (rc != 0 || !s->connected || s->inflight == 0 ||
        uv_shutdown(&s->shut, (uv_stream_t *)&s->tcp, on_shutdown) != 0)
        tls_stream_close(s);
}

void tls_stream_close(struct tls_stream *s)
{
    if (s->closing)
        return;
    tls_stream_read_stop(s);
    if (!s->shutting && s->connected && !s->write_failed) {
        /* Best effort, never blocking: what the kernel takes now goes out
         * (a QUIT, a close_notify); uv_close() cancels the rest. */
        if (encrypt_pending(s) == 0 && s->tls && s->tls_on)
            tls_conn_shutdown(s->tls);
        (void)flush(s);
    }
    s->closing = true;
    uv_idle_stop(&s->idle);
    s->idle_on = false;
    uv_close((uv_handle_t *)&s->idle, handle_closed);
    uv_close((uv_handle_t *)&s->tcp, handle_closed);
}

/* ---- TLS state -------------------------------------------------------------- */

const struct tls_facts *tls_stream_facts(const struct tls_stream *s)
{
    return s->tls ? tls_conn_facts(s->tls) : NULL;
}

size_t tls_stream_peer_chain(const struct tls_stream *s, struct tls_der *out, size_t max)
{
    return s->tls ? tls_conn_peer_chain(s->tls, out, max) : 0;
}

bool tls_stream_tls_active(const struct tls_stream *s)
{
    return s->tls && s->tls_on && !s->tls_ended;
}
