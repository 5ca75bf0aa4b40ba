/*
 * dns.c - the resolver: c-ares 1.18 driven by a libuv loop, with in-flight
 * sharing, the answer cache, and the composite lookups (A+AAAA, full MX
 * resolution) built on single-type lookups.
 *
 * Standards: RFC 5321 5.1 (MX resolution for delivery: implicit MX, MX
 * targets must be names - an IP literal target is unusable, a CNAME target is
 * followed but the published name is kept; when no host is usable that is an
 * error, temporary if any lookup failed temporarily); RFC 7505 (null MX);
 * RFC 2308 5 (negative caching); RFC 2181 8 (TTL caps).
 *
 * How c-ares runs on the loop: c-ares tells us through its socket state
 * callback which sockets to watch; each gets a uv_poll_t that calls
 * ares_process_fd(). One uv_timer_t is re-armed from ares_timeout() after
 * every call into c-ares, and calls ares_process_fd() with no socket to let
 * c-ares move on to the next server and time out queries. No call blocks;
 * no thread is made. c-ares is told to make one round over the servers per
 * query; the module repeats timed-out queries itself (dns_tries rounds), so
 * the wait per try stays dns_timeout instead of doubling each round.
 *
 * DNSSEC (dns.h): queries are built here (dns_build_query) and sent with
 * ares_send, so they can carry AD and DO; c-ares 1.18's ares_query cannot.
 * Whether an answer's AD bit is believed is decided once, in dns_new():
 * every server c-ares will ask must be in the validating set.
 *
 * Invariants:
 *  - c-ares callbacks never run user code: they turn answers into results
 *    and queue them on the ready list. User callbacks run only from
 *    drain(), called by a uv_idle_t, so a callback never runs inside the
 *    call that started the lookup, nor inside c-ares.
 *  - One c-ares query per (name, type) in flight; later identical lookups
 *    wait on the same flight.
 *  - Once closing is set no user callback runs and no new query starts;
 *    the struct is freed when its last handle's close callback has run.
 */
#include "dns_int.h"

#include <ares.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "base.h"

struct sub;
typedef void (*sub_done_fn)(void *ctx, struct sub *s);

/* One single-type lookup inside the module. */
struct sub {
    struct sub *next; /* on a flight's waiters, or on the ready list */
    uint16_t qtype;
    struct dns_result res;
    sub_done_fn done;
    void *ctx;
    char name[];
};

/* One c-ares query in flight; every waiter gets the answer. */
struct flight {
    struct dns *d;
    struct flight *prev, *next;
    struct sub *waiters;
    uint16_t qtype;
    int attempts; /* rounds sent so far (see ares_cb) */
    char name[];
};

struct dns_sock {
    uv_poll_t poll;
    struct dns *d;
    struct dns_sock *next;
    ares_socket_t fd;
};

struct dns {
    uv_loop_t *loop;
    ares_channel ch;
    struct dns_options opt;
    uv_timer_t timer;
    uv_idle_t idle;
    struct dns_sock *socks;
    struct flight *flights;
    struct sub *ready_head, *ready_tail;
    struct dns_cache *cache;
    int open_handles;
    bool trust_ad; /* opt.dnssec and every server declared validating */
    bool closing, draining, closed_handles;
};

/* A+AAAA of one host, for dns_addrs() and for each MX host. */
struct addr_job {
    struct dns_query *q;
    size_t host; /* index in the MX result, or 0 */
    int pending;
    struct dns_result a, aaaa;
};

enum qkind { QK_LOOKUP, QK_ADDRS, QK_MX };

struct dns_query {
    struct dns *d;
    enum qkind kind;
    bool cancelled;
    dns_cb cb;
    dns_mx_cb mx_cb;
    void *arg;
    size_t pending;          /* subs not yet done */
    struct addr_job job;     /* QK_ADDRS */
    struct dns_mx_result mr; /* QK_MX */
    struct addr_job *jobs;   /* QK_MX: one per host */
};

static const char *type_name(uint16_t t)
{
    switch (t) {
    case DNS_T_A:
        return "A";
    case DNS_T_AAAA:
        return "AAAA";
    case DNS_T_MX:
        return "MX";
    case DNS_T_TXT:
        return "TXT";
    case DNS_T_CNAME:
        return "CNAME";
    case DNS_T_TLSA:
        return "TLSA";
    default:
        return "type";
    }
}

/* ---- options and servers ------------------------------------------------- */

void dns_options_default(struct dns_options *o)
{
    memset(o, 0, sizeof(*o));
    o->timeout_ms = 5000;
    o->tries = 3;
    o->ipv6 = true;
    o->prefer_ipv6 = false;
    o->cache_size = 1000;
    o->max_ttl = 86400;
    o->max_neg_ttl = 3600;
}

