/*
 * route.c - where a recipient goes and how fast: transport_maps (a subset
 * of Postfix transport(5): smtp:/relay: next hops, error: and defer:),
 * destination_limits (concurrency, message rate, recipients per
 * transaction), the concurrency window and dead destinations
 * (smtp_destination_dead_threshold, smtp_destination_dead_time).
 *
 * Routing rules:
 * - A matched transport_maps entry wins over relayhost (as in Postfix);
 *   a recipient domain with no entry goes to relayhost when one is set,
 *   else to its own MX hosts.
 * - "smtp:" with no next hop is the recipient domain's own MX delivery,
 *   with its MTA-STS policy. A next hop ("smtp:[host]:port", "smtp:host")
 *   is the operator's choice: the recipient domain's MTA-STS policy (and
 *   DANE) does not apply to it; the log line says tls_policy=transport and
 *   smtp_tls_security_level is the TLS it gets.
 * - Destinations with a next hop are keyed "transport:NEXTHOP", so every
 *   domain routed to one host shares its connections and limits.
 *
 * A dead destination: after smtp_destination_dead_threshold attempts in a
 * row in which no address gave a usable session, nothing connects to it
 * for smtp_destination_dead_time; mail that comes due meanwhile is
 * deferred at once ("delivery temporarily suspended") without walking the
 * addresses; then one probe connection at a time tests it; a session that
 * becomes ready revives it. One log line when it is marked dead, one when
 * it is revived.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "conf.h"
#include "deliver_int.h"
#include "delivery.h"
#include "route.h"
#include "shared.h"
#include "verdict.h"

#define TRANSPORT_PREFIX "transport:"

int route_load(const struct conf *c, struct conf_map **transport, struct conf_map **limits,
               struct buf *err)
{
    *transport = *limits = NULL;
    if (c->transport_maps && c->transport_maps[0]) {
        *transport = conf_transport_load(c->transport_maps, err);
        if (!*transport)
            return ERR_INVAL;
    }
    if (c->destination_limits && c->destination_limits[0]) {
        *limits = conf_dest_limits_load(c->destination_limits, err);
        if (!*limits) {
            conf_map_free(*transport);
            *transport = NULL;
            return ERR_INVAL;
        }
    }
    return 0;
}

/*
 * error: and defer: entries end the recipient here: one log line per
 * recipient, and for error: a DSN through the one DSN path (job_finish()).
 * The recipients of one message that meet the same entry within one lease
 * are gathered into one job, so that the sender gets one DSN for them;
 * route_flush() ends the gathered jobs.
 */
struct route_reject {
    struct route_reject *next;
    struct job *j;
    const struct conf_transport *t; /* valid until route_flush() */
    char key[256];
};

static void route_reject(struct delivery *dl, const struct queue_due *due,
                         const struct conf_transport *t, const char *key)
{
    for (struct route_reject *rj = dl->rejects; rj; rj = rj->next) {
        if (rj->t == t && strcmp(rj->j->id, due->id) == 0) {
            if (!job_add_rcpt(rj->j, due))
                dl_defer_due(dl, due, "out of memory");
            return;
        }
    }
    struct route_reject *rj = calloc(1, sizeof(*rj));
    struct job *j = rj ? calloc(1, sizeof(*j)) : NULL;
    if (j)
        j->sender = dl_strdup(due->sender);
    if (!j || !j->sender) {
        job_free(j);
        free(rj);
        dl_defer_due(dl, due, "out of memory");
        return;
    }
    rj->j = j;
    rj->t = t;
    str_copy(rj->key, key ? key : "?", sizeof(rj->key));
    int64_t now = dl_now(dl);
    str_copy(j->id, due->id, sizeof(j->id));
    j->flags = due->flags;
    j->arrival_ms = due->arrival_ms;
    j->lease_ms = j->conn_ms = j->ready_ms = now;
    str_copy(j->relay, "none", sizeof(j->relay));
    snprintf(j->label, sizeof(j->label), "transport_maps=%.80s", rj->key);
    if (!job_add_rcpt(rj->j, due)) {
        job_free(j);
        free(rj);
        dl_defer_due(dl, due, "out of memory");
        return;
    }
    rj->next = dl->rejects;
    dl->rejects = rj;
}

