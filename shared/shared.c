/*
 * shared.c - the Redis client of shared_state: hiredis's async API on the
 * daemon's libuv loop (hiredis/adapters/libuv.h).
 *
 * One connection. Its life: DOWN -> CONNECTING (TCP or unix connect, then
 * AUTH, SELECT and SCRIPT LOAD of the two Lua scripts, pipelined) -> UP
 * once the last script is loaded; any error, or a request older than the
 * timeout, frees the context (hiredis then calls every pending reply
 * callback with no reply: each request fails once) and the state goes
 * DOWN; a reconnect follows after a backoff that doubles up to
 * SHARED_BACKOFF_MAX_MS. set_state() is the one setter and logs a change
 * between up and not up once.
 *
 * rediss://: hiredis connects to the unix socket of tls_bridge.c, which
 * relays to Redis over TLS; a TLS failure it reports (on_tls_error())
 * takes the connection down like any other error.
 *
 * One repeating timer (the tick) checks deadlines (connect, oldest
 * request), the reconnect time and the heartbeat.
 *
 * The scripts use Redis's own clock (TIME), so the nodes' clocks need not
 * agree.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "shared.h"
#include "shared_int.h"
#include "tls_bridge.h"

#define COMP "shared"

/* KEYS[1] the bucket (hash: t tokens, ts ms); ARGV rate/s, burst, want.
 * Returns {granted, wait_ms}. */
static const char rate_lua[] =
    "local rate = tonumber(ARGV[1]) local burst = tonumber(ARGV[2]) "
    "local want = tonumber(ARGV[3]) "
    "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
    "local b = redis.call('HMGET', KEYS[1], 't', 'ts') "
    "local tokens = tonumber(b[1]) local ts = tonumber(b[2]) "
    "if tokens == nil or ts == nil then tokens = burst ts = now end "
    "if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) ts = now end "
    "local got = math.min(want, math.floor(tokens)) if got < 0 then got = 0 end "
    "tokens = tokens - got local wait = 0 "
    "if got < 1 then wait = math.ceil((1 - tokens) * 1000 / rate) end "
    "redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(ts)) "
    "redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000) "
    "return {got, wait}";

/* KEYS[1] the fleet (zset: node -> last seen ms); ARGV node, window ms.
 * Returns {now, node, seen, node, seen, ...}. */
static const char heartbeat_lua[] =
    "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
    "redis.call('ZADD', KEYS[1], now, ARGV[1]) "
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2])) "
    "local r = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES') "
    "local out = {tostring(now)} for i = 1, #r do out[#out + 1] = r[i] end return out";

/* KEYS[1] the leases (zset: member -> expiry ms); ARGV member, limit,
 * ttl ms, "take" or "renew". A renewal always re-adds (the connection
 * exists); a take only under the limit. Returns 1 or 0. */
static const char lease_lua[] =
    "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
    "local ttl = tonumber(ARGV[3]) "
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) "
    "if ARGV[4] == 'renew' or redis.call('ZSCORE', KEYS[1], ARGV[1]) or "
    "redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then "
    "redis.call('ZADD', KEYS[1], now + ttl, ARGV[1]) "
    "redis.call('PEXPIRE', KEYS[1], ttl * 2) return 1 end return 0";

enum req_kind {
    RQ_HANDSHAKE,
    RQ_SCRIPT_RATE,
    RQ_SCRIPT_HB,
    RQ_SCRIPT_LEASE,
    RQ_HEARTBEAT,
    RQ_RATE,
    RQ_LEASE,
    RQ_GET,
    RQ_PUT,
    RQ_RAW /* shared_command() with a callback (tlsrpt.c) */
};

/* A lease held (or being taken: id set when granted). */
struct lease {
    struct lease *next;
    uint64_t id;
    char key[300];
    char member[160];
};

/* The caller's callback of a request, by its kind. */
union req_cb {
    shared_grant_cb grant; /* RQ_RATE */
    shared_get_cb get;     /* RQ_GET */
    shared_lease_cb lease; /* RQ_LEASE */
    shared_reply_cb raw;   /* RQ_RAW */
};

