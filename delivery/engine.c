/*
 * engine.c - the delivery engine's life cycle: delivery_new() (resolver,
 * TLS context, tls_policy_file, the MTA-STS engine, timers, the pause table
 * from disk), stop, close (the engine frees itself once its handles are
 * closed and every queue request it made has called back), the clocks and
 * the "sts" status.
 *
 * The engine as a whole - queue -> destinations -> jobs -> connections,
 * the TLS policy, outcomes and log lines - is described in
 * docs/delivery.md; each file of delivery/ opens with its own part.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>

#include "conf.h"
#include "deliver_int.h"
#include "shared.h"
#include "delivery.h"
#include "dns.h"
#include "policy.h"
#include "queue.h"
#include "smtp.h"
#include "tls.h"

/* The engine's clocks: the options' fake one, or the real ones. */
int64_t dl_now(const struct delivery *dl)
{
    return dl->opt.clock_ms ? dl->opt.clock_ms(dl->opt.clock_arg) : time_now_ms();
}

int64_t dl_mono(const struct delivery *dl)
{
    return dl->opt.clock_ms ? dl->opt.clock_ms(dl->opt.clock_arg) : time_mono_ms();
}

/* ---- small helpers ----------------------------------------------------------- */

char *dl_strdup(const char *s)
{
    size_t n = strlen(s ? s : "");
    char *p = malloc(n + 1);
    if (p)
        memcpy(p, s ? s : "", n + 1);
    return p;
}

uint16_t dest_port(const struct delivery *dl)
{
    if (dl->relay && dl->relayhost.port)
        return dl->relayhost.port;
    return (uint16_t)dl->conf->smtp_destination_port;
}

/* ---- life cycle ---------------------------------------------------------------------- */

/* Proactive refresh (RFC 8461 5.1, 10.2): cached policies are checked and
 * refetched before they lapse, off the delivery path. */
static void on_sts_timer(uv_timer_t *t)
{
    struct delivery *dl = t->data;
    if (dl->pol && !dl->closing)
        policy_refresh_due(dl->pol, 20);
}

static int count_entry(void *arg, const struct policy_entry *e)
{
    size_t *n = arg;
    (void)e;
    (*n)++;
    return 0;
}

/* convoyctl status: "sts": the policy cache and what delivery saw. */
void delivery_sts_status(struct delivery *dl, json_t *status)
{
    if (!dl || !dl->pol)
        return;
    size_t n = 0;
    struct policy_cache *c = policy_cache(dl->pol);
    if (c)
        policy_cache_each(c, count_entry, &n);
    json_t *o = json_object();
    json_object_set_new(o, "policy_cache_size", json_integer((json_int_t)n));
    json_object_set_new(o, "overrides", json_integer((json_int_t)policy_overrides_count(dl->ov)));
    json_object_set_new(o, "testing_failures", json_integer((json_int_t)dl->sts_testing_failures));
    json_object_set_new(o, "enforce_failures", json_integer((json_int_t)dl->sts_enforce_failures));
    json_object_set_new(o, "rechecks", json_integer((json_int_t)dl->sts_rechecks));
    json_object_set_new(status, "sts", o);
}

static void dests_free(struct delivery *dl)
{
    struct dest *d = dl->dests;
    while (d) {
        struct dest *next = d->next;
        struct job *j;
        while ((j = dest_pop(d))) {
            for (size_t i = 0; i < j->n; i++)
                dl_unlease(dl, j->id, j->r[i].idx);
            job_free(j);
        }
        if (d->preq)
            policy_cancel(d->preq);
        policy_sts_clear(&d->sts);
        dest_dane_clear(d);
        free(d->targets);
        free(d);
        d = next;
    }
    dl->dests = NULL;
}

void deliver_maybe_free(struct delivery *dl)
{
    if (!dl->closing || dl->open_handles > 0 || dl->nconns > 0 || dl->pending_reqs > 0 ||
        deliver_pause_busy(dl) > 0)
        return;
    dests_free(dl);
    if (dl->pending_reqs > 0)
        return; /* unleases just issued: freed when they call back */
    buf_free(&dl->pause.text);
    tls_ctx_free(dl->tls_ctx);
    policy_overrides_free(dl->ov);
    conf_map_free(dl->transport);
    conf_map_free(dl->limits);
    conf_map_free(dl->sasl);
    conf_unref(dl->conf);
    free(dl);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct delivery *dl = h->data;
    dl->open_handles--;
    deliver_maybe_free(dl);
}

/* The client context for MX hosts: smtp_tls_CAfile, or the system store -
 * the same trust store the policy fetch uses (RFC 8461 4.2, 3.3). */
struct tls_ctx *delivery_tls_ctx(const struct conf *c, char *why, size_t why_size)
{
    const char *ca = c->smtp_tls_CAfile && c->smtp_tls_CAfile[0] ? c->smtp_tls_CAfile : NULL;
    return tls_ctx_client_new(ca, why, why_size);
}