void route_flush(struct delivery *dl)
{
    while (dl->rejects) {
        struct route_reject *rj = dl->rejects;
        dl->rejects = rj->next;
        const struct conf_transport *t = rj->t;
        bool bounce = t->kind == CONF_TRANSPORT_ERROR;
        struct verdict v = {
            .action = bounce ? VERDICT_BOUNCE : VERDICT_DEFER,
            .reason = bounce ? VR_LOCAL_PERMANENT : VR_LOCAL_TRANSIENT,
        };
        str_copy(v.status, t->status, sizeof(v.status));
        struct smtp_outcome o;
        memset(&o, 0, sizeof(o));
        str_copy(o.text,
                 t->text && t->text[0] ? t->text
                                       : (bounce ? "mail for this domain is refused"
                                                 : "delivery to this domain is deferred"),
                 sizeof(o.text));
        struct job *j = rj->j;
        free(rj);
        job_finish(dl, j, &o, &v);
    }
}

bool route_recipient(struct delivery *dl, const struct queue_due *due, char *name, size_t size)
{
    char dom[256];
    addr_domain(due->addr, dom, sizeof(dom));
    const char *key = NULL;
    const struct conf_transport *t =
        dl->transport && dom[0] ? conf_transport_find(dl->transport, dom, &key) : NULL;
    if (t && (t->kind == CONF_TRANSPORT_ERROR || t->kind == CONF_TRANSPORT_DEFER)) {
        route_reject(dl, due, t, key);
        return true;
    }
    if (t && t->nexthop.host[0]) {
        const struct conf_hostport *h = &t->nexthop;
        char port[16] = "";
        if (h->port)
            snprintf(port, sizeof(port), ":%u", (unsigned)h->port);
        snprintf(name, size, TRANSPORT_PREFIX "%s%s%s%s", h->bracketed ? "[" : "", h->host,
                 h->bracketed ? "]" : "", port);
    } else if (!t && dl->relay) {
        str_copy(name, "[relayhost]", size);
    } else {
        str_copy(name, dom, size);
    }
    return false;
}

/* The name a destination's limits go by (destination_limits, and the
 * fleet's buckets and leases): a next hop's are those of its host name. */
static const char *limit_key(const struct dest *d)
{
    return d->has_nexthop ? d->nexthop.host : d->name;
}

static const struct conf_dest_limit *dest_limit(const struct dest *d)
{
    const struct delivery *dl = d->dl;
    if (!dl->limits)
        return NULL;
    return conf_dest_limit_find(dl->limits, limit_key(d));
}

static void route_limits(struct dest *d, bool init)
{
    const struct conf *c = d->dl->conf;
    const struct conf_dest_limit *lim = dest_limit(d);
    unsigned limit = lim && lim->concurrency ? lim->concurrency
                                             : (unsigned)c->default_destination_concurrency_limit;
    if (init)
        window_init(&d->window, (unsigned)c->initial_destination_concurrency, limit);
    else
        window_set_limit(&d->window, limit);
    d->conc_conf = lim ? lim->concurrency : 0;
    double rate = lim ? lim->rate_per_s : 0;
    if (init || rate != d->bucket.rate) {
        bucket_init(&d->bucket, rate, dl_mono(d->dl));
        d->fallback_share = 0; /* the fallback bucket follows */
        d->grants = 0;
    }
}

