/*
 * fetch.c - one HTTPS GET of an MTA-STS policy on the libuv loop:
 * A/AAAA of mta-sts.DOMAIN (dns/), a tls_stream connect (each address in
 * turn), TLS on that stream with SNI and the certificate verified for
 * mta-sts.DOMAIN against the one configured trust store, then the HTTP/1.1
 * exchange read by http.c.
 *
 * RFC 8461 3.3: certificate valid for the policy host (RFC 6125 via tls/),
 * status 200 only, no redirects, text/plain, bounded size and time, no
 * HTTP caching (we send no conditional or cache headers).
 *
 * Invariants:
 *  - One timer bounds the whole fetch (fetch_timeout); each connect is
 *    also bounded (connect_timeout).
 *  - A body delimited only by the end of the connection is accepted only
 *    after the server's TLS close_notify, so a cut TCP stream cannot pass
 *    for a shorter policy.
 *  - The struct is freed only from close callbacks, once every handle it
 *    owns has closed (the timer, and each tls_stream through on_close).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

struct fetch {
    struct fetch_params fp;
    char domain[POLICY_NAME_MAX];
    char host[POLICY_NAME_MAX + 8];
    fetch_cb cb;
    void *arg;
    struct dns_query *q;
    struct dns_addr addrs[16];
    size_t n_addr, next_addr;
    struct tls_stream *conn; /* the connection being tried or used; a
                                timed-out connect is closed and the next
                                address gets a new stream */
    uv_timer_t timer;
    int64_t deadline;
    struct policy_http *http;
    bool done, aborted, sent;
    int refs; /* open handles + 1 until done */
    struct fetch_result res;
    char last_conn_err[128];
};

static void unref(struct fetch *f)
{
    if (--f->refs == 0) {
        tls_ctx_free(f->fp.tls);
        policy_http_free(f->http);
        free(f);
    }
}

static void timer_closed(uv_handle_t *h)
{
    unref(h->data);
}

static void conn_closed(void *arg)
{
    unref(arg);
}

static void close_conn(struct fetch *f)
{
    if (f->conn) {
        tls_stream_close(f->conn);
        f->conn = NULL;
    }
}

/* End the fetch with status rc; reports to the owner once. */
static void finish(struct fetch *f, int rc, enum policy_failure fl, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void finish(struct fetch *f, int rc, enum policy_failure fl, const char *fmt, ...)
{
    if (f->done)
        return;
    f->done = true;
    if (f->q) {
        dns_cancel(f->q);
        f->q = NULL;
    }
    f->res.status = rc;
    f->res.failure = rc ? fl : POLICY_FAIL_NONE;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(f->res.why, sizeof(f->res.why), fmt, ap);
        va_end(ap);
    }
    const struct tls_facts *facts = f->conn ? tls_stream_facts(f->conn) : NULL;
    if (facts) {
        f->res.tls_done = true;
        f->res.tls = *facts;
    }
    if (f->http) {
        f->res.http_status = policy_http_status(f->http);
        if (rc == 0) {
            struct view v = policy_http_body(f->http);
            f->res.body = v.ptr;
            f->res.body_len = v.len;
        }
    }
    uv_timer_stop(&f->timer);
    if (!f->aborted && f->cb)
        f->cb(f->arg, &f->res);
    f->res.body = NULL;
    close_conn(f);
    uv_close((uv_handle_t *)&f->timer, timer_closed);
    unref(f); /* the "until done" reference */
}

static void http_result(struct fetch *f, int rc)
{
    if (rc == 1)
        finish(f, 0, POLICY_FAIL_NONE, NULL);
    else if (rc < 0)
        finish(f, rc, policy_http_failure(f->http), "%s", policy_http_why(f->http));
}

/* ---- the TLS stream ------------------------------------------------------ */

static void on_read(void *arg, const void *data, size_t n)
{
    struct fetch *f = arg;
    if (f->done)
        return;
    http_result(f, policy_http_feed(f->http, data, n));
}