struct sreq {
    struct shared *s;
    struct sreq *prev, *next;
    enum req_kind kind;
    uint64_t sent_ns;
    union req_cb cb;
    void *arg;
    struct lease *lease; /* RQ_LEASE: the lease asked for (owned until granted) */
};

struct fleet_node {
    char name[128];
    int64_t seen_ms; /* Redis time */
};

struct shared {
    uv_loop_t *loop;
    struct shared_url url;
    char node[128];
    double share_conf;
    uint32_t timeout_ms, heartbeat_ms;
    redisAsyncContext *ac;
    enum shared_state state;
    bool ever_up, logged_down, closing;
    int fail_status; /* given to requests failed by a teardown */
    uv_timer_t tick;
    int64_t connect_started_ms, next_connect_ms, next_heartbeat_ms, state_since_ms;
    uint32_t backoff_ms;
    struct sreq *head, *tail; /* in flight, oldest first */
    char rate_sha[41], hb_sha[41], lease_sha[41];
    struct lease *leases; /* held */
    size_t nleases;
    uint64_t next_lease;
    /* Round trips (ms). */
    double rtt_last, rtt_avg, rtt_max;
    /* The fleet at the last heartbeat. */
    struct fleet_node fleet[SHARED_FLEET_MAX];
    unsigned nfleet, fleet_last; /* fleet_last: the size remembered (>= 1) */
    int64_t fleet_now_ms;
    char last_error[200];
    uint64_t generation; /* times the state went up */
    /* rediss://: the relay hiredis connects to, the last TLS failure (not
     * logged again while it repeats) and the last session's parameters. */
    struct tls_bridge *bridge;
    char tls_error[200];
    char tls_version[16], tls_cipher[64];
};

static const char *const state_names[] = {"down", "connecting", "up"};

static void teardown(struct shared *s, int status, const char *why);

static void set_state(struct shared *s, enum shared_state st, const char *why)
{
    if (s->state == st)
        return;
    enum shared_state was = s->state;
    s->state = st;
    s->state_since_ms = time_now_ms();
    metric_set(MET_SHARED_UP, NULL, NULL, st == SHARED_UP ? 1 : 0);
    if (st == SHARED_UP) {
        s->generation++;
        if (s->logged_down || !s->ever_up)
            log_info(COMP, "shared state %s is up (node %s)%s", s->url.shown, s->node,
                     s->logged_down ? ": limits are shared with the fleet again" : "");
        s->ever_up = true;
        s->logged_down = false;
    } else if (was == SHARED_UP || (!s->ever_up && !s->logged_down && st == SHARED_DOWN)) {
        log_warn(COMP,
                 "shared state %s is unreachable (%s): each limit falls back to this node's "
                 "share (%.3g)",
                 s->url.shown, why ? why : "?", shared_fallback_share(s));
        s->logged_down = true;
    }
}

static void req_unlink(struct shared *s, struct sreq *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        s->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        s->tail = r->prev;
    r->prev = r->next = NULL;
}

static void note_rtt(struct shared *s, uint64_t sent_ns)
{
    double ms = (double)(uv_hrtime() - sent_ns) / 1e6;
    s->rtt_last = ms;
    s->rtt_avg = s->rtt_avg == 0 ? ms : s->rtt_avg * 0.9 + ms * 0.1;
    if (ms > s->rtt_max)
        s->rtt_max = ms;
    metric_observe(MET_SHARED_RTT, NULL, NULL, ms / 1000.0);
}

static bool copy_sha(const redisReply *rp, char *out)
{
    if (!rp || rp->type != REDIS_REPLY_STRING || rp->len != 40)
        return false;
    memcpy(out, rp->str, 40);
    out[40] = '\0';
    return true;
}

static long long reply_int(const redisReply *rp)
{
    if (!rp)
        return 0;
    if (rp->type == REDIS_REPLY_INTEGER)
        return rp->integer;
    if (rp->type == REDIS_REPLY_STRING)
        return strtoll(rp->str, NULL, 10);
    return 0;
}