void route_dest_init(struct dest *d)
{
    struct delivery *dl = d->dl;
    if (strncmp(d->name, TRANSPORT_PREFIX, strlen(TRANSPORT_PREFIX)) == 0) {
        const char *hop = d->name + strlen(TRANSPORT_PREFIX);
        if (conf_parse_hostport(hop, true, &d->nexthop) == 0) {
            d->has_nexthop = true;
            d->transport = true;
        }
    } else if (strcmp(d->name, "[relayhost]") == 0 && dl->relay) {
        d->nexthop = dl->relayhost;
        d->has_nexthop = true;
    }
    route_limits(d, true);
}

size_t route_rcpt_limit(const struct delivery *dl, const char *domain)
{
    const struct conf_dest_limit *lim =
        dl->limits && domain && domain[0] ? conf_dest_limit_find(dl->limits, domain) : NULL;
    if (lim && lim->recipients)
        return lim->recipients;
    return (size_t)dl->conf->default_destination_recipient_limit;
}

uint16_t route_port(const struct dest *d)
{
    if (d->has_nexthop && d->nexthop.port)
        return d->nexthop.port;
    return (uint16_t)d->dl->conf->smtp_destination_port;
}

static void lease_drop_spare(struct dest *d);

static void on_route_timer(uv_timer_t *t)
{
    struct delivery *dl = t->data;
    for (struct dest *d = dl->dests; d; d = d->next) {
        dest_run(d);
        lease_drop_spare(d);
    }
}

/* Run the destinations again in ms: their jobs wait in memory, so no
 * lease is needed (the due timer stays the scheduler's own). */
static void route_wake(struct delivery *dl, int64_t ms)
{
    if (ms < 1)
        ms = 1;
    if (dl->closing || dl->stopping)
        return;
    if (uv_is_active((uv_handle_t *)&dl->route_timer) &&
        uv_timer_get_due_in(&dl->route_timer) <= (uint64_t)ms)
        return;
    uv_timer_start(&dl->route_timer, on_route_timer, (uint64_t)ms, 0);
}

/*
 * The connections this node may have open to d: the window; with
 * shared_state a destination's concurrency= is the fleet's, held as
 * leases in Redis (route_lease()) while Redis is up, and split across the
 * fleet (this node's fallback share of it, at least one) while it is
 * away.
 */
static unsigned route_conn_cap(const struct dest *d)
{
    unsigned cap = d->window.cur;
    struct shared *sh = d->dl->opt.shared;
    if (sh && d->conc_conf && !shared_up(sh)) {
        unsigned mine = (unsigned)((double)d->conc_conf * shared_fallback_share(sh));
        if (mine < 1)
            mine = 1;
        if (mine < cap)
            cap = mine;
    }
    return cap;
}

/* A lease nobody took (the mail went over connections already open). */
static void lease_drop_spare(struct dest *d)
{
    if (d->spare_lease && !d->head) {
        shared_lease_release(d->dl->opt.shared, d->spare_lease);
        d->spare_lease = 0;
    }
}

#define LEASE_RETRY_MS 200

static void on_lease(void *arg, int status, uint64_t lease)
{
    struct dest *d = arg;
    struct delivery *dl = d->dl;
    d->lease_pending = false;
    dl->pending_reqs--;
    if (dl->closing) {
        shared_lease_release(dl->opt.shared, lease);
        deliver_maybe_free(dl);
        return;
    }
    if (status == 0 && lease) {
        d->spare_lease = lease;
    } else {
        /* The fleet's limit is reached (or Redis failed: the state is
         * down then, and the split applies): ask again shortly. */
        d->lease_retry_ms = dl_mono(dl) + LEASE_RETRY_MS;
        route_wake(dl, LEASE_RETRY_MS);
    }
    dest_run(d);
    lease_drop_spare(d);
}

/* May one more connection be opened as far as the fleet's concurrency=
 * goes? A lease is taken first; true when there is one (or no fleet
 * limit applies), false while it is asked for. */
