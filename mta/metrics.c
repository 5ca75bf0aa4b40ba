/*
 * metrics.c - the Prometheus endpoint of convoyd: plain HTTP/1.1 on
 * metrics_listen, served from the event loop. GET (or HEAD) /metrics answers
 * 200 with the registry of base/metrics.c in the text exposition format
 * 0.0.4; any other path is 404, any other method 405. One request per
 * connection (the answer carries "Connection: close").
 *
 * Also the collector that sets, at each scrape, the gauges cheaper to read
 * than to track: SMTP server sessions, the queue's messages and recipients
 * by state, and the age of the oldest message.
 *
 * Bounds: a request head of at most 8 KiB, 10 s to send it, at most 64
 * connections at once (more are closed at accept); the body of a request is
 * never read.
 */
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

#include "mta.h"
#include "queue.h"

#define REQ_MAX 8192
#define CONN_MAX 64
#define TIMEOUT_MS 10000

struct metrics_http {
    uv_tcp_t listener;
    struct mta *m;
    size_t n_conns;
    bool closing;
};

struct mconn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct metrics_http *srv;
    http_parser parser;
    char url[256];
    size_t url_len;
    bool url_too_long;
    bool done; /* the head is complete: answered or answering */
    size_t got;
    char inbuf[1024];
    int closes_pending;
    uv_write_t wreq;
    struct buf out;
};

/* One endpoint per process; static so that connections closing after the
 * listener never point at freed memory. */
static struct metrics_http g_http;
static bool g_listening;

/* ---- the collector ---------------------------------------------------- */

static int first_message(void *arg, const struct queue_message *msg)
{
    *(int64_t *)arg = msg->env.arrival_ms;
    return 1; /* stop: IDs sort by time, the first is the oldest */
}

static void collect(void *arg)
{
    struct mta *m = arg;
    metric_set(MET_SESSIONS_IN, NULL, NULL, (double)submission_active(m));
    if (!m->queue)
        return;
    struct queue_stats st;
    if (queue_stats(m->queue, &st) == 0) {
        metric_set(MET_QUEUE_MESSAGES, NULL, NULL, (double)st.messages);
        for (int i = 0; i < 6; i++)
            metric_set(MET_QUEUE_RCPTS, queue_rcpt_state_name(i), NULL, (double)st.rcpts[i]);
    }
    int64_t arrival = 0;
    double age = 0;
    if (queue_list(m->queue, NULL, first_message, &arrival) == 1 && arrival > 0) {
        int64_t now = time_now_ms();
        age = now > arrival ? (double)(now - arrival) / 1000.0 : 0;
    }
    metric_set(MET_QUEUE_OLDEST, NULL, NULL, age);
}

/* ---- connections ------------------------------------------------------ */

static void conn_closed(uv_handle_t *h)
{
    struct mconn *c = h->data;
    if (--c->closes_pending > 0)
        return;
    c->srv->n_conns--;
    buf_free(&c->out);
    free(c);
}

