/*
 * dest.c - destinations: the recipient domain (or the one relayhost
 * destination), its MTA-STS policy (asked before the MX lookup, from the
 * cache without network I/O once fetched), its MX hosts and addresses
 * (RFC 5321 5.1; RFC 7505 null MX; address literals RFC 5321 4.1.3), its
 * waiting jobs and its connections within its concurrency window (route.c)
 * and smtp_connection_limit. A destination is a recipient domain,
 * "[relayhost]" or a transport_maps next hop ("transport:[host]:port").
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
#include "verdict.h"

/* ---- destinations ------------------------------------------------------------------- */

static void dest_fail_all(struct dest *d, const struct verdict *v, const char *text)
{
    struct job *j;
    while ((j = dest_pop(d)))
        job_fail(d->dl, j, v, text);
}

static bool dest_add_target(struct dest *d, const char *host, int family, const uint8_t *bytes,
                            uint16_t port)
{
    if (d->ntargets >= MAX_TARGETS)
        return false;
    struct target *t = &d->targets[d->ntargets];
    memset(t, 0, sizeof(*t));
    str_copy(t->host, host, sizeof(t->host));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&t->addr;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        memcpy(&a->sin_addr, bytes, 4);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&t->addr;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        memcpy(&a->sin6_addr, bytes, 16);
    }
    d->ntargets++;
    return true;
}

/* The resolver's answer becomes the destination's targets, or its jobs fail.
 * RFC 5321 5.1 for MX; RFC 7505 for a null MX. */
void dest_resolved(struct dest *d, enum dns_status st, const char *why, const char *qtype)
{
    d->query = NULL;
    if (d->ntargets > 0) {
        d->state = D_READY;
        d->resolved_ms = dl_mono(d->dl);
        dest_run(d);
        return;
    }
    d->state = D_NEW;
    struct verdict v;
    verdict_dns(st, &v);
    char text[600];
    if (v.reason == VR_NULL_MX)
        snprintf(text, sizeof(text), "Domain %s does not accept mail (nullMX)", d->name);
    else
        snprintf(text, sizeof(text),
                 "Host or domain name not found. Name service error for name=%s type=%s: %s%s",
                 d->name, qtype, why ? why : dns_status_name(st),
                 v.action == VERDICT_DEFER ? ", try again" : "");
    dest_fail_all(d, &v, text);
}

static void on_mx(void *arg, const struct dns_mx_result *r)
{
    struct dest *d = arg;
    d->ntargets = 0;
    uint16_t port = route_port(d);
    if (r->status == DNS_OK || r->status == DNS_IMPLICIT_MX) {
        /* Hosts come in delivery order; every address of each. */
        for (size_t h = 0; h < r->n_hosts; h++) {
            const struct dns_mx_host *mh = &r->hosts[h];
            if (mh->status != DNS_OK)
                continue;
            for (size_t a = 0; a < mh->n_addr; a++)
                dest_add_target(d, mh->name, mh->addr[a].family, mh->addr[a].bytes, port);
        }
        /* DANE (dane.c): TLSA lookups first, then dest_resolved(). */
        d->mx_status = r->status;
        d->mx_why = r->why;
        if (d->ntargets > 0 && !d->dl->relay && dest_dane_start(d, r)) {
            d->query = NULL;
            return;
        }
    }
    dest_resolved(d, r->status, r->why, "MX");
}

static void on_addrs(void *arg, const struct dns_result *r)
{
    struct dest *d = arg;
    d->ntargets = 0;
    uint16_t port = route_port(d);
    if (r->status == DNS_OK)
        for (size_t a = 0; a < r->n_addr; a++)
            dest_add_target(d, d->nexthop.host, r->addr[a].family, r->addr[a].bytes, port);
    dest_resolved(d, r->status, r->why, "A");
}

static void on_policy(void *arg, const struct policy_result *r);