int dns_server_parse(const char *s, int *family, uint8_t addr[16], uint16_t *port)
{
    char host[64];
    const char *port_s = NULL;
    size_t n = strlen(s);
    if (n == 0 || n >= sizeof(host) + 8)
        return ERR_INVAL;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || (size_t)(close - s - 1) >= sizeof(host))
            return ERR_INVAL;
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = '\0';
        if (close[1] == ':')
            port_s = close + 2;
        else if (close[1] != '\0')
            return ERR_INVAL;
    } else {
        const char *colon = strchr(s, ':');
        if (colon && strchr(colon + 1, ':'))
            colon = NULL; /* a bare IPv6 address: no port */
        size_t hl = colon ? (size_t)(colon - s) : n;
        if (hl >= sizeof(host))
            return ERR_INVAL;
        memcpy(host, s, hl);
        host[hl] = '\0';
        if (colon)
            port_s = colon + 1;
    }
    *port = 53;
    if (port_s) {
        uint64_t p;
        if (str_to_u64(port_s, &p) || p == 0 || p > 65535)
            return ERR_INVAL;
        *port = (uint16_t)p;
    }
    memset(addr, 0, 16);
    if (inet_pton(AF_INET, host, addr) == 1 && s[0] != '[') {
        *family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, host, addr) == 1) {
        *family = AF_INET6;
        return 0;
    }
    return ERR_INVAL;
}

static int set_servers(struct dns *d, const struct dns_options *o)
{
    if (o->n_servers == 0)
        return 0;
    struct ares_addr_port_node *nodes = calloc(o->n_servers, sizeof(*nodes));
    if (!nodes)
        return ERR_NOMEM;
    for (size_t i = 0; i < o->n_servers; i++) {
        int family;
        uint8_t a[16];
        uint16_t port;
        if (dns_server_parse(o->servers[i], &family, a, &port)) {
            log_err("dns", "bad DNS server \"%s\": want IP, IP:port or [IPv6]:port", o->servers[i]);
            free(nodes);
            return ERR_INVAL;
        }
        nodes[i].family = family;
        if (family == AF_INET)
            memcpy(&nodes[i].addr.addr4, a, 4);
        else
            memcpy(&nodes[i].addr.addr6, a, 16);
        nodes[i].udp_port = port;
        nodes[i].tcp_port = port;
        nodes[i].next = i + 1 < o->n_servers ? &nodes[i + 1] : NULL;
    }
    int rc = ares_set_servers_ports(d->ch, nodes);
    free(nodes);
    if (rc != ARES_SUCCESS) {
        log_err("dns", "cannot set DNS servers: %s", ares_strerror(rc));
        return rc == ARES_ENOMEM ? ERR_NOMEM : ERR_DNS;
    }
    return 0;
}

/* Is (family, addr) inside one of the validating networks? */
static bool in_validating(const struct dns_options *o, int family, const uint8_t *addr)
{
    static const char *const loopback[] = {"127.0.0.0/8", "::1/128"};
    const char *const *v = o->n_validating ? o->validating : loopback;
    size_t n = o->n_validating ? o->n_validating : 2;
    for (size_t i = 0; i < n; i++) {
        int fam;
        uint8_t net[16];
        unsigned bits;
        if (dns_cidr_parse(v[i], &fam, net, &bits) || fam != family)
            continue;
        unsigned full = bits / 8, rest = bits % 8;
        if (memcmp(net, addr, full) != 0)
            continue;
        if (rest && ((net[full] ^ addr[full]) & (uint8_t)(0xFF << (8 - rest))))
            continue;
        return true;
    }
    return false;
}

/* Decide once whether answers' AD bits are believed: every server c-ares
 * will ask (configured or from resolv.conf) must be declared validating. */
static int decide_trust(struct dns *d, const struct dns_options *o)
{
    for (size_t i = 0; i < o->n_validating; i++) {
        int fam;
        uint8_t a[16];
        unsigned bits;
        if (dns_cidr_parse(o->validating[i], &fam, a, &bits)) {
            log_err("dns", "bad validating resolver \"%s\": want IP or IP/prefix",
                    o->validating[i]);
            return ERR_INVAL;
        }
    }
    d->trust_ad = false;
    if (!o->dnssec)
        return 0;
    struct ares_addr_port_node *list = NULL;
    if (ares_get_servers_ports(d->ch, &list) != ARES_SUCCESS) {
        log_warn("dns", "DNSSEC: cannot list the DNS servers; no answer will count as secure");
        return 0;
    }
    bool all = list != NULL;
    char bad[64] = "";
    for (struct ares_addr_port_node *n = list; n; n = n->next) {
        const uint8_t *a = n->family == AF_INET ? (const uint8_t *)&n->addr.addr4
                                                : (const uint8_t *)&n->addr.addr6;
        if (!in_validating(o, n->family, a)) {
            all = false;
            inet_ntop(n->family, a, bad, sizeof(bad));
            break;
        }
    }
    ares_free_data(list);
    d->trust_ad = all;
    if (all)
        log_info("dns", "DNSSEC: the AD bit of every DNS server is trusted (declared validating)");
    else
        log_warn("dns",
                 "DNSSEC: DNS server %s is not declared validating (dns_validating_servers); "
                 "no DNS answer will count as DNSSEC-secure, so DANE never applies",
                 bad[0] ? bad : "(none configured)");
    return 0;
}

/* ---- c-ares on the loop ---------------------------------------------------- */

static void timer_cb(uv_timer_t *h);