static void heartbeat_reply(struct shared *s, const redisReply *rp)
{
    if (rp->type != REDIS_REPLY_ARRAY || rp->elements < 1)
        return;
    s->fleet_now_ms = reply_int(rp->element[0]);
    s->nfleet = 0;
    for (size_t i = 1; i + 1 < rp->elements && s->nfleet < SHARED_FLEET_MAX; i += 2) {
        const redisReply *n = rp->element[i];
        if (n->type != REDIS_REPLY_STRING)
            continue;
        struct fleet_node *f = &s->fleet[s->nfleet++];
        size_t l = n->len < sizeof(f->name) - 1 ? n->len : sizeof(f->name) - 1;
        memcpy(f->name, n->str, l);
        f->name[l] = '\0';
        f->seen_ms = reply_int(rp->element[i + 1]);
    }
    if (s->nfleet > 0)
        s->fleet_last = s->nfleet;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    struct sreq *r = privdata;
    struct shared *s = r->s;
    const redisReply *rp = reply;
    req_unlink(s, r);
    int status = 0;
    if (!rp)
        status = s->fail_status ? s->fail_status : ERR_IO;
    else if (rp->type == REDIS_REPLY_ERROR)
        status = ERR_PROTO;
    if (rp)
        note_rtt(s, r->sent_ns);
    if (rp && rp->type == REDIS_REPLY_ERROR)
        snprintf(s->last_error, sizeof(s->last_error), "%.*s", (int)(rp->len < 150 ? rp->len : 150),
                 rp->str);
    switch (r->kind) {
    case RQ_HANDSHAKE:
        if (status == ERR_PROTO)
            teardown(s, ERR_IO, s->last_error);
        break;
    case RQ_SCRIPT_RATE:
    case RQ_SCRIPT_HB:
    case RQ_SCRIPT_LEASE:
        if (status == 0 && copy_sha(rp, r->kind == RQ_SCRIPT_RATE ? s->rate_sha
                                        : r->kind == RQ_SCRIPT_HB ? s->hb_sha
                                                                  : s->lease_sha)) {
            if (s->rate_sha[0] && s->hb_sha[0] && s->lease_sha[0]) {
                s->backoff_ms = 0;
                s->next_heartbeat_ms = 0; /* at the next tick */
                set_state(s, SHARED_UP, NULL);
            }
        } else if (status == 0 || status == ERR_PROTO) {
            teardown(s, ERR_IO, "SCRIPT LOAD failed");
        }
        break;
    case RQ_HEARTBEAT:
        if (status == 0)
            heartbeat_reply(s, rp);
        break;
    case RQ_RATE:
        if (status == 0 && (rp->type != REDIS_REPLY_ARRAY || rp->elements != 2))
            status = ERR_PROTO;
        if (status == 0) {
            long long got = reply_int(rp->element[0]), wait = reply_int(rp->element[1]);
            if (got < 0)
                got = 0;
            metric_add(MET_SHARED_GRANTS, got > 0 ? "granted" : "denied", NULL, 1);
            if (got > 0)
                metric_add(MET_SHARED_TOKENS, NULL, NULL, (double)got);
            r->cb.grant(r->arg, 0, (unsigned)got, wait);
        } else {
            metric_add(MET_SHARED_GRANTS, "error", NULL, 1);
            r->cb.grant(r->arg, status, 0, 0);
        }
        break;
    case RQ_LEASE: {
        struct lease *l = r->lease;
        r->lease = NULL;
        uint64_t id = 0;
        if (status == 0 && reply_int(rp) == 1) {
            id = l->id;
            l->next = s->leases;
            s->leases = l;
            s->nleases++;
        } else {
            free(l);
        }
        r->cb.lease(r->arg, status, id);
        break;
    }
    case RQ_GET:
        if (status == 0 && rp->type == REDIS_REPLY_STRING)
            r->cb.get(r->arg, 0, rp->str, rp->len);
        else if (status == 0 && rp->type == REDIS_REPLY_NIL)
            r->cb.get(r->arg, 0, NULL, 0);
        else
            r->cb.get(r->arg, status ? status : ERR_PROTO, NULL, 0);
        break;
    case RQ_PUT:
        break;
    case RQ_RAW:
        r->cb.raw(r->arg, status, rp);
        break;
    }
    free(r->lease);
    free(r);
}