static bool route_lease(struct dest *d)
{
    struct delivery *dl = d->dl;
    struct shared *sh = dl->opt.shared;
    if (!sh || !d->conc_conf || !shared_up(sh) || d->spare_lease)
        return true;
    if (d->lease_pending)
        return false;
    int64_t now = dl_mono(dl);
    if (now < d->lease_retry_ms) {
        route_wake(dl, d->lease_retry_ms - now);
        return false;
    }
    const char *key = limit_key(d);
    if (shared_lease_take(sh, key, d->conc_conf, on_lease, d) != 0)
        return true; /* not up after all: the split applies */
    d->lease_pending = true;
    dl->pending_reqs++;
    return false;
}

void route_ran(struct dest *d)
{
    lease_drop_spare(d);
}

void route_conn_closed(struct conn *cn)
{
    if (cn->lease)
        shared_lease_release(cn->dest->dl->opt.shared, cn->lease);
    cn->lease = 0;
}

bool route_may_connect(struct dest *d)
{
    struct delivery *dl = d->dl;
    if (d->nconns == 0)
        d->dead.probing = false; /* no probe can be under way */
    switch (dead_state(&d->dead, dl_mono(dl))) {
    case DEST_ALIVE:
        return d->nconns < route_conn_cap(d) && route_lease(d);
    case DEST_PROBE:
        if (d->nconns > 0)
            return false;
        d->dead.probing = true;
        return true;
    case DEST_DEAD:
        break;
    }
    /* Dead: what waits is deferred without a connection. */
    char text[400];
    snprintf(text, sizeof(text),
             "delivery temporarily suspended: destination %s is dead (no address reachable in "
             "%u attempts)",
             d->name, d->dead.fails);
    struct verdict v = {.action = VERDICT_DEFER, .reason = VR_ALL_ADDRESSES_FAILED};
    str_copy(v.status, "4.4.1", sizeof(v.status));
    struct job *j;
    while ((j = dest_pop(d))) {
        str_copy(j->relay, "none", sizeof(j->relay));
        job_fail(dl, j, &v, text);
    }
    return false;
}

/* Granted tokens not used within this time are dropped: they were the
 * fleet's budget of that moment, not a credit to spend in a burst later. */
#define GRANT_TTL_MS 1000
/* After a failed grant (an error reply), the local share for this long. */
#define GRANT_ERROR_PAUSE_MS 1000

static void on_grant(void *arg, int status, unsigned granted, int64_t wait_ms)
{
    struct dest *d = arg;
    struct delivery *dl = d->dl;
    d->grant_pending = false;
    dl->pending_reqs--;
    if (dl->closing) {
        deliver_maybe_free(dl);
        return;
    }
    int64_t now = dl_mono(dl);
    if (status != 0) {
        /* Timed out or the connection went: the state is down and
         * route_may_send() takes the local share; another error (a script
         * error) takes it for a moment. */
        d->grant_fail_until = now + GRANT_ERROR_PAUSE_MS;
    } else if (granted > 0) {
        d->grants += granted;
        d->grant_ms = now;
    } else {
        d->grant_retry_ms = now + (wait_ms > 0 ? wait_ms : 1);
        route_wake(dl, wait_ms);
        return;
    }
    dest_run(d);
}

/* The local bucket at this node's share of the rate (Redis away). */
static bool fallback_take(struct dest *d, int64_t now, int64_t *wait)
{
    double share = shared_fallback_share(d->dl->opt.shared);
    if (share != d->fallback_share) {
        bucket_init(&d->fallback, d->bucket.rate * share, now);
        d->fallback_share = share;
    }
    if (!bucket_take(&d->fallback, now, wait))
        return false;
    metric_add(MET_SHARED_FALLBACKS, NULL, NULL, 1);
    return true;
}

/*
 * With shared_state the destination's rate is the fleet's: tokens come
 * from a bucket in Redis, a batch per round trip (shared_batch()); while
 * a grant is in flight nothing is sent and the grant's reply runs the
 * destination again. While Redis is away or a grant failed, the local
 * bucket at this node's share. Either way a message that cannot go now
 * waits in the destination's queue in memory: Redis never defers,
 * bounces or repeats it.
 */