static void update_timer(struct dns *d)
{
    struct timeval tv, *t;
    if (!d->ch || d->closing)
        return;
    t = ares_timeout(d->ch, NULL, &tv);
    if (!t) {
        uv_timer_stop(&d->timer);
        return;
    }
    uint64_t ms = (uint64_t)t->tv_sec * 1000 + ((uint64_t)t->tv_usec + 999) / 1000;
    uv_timer_start(&d->timer, timer_cb, ms, 0);
}

static void timer_cb(uv_timer_t *h)
{
    struct dns *d = h->data;
    if (!d->ch)
        return;
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    update_timer(d);
}

static void release(struct dns *d);

static void sock_closed(uv_handle_t *h)
{
    struct dns_sock *s = h->data;
    struct dns *d = s->d;
    free(s);
    release(d);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    struct dns_sock *s = h->data;
    struct dns *d = s->d;
    ares_socket_t fd = s->fd;
    if (!d->ch)
        return;
    ares_socket_t r = ARES_SOCKET_BAD, w = ARES_SOCKET_BAD;
    if (status < 0) {
        /* Let c-ares find the error on the socket itself. */
        r = fd;
        w = fd;
    } else {
        if (events & UV_READABLE)
            r = fd;
        if (events & UV_WRITABLE)
            w = fd;
    }
    /* The handle may be closed inside (c-ares closes idle sockets); it is
     * freed only in its close callback, so s stays valid until we return. */
    ares_process_fd(d->ch, r, w);
    update_timer(d);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns *d = data;
    struct dns_sock **pp = &d->socks;
    while (*pp && (*pp)->fd != fd)
        pp = &(*pp)->next;
    struct dns_sock *s = *pp;
    if (!readable && !writable) {
        if (s) {
            *pp = s->next;
            /* uv_close stops the watch now, before c-ares closes the fd, so a
             * new socket with the same number can get a new handle. */
            uv_close((uv_handle_t *)&s->poll, sock_closed);
        }
        return;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s) {
            log_err("dns", "out of memory watching a DNS socket");
            return; /* the query will time out */
        }
        int rc = uv_poll_init_socket(d->loop, &s->poll, fd);
        if (rc) {
            log_err("dns", "cannot watch DNS socket %d: %s", (int)fd, uv_strerror(rc));
            free(s);
            return;
        }
        /* Sockets alone do not keep the loop alive: the timer does, while a
         * query is pending, and the idle handle while results wait. */
        uv_unref((uv_handle_t *)&s->poll);
        s->d = d;
        s->fd = fd;
        s->poll.data = s;
        s->next = d->socks;
        d->socks = s;
        d->open_handles++;
    }
    uv_poll_start(&s->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), poll_cb);
}

/* ---- the ready list and its drain ----------------------------------------- */

static void finish_close(struct dns *d);
static void idle_cb(uv_idle_t *h);

static void ready_push(struct dns *d, struct sub *s)
{
    s->next = NULL;
    if (d->ready_tail)
        d->ready_tail->next = s;
    else
        d->ready_head = s;
    d->ready_tail = s;
    if (!d->closing)
        uv_idle_start(&d->idle, idle_cb);
}

static void drain(struct dns *d)
{
    d->draining = true;
    do {
        /* Only what is ready now: lookups started by callbacks wait for the
         * next loop iteration, so a callback that starts lookups of cached
         * names cannot starve the loop. */
        struct sub *list = d->ready_head;
        d->ready_head = d->ready_tail = NULL;
        while (list) {
            struct sub *s = list;
            list = s->next;
            s->next = NULL;
            s->done(s->ctx, s);
        }
    } while (d->closing && d->ready_head);
    d->draining = false;
    if (d->closing)
        finish_close(d);
    else if (!d->ready_head)
        uv_idle_stop(&d->idle);
}

static void idle_cb(uv_idle_t *h)
{
    drain(h->data);
}

static void sub_free(struct sub *s)
{
    dns_result_clear(&s->res);
    free(s);
}

/* ---- single lookups --------------------------------------------------------- */

static void from_ares_status(struct dns_result *r, int status)
{
    switch (status) {
    case ARES_ETIMEOUT:
        dns_result_fail(r, DNS_TEMPFAIL, ERR_TIMEOUT, "timeout");
        break;
    case ARES_ESERVFAIL:
        dns_result_fail(r, DNS_TEMPFAIL, ERR_DNS, "SERVFAIL");
        r->servfail = true;
        break;
    case ARES_EREFUSED:
        dns_result_fail(r, DNS_TEMPFAIL, ERR_DNS, "REFUSED");
        break;
    case ARES_ENOTIMP:
        dns_result_fail(r, DNS_TEMPFAIL, ERR_DNS, "NOTIMP");
        break;
    case ARES_EFORMERR:
        dns_result_fail(r, DNS_TEMPFAIL, ERR_DNS, "FORMERR");
        break;
    case ARES_ECONNREFUSED:
        /* c-ares 1.18 also ends here when every server answered SERVFAIL or
         * REFUSED (it tries the next server and keeps this status). */
        dns_result_fail(r, DNS_TEMPFAIL, ERR_DNS,
                        "no usable answer: servers failed, refused or unreachable");
        break;
    case ARES_EBADRESP:
        dns_result_fail(r, DNS_TEMPFAIL, ERR_PROTO, "malformed DNS answer");
        break;
    case ARES_ENOMEM:
        dns_result_fail(r, DNS_TEMPFAIL, ERR_NOMEM, "out of memory");
        break;
    case ARES_EBADNAME:
        dns_result_fail(r, DNS_INVALID, ERR_INVAL, "invalid DNS name");
        break;
    case ARES_EDESTRUCTION:
    case ARES_ECANCELLED:
        dns_result_fail(r, DNS_TEMPFAIL, ERR_CLOSED, "resolver closed");
        break;
    default:
        dns_result_fail(r, DNS_TEMPFAIL, ERR_DNS, "DNS lookup failed");
        break;
    }
}