/* Look the domain's MTA-STS policy up before its MX records (DESIGN, the
 * path of one message, step 4). A cached policy answers without network
 * I/O (policy_get()). true when the answer will come to on_policy(). */
static bool dest_policy_lookup(struct dest *d)
{
    struct delivery *dl = d->dl;
    if (!dl->pol || !dest_sts_applies(d))
        return false;
    /* An enforce policy deferred the last attempt: look for a fixed policy
     * (RFC 8461 5), rate-limited per domain by the MTA-STS engine. */
    d->rechecking = d->sts_recheck;
    d->sts_recheck = false;
    int rc = d->rechecking ? policy_recheck(dl->pol, d->name, on_policy, d, &d->preq)
                           : policy_get(dl->pol, d->name, on_policy, d, &d->preq);
    if (rc == 0 && d->rechecking)
        dl->sts_rechecks++;
    if (rc != 0) {
        /* A name policy/ cannot normalise has no policy. */
        d->preq = NULL;
        policy_sts_clear(&d->sts);
        d->sts_have = false;
        d->sts_id[0] = '\0';
        return false;
    }
    return true;
}

/* Idle sessions of a destination were set up under the policy (or the
 * configuration) of their time: when that changes they are not reused. */
void dest_quit_idle(struct dest *d)
{
    struct conn *cn;
    while ((cn = d->idle)) {
        conn_idle_remove(cn);
        smtp_client_quit(cn->c);
    }
}

static void on_policy(void *arg, const struct policy_result *r)
{
    struct dest *d = arg;
    struct delivery *dl = d->dl;
    d->preq = NULL;
    dest_tlsrpt_policy_failure(d, r);
    bool had = d->sts_have;
    char old_id[POLICY_ID_MAX + 1];
    str_copy(old_id, d->sts_id, sizeof(old_id));
    if (had != (r->have_policy && r->policy) || (had && strcmp(old_id, r->id ? r->id : "") != 0) ||
        r->change != POLICY_CHANGE_NONE)
        dest_quit_idle(d);
    if (d->rechecking) {
        d->rechecking = false;
        if (r->change != POLICY_CHANGE_NONE)
            log_info(QCOMP, "MTA-STS recheck domain=%s: policy changed (%s) id=%s mode=%s", d->name,
                     policy_change_name(r->change), r->id && r->id[0] ? r->id : "-",
                     r->have_policy && r->policy ? policy_mode_name(r->policy->mode) : "none");
        else
            log_debug(QCOMP, "MTA-STS recheck domain=%s: policy unchanged", d->name);
    }
    policy_sts_clear(&d->sts);
    d->sts_have = false;
    d->sts_id[0] = '\0';
    if (r->have_policy && r->policy) {
        if (policy_sts_copy(&d->sts, r->policy) != 0) {
            /* Never fall back to no policy for want of memory. */
            d->state = D_NEW;
            struct verdict v;
            verdict_local(&v);
            dest_fail_all(d, &v, "out of memory (MTA-STS policy)");
            return;
        }
        d->sts_have = true;
        str_copy(d->sts_id, r->id ? r->id : "", sizeof(d->sts_id));
    }
    int rc = dns_mx_resolve(dl->dns, d->name, on_mx, d, &d->query);
    if (rc != 0) {
        d->query = NULL;
        dest_resolved(d, DNS_TEMPFAIL, err_str(rc), "MX");
    }
}

/* An address literal ("1.2.3.4", "::1", "IPv6:...")? Fill a target. */
static bool dest_literal_target(struct dest *d, const char *s, uint16_t port)
{
    uint8_t b[16];
    if (strncasecmp(s, "IPv6:", 5) == 0)
        s += 5;
    if (inet_pton(AF_INET, s, b) == 1)
        return dest_add_target(d, s, AF_INET, b, port);
    if (inet_pton(AF_INET6, s, b) == 1)
        return dest_add_target(d, s, AF_INET6, b, port);
    return false;
}