/* The MTA-STS engine with its persistent cache in the queue directory
 * (<queue_directory>/sts.lmdb, where convoyctl sts looks too). */
/* The MTA-STS engine's shared cache is shared_state's (shared.h). */
static int remote_get(void *arg, const char *key, policy_remote_cb cb, void *cbarg)
{
    return shared_get(arg, key, cb, cbarg);
}

static void remote_put(void *arg, const char *key, const char *value, size_t len, int64_t ttl_s)
{
    shared_put(arg, key, value, len, ttl_s);
}

void deliver_policy_remote(const struct delivery *dl, struct policy_options *o)
{
    if (!dl->opt.shared)
        return;
    o->remote.arg = dl->opt.shared;
    o->remote.get = remote_get;
    o->remote.put = remote_put;
}

static int delivery_policy_new(struct delivery *dl, struct buf *err)
{
    const struct conf *c = dl->conf;
    struct policy_options o;
    dl->opt.policy_options(c, &o);
    char path[4096];
    int n = snprintf(path, sizeof(path), "%s/%s", c->queue_directory, POLICY_CACHE_FILE);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        buf_printf(err, "queue_directory: path too long for the MTA-STS cache");
        return ERR_TOOBIG;
    }
    o.cache_path = path;
    deliver_policy_remote(dl, &o);
    char why[512] = "";
    int rc = policy_new(dl->loop, dl->dns, &o, &dl->pol, why, sizeof(why));
    if (rc != 0) {
        buf_printf(err, "MTA-STS: %s", why[0] ? why : err_str(rc));
        dl->pol = NULL;
    }
    return rc;
}

int delivery_new(const struct delivery_options *opt, struct delivery **out, struct buf *err)
{
    *out = NULL;
    if (!opt->queue) {
        buf_printf(err, "delivery needs an open queue");
        return ERR_INVAL;
    }
    if (!opt->loop || !opt->conf || !opt->helo_name || !opt->dns_options || !opt->policy_options) {
        buf_printf(err, "delivery: incomplete options");
        return ERR_INVAL;
    }
    struct delivery *dl = calloc(1, sizeof(*dl));
    if (!dl)
        return ERR_NOMEM;
    dl->opt = *opt;
    dl->tlsrpt = opt->tlsrpt;
    dl->loop = opt->loop;
    dl->conf = conf_ref(opt->conf);
    dl->q = opt->queue;
    dl->opt.helo_name(dl->conf, dl->helo, sizeof(dl->helo));
    if (dl->conf->relayhost && dl->conf->relayhost[0]) {
        if (conf_parse_hostport(dl->conf->relayhost, true, &dl->relayhost) != 0) {
            buf_printf(err, "relayhost: cannot parse \"%s\"", dl->conf->relayhost);
            conf_unref(dl->conf);
            free(dl);
            return ERR_INVAL;
        }
        dl->relay = true;
    }
    struct dns_options dno;
    dl->opt.dns_options(dl->conf, &dno);
    int rc = dns_new(dl->loop, &dno, &dl->dns);
    if (rc != 0) {
        buf_printf(err, "delivery: cannot start the DNS resolver: %s", err_str(rc));
        conf_unref(dl->conf);
        free(dl);
        return rc;
    }
    /* The client context exists whatever smtp_tls_security_level says: an
     * MTA-STS policy or a tls_policy_file entry may require TLS. */
    {
        char why[256] = "";
        dl->tls_ctx = delivery_tls_ctx(dl->conf, why, sizeof(why));
        if (!dl->tls_ctx) {
            if (strcmp(dl->conf->smtp_tls_security_level, "verify") == 0) {
                buf_printf(err, "smtp_tls_CAfile: %s", why);
                dns_free(dl->dns);
                conf_unref(dl->conf);
                free(dl);
                return ERR_TLS;
            }
            log_warn(COMPONENT, "TLS for delivery is off: %s", why);
        }
    }
    dl->ov = policy_overrides_load(dl->conf->tls_policy_file ? dl->conf->tls_policy_file : "", err);
    if (!dl->ov) {
        /* One line per problem; the caller prints the text as one. */
        while (err->len > 0 && err->data[err->len - 1] == '\n')
            err->data[--err->len] = '\0';
        tls_ctx_free(dl->tls_ctx);
        dns_free(dl->dns);
        conf_unref(dl->conf);
        free(dl);
        return ERR_INVAL;
    }
    /* transport_maps and destination_limits: a bad line refuses the start;
     * so does a smart-host credentials table that does not load. */
    rc = route_load(dl->conf, &dl->transport, &dl->limits, err);
    if (rc == 0)
        rc = delivery_sasl_load(dl->conf, &dl->sasl, err);
    if (rc == 0)
        rc = delivery_policy_new(dl, err);
    if (rc != 0) {
        while (err->len > 0 && err->data[err->len - 1] == '\n')
            err->data[--err->len] = '\0';
        conf_map_free(dl->transport);
        conf_map_free(dl->limits);
        conf_map_free(dl->sasl);
        policy_overrides_free(dl->ov);
        tls_ctx_free(dl->tls_ctx);
        dns_free(dl->dns);
        conf_unref(dl->conf);
        free(dl);
        return rc;
    }
    uv_timer_init(dl->loop, &dl->due_timer);
    uv_timer_init(dl->loop, &dl->kick_timer);
    uv_timer_init(dl->loop, &dl->sweep_timer);
    uv_timer_init(dl->loop, &dl->sts_timer);
    uv_timer_init(dl->loop, &dl->route_timer);
    dl->due_timer.data = dl->kick_timer.data = dl->sweep_timer.data = dl->sts_timer.data = dl;
    dl->route_timer.data = dl;
    dl->open_handles = 5;
    uint64_t tick = dl->opt.sts_refresh_tick_ms ? dl->opt.sts_refresh_tick_ms : 60000;
    uv_timer_start(&dl->sts_timer, on_sts_timer, tick, tick);
    /* Pauses set before a restart hold from the first lease on. */
    deliver_pause_load(dl);
    log_info(QCOMP, "delivery started%s%s", dl->relay ? ": relayhost " : "",
             dl->relay ? dl->conf->relayhost : "");
    dane_warn(dl);
    if (dl->transport || dl->limits)
        log_info(QCOMP, "delivery: %zu transport_maps entr%s, %zu destination_limits entr%s",
                 conf_map_size(dl->transport), conf_map_size(dl->transport) == 1 ? "y" : "ies",
                 conf_map_size(dl->limits), conf_map_size(dl->limits) == 1 ? "y" : "ies");
    sched_lease_in(dl, 0);
    *out = dl;
    return 0;
}

