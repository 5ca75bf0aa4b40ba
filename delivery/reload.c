/*
 * reload.c - reload in two steps: everything a new snapshot needs is read
 * and checked first (tls_policy_file, trust stores, the MTA-STS engine's
 * new settings), then applied in place, which cannot fail.
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
#include "delivery.h"
#include "dns.h"
#include "policy.h"
#include "queue.h"
#include "smtp.h"
#include "tls.h"

/* ---- reload ------------------------------------------------------------------------------- */

/* Everything a reload needs, built and checked before anything changes. */
struct delivery_update {
    struct conf *conf;
    struct policy_overrides *ov;
    struct tls_ctx *ctx;
    struct policy_update *pu;
    struct conf_map *transport; /* transport_maps (route.c) */
    struct conf_map *limits;    /* destination_limits */
    struct conf_map *sasl;      /* smtp_sasl_password_maps, or NULL */
    bool relay;                 /* relayhost set */
    struct conf_hostport relayhost;
    bool sts_changed;
    char no_tls_why[256]; /* why ctx is NULL (logged when applied) */
};

void delivery_reload_cancel(struct delivery_update *u)
{
    if (!u)
        return;
    policy_overrides_free(u->ov);
    conf_map_free(u->sasl);
    tls_ctx_free(u->ctx);
    policy_update_free(u->pu);
    conf_map_free(u->transport);
    conf_map_free(u->limits);
    conf_unref(u->conf);
    free(u);
}

static bool lists_differ(const struct conf_list *a, const struct conf_list *b)
{
    if (a->n != b->n)
        return true;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0)
            return true;
    return false;
}

/* Do two snapshots differ in a setting of the MTA-STS engine? */
static bool sts_settings_differ(const struct delivery *dl, const struct conf *a,
                                const struct conf *b)
{
    struct policy_options x, y;
    dl->opt.policy_options(a, &x);
    dl->opt.policy_options(b, &y);
    return strcmp(x.ca_file ? x.ca_file : "", y.ca_file ? y.ca_file : "") != 0 ||
           x.https_port != y.https_port || x.fetch_timeout_ms != y.fetch_timeout_ms ||
           x.connect_timeout_ms != y.connect_timeout_ms || x.max_policy_size != y.max_policy_size ||
           x.txt_check_s != y.txt_check_s || x.refresh_s != y.refresh_s ||
           x.retry_after_s != y.retry_after_s;
}

int delivery_reload_prepare(struct delivery *dl, struct conf *c, struct delivery_update **out,
                            struct buf *err)
{
    *out = NULL;
    if (!dl || dl->closing)
        return 0;
    struct delivery_update *u = calloc(1, sizeof(*u));
    if (!u)
        return ERR_NOMEM;
    u->conf = conf_ref(c);
    /* The override file first: a broken one refuses the whole reload (a
     * typo must never loosen TLS). */
    u->ov = policy_overrides_load(c->tls_policy_file ? c->tls_policy_file : "", err);
    if (!u->ov) {
        delivery_reload_cancel(u);
        return ERR_INVAL;
    }
    /* transport_maps and destination_limits: a bad line (FILE:LINE: why)
     * refuses the reload; the old tables stay. So does a smart-host
     * credentials table that does not load (or that others can read). */
    if (route_load(c, &u->transport, &u->limits, err) != 0 ||
        delivery_sasl_load(c, &u->sasl, err) != 0) {
        delivery_reload_cancel(u);
        return ERR_INVAL;
    }
    if (c->relayhost && c->relayhost[0]) {
        if (conf_parse_hostport(c->relayhost, true, &u->relayhost) != 0) {
            buf_printf(err, "relayhost: cannot parse \"%s\"\n", c->relayhost);
            delivery_reload_cancel(u);
            return ERR_INVAL;
        }
        u->relay = true;
    }
    char why[512] = "";
    u->ctx = delivery_tls_ctx(c, why, sizeof(why));
    if (!u->ctx && strcmp(c->smtp_tls_security_level, "verify") == 0) {
        buf_printf(err, "smtp_tls_CAfile: %s\n", why);
        delivery_reload_cancel(u);
        return ERR_TLS;
    }
    if (!u->ctx)
        str_copy(u->no_tls_why, why, sizeof(u->no_tls_why));
    /* The MTA-STS engine is reconfigured in place: its cache, the lookups
     * and fetches in flight stay. Its trust store is read again on every
     * reload (as the one for MX hosts above); one that cannot be loaded
     * refuses the reload, as it would refuse a start. */
    if (dl->pol) {
        struct policy_options o;
        dl->opt.policy_options(c, &o);
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", c->queue_directory, POLICY_CACHE_FILE);
        o.cache_path = path;
        deliver_policy_remote(dl, &o);
        int rc = policy_update_prepare(dl->pol, &o, &u->pu, why, sizeof(why));
        if (rc != 0) {
            buf_printf(err, "%s: %s\n",
                       rc == ERR_TLS ? "smtp_tls_CAfile (MTA-STS policy hosts)" : "MTA-STS", why);
            delivery_reload_cancel(u);
            return rc;
        }
        u->sts_changed = sts_settings_differ(dl, dl->conf, c);
    }
    *out = u;
    return 0;
}