static bool cert_failure(enum tls_failure t)
{
    return t == TLS_FAIL_HOST_MISMATCH || t == TLS_FAIL_CERT_EXPIRED ||
           t == TLS_FAIL_CERT_NOT_TRUSTED || t == TLS_FAIL_VALIDATION;
}

static void on_handshake(void *arg, int status, const struct tls_facts *facts)
{
    struct fetch *f = arg;
    if (f->done)
        return;
    if (status != 0) {
        /* RFC 8460 4.3: a certificate that does not validate is
         * sts-webpki-invalid; other handshake trouble is a fetch error. */
        if (cert_failure(facts->failure))
            finish(f, ERR_TLS, POLICY_FAIL_WEBPKI, "%s: %s", f->host,
                   facts->text[0] ? facts->text : tls_failure_str(facts->failure));
        else
            finish(f, ERR_TLS, POLICY_FAIL_FETCH, "%s: TLS handshake failed: %s", f->host,
                   facts->text[0] ? facts->text : tls_failure_str(facts->failure));
        return;
    }
    char req[1024];
    char hostport[POLICY_NAME_MAX + 16];
    if (f->fp.port == 443)
        snprintf(hostport, sizeof(hostport), "%s", f->host);
    else
        snprintf(hostport, sizeof(hostport), "%s:%u", f->host, (unsigned)f->fp.port);
    int n = snprintf(req, sizeof(req),
                     "GET /.well-known/mta-sts.txt HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "User-Agent: %s\r\n"
                     "Accept: text/plain\r\n"
                     "Connection: close\r\n"
                     "\r\n",
                     hostport, f->fp.user_agent ? f->fp.user_agent : "Convoy");
    if (n < 0 || (size_t)n >= sizeof(req)) {
        finish(f, ERR_INVAL, POLICY_FAIL_FETCH, "request too long");
        return;
    }
    f->sent = true;
    if (tls_stream_write(f->conn, req, (size_t)n) != 0)
        finish(f, ERR_TLS, POLICY_FAIL_FETCH, "%s: TLS write failed", f->host);
}

static void on_end(void *arg, int status, int uv_status)
{
    struct fetch *f = arg;
    (void)uv_status;
    if (f->done)
        return;
    if (status == 0) {
        /* close_notify: the end of a close-delimited body is genuine. */
        http_result(f, policy_http_eof(f->http));
        return;
    }
    finish(f, ERR_PROTO, POLICY_FAIL_FETCH, "%s: connection closed %s", f->host,
           status == ERR_CLOSED ? "without TLS close_notify before the end of the response"
                                : "by a TLS error");
}

/* ---- TCP ------------------------------------------------------------------ */

static void try_next(struct fetch *f);
static void arm_timer(struct fetch *f, bool connecting);

static void on_connect(void *arg, int status)
{
    struct fetch *f = arg;
    if (f->done)
        return;
    if (status != 0) {
        snprintf(f->last_conn_err, sizeof(f->last_conn_err), "%s", uv_strerror(status));
        close_conn(f);
        try_next(f);
        return;
    }
    arm_timer(f, false);
    f->http = policy_http_new(f->fp.max_body);
    if (!f->http || tls_stream_start_tls(f->conn, f->fp.tls, f->host, TLS_VERIFY_HOST) != 0) {
        finish(f, ERR_NOMEM, POLICY_FAIL_FETCH, "out of memory");
        return;
    }
    if (tls_stream_read_start(f->conn) != 0)
        finish(f, ERR_IO, POLICY_FAIL_FETCH, "%s: cannot read", f->host);
}

static const struct tls_stream_callbacks stream_cbs = {
    .on_connect = on_connect,
    .on_read = on_read,
    .on_handshake = on_handshake,
    .on_end = on_end,
    .on_close = conn_closed,
};