/* The DNSSEC fields of a result, from its AD bit and the resolver's trust. */
static void set_security(const struct dns *d, struct dns_result *r)
{
    r->dnssec = d->trust_ad;
    r->secure = d->trust_ad && r->ad;
}

static void result_for(const struct dns *d, struct dns_result *r, int status, const uint8_t *abuf,
                       int alen, const char *name, uint16_t qtype)
{
    memset(r, 0, sizeof(*r));
    if (abuf && alen > 0 &&
        (status == ARES_SUCCESS || status == ARES_ENODATA || status == ARES_ENOTFOUND)) {
        if (dns_parse_answer(abuf, (size_t)alen, name, qtype, r) == 0) {
            set_security(d, r);
            return;
        }
        dns_result_clear(r);
        dns_result_fail(r, DNS_TEMPFAIL, ERR_NOMEM, "out of memory");
    } else {
        from_ares_status(r, status);
    }
    set_security(d, r);
    r->qtype = qtype;
    r->name = malloc(strlen(name) + 1);
    if (r->name)
        memcpy(r->name, name, strlen(name) + 1);
}

/* Send f's query (again). c-ares may call ares_cb before this returns (no
 * memory); it only queues results then. */
static void ares_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen);

static void send_query(struct dns *d, struct flight *f)
{
    uint8_t q[512];
    size_t len;
    if (dns_build_query(f->name, f->qtype, d->opt.dnssec, q, sizeof(q), &len) != 0) {
        /* The name passed dns_name_valid() before a flight was made. */
        ares_cb(f, ARES_EBADNAME, 0, NULL, 0);
        return;
    }
    ares_send(d->ch, q, (int)len, ares_cb, f);
}

static bool cacheable(const struct dns_result *r)
{
    return r->status != DNS_TEMPFAIL && r->status != DNS_INVALID && r->raw && r->ttl > 0;
}

static void cache_store(struct dns *d, const char *name, uint16_t qtype, const struct dns_result *r)
{
    if (!cacheable(r))
        return;
    bool negative = r->status == DNS_NXDOMAIN || r->status == DNS_NODATA ||
                    (r->status == DNS_IMPLICIT_MX && r->n_rr == 0);
    uint32_t cap = negative ? d->opt.max_neg_ttl : d->opt.max_ttl;
    uint32_t ttl = r->ttl < cap ? r->ttl : cap;
    dns_cache_put(d->cache, name, qtype, r->raw, r->raw_len, ttl, time_mono_ms());
}

static void ares_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct flight *f = arg;
    struct dns *d = f->d;
    (void)timeouts;
    /* Retries are ours, not c-ares's: c-ares doubles its timeout on every
     * round, so dns_tries 10 would wait 1023 timeouts. Each of our rounds
     * asks every server once with the plain timeout. A new query from inside
     * a c-ares callback is allowed; if it fails at once we are called again,
     * at most tries times. */
    /* With DNSSEC, c-ares hands us SERVFAIL and REFUSED answers itself
     * (ARES_FLAG_NOCHECKRESP, see dns_new) so that a validating resolver's
     * SERVFAIL (bogus data, RFC 4035 5.5) can be told from an unreachable
     * server; they are retried like timeouts. */
    bool failed_answer = status == ARES_SUCCESS && abuf && alen >= 4 &&
                         ((abuf[3] & 0xF) == 2 || (abuf[3] & 0xF) == 5);
    if ((status == ARES_ETIMEOUT || status == ARES_ECONNREFUSED || failed_answer) && !d->closing &&
        f->attempts < d->opt.tries) {
        f->attempts++;
        log_debug("dns", "%s %s: %s, try %d of %d", f->name, type_name(f->qtype),
                  ares_strerror(status), f->attempts, d->opt.tries);
        send_query(d, f);
        return;
    }
    if (f->prev)
        f->prev->next = f->next;
    else
        d->flights = f->next;
    if (f->next)
        f->next->prev = f->prev;

    /* One query per flight however many waited for it (tries included). A
     * failure is an answer that is neither data nor a definite "no". */
    metric_add(MET_DNS_QUERIES, type_name(f->qtype), NULL, 1);
    if (status != ARES_SUCCESS && status != ARES_ENODATA && status != ARES_ENOTFOUND &&
        status != ARES_EDESTRUCTION && status != ARES_ECANCELLED)
        metric_add(MET_DNS_FAILURES, type_name(f->qtype), NULL, 1);

    bool first = true;
    while (f->waiters) {
        struct sub *s = f->waiters;
        f->waiters = s->next;
        result_for(d, &s->res, status, abuf, alen, s->name, s->qtype);
        if (first && !d->closing)
            cache_store(d, f->name, f->qtype, &s->res);
        first = false;
        log_debug("dns", "%s %s: %s (%s)", s->name, type_name(s->qtype),
                  dns_status_name(s->res.status), s->res.why ? s->res.why : "");
        ready_push(d, s);
    }
    free(f);
}