static void dest_resolve(struct dest *d)
{
    struct delivery *dl = d->dl;
    d->state = D_RESOLVING;
    d->ntargets = 0;
    dest_dane_clear(d);
    uint16_t port = route_port(d);
    int rc;
    if (d->has_nexthop) {
        /* relayhost or a transport_maps next hop: [host] means no MX
         * lookup (Postfix syntax). */
        if (dest_literal_target(d, d->nexthop.host, port)) {
            dest_resolved(d, DNS_OK, NULL, "A");
            return;
        }
        if (d->nexthop.bracketed)
            rc = dns_addrs(dl->dns, d->nexthop.host, on_addrs, d, &d->query);
        else
            rc = dns_mx_resolve(dl->dns, d->nexthop.host, on_mx, d, &d->query);
    } else if (d->name[0] == '[') {
        /* A domain literal (RFC 5321 4.1.3): the address itself. */
        char lit[256];
        str_copy(lit, d->name + 1, sizeof(lit));
        char *end = strchr(lit, ']');
        if (end)
            *end = '\0';
        dest_resolved(d, dest_literal_target(d, lit, port) ? DNS_OK : DNS_INVALID,
                      "bad address literal", "A");
        return;
    } else {
        if (dest_policy_lookup(d))
            return; /* on_policy() goes on with the MX lookup */
        rc = dns_mx_resolve(dl->dns, d->name, on_mx, d, &d->query);
    }
    if (rc != 0) {
        d->query = NULL;
        dest_resolved(d, DNS_TEMPFAIL, err_str(rc), "MX");
    }
}

/* Run what can run: resolve, reuse idle sessions, open new ones. */
void dest_run(struct dest *d)
{
    struct delivery *dl = d->dl;
    if (dl->closing)
        return;
    if (!d->head) {
        route_ran(d);
        return;
    }
    if (d->state == D_RESOLVING)
        return;
    /* Addresses (and the MTA-STS policy found with them) are reused for a
     * while; never longer than sts_txt_check_interval, so a changed policy
     * id is looked at as often as the policy engine would. */
    int64_t ttl = RESOLVE_TTL_MS;
    if (dl->pol && dl->conf->sts_txt_check_interval * 1000 < ttl)
        ttl = dl->conf->sts_txt_check_interval * 1000;
    if (d->state == D_READY && (dl_mono(dl) - d->resolved_ms > ttl || d->sts_recheck) &&
        d->nconns == 0)
        d->state = D_NEW;
    if (d->state == D_NEW) {
        dest_resolve(d);
        return;
    }
    while (d->head && d->idle && route_may_send(d)) {
        struct conn *cn = d->idle;
        conn_idle_remove(cn);
        if (!smtp_client_usable(cn->c)) {
            smtp_client_quit(cn->c);
            continue;
        }
        struct job *j = dest_pop(d);
        j->conn_ms = j->ready_ms = dl_now(dl);
        str_copy(j->mx, cn->last_relay, sizeof(j->mx));
        conn_send(cn, j);
    }
    /* The destination's concurrency window (or its dead state, route.c),
     * smtp_connection_limit and the destination's message rate. */
    while (d->head && route_may_connect(d) &&
           dl->nconns < (size_t)dl->conf->smtp_connection_limit && route_may_send(d)) {
        conn_new(d, dest_pop(d));
    }
    route_ran(d);
}

struct dest *dest_get(struct delivery *dl, const char *name)
{
    for (struct dest *d = dl->dests; d; d = d->next)
        if (strcmp(d->name, name) == 0)
            return d;
    struct dest *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->targets = calloc(MAX_TARGETS, sizeof(*d->targets));
    if (!d->targets) {
        free(d);
        return NULL;
    }
    d->dl = dl;
    str_copy(d->name, name, sizeof(d->name));
    route_dest_init(d);
    d->next = dl->dests;
    dl->dests = d;
    return d;
}
