/*
 * dane.c - DANE for SMTP (RFC 7672; docs/dane.md) per MX host of a
 * destination, under smtp_tls_security_level = dane or dane-only. After the
 * MX answer: when the MX RRset is DNSSEC-secure (2.2.1) and a host's
 * address records are secure (2.2.2), its TLSA RRset at _PORT._tcp.HOST is
 * looked up (at the CNAME-expanded name first for an alias, 2.2.3). What
 * was found decides the host's state (enum verdict_dane): AUTH (secure,
 * usable records), ENCRYPT (secure, none usable), DNS_FAIL (lookup failure
 * or bogus: defer the host), NONE (no secure TLSA: MTA-STS or may decide),
 * REQUIRED (dane-only where DANE does not apply). The connection (
 * tlspolicy.c) acts on it; the verdict module judges.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "deliver_int.h"
#include "delivery.h"
#include "dns.h"
#include "tls.h"
#include "verdict.h"

int dl_dane_level(const struct delivery *dl)
{
    const char *l = dl->conf->smtp_tls_security_level;
    if (l && strcmp(l, "dane") == 0)
        return 1;
    if (l && strcmp(l, "dane-only") == 0)
        return 2;
    return 0;
}

void dane_warn(const struct delivery *dl)
{
    int level = dl_dane_level(dl);
    if (level && !dns_dnssec_trusted(dl->dns))
        log_warn(COMPONENT,
                 "smtp_tls_security_level = %s, but DNSSEC status is not trusted "
                 "(smtp_dns_support_level = dnssec and a validating resolver in "
                 "dns_validating_servers are needed): DANE never applies%s",
                 level == 2 ? "dane-only" : "dane", level == 2 ? ", so no mail is delivered" : "");
}

static void host_free(struct dane_host *h)
{
    if (h->q) {
        dns_cancel(h->q);
        h->q = NULL;
    }
    for (size_t i = 0; i < h->n; i++)
        free(h->recs[i].data);
    free(h->recs);
    h->recs = NULL;
    h->n = 0;
}

void dest_dane_clear(struct dest *d)
{
    for (size_t i = 0; i < d->ndane; i++)
        host_free(&d->dane[i]);
    free(d->dane);
    d->dane = NULL;
    d->ndane = 0;
    d->dane_pending = 0;
}

const struct dane_host *dest_dane_find(const struct dest *d, const char *host)
{
    for (size_t i = 0; i < d->ndane; i++)
        if (strcasecmp(d->dane[i].host, host) == 0)
            return &d->dane[i];
    return NULL;
}

/* Where DANE does not apply: NONE, or REQUIRED under dane-only. */
static void host_none(struct dane_host *h, int level, const char *why)
{
    h->state = level == 2 ? VERDICT_DANE_REQUIRED : VERDICT_DANE_NONE;
    str_copy(h->why, why, sizeof(h->why));
}

static void host_done(struct dane_host *h)
{
    struct dest *d = h->d;
    const char *s = h->state == VERDICT_DANE_AUTH       ? "applies"
                    : h->state == VERDICT_DANE_ENCRYPT  ? "applies (no usable record: TLS "
                                                          "without authentication)"
                    : h->state == VERDICT_DANE_DNS_FAIL ? "lookup failed: host deferred"
                    : h->state == VERDICT_DANE_REQUIRED ? "does not apply: host refused "
                                                          "(dane-only)"
                                                        : "does not apply";
    log_info(COMPONENT, "%s: DANE for MX host %s %s (%s)", d->name, h->host, s, h->why);
    if (--d->dane_pending == 0 && d->state == D_RESOLVING)
        dest_resolved(d, d->mx_status, d->mx_why, "MX");
}

static int host_lookup(struct dane_host *h, const char *name);