/* Start a single-type lookup whose result goes to done(ctx, sub) from the
 * drain. Never calls done before it returns. */
static int start_sub(struct dns *d, const char *name, uint16_t qtype, sub_done_fn done, void *ctx,
                     const char *invalid_why)
{
    size_t nl = strlen(name);
    struct sub *s = calloc(1, sizeof(*s) + nl + 1);
    if (!s)
        return ERR_NOMEM;
    memcpy(s->name, name, nl + 1);
    s->qtype = qtype;
    s->done = done;
    s->ctx = ctx;

    if (invalid_why || !dns_name_valid(name)) {
        s->res.qtype = qtype;
        s->res.name = malloc(nl + 1);
        if (s->res.name)
            memcpy(s->res.name, name, nl + 1);
        dns_result_fail(&s->res, DNS_INVALID, ERR_INVAL,
                        invalid_why ? invalid_why : "invalid DNS name");
        set_security(d, &s->res);
        ready_push(d, s);
        return 0;
    }

    const uint8_t *msg;
    size_t len;
    uint32_t left;
    if (dns_cache_get(d->cache, name, qtype, time_mono_ms(), &msg, &len, &left)) {
        if (dns_parse_answer(msg, len, name, qtype, &s->res) == 0) {
            s->res.ttl = left;
            s->res.from_cache = true;
            set_security(d, &s->res);
            log_debug("dns", "%s %s: %s (cached, %us left)", name, type_name(qtype),
                      dns_status_name(s->res.status), (unsigned)left);
            ready_push(d, s);
            return 0;
        }
        dns_result_clear(&s->res);
    }

    for (struct flight *f = d->flights; f; f = f->next) {
        if (f->qtype == qtype && dns_name_eq(f->name, name)) {
            s->next = f->waiters;
            f->waiters = s;
            return 0;
        }
    }
    struct flight *f = calloc(1, sizeof(*f) + nl + 1);
    if (!f) {
        free(s);
        return ERR_NOMEM;
    }
    memcpy(f->name, name, nl + 1);
    f->d = d;
    f->qtype = qtype;
    f->attempts = 1;
    f->waiters = s;
    f->next = d->flights;
    if (d->flights)
        d->flights->prev = f;
    d->flights = f;
    log_debug("dns", "query %s %s", name, type_name(qtype));
    /* c-ares may call ares_cb before returning (no memory); it only queues
     * the result, and f is not touched after this call. */
    send_query(d, f);
    update_timer(d);
    return 0;
}

static struct dns_query *query_new(struct dns *d, enum qkind kind, void *arg)
{
    struct dns_query *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->d = d;
    q->kind = kind;
    q->arg = arg;
    return q;
}

static bool quiet(const struct dns_query *q)
{
    return q->cancelled || q->d->closing;
}

static void lookup_done(void *ctx, struct sub *s)
{
    struct dns_query *q = ctx;
    if (!quiet(q))
        q->cb(q->arg, &s->res);
    sub_free(s);
    free(q);
}