/* Send one command; cb/arg for RQ_RATE and RQ_GET. */
static int send_cmd(struct shared *s, enum req_kind kind, union req_cb cb, void *arg, int argc,
                    const char **argv, const size_t *lens)
{
    if (!s->ac || s->closing)
        return ERR_CLOSED;
    struct sreq *r = calloc(1, sizeof(*r));
    if (!r)
        return ERR_NOMEM;
    r->s = s;
    r->kind = kind;
    r->arg = arg;
    r->cb = cb;
    r->sent_ns = uv_hrtime();
    if (redisAsyncCommandArgv(s->ac, on_reply, r, argc, argv, lens) != REDIS_OK) {
        free(r);
        return ERR_IO;
    }
    r->prev = s->tail;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    return 0;
}

static int send_strs(struct shared *s, enum req_kind kind, int argc, const char **argv)
{
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    union req_cb none = {0};
    return send_cmd(s, kind, none, NULL, argc, argv, lens);
}

/* Free the context: every request in flight fails with status. */
static void teardown(struct shared *s, int status, const char *why)
{
    redisAsyncContext *ac = s->ac;
    s->ac = NULL;
    s->rate_sha[0] = s->hb_sha[0] = s->lease_sha[0] = '\0';
    set_state(s, SHARED_DOWN, why);
    if (!s->closing) {
        s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : SHARED_BACKOFF_MIN_MS;
        if (s->backoff_ms > SHARED_BACKOFF_MAX_MS)
            s->backoff_ms = SHARED_BACKOFF_MAX_MS;
        s->next_connect_ms = time_mono_ms() + s->backoff_ms;
    }
    if (ac) {
        s->fail_status = status;
        redisAsyncFree(ac); /* calls on_reply(NULL) for each request */
        s->fail_status = 0;
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct shared *s = ac->data;
    if (!s || s->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        s->ac = NULL;
        char why[200];
        snprintf(why, sizeof(why), "connect: %s", ac->errstr[0] ? ac->errstr : "failed");
        teardown(s, ERR_IO, why);
        return;
    }
    if (s->url.password[0]) {
        const char *a[3] = {"AUTH", s->url.user[0] ? s->url.user : s->url.password,
                            s->url.password};
        send_strs(s, RQ_HANDSHAKE, s->url.user[0] ? 3 : 2, a);
    }
    if (s->url.db) {
        char db[16];
        snprintf(db, sizeof(db), "%u", s->url.db);
        const char *a[2] = {"SELECT", db};
        send_strs(s, RQ_HANDSHAKE, 2, a);
    }
    const char *a1[3] = {"SCRIPT", "LOAD", rate_lua};
    send_strs(s, RQ_SCRIPT_RATE, 3, a1);
    const char *a2[3] = {"SCRIPT", "LOAD", heartbeat_lua};
    send_strs(s, RQ_SCRIPT_HB, 3, a2);
    const char *a3[3] = {"SCRIPT", "LOAD", lease_lua};
    send_strs(s, RQ_SCRIPT_LEASE, 3, a3);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct shared *s = ac->data;
    if (!s || s->ac != ac)
        return; /* our own teardown */
    /* hiredis frees the context after this callback. */
    s->ac = NULL;
    teardown(s, ERR_IO, ac->errstr[0] ? ac->errstr : "connection closed");
}

static void start_connect(struct shared *s)
{
    redisAsyncContext *ac = s->url.kind == SHARED_URL_UNIX ? redisAsyncConnectUnix(s->url.path)
                            : s->bridge ? redisAsyncConnectUnix(tls_bridge_path(s->bridge))
                                        : redisAsyncConnect(s->url.host, s->url.port);
    s->connect_started_ms = time_mono_ms();
    if (!ac) {
        teardown(s, ERR_NOMEM, "out of memory");
        return;
    }
    if (ac->err) {
        char why[200];
        snprintf(why, sizeof(why), "connect: %s", ac->errstr);
        redisAsyncFree(ac);
        teardown(s, ERR_IO, why);
        return;
    }
    ac->data = s;
    if (redisLibuvAttach(ac, s->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        teardown(s, ERR_IO, "cannot attach to the loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    s->ac = ac;
    s->state = SHARED_CONNECTING; /* not logged: only up/down changes are */
}

/* Send the lease script for l, mode "take" (with cb: the request owns l
 * until its reply, which registers it when granted) or "renew" (no cb). */
static int lease_send(struct shared *s, struct lease *l, unsigned limit, const char *mode,
                      shared_lease_cb cb, void *arg)
{
    char lim[16], ttl[16];
    snprintf(lim, sizeof(lim), "%u", limit);
    snprintf(ttl, sizeof(ttl), "%u", (unsigned)SHARED_LEASE_TTL_MS);
    const char *a[8] = {"EVALSHA", s->lease_sha, "1", l->key, l->member, lim, ttl, mode};
    size_t lens[8];
    for (int i = 0; i < 8; i++)
        lens[i] = strlen(a[i]);
    union req_cb c = {.lease = cb};
    int rc = send_cmd(s, cb ? RQ_LEASE : RQ_PUT, c, arg, 8, a, lens);
    if (rc == 0 && cb)
        s->tail->lease = l;
    return rc;
}

static void heartbeat(struct shared *s)
{
    for (struct lease *l = s->leases; l; l = l->next)
        lease_send(s, l, 0, "renew", NULL, NULL);
    char win[24];
    snprintf(win, sizeof(win), "%u", SHARED_FLEET_WINDOW_MS);
    const char *a[6] = {"EVALSHA", s->hb_sha, "1", "convoy:nodes", s->node, win};
    send_strs(s, RQ_HEARTBEAT, 6, a);
}

static void on_tick(uv_timer_t *t)
{
    struct shared *s = t->data;
    if (s->closing)
        return;
    int64_t now = time_mono_ms();
    if (!s->ac) {
        if (now >= s->next_connect_ms)
            start_connect(s);
        return;
    }
    if (s->state == SHARED_CONNECTING && now - s->connect_started_ms > SHARED_CONNECT_TIMEOUT_MS) {
        teardown(s, ERR_TIMEOUT, "connect timed out");
        return;
    }
    /* While connecting, the handshake's requests (AUTH, SELECT, SCRIPT
     * LOAD, queued at once) are bounded by the connect deadline above:
     * for rediss:// they wait for the TLS handshake. */
    if (s->state == SHARED_UP && s->head &&
        (uv_hrtime() - s->head->sent_ns) / 1000000 > s->timeout_ms) {
        char why[80];
        snprintf(why, sizeof(why), "no answer within %ums", (unsigned)s->timeout_ms);
        teardown(s, ERR_TIMEOUT, why);
        return;
    }
    if (s->state == SHARED_UP && now >= s->next_heartbeat_ms) {
        s->next_heartbeat_ms = now + s->heartbeat_ms;
        heartbeat(s);
    }
}

/* The TLS side of the bridge failed: the connection goes down (fallback)
 * with the reason. set_state() logs the first; a failed handshake while
 * already down (Redis came back with a certificate that does not verify)
 * is logged once more, unless it repeats. */
static void on_tls_error(void *arg, const char *why, bool handshake)
{
    struct shared *s = arg;
    bool logged_by_state = s->state == SHARED_UP || (!s->ever_up && !s->logged_down);
    if (handshake && strcmp(s->tls_error, why) != 0 && !logged_by_state)
        log_warn(COMP, "shared state %s: %s", s->url.shown, why);
    str_copy(s->tls_error, why, sizeof(s->tls_error));
    str_copy(s->last_error, why, sizeof(s->last_error));
    if (s->ac)
        teardown(s, ERR_IO, why);
}

static void on_tls_up(void *arg, const char *version, const char *cipher)
{
    struct shared *s = arg;
    s->tls_error[0] = '\0';
    str_copy(s->tls_version, version, sizeof(s->tls_version));
    str_copy(s->tls_cipher, cipher, sizeof(s->tls_cipher));
}

static int start_bridge(struct shared *s, const struct shared_options *o, struct buf *err)
{
    if (!o->tls_dir || !o->tls_dir[0]) {
        buf_printf(err, "shared_state: rediss:// needs a directory for its TLS socket");
        return ERR_INVAL;
    }
    struct tls_bridge_options bo = {.loop = o->loop,
                                    .dir = o->tls_dir,
                                    .host = s->url.host,
                                    .port = s->url.port,
                                    .ca_file = o->ca_file,
                                    .on_error = on_tls_error,
                                    .on_up = on_tls_up,
                                    .arg = s};
    return tls_bridge_new(&bo, &s->bridge, err);
}

int shared_new(const struct shared_options *o, struct shared **out, struct buf *err)
{
    *out = NULL;
    struct shared *s = calloc(1, sizeof(*s));
    if (!s)
        return ERR_NOMEM;
    s->loop = o->loop;
    int rc = shared_url_parse(o->url, &s->url, err);
    if (rc == 0 && s->url.tls)
        rc = start_bridge(s, o, err);
    if (rc != 0) {
        free(s);
        return rc;
    }
    str_copy(s->node, o->node && o->node[0] ? o->node : "convoy", sizeof(s->node));
    s->share_conf = o->fallback_share;
    s->timeout_ms = o->timeout_ms ? o->timeout_ms : SHARED_TIMEOUT_MS;
    s->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : SHARED_HEARTBEAT_MS;
    s->fleet_last = 1;
    s->state = SHARED_DOWN;
    s->state_since_ms = time_now_ms();
    uv_timer_init(s->loop, &s->tick);
    s->tick.data = s;
    uint64_t period = s->timeout_ms / 4 < 25 ? 25 : s->timeout_ms / 4;
    uv_timer_start(&s->tick, on_tick, 0, period);
    metric_set(MET_SHARED_UP, NULL, NULL, 0);
    *out = s;
    return 0;
}

static void on_tick_closed(uv_handle_t *h)
{
    free(h->data);
}

void shared_close(struct shared *s)
{
    if (!s || s->closing)
        return;
    s->closing = true;
    bool was_up = s->state == SHARED_UP;
    s->logged_down = true; /* no "unreachable" line for our own close */
    s->state = was_up ? SHARED_DOWN : s->state;
    teardown(s, ERR_CLOSED, "closed");
    tls_bridge_close(s->bridge);
    s->bridge = NULL;
    uv_close((uv_handle_t *)&s->tick, on_tick_closed);
    /* Held leases expire in Redis by themselves. */
    while (s->leases) {
        struct lease *l = s->leases;
        s->leases = l->next;
        free(l);
    }
    s->nleases = 0;
}

enum shared_state shared_state(const struct shared *s)
{
    return s ? s->state : SHARED_DOWN;
}

bool shared_up(const struct shared *s)
{
    return s && s->state == SHARED_UP;
}

unsigned shared_fleet_size(const struct shared *s)
{
    return s && s->fleet_last ? s->fleet_last : 1;
}

double shared_fallback_share(const struct shared *s)
{
    return s ? shared_share(s->share_conf, s->fleet_last) : 1.0;
}

void shared_status(const struct shared *s, struct json_t *status)
{
    if (!s)
        return;
    json_t *fleet = json_array();
    for (unsigned i = 0; i < s->nfleet; i++) {
        int64_t ago = s->fleet_now_ms - s->fleet[i].seen_ms;
        json_array_append_new(fleet, json_pack("{s:s, s:I, s:I}", "node", s->fleet[i].name, "seen",
                                               (json_int_t)(s->fleet[i].seen_ms / 1000), "seen_ago",
                                               (json_int_t)(ago > 0 ? ago / 1000 : 0)));
    }
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:I, s:f, s:f, s:f, s:f, s:i, s:o}", "url", s->url.shown, "node", s->node,
        "state", state_names[s->state], "since", (json_int_t)(s->state_since_ms / 1000), "rtt_ms",
        s->rtt_last, "rtt_avg_ms", s->rtt_avg, "rtt_max_ms", s->rtt_max, "fallback_share",
        shared_fallback_share(s), "fleet_size", (int)shared_fleet_size(s), "fleet", fleet);
    if (o)
        json_object_set_new(o, "leases", json_integer((json_int_t)s->nleases));
    if (o)
        json_object_set_new(o, "tls", json_boolean(s->url.tls));
    if (o && s->url.tls && s->tls_version[0]) {
        json_object_set_new(o, "tls_version", json_string(s->tls_version));
        json_object_set_new(o, "tls_cipher", json_string(s->tls_cipher));
    }
    if (o && s->last_error[0])
        json_object_set_new(o, "last_error", json_string(s->last_error));
    json_object_set_new(status, "shared_state", o ? o : json_null());
}

int shared_rate_take(struct shared *s, const char *key, double rate, double burst, unsigned want,
                     shared_grant_cb cb, void *arg)
{
    if (!shared_up(s))
        return ERR_AGAIN;
    char k[320], r[32], b[32], w[16];
    snprintf(k, sizeof(k), "convoy:rate:%s", key);
    snprintf(r, sizeof(r), "%.6g", rate);
    snprintf(b, sizeof(b), "%.6g", burst);
    snprintf(w, sizeof(w), "%u", want ? want : 1);
    const char *a[7] = {"EVALSHA", s->rate_sha, "1", k, r, b, w};
    size_t lens[7];
    for (int i = 0; i < 7; i++)
        lens[i] = strlen(a[i]);
    union req_cb c = {.grant = cb};
    return send_cmd(s, RQ_RATE, c, arg, 7, a, lens);
}

int shared_get(struct shared *s, const char *key, shared_get_cb cb, void *arg)
{
    if (!shared_up(s))
        return ERR_AGAIN;
    char k[320];
    snprintf(k, sizeof(k), "convoy:sts:%s", key);
    const char *a[2] = {"GET", k};
    size_t lens[2] = {3, strlen(k)};
    union req_cb c = {.get = cb};
    return send_cmd(s, RQ_GET, c, arg, 2, a, lens);
}

void shared_put(struct shared *s, const char *key, const char *value, size_t len, int64_t ttl_s)
{
    if (!shared_up(s) || ttl_s <= 0)
        return;
    char k[320], t[24];
    snprintf(k, sizeof(k), "convoy:sts:%s", key);
    snprintf(t, sizeof(t), "%lld", (long long)ttl_s);
    const char *a[5] = {"SET", k, value, "EX", t};
    size_t lens[5] = {3, strlen(k), len, 2, strlen(t)};
    union req_cb none = {0};
    send_cmd(s, RQ_PUT, none, NULL, 5, a, lens);
}

int shared_lease_take(struct shared *s, const char *key, unsigned limit, shared_lease_cb cb,
                      void *arg)
{
    if (!shared_up(s))
        return ERR_AGAIN;
    struct lease *l = calloc(1, sizeof(*l));
    if (!l)
        return ERR_NOMEM;
    l->id = ++s->next_lease;
    snprintf(l->key, sizeof(l->key), "convoy:conc:%.280s", key);
    snprintf(l->member, sizeof(l->member), "%.120s:%llu", s->node, (unsigned long long)l->id);
    int rc = lease_send(s, l, limit ? limit : 1, "take", cb, arg);
    if (rc != 0)
        free(l);
    return rc;
}

void shared_lease_release(struct shared *s, uint64_t lease)
{
    if (!s || !lease)
        return;
    for (struct lease **pp = &s->leases; *pp; pp = &(*pp)->next) {
        struct lease *l = *pp;
        if (l->id != lease)
            continue;
        *pp = l->next;
        s->nleases--;
        if (shared_up(s)) {
            const char *a[3] = {"ZREM", l->key, l->member};
            send_strs(s, RQ_PUT, 3, a);
        }
        free(l);
        return;
    }
}

int shared_command(struct shared *s, int argc, const char **argv, const size_t *lens,
                   shared_reply_cb cb, void *arg)
{
    if (!shared_up(s))
        return ERR_AGAIN;
    union req_cb c = {.raw = cb};
    return send_cmd(s, cb ? RQ_RAW : RQ_PUT, c, arg, argc, argv, lens);
}

uint64_t shared_generation(const struct shared *s)
{
    return s ? s->generation : 0;
}

const char *shared_node(const struct shared *s)
{
    return s ? s->node : "";
}