static void on_tlsa(void *arg, const struct dns_result *r)
{
    struct dane_host *h = arg;
    struct dest *d = h->d;
    int level = dl_dane_level(d->dl);
    h->q = NULL;
    enum dns_tlsa_status st = dns_tlsa_classify(r);
    switch (st) {
    case DNS_TLSA_SECURE: {
        h->recs = calloc(r->n_tlsa ? r->n_tlsa : 1, sizeof(*h->recs));
        struct tls_tlsa *t = calloc(r->n_tlsa ? r->n_tlsa : 1, sizeof(*t));
        if (!h->recs || !t) {
            free(t);
            h->state = VERDICT_DANE_DNS_FAIL;
            str_copy(h->why, "out of memory", sizeof(h->why));
            break;
        }
        for (size_t i = 0; i < r->n_tlsa; i++) {
            const struct dns_tlsa *x = &r->tlsa[i];
            struct dane_rec *o = &h->recs[h->n];
            o->usage = x->usage;
            o->selector = x->selector;
            o->mtype = x->mtype;
            o->len = x->len;
            o->data = malloc(x->len ? x->len : 1);
            if (!o->data)
                continue;
            if (x->len)
                memcpy(o->data, x->data, x->len);
            t[h->n] = (struct tls_tlsa){o->usage, o->selector, o->mtype, o->data, o->len};
            h->n++;
        }
        h->usable = tls_dane_usable_count(t, h->n);
        free(t);
        str_copy(h->tlsa_name, r->name ? r->name : "", sizeof(h->tlsa_name));
        h->state = h->usable ? VERDICT_DANE_AUTH : VERDICT_DANE_ENCRYPT;
        snprintf(h->why, sizeof(h->why), "TLSA secure at %s, %zu of %zu records usable",
                 h->tlsa_name, h->usable, h->n);
        break;
    }
    case DNS_TLSA_BOGUS:
    case DNS_TLSA_FAIL:
        /* 2.2: never plaintext, never another policy for this host. */
        h->state = VERDICT_DANE_DNS_FAIL;
        snprintf(h->why, sizeof(h->why), "TLSA %s at %s: %s", dns_tlsa_status_name(st),
                 r->name ? r->name : h->host, r->why ? r->why : dns_status_name(r->status));
        break;
    default:
        /* 2.2.3: nothing at the expanded name, try the name as published. */
        if (h->at_canonical) {
            h->at_canonical = false;
            if (host_lookup(h, h->host) == 0)
                return;
        }
        char why[160];
        snprintf(why, sizeof(why), "TLSA %s", dns_tlsa_status_name(st));
        host_none(h, level, why);
        break;
    }
    host_done(h);
}

static int host_lookup(struct dane_host *h, const char *name)
{
    return dns_tlsa_lookup(h->d->dl->dns, name, dest_port(h->d->dl), on_tlsa, h, &h->q);
}

bool dest_dane_start(struct dest *d, const struct dns_mx_result *r)
{
    struct delivery *dl = d->dl;
    int level = dl_dane_level(dl);
    dest_dane_clear(d);
    if (!level || !dest_sts_applies(d) || r->n_hosts == 0)
        return false;
    d->dane = calloc(r->n_hosts, sizeof(*d->dane));
    if (!d->dane)
        return false; /* no table: every host is treated as DNS_FAIL below */
    d->ndane = r->n_hosts;
    d->dane_pending = 1; /* held until every lookup is started */
    for (size_t i = 0; i < r->n_hosts; i++) {
        const struct dns_mx_host *mh = &r->hosts[i];
        struct dane_host *h = &d->dane[i];
        h->d = d;
        str_copy(h->host, mh->name, sizeof(h->host));
        if (mh->cname && mh->canonical)
            str_copy(h->canonical, mh->canonical, sizeof(h->canonical));
        if (mh->status != DNS_OK) {
            host_none(h, level, "no address");
            continue;
        }
        if (!r->dnssec) {
            host_none(h, level,
                      "DNSSEC status not trusted (smtp_dns_support_level, "
                      "dns_validating_servers)");
            continue;
        }
        if (!r->secure) {
            host_none(h, level, "MX RRset not DNSSEC-secure"); /* 2.2.1 */
            continue;
        }
        if (!mh->secure) {
            host_none(h, level, "address records not DNSSEC-secure"); /* 2.2.2 */
            continue;
        }
        h->at_canonical = h->canonical[0] != '\0';
        d->dane_pending++;
        if (host_lookup(h, h->at_canonical ? h->canonical : h->host) != 0) {
            h->q = NULL;
            h->state = VERDICT_DANE_DNS_FAIL;
            str_copy(h->why, "cannot start the TLSA lookup", sizeof(h->why));
            d->dane_pending--;
        }
    }
    if (--d->dane_pending == 0)
        return false; /* nothing in flight: resolved now */
    return true;
}