int dns_lookup(struct dns *d, const char *name, uint16_t qtype, dns_cb cb, void *arg,
               struct dns_query **qp)
{
    if (d->closing)
        return ERR_CLOSED;
    struct dns_query *q = query_new(d, QK_LOOKUP, arg);
    if (!q)
        return ERR_NOMEM;
    q->cb = cb;
    int rc = start_sub(d, name, qtype, lookup_done, q, NULL);
    if (rc) {
        free(q);
        return rc;
    }
    if (qp)
        *qp = q;
    return 0;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* ---- A + AAAA ------------------------------------------------------------- */

/* Merge the A and AAAA results of a job: addresses of the preferred family
 * first; the status as dns_addrs() documents. */
static int merge_addrs(const struct dns *d, const struct addr_job *j, enum dns_status *st, int *err,
                       const char **why, struct dns_addr **addrs, size_t *n, uint32_t *ttl)
{
    const struct dns_result *first = d->opt.prefer_ipv6 ? &j->aaaa : &j->a;
    const struct dns_result *second = d->opt.prefer_ipv6 ? &j->a : &j->aaaa;
    bool six = d->opt.ipv6;
    const struct dns_result *parts[2] = {first, second};
    size_t total = 0;
    *ttl = UINT32_MAX;
    for (int i = 0; i < 2; i++) {
        if (parts[i] == &j->aaaa && !six)
            continue;
        if (parts[i]->status == DNS_OK) {
            total += parts[i]->n_addr;
            if (parts[i]->ttl < *ttl)
                *ttl = parts[i]->ttl;
        }
    }
    *addrs = NULL;
    *n = 0;
    if (total) {
        *addrs = calloc(total, sizeof(**addrs));
        if (!*addrs)
            return ERR_NOMEM;
        for (int i = 0; i < 2; i++) {
            if ((parts[i] == &j->aaaa && !six) || parts[i]->status != DNS_OK)
                continue;
            memcpy(*addrs + *n, parts[i]->addr, parts[i]->n_addr * sizeof(**addrs));
            *n += parts[i]->n_addr;
        }
        *st = DNS_OK;
        *err = 0;
        *why = "ok";
        return 0;
    }
    if (*ttl == UINT32_MAX)
        *ttl = 0;
    const struct dns_result *pick = NULL;
    enum dns_status order[] = {DNS_TEMPFAIL, DNS_INVALID, DNS_NXDOMAIN};
    for (size_t k = 0; k < sizeof(order) / sizeof(order[0]) && !pick; k++)
        for (int i = 0; i < 2 && !pick; i++)
            if (!(parts[i] == &j->aaaa && !six) && parts[i]->status == order[k])
                pick = parts[i];
    if (pick) {
        *st = pick->status;
        *err = pick->err;
        *why = pick->why;
    } else {
        *st = DNS_NODATA;
        *err = ERR_NOTFOUND;
        *why = "no address records";
    }
    return 0;
}

static void job_sub_done(struct addr_job *j, struct sub *s)
{
    struct dns_result *slot = s->qtype == DNS_T_A ? &j->a : &j->aaaa;
    *slot = s->res;
    memset(&s->res, 0, sizeof(s->res));
    free(s);
    j->pending--;
}

static void addrs_done(void *ctx, struct sub *s)
{
    struct dns_query *q = ctx;
    struct addr_job *j = &q->job;
    job_sub_done(j, s);
    if (j->pending)
        return;
    if (!quiet(q)) {
        struct dns_result r;
        memset(&r, 0, sizeof(r));
        r.name = j->a.name;
        r.cname = j->a.cname ? j->a.cname : j->aaaa.cname;
        r.qtype = DNS_T_A;
        r.from_cache = j->a.from_cache && (!q->d->opt.ipv6 || j->aaaa.from_cache);
        r.dnssec = q->d->trust_ad;
        r.secure = j->a.secure && (!q->d->opt.ipv6 || j->aaaa.secure);
        r.ad = r.secure;
        if (merge_addrs(q->d, j, &r.status, &r.err, &r.why, &r.addr, &r.n_addr, &r.ttl))
            dns_result_fail(&r, DNS_TEMPFAIL, ERR_NOMEM, "out of memory");
        q->cb(q->arg, &r);
        free(r.addr);
    }
    dns_result_clear(&j->a);
    dns_result_clear(&j->aaaa);
    free(q);
}

static int start_job(struct dns *d, struct addr_job *j, const char *host, sub_done_fn done,
                     void *ctx)
{
    j->pending = 0;
    int rc = start_sub(d, host, DNS_T_A, done, ctx, NULL);
    if (rc)
        return rc;
    j->pending++;
    if (d->opt.ipv6) {
        rc = start_sub(d, host, DNS_T_AAAA, done, ctx, NULL);
        if (rc) {
            /* The A lookup is on its way; fake a failed AAAA so the job
             * still completes once, through the drain. */
            dns_result_fail(&j->aaaa, DNS_TEMPFAIL, ERR_NOMEM, "out of memory");
            return 0;
        }
        j->pending++;
    }
    return 0;
}

int dns_addrs(struct dns *d, const char *host, dns_cb cb, void *arg, struct dns_query **qp)
{
    if (d->closing)
        return ERR_CLOSED;
    struct dns_query *q = query_new(d, QK_ADDRS, arg);
    if (!q)
        return ERR_NOMEM;
    q->cb = cb;
    q->job.q = q;
    /* An address literal is not a host name: refused like any invalid
     * name, through the callback. */
    bool literal = dns_is_ip_literal(host);
    int rc = start_sub(d, host, DNS_T_A, addrs_done, q,
                       literal ? "an IP address literal is not a host name" : NULL);
    if (rc) {
        free(q);
        return rc;
    }
    q->job.pending = 1;
    if (d->opt.ipv6 && !literal) {
        if (start_sub(d, host, DNS_T_AAAA, addrs_done, q, NULL) == 0)
            q->job.pending++;
        else
            dns_result_fail(&q->job.aaaa, DNS_TEMPFAIL, ERR_NOMEM, "out of memory");
    }
    if (qp)
        *qp = q;
    return 0;
}

/* ---- full MX resolution ----------------------------------------------------- */

static void mx_result_clear(struct dns_mx_result *r)
{
    for (size_t i = 0; i < r->n_hosts; i++) {
        free(r->hosts[i].name);
        free(r->hosts[i].canonical);
        free(r->hosts[i].addr);
    }
    free(r->hosts);
    free(r->domain);
    memset(r, 0, sizeof(*r));
}

static void mx_finish(struct dns_query *q)
{
    struct dns_mx_result *r = &q->mr;
    if (r->status == DNS_OK || r->status == DNS_IMPLICIT_MX) {
        /* RFC 5321 5.1: if none of the hosts is usable, that is an error. */
        bool any = false, temp = false;
        for (size_t i = 0; i < r->n_hosts; i++) {
            if (r->hosts[i].n_addr)
                any = true;
            else if (r->hosts[i].status == DNS_TEMPFAIL)
                temp = true;
        }
        if (!any && temp) {
            r->status = DNS_TEMPFAIL;
            r->err = ERR_DNS;
            r->why = "no MX host address yet: lookups failed temporarily";
        } else if (!any) {
            r->status = DNS_NODATA;
            r->err = ERR_NOTFOUND;
            r->why = r->n_hosts == 1 && q->mr.hosts[0].status == DNS_INVALID
                         ? "MX target is an IP address literal"
                         : "no MX host has an address";
        }
    }
    if (!quiet(q)) {
        log_debug("dns", "%s: MX resolution %s (%s), %zu hosts", r->domain ? r->domain : "",
                  dns_status_name(r->status), r->why ? r->why : "", r->n_hosts);
        q->mx_cb(q->arg, r);
    }
    for (size_t i = 0; q->jobs && i < r->n_hosts; i++) {
        dns_result_clear(&q->jobs[i].a);
        dns_result_clear(&q->jobs[i].aaaa);
    }
    free(q->jobs);
    mx_result_clear(r);
    free(q);
}

static void mx_host_done(void *ctx, struct sub *s)
{
    struct addr_job *j = ctx;
    struct dns_query *q = j->q;
    job_sub_done(j, s);
    q->pending--;
    if (j->pending == 0) {
        struct dns_mx_host *h = &q->mr.hosts[j->host];
        uint32_t ttl;
        if (merge_addrs(q->d, j, &h->status, &h->err, &h->why, &h->addr, &h->n_addr, &ttl)) {
            h->status = DNS_TEMPFAIL;
            h->err = ERR_NOMEM;
            h->why = "out of memory";
        }
        h->cname = q->mr.status == DNS_OK && (j->a.cname || j->aaaa.cname);
        /* RFC 7672 2.2.2: the address records' security decides whether
         * the host's TLSA records are looked up at all. */
        h->secure = j->a.secure && (!q->d->opt.ipv6 || j->aaaa.secure);
        const char *canon = j->a.cname ? j->a.cname : j->aaaa.cname;
        if (canon && !h->canonical)
            h->canonical = dup_str(canon);
    }
    if (q->pending == 0)
        mx_finish(q);
}

static void mx_done(void *ctx, struct sub *s)
{
    struct dns_query *q = ctx;
    struct dns_mx_result *r = &q->mr;
    struct dns_result *mx = &s->res;
    q->pending--;
    r->status = mx->status;
    r->err = mx->err;
    r->why = mx->why;
    r->ttl = mx->ttl;
    r->dnssec = mx->dnssec;
    r->secure = mx->secure;
    if (quiet(q) || (mx->status != DNS_OK && mx->status != DNS_IMPLICIT_MX)) {
        sub_free(s);
        mx_finish(q);
        return;
    }
    size_t n = mx->n_mx < DNS_MAX_MX_HOSTS ? mx->n_mx : DNS_MAX_MX_HOSTS;
    r->hosts = calloc(n, sizeof(*r->hosts));
    q->jobs = calloc(n, sizeof(*q->jobs));
    if (!r->hosts || !q->jobs) {
        r->status = DNS_TEMPFAIL;
        r->err = ERR_NOMEM;
        r->why = "out of memory";
        sub_free(s);
        mx_finish(q);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        /* The same host twice keeps its most preferred place. */
        bool dup = false;
        for (size_t k = 0; k < r->n_hosts; k++)
            if (dns_name_eq(r->hosts[k].name, mx->mx[i].host))
                dup = true;
        if (dup)
            continue;
        struct dns_mx_host *h = &r->hosts[r->n_hosts];
        h->name = dup_str(mx->mx[i].host);
        if (!h->name)
            break;
        h->pref = mx->mx[i].pref;
        h->status = DNS_TEMPFAIL;
        h->why = "not looked up";
        r->n_hosts++;
    }
    sub_free(s);

    /* Count first, then start: a start never completes synchronously, but
     * the count must be whole before any completion is drained. */
    for (size_t i = 0; i < r->n_hosts; i++) {
        struct dns_mx_host *h = &r->hosts[i];
        struct addr_job *j = &q->jobs[i];
        j->q = q;
        j->host = i;
        if (dns_is_ip_literal(h->name)) {
            /* RFC 5321 5.1: the MX data "MUST contain a domain name". */
            h->status = DNS_INVALID;
            h->err = ERR_INVAL;
            h->why = "MX target is an IP address literal";
            continue;
        }
        if (start_job(q->d, j, h->name, mx_host_done, j) == 0)
            q->pending += (size_t)j->pending;
        else {
            h->status = DNS_TEMPFAIL;
            h->err = ERR_NOMEM;
            h->why = "out of memory";
        }
    }
    if (q->pending == 0)
        mx_finish(q);
}

int dns_mx_resolve(struct dns *d, const char *domain, dns_mx_cb cb, void *arg,
                   struct dns_query **qp)
{
    if (d->closing)
        return ERR_CLOSED;
    struct dns_query *q = query_new(d, QK_MX, arg);
    if (!q)
        return ERR_NOMEM;
    q->mx_cb = cb;
    q->mr.domain = dup_str(domain);
    if (!q->mr.domain) {
        free(q);
        return ERR_NOMEM;
    }
    int rc = start_sub(d, domain, DNS_T_MX, mx_done, q, NULL);
    if (rc) {
        free(q->mr.domain);
        free(q);
        return rc;
    }
    q->pending = 1;
    if (qp)
        *qp = q;
    return 0;
}

void dns_cancel(struct dns_query *q)
{
    if (q)
        q->cancelled = true;
}

void dns_cache_flush(struct dns *d)
{
    dns_cache_clear(d->cache);
}

bool dns_dnssec_trusted(const struct dns *d)
{
    return d->trust_ad;
}

int dns_tlsa_lookup(struct dns *d, const char *host, uint16_t port, dns_cb cb, void *arg,
                    struct dns_query **qp)
{
    char qname[DNS_NAME_MAX + 1];
    if (d->closing)
        return ERR_CLOSED;
    const char *why = NULL;
    if (dns_is_ip_literal(host))
        why = "an IP address literal has no TLSA records";
    else if (!dns_name_valid(host) || dns_tlsa_qname(host, port, qname, sizeof(qname)) != 0)
        why = "invalid DNS name";
    if (why)
        str_copy(qname, host, sizeof(qname));
    struct dns_query *q = query_new(d, QK_LOOKUP, arg);
    if (!q)
        return ERR_NOMEM;
    q->cb = cb;
    int rc = start_sub(d, qname, DNS_T_TLSA, lookup_done, q, why);
    if (rc) {
        free(q);
        return rc;
    }
    if (qp)
        *qp = q;
    return 0;
}

/* ---- life cycle ------------------------------------------------------------ */

/* One of the resolver's handles is closed; the last one frees it. */
static void release(struct dns *d)
{
    if (--d->open_handles > 0)
        return;
    dns_cache_free(d->cache);
    free(d);
    ares_library_cleanup();
}

static void handle_closed(uv_handle_t *h)
{
    release(h->data);
}

static void finish_close(struct dns *d)
{
    if (d->closed_handles)
        return;
    d->closed_handles = true;
    uv_close((uv_handle_t *)&d->timer, handle_closed);
    uv_close((uv_handle_t *)&d->idle, handle_closed);
}

int dns_new(uv_loop_t *loop, const struct dns_options *o, struct dns **out)
{
    /* Bounds keep a lookup's worst case (timeout x servers x tries) sane. */
    if (o->timeout_ms <= 0 || o->timeout_ms > 600000 || o->tries <= 0 || o->tries > 100)
        return ERR_INVAL;
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) {
        log_err("dns", "c-ares: %s", ares_strerror(rc));
        return ERR_DNS;
    }
    struct dns *d = calloc(1, sizeof(*d));
    if (!d) {
        ares_library_cleanup();
        return ERR_NOMEM;
    }
    d->loop = loop;
    d->opt = *o;
    d->opt.servers = NULL;
    d->opt.n_servers = 0;
    d->cache = dns_cache_new(o->cache_size);
    if (!d->cache) {
        free(d);
        ares_library_cleanup();
        return ERR_NOMEM;
    }