static void conn_close(struct mconn *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    c->closes_pending = 2;
    uv_close((uv_handle_t *)&c->timer, conn_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void written(uv_write_t *w, int status)
{
    (void)status;
    conn_close(w->data);
}

static void respond(struct mconn *c, int code, const char *reason, bool body)
{
    c->done = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    struct buf payload;
    buf_init(&payload, 4u << 20);
    const char *type = "text/plain; charset=utf-8";
    int rc = 0;
    if (code == 200) {
        rc = metrics_render(&payload);
        type = "text/plain; version=0.0.4; charset=utf-8";
    } else {
        rc = buf_printf(&payload, "%d %s\n", code, reason);
    }
    if (rc != 0) {
        buf_reset(&payload);
        code = 500;
        reason = "Internal Server Error";
        buf_printf(&payload, "500 cannot render the metrics\n");
    }
    buf_printf(&c->out,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
               "Connection: close\r\n\r\n",
               code, reason, type, payload.len, code == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (body && payload.len && buf_append(&c->out, payload.data, payload.len) != 0)
        c->out.len = 0;
    buf_free(&payload);
    if (c->out.len == 0) {
        conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, written) != 0)
        conn_close(c);
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    struct mconn *c = p->data;
    if (c->url_len + n >= sizeof(c->url)) {
        c->url_too_long = true;
        return 0;
    }
    memcpy(c->url + c->url_len, at, n);
    c->url_len += n;
    c->url[c->url_len] = '\0';
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct mconn *c = p->data;
    bool head = p->method == HTTP_HEAD;
    /* The path, without a query string. */
    size_t path_len = strcspn(c->url, "?");
    bool is_metrics = !c->url_too_long && path_len == 8 && memcmp(c->url, "/metrics", 8) == 0;
    if (p->method != HTTP_GET && !head)
        respond(c, 405, "Method Not Allowed", !head);
    else if (!is_metrics)
        respond(c, 404, "Not Found", !head);
    else
        respond(c, 200, "OK", !head);
    return 1; /* stop parsing: one request per connection */
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct mconn *c = h->data;
    *b = uv_buf_init(c->inbuf, sizeof(c->inbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct mconn *c = s->data;
    if (n < 0) {
        conn_close(c);
        return;
    }
    if (n == 0 || c->done)
        return;
    static const http_parser_settings settings = {
        .on_url = on_url,
        .on_headers_complete = on_headers_complete,
    };
    c->got += (size_t)n;
    size_t used = http_parser_execute(&c->parser, &settings, b->base, (size_t)n);
    if (c->done)
        return;
    if (used != (size_t)n || c->parser.http_errno != HPE_OK)
        respond(c, 400, "Bad Request", true);
    else if (c->got > REQ_MAX)
        respond(c, 431, "Request Header Fields Too Large", true);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_connection(uv_stream_t *l, int status)
{
    struct metrics_http *srv = l->data;
    if (status < 0)
        return;
    struct mconn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->srv = srv;
    buf_init(&c->out, 8u << 20);
    uv_tcp_init(l->loop, &c->tcp);
    uv_timer_init(l->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    srv->n_conns++;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0 || srv->n_conns > CONN_MAX) {
        conn_close(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    uv_timer_start(&c->timer, on_timeout, TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        conn_close(c);
}

/* ---- start and stop --------------------------------------------------- */

int metrics_start(struct mta *m, struct buf *err)
{
    static bool collector_added;
    metric_set(MET_START_TIME, NULL, NULL, (double)m->started_ms / 1000.0);
    if (!collector_added) {
        metrics_add_collector(collect, m);
        collector_added = true;
    }
    const char *spec = m->conf->metrics_listen;
    if (!spec || !*spec)
        return 0;
    struct conf_hostport hp;
    struct sockaddr_storage ss;
    if (conf_parse_hostport(spec, false, &hp) != 0 ||
        (strcmp(hp.host, "*") == 0
             ? uv_ip6_addr("::", hp.port, (struct sockaddr_in6 *)&ss)
             : (uv_ip4_addr(hp.host, hp.port, (struct sockaddr_in *)&ss) &&
                uv_ip6_addr(hp.host, hp.port, (struct sockaddr_in6 *)&ss))) != 0) {
        buf_printf(err, "metrics_listen: bad address \"%s\"\n", spec);
        return ERR_INVAL;
    }
    struct metrics_http *srv = &g_http;
    srv->m = m;
    uv_tcp_init(m->loop, &srv->listener);
    srv->listener.data = srv;
    int rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->listener, 64, on_connection);
    if (rc != 0) {
        buf_printf(err, "metrics_listen: cannot listen on %s: %s\n", spec, uv_strerror(rc));
        uv_close((uv_handle_t *)&srv->listener, NULL);
        return ERR_IO;
    }
    g_listening = true;
    log_info("convoyd", "metrics on http://%s/metrics", spec);
    return 0;
}

void metrics_stop(struct mta *m)
{
    (void)m;
    if (!g_listening)
        return;
    g_listening = false;
    g_http.closing = true;
    /* Requests in progress finish or time out on their own. */
    if (!uv_is_closing((uv_handle_t *)&g_http.listener))
        uv_close((uv_handle_t *)&g_http.listener, NULL);
}