void delivery_kick(struct delivery *dl)
{
    if (dl && !dl->closing && !dl->stopping)
        sched_lease_in(dl, 0);
}

void delivery_stop(struct delivery *dl)
{
    if (!dl || dl->stopping)
        return;
    dl->stopping = true;
    uv_timer_stop(&dl->due_timer);
    uv_timer_stop(&dl->kick_timer);
    /* Waiting jobs go back to the queue; idle sessions quit. */
    for (struct dest *d = dl->dests; d; d = d->next) {
        struct job *j;
        while ((j = dest_pop(d))) {
            for (size_t i = 0; i < j->n; i++) {
                dl_unlease(dl, j->id, j->r[i].idx);
                dl->inflight--;
            }
            job_free(j);
        }
        struct conn *cn;
        while ((cn = d->idle)) {
            conn_idle_remove(cn);
            smtp_client_quit(cn->c);
        }
    }
}

size_t delivery_active(const struct delivery *dl)
{
    if (!dl)
        return 0;
    return dl->nconns + dl->pending_reqs + deliver_pause_busy(dl);
}

void delivery_close(struct delivery *dl)
{
    if (!dl || dl->closing)
        return;
    delivery_stop(dl);
    dl->closing = true;
    for (struct dest *d = dl->dests; d; d = d->next) {
        if (d->query) {
            dns_cancel(d->query);
            d->query = NULL;
        }
        if (d->preq) {
            policy_cancel(d->preq);
            d->preq = NULL;
        }
        dest_dane_clear(d);
    }
    sched_rechecks_drop(dl);
    /* Abort every session. A message in flight gets its SMTP_EV_DONE inside
     * the abort (its recipients are deferred now); a job whose session was
     * not ready yet goes back to the queue here, so that nothing after this
     * call touches the queue (the daemon closes it next). */
    for (struct conn *cn = dl->conns; cn; cn = cn->all_next) {
        if (cn->c)
            smtp_client_abort(cn->c);
        if (cn->job) {
            for (size_t i = 0; i < cn->job->n; i++) {
                dl_unlease(dl, cn->job->id, cn->job->r[i].idx);
                dl->inflight--;
            }
            job_free(cn->job);
            cn->job = NULL;
        }
    }
    dl->q = NULL;
    policy_free(dl->pol);
    dl->pol = NULL;
    dns_free(dl->dns);
    dl->dns = NULL;
    uv_close((uv_handle_t *)&dl->sts_timer, on_handle_closed);
    uv_close((uv_handle_t *)&dl->due_timer, on_handle_closed);
    uv_close((uv_handle_t *)&dl->kick_timer, on_handle_closed);
    uv_close((uv_handle_t *)&dl->sweep_timer, on_handle_closed);
    uv_close((uv_handle_t *)&dl->route_timer, on_handle_closed);
}