    struct ares_options ao;
    memset(&ao, 0, sizeof(ao));
    /* No search list, no HOSTALIASES: mail domains are fully qualified
     * (RFC 5321 5.1: relays MUST NOT infer FQDNs). */
    ao.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
    /* DNSSEC: c-ares 1.18 would swallow a SERVFAIL and go on to the next
     * server, ending in "connection refused"; a validating resolver's
     * SERVFAIL is its verdict on the data and is wanted as such. */
    if (o->dnssec)
        ao.flags |= ARES_FLAG_NOCHECKRESP;
    ao.timeout = o->timeout_ms;
    ao.tries = 1; /* one round per c-ares query; ares_cb retries */
    ao.sock_state_cb = sock_state_cb;
    ao.sock_state_cb_data = d;
    char lookups[] = "b"; /* DNS only, never /etc/hosts */
    ao.lookups = lookups;
    int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB |
               ARES_OPT_LOOKUPS;
    rc = ares_init_options(&d->ch, &ao, mask);
    if (rc != ARES_SUCCESS) {
        log_err("dns", "cannot start the resolver: %s", ares_strerror(rc));
        dns_cache_free(d->cache);
        free(d);
        ares_library_cleanup();
        return rc == ARES_ENOMEM ? ERR_NOMEM : ERR_DNS;
    }
    rc = set_servers(d, o);
    if (rc == 0)
        rc = decide_trust(d, o);
    if (rc) {
        ares_destroy(d->ch);
        dns_cache_free(d->cache);
        free(d);
        ares_library_cleanup();
        return rc;
    }
    uv_timer_init(loop, &d->timer);
    uv_idle_init(loop, &d->idle);
    d->timer.data = d;
    d->idle.data = d;
    d->open_handles = 2;
    *out = d;
    return 0;
}

void dns_free(struct dns *d)
{
    if (!d || d->closing)
        return;
    d->closing = true;
    uv_timer_stop(&d->timer);
    /* Every query in flight ends with ARES_EDESTRUCTION (its waiters are
     * queued and drained quietly below); every socket is reported closed. */
    ares_channel ch = d->ch;
    ares_destroy(ch);
    d->ch = NULL;
    if (!d->draining)
        drain(d);
}