static void try_next(struct fetch *f)
{
    while (f->next_addr < f->n_addr) {
        const struct dns_addr *a = &f->addrs[f->next_addr++];
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        if (a->family == AF_INET) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            s4->sin_family = AF_INET;
            s4->sin_port = htons(f->fp.port);
            memcpy(&s4->sin_addr, a->bytes, 4);
        } else {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            s6->sin6_family = AF_INET6;
            s6->sin6_port = htons(f->fp.port);
            memcpy(&s6->sin6_addr, a->bytes, 16);
        }
        struct tls_stream *c = tls_stream_new(f->fp.loop, &stream_cbs, f, NULL);
        if (!c) {
            finish(f, ERR_NOMEM, POLICY_FAIL_FETCH, "out of memory");
            return;
        }
        f->refs++;
        f->conn = c;
        int rc = tls_stream_connect(c, (const struct sockaddr *)&ss);
        if (rc != 0) {
            snprintf(f->last_conn_err, sizeof(f->last_conn_err), "%s", uv_strerror(rc));
            close_conn(f);
            continue;
        }
        arm_timer(f, true);
        return;
    }
    finish(f, ERR_IO, POLICY_FAIL_FETCH, "%s: cannot connect: %s", f->host,
           f->last_conn_err[0] ? f->last_conn_err : "no address");
}

static void timer_cb(uv_timer_t *t)
{
    struct fetch *f = t->data;
    if (f->done)
        return;
    if (uv_now(f->fp.loop) >= (uint64_t)f->deadline) {
        finish(f, ERR_TIMEOUT, POLICY_FAIL_FETCH, "%s: timed out after %u ms", f->host,
               f->fp.timeout_ms);
        return;
    }
    /* The connect timeout of this address: try the next one. */
    snprintf(f->last_conn_err, sizeof(f->last_conn_err), "connect timed out");
    close_conn(f);
    try_next(f);
}

static void arm_timer(struct fetch *f, bool connecting)
{
    int64_t now = (int64_t)uv_now(f->fp.loop);
    int64_t left = f->deadline - now;
    if (left < 0)
        left = 0;
    if (connecting && f->fp.connect_timeout_ms && (int64_t)f->fp.connect_timeout_ms < left)
        left = f->fp.connect_timeout_ms;
    uv_timer_start(&f->timer, timer_cb, (uint64_t)left, 0);
}

static void addrs_cb(void *arg, const struct dns_result *r)
{
    struct fetch *f = arg;
    f->q = NULL;
    if (f->done)
        return;
    if (r->status != DNS_OK || r->n_addr == 0) {
        finish(f, ERR_DNS, POLICY_FAIL_FETCH, "%s: address lookup failed: %s", f->host,
               r->why && *r->why ? r->why : dns_status_name(r->status));
        return;
    }
    f->n_addr = r->n_addr < 16 ? r->n_addr : 16;
    memcpy(f->addrs, r->addr, f->n_addr * sizeof(struct dns_addr));
    try_next(f);
}

struct fetch *fetch_start(const struct fetch_params *fp, const char *domain, fetch_cb cb, void *arg)
{
    struct fetch *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->fp = *fp;
    /* Our own reference: a reload may replace the engine's context while
     * this fetch still waits for its DNS answer or its connection. */
    f->fp.tls = fp->tls ? tls_ctx_ref(fp->tls) : NULL;
    f->cb = cb;
    f->arg = arg;
    str_copy(f->domain, domain, sizeof(f->domain));
    snprintf(f->host, sizeof(f->host), "mta-sts.%s", domain);
    uv_timer_init(fp->loop, &f->timer);
    f->timer.data = f;
    f->refs = 2; /* the timer handle + "until done" */
    f->deadline = (int64_t)uv_now(fp->loop) + fp->timeout_ms;
    uv_timer_start(&f->timer, timer_cb, fp->timeout_ms, 0);
    if (dns_addrs(fp->dns, f->host, addrs_cb, f, &f->q) != 0) {
        f->aborted = true;
        finish(f, ERR_NOMEM, POLICY_FAIL_FETCH, "out of memory");
        return NULL;
    }
    return f;
}

void fetch_abort(struct fetch *f)
{
    if (!f)
        return;
    f->aborted = true;
    finish(f, ERR_CLOSED, POLICY_FAIL_FETCH, "aborted");
}