/* A new relayhost routes mail leased from now on (route.c decides per
 * lease); sessions in progress finish where they are. The "[relayhost]"
 * destination takes the new next hop and looks it up again; when relayhost
 * is removed it keeps the old one for the jobs it still holds, and new mail
 * goes to the recipient domains' own MX hosts. */
static void relayhost_apply(struct delivery *dl, const struct delivery_update *u)
{
    dl->relay = u->relay;
    dl->relayhost = u->relayhost;
    for (struct dest *d = dl->dests; d && u->relay; d = d->next) {
        if (strcmp(d->name, "[relayhost]") != 0)
            continue;
        d->nexthop = u->relayhost;
        d->has_nexthop = true;
        if (d->state == D_READY)
            d->resolved_ms = dl_mono(dl) - 2 * RESOLVE_TTL_MS; /* stale: dest_run() */
    }
    log_info(QCOMP, "relayhost: %s", u->relay ? u->conf->relayhost : "none (MX delivery)");
}

void delivery_reload_apply(struct delivery *dl, struct delivery_update *u)
{
    if (!u)
        return;
    if (!dl || dl->closing) {
        delivery_reload_cancel(u);
        return;
    }
    const struct conf *c = u->conf;
    if (!u->ctx)
        log_warn(COMPONENT, "TLS for delivery is off: %s", u->no_tls_why);
    if (strcmp(c->relayhost ? c->relayhost : "", dl->conf->relayhost ? dl->conf->relayhost : "") !=
        0)
        relayhost_apply(dl, u);
    if (lists_differ(&c->dns_servers, &dl->conf->dns_servers) ||
        c->dns_timeout != dl->conf->dns_timeout || c->dns_tries != dl->conf->dns_tries)
        log_warn(QCOMP, "dns_servers, dns_timeout and dns_tries changes take effect at the next "
                        "restart");
    if (strcmp(c->smtp_dns_support_level ? c->smtp_dns_support_level : "",
               dl->conf->smtp_dns_support_level ? dl->conf->smtp_dns_support_level : "") != 0 ||
        lists_differ(&c->dns_validating_servers, &dl->conf->dns_validating_servers))
        log_warn(QCOMP, "smtp_dns_support_level and dns_validating_servers changes take effect "
                        "at the next restart");
    /* DANE per MX host is found with the addresses (dane.c): a changed
     * level looks every destination up again. */
    bool level_changed =
        strcmp(c->smtp_tls_security_level ? c->smtp_tls_security_level : "",
               dl->conf->smtp_tls_security_level ? dl->conf->smtp_tls_security_level : "") != 0;
    for (struct dest *d = dl->dests; d && level_changed; d = d->next)
        if (d->state == D_READY)
            d->resolved_ms = dl_mono(dl) - 2 * RESOLVE_TTL_MS; /* stale: dest_run() */
    /* New sessions use the new snapshot; sessions in progress keep their
     * context (reference counted) and their copy of the override entry. */
    policy_overrides_free(dl->ov);
    dl->ov = u->ov;
    u->ov = NULL;
    conf_map_free(dl->sasl);
    dl->sasl = u->sasl;
    u->sasl = NULL;
    for (struct dest *d = dl->dests; d; d = d->next)
        dest_quit_idle(d);
    tls_ctx_free(dl->tls_ctx);
    dl->tls_ctx = u->ctx;
    u->ctx = NULL;
    if (u->pu) {
        policy_update_apply(dl->pol, u->pu);
        u->pu = NULL;
        if (u->sts_changed)
            log_info(QCOMP,
                     "MTA-STS: new settings in force (https port %lld, fetch timeout %llds, "
                     "connect timeout %llds, policy size %lld, TXT check %llds, refresh %llds, "
                     "retry %llds); cached policies kept",
                     (long long)c->sts_policy_https_port, (long long)c->sts_fetch_timeout,
                     (long long)c->sts_connect_timeout, (long long)c->sts_max_policy_size,
                     (long long)c->sts_txt_check_interval, (long long)c->sts_refresh_interval,
                     (long long)c->sts_fetch_retry_time);
    }
    conf_unref(dl->conf);
    dl->conf = conf_ref(u->conf);
    dl->opt.helo_name(dl->conf, dl->helo, sizeof(dl->helo));
    if (level_changed)
        dane_warn(dl);
    /* New routes apply to recipients filed from now on; jobs already
     * waiting for a destination keep it. */
    struct conf_map *t = dl->transport, *l = dl->limits;
    dl->transport = u->transport;
    dl->limits = u->limits;
    u->transport = t;
    u->limits = l;
    route_reloaded(dl);
    log_info(QCOMP,
             "delivery: configuration reloaded, %zu TLS policy override(s), %zu transport_maps "
             "entr%s, %zu destination_limits entr%s",
             policy_overrides_count(dl->ov), conf_map_size(dl->transport),
             conf_map_size(dl->transport) == 1 ? "y" : "ies", conf_map_size(dl->limits),
             conf_map_size(dl->limits) == 1 ? "y" : "ies");
    delivery_reload_cancel(u); /* what is left of it */
}

int delivery_reload(struct delivery *dl, struct conf *c, struct buf *err)
{
    struct delivery_update *u = NULL;
    int rc = delivery_reload_prepare(dl, c, &u, err);
    if (rc == 0)
        delivery_reload_apply(dl, u);
    return rc;
}