static bool shared_may_send(struct dest *d, struct shared *sh)
{
    struct delivery *dl = d->dl;
    int64_t now = dl_mono(dl);
    int64_t wait = 0;
    if (d->grants > 0 && now - d->grant_ms > GRANT_TTL_MS)
        d->grants = 0;
    if (d->grants > 0) {
        d->grants--;
        return true;
    }
    if (d->grant_pending)
        return false;
    if (shared_up(sh) && now >= d->grant_fail_until) {
        if (now < d->grant_retry_ms) {
            /* The fleet's bucket is empty: wait as long as it said. */
            route_wake(dl, d->grant_retry_ms - now);
            return false;
        }
        unsigned want = shared_batch(d->njobs, d->bucket.rate);
        const char *key = limit_key(d);
        if (shared_rate_take(sh, key, d->bucket.rate, d->bucket.burst, want, on_grant, d) == 0) {
            d->grant_pending = true;
            dl->pending_reqs++;
            return false;
        }
    }
    if (fallback_take(d, now, &wait))
        return true;
    route_wake(dl, wait);
    return false;
}

bool route_may_send(struct dest *d)
{
    int64_t wait = 0;
    struct shared *sh = d->dl->opt.shared;
    if (sh && d->bucket.rate > 0)
        return shared_may_send(d, sh);
    if (bucket_take(&d->bucket, dl_mono(d->dl), &wait))
        return true;
    route_wake(d->dl, wait);
    return false;
}

void route_conn_failed(struct dest *d, const char *why)
{
    struct delivery *dl = d->dl;
    window_failure(&d->window);
    int64_t dead_ms = dl->conf->smtp_destination_dead_time * 1000;
    if (dead_failure(&d->dead, (unsigned)dl->conf->smtp_destination_dead_threshold, dl_mono(dl),
                     dead_ms))
        log_warn(QCOMP,
                 "%s: destination is dead: %u attempts in a row reached no address (last: %s); "
                 "mail for it is deferred without connecting, next probe in %llds",
                 d->name, d->dead.fails, why && why[0] ? why : "no session",
                 (long long)dl->conf->smtp_destination_dead_time);
}

void route_conn_ready(struct dest *d)
{
    int64_t was_since = d->dead.since_ms;
    if (dead_success(&d->dead))
        log_info(QCOMP, "%s: destination is alive again after %llds", d->name,
                 (long long)((dl_mono(d->dl) - was_since) / 1000));
}

void route_delivered(struct dest *d)
{
    window_success(&d->window);
}

void route_reloaded(struct delivery *dl)
{
    for (struct dest *d = dl->dests; d; d = d->next)
        route_limits(d, false);
}

void route_status(struct delivery *dl, void *status)
{
    json_t *st = status;
    json_t *dead = json_array();
    int64_t mono = dl ? dl_mono(dl) : 0;
    int64_t now = dl ? dl_now(dl) : 0;
    for (struct dest *d = dl ? dl->dests : NULL; d; d = d->next) {
        if (!d->dead.dead)
            continue;
        int64_t left = d->dead.until_ms - mono;
        if (left < 0)
            left = 0;
        json_array_append_new(
            dead,
            json_pack("{s:s, s:I, s:I, s:I, s:b, s:I}", "destination", d->name, "since",
                      (json_int_t)((now - (mono - d->dead.since_ms)) / 1000), "until",
                      (json_int_t)((now + left) / 1000), "failures", (json_int_t)d->dead.fails,
                      "probing", d->dead.probing, "queued", (json_int_t)d->njobs));
    }
    json_object_set_new(st, "dead", dead);
}

void delivery_route_status(struct delivery *dl, struct json_t *status)
{
    route_status(dl, status);
}
