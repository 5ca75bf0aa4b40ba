/*
 * tlsrpt.c - what delivery counts for TLS-RPT (RFC 8460 4; docs/tlsrpt.md):
 * one count per SMTP session to a recipient domain that negotiated, or
 * tried to negotiate, TLS, under the policy that applied (sts with the
 * policy, or no-policy-found), as a success or as a failure with its RFC
 * 8460 4.3 result type from the verdict; and the failures of MTA-STS
 * discovery itself (sts-policy-fetch-error, sts-policy-invalid,
 * sts-webpki-invalid). Where DANE governs the MX host (dane.c), the policy
 * is "tlsa" with the host's TLSA records and the DANE result types
 * (tlsa-invalid, dnssec-invalid, dane-required; RFC 8460 4.3.2), hosts
 * DANE excludes before connecting included (conn_tlsrpt_skipped()).
 *
 * Not counted: relayhost and address literals (no recipient domain policy
 * applies), sessions that never tried TLS and failed for no TLS reason
 * (4.3.4: transient network failures), and messages with TLS-Required: No
 * (RFC 8689), which is what reports carry (RFC 8460 5.3: no loops).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deliver_int.h"
#include "policy.h"
#include "queue.h"
#include "smtp.h"
#include "tls.h"
#include "verdict.h"

/* At most this many TLSA records are listed in one policy-string. */
#define TLSRPT_TLSA_MAX 16

/* The store's result type of a verdict's. */
static enum tlsrpt_result result_of(enum verdict_result_type rt)
{
    enum tlsrpt_result r = TLSRPT_VALIDATION_FAILURE;
    const char *name = verdict_result_type_name(rt);
    if (name && tlsrpt_result_from_name(name, &r) != 0)
        r = TLSRPT_VALIDATION_FAILURE;
    return r;
}

static void record(struct delivery *dl, struct tlsrpt_session_result *r)
{
    int rc = tlsrpt_record_session(dl->tlsrpt, r);
    if (rc != 0 && rc != ERR_EXISTS)
        log_warn(COMPONENT, "tlsrpt: cannot count a session for %s: %s", r->policy_domain,
                 err_str(rc));
}

/* The policy a domain's sessions count under. */
static void set_policy(const struct dest *d, struct tlsrpt_session_result *r)
{
    if (d->sts_have && d->sts.mode != POLICY_MODE_NONE) {
        r->policy_type = TLSRPT_POLICY_STS;
        r->sts = &d->sts;
    } else {
        r->policy_type = TLSRPT_POLICY_NO_POLICY;
    }
}

/* DANE's policy as RFC 8460 4.4 reports it: policy-type "tlsa", the
 * host's TLSA records in presentation form ("3 1 1 <hex>") as
 * policy-string, the MX host as mx-host. Where DANE governed without
 * records (a failed lookup, dane-only without TLSA) the list is empty. */
struct tlsa_strings {
    char *s[TLSRPT_TLSA_MAX];
    const char *v[TLSRPT_TLSA_MAX];
    size_t n;
    const char *host;
};

static void tlsa_policy(const struct conn *cn, struct tlsa_strings *t,
                        struct tlsrpt_session_result *r)
{
    const struct dane_host *h = dest_dane_find(cn->dest, conn_target(cn)->host);
    t->n = 0;
    for (size_t i = 0; h && i < h->n && t->n < TLSRPT_TLSA_MAX; i++) {
        const struct dane_rec *rec = &h->recs[i];
        size_t size = 16 + 2 * rec->len;
        char *str = malloc(size);
        if (!str)
            break;
        int k = snprintf(str, size, "%u %u %u ", rec->usage, rec->selector, rec->mtype);
        size_t o = k > 0 ? (size_t)k : 0;
        hex_encode(rec->data, rec->len, str + o, size - o);
        t->s[t->n] = str;
        t->v[t->n] = str;
        t->n++;
    }
    t->host = conn_target(cn)->host;
    r->policy_type = TLSRPT_POLICY_TLSA;
    r->sts = NULL;
    r->policy_strings = t->v;
    r->n_policy_strings = t->n;
    r->mx_hosts = &t->host;
    r->n_mx_hosts = 1;
}

static void tlsa_free(struct tlsa_strings *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->s[i]);
    t->n = 0;
}

void conn_tlsrpt_skipped(struct conn *cn)
{
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    if (!dl->tlsrpt || cn->tls_optional || !dest_sts_applies(d) || cn->dane == VERDICT_DANE_NONE ||
        cn->rt == VERDICT_RT_NONE)
        return;
    struct tlsrpt_session_result r = {
        .policy_domain = d->name,
        .time = dl_now(dl) / 1000,
        .result = result_of((enum verdict_result_type)cn->rt),
        .receiving_mx_hostname = conn_target(cn)->host,
        .failure_reason_code = cn->sts_fail.text[0] ? cn->sts_fail.text : NULL,
    };
    struct tlsa_strings t = {0};
    tlsa_policy(cn, &t, &r);
    record(dl, &r);
    tlsa_free(&t);
}

void conn_tlsrpt(struct conn *cn, const struct tls_facts *f, const struct smtp_outcome *res)
{
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    if (!dl->tlsrpt || cn->rpt_done || cn->tls_optional || !dest_sts_applies(d) || !cn->c)
        return;
    enum verdict_result_type rt = (enum verdict_result_type)cn->rt;
    if (!res) {
        /* Ready: with TLS (verified as the policy asked, or a testing
         * failure in rt), or without it where a policy wanted it. */
        if (!f && rt == VERDICT_RT_NONE)
            return;
    } else if (rt == VERDICT_RT_NONE) {
        /* Failed before ready: only a TLS failure counts. */
        if (!f || res->err != ERR_TLS)
            return;
        rt = verdict_result_type_of(f->failure);
        if (rt == VERDICT_RT_NONE)
            rt = VERDICT_RT_VALIDATION_FAILURE;
    }
    cn->rpt_done = true;
    struct tlsrpt_session_result r = {
        .policy_domain = d->name,
        .time = dl_now(dl) / 1000,
    };
    struct tlsa_strings t = {0};
    if (cn->dane != VERDICT_DANE_NONE)
        tlsa_policy(cn, &t, &r); /* DANE governed the host (RFC 7672, 8460 4.4) */
    else
        set_policy(d, &r);
    r.result = rt == VERDICT_RT_NONE ? TLSRPT_SUCCESS : result_of(rt);
    if (r.result != TLSRPT_SUCCESS) {
        r.sending_mta_ip = smtp_client_local_ip(cn->c);
        r.receiving_mx_hostname = conn_target(cn)->host;
        r.receiving_ip = smtp_client_ip(cn->c);
        if (f && f->text[0])
            r.failure_reason_code = f->text;
        else if (cn->report_text[0])
            r.failure_reason_code = cn->report_text;
        else if (res && res->text[0])
            r.failure_reason_code = res->text;
    }
    record(dl, &r);
    tlsa_free(&t);
}

void dest_tlsrpt_policy_failure(struct dest *d, const struct policy_result *r)
{
    struct delivery *dl = d->dl;
    if (!dl->tlsrpt || r->failure == POLICY_FAIL_NONE)
        return;
    /* A destination that waits only for reports says nothing (no loops). */
    if (d->head && JOB_TLS_OPTIONAL(d->head))
        return;
    struct tlsrpt_session_result s = {
        .policy_domain = d->name,
        .time = dl_now(dl) / 1000,
        .result = tlsrpt_result_from_policy_failure(r->failure),
        .failure_reason_code = r->error,
    };
    if (s.result == TLSRPT_SUCCESS)
        return;
    if (r->have_policy && r->policy && r->policy->mode != POLICY_MODE_NONE) {
        s.policy_type = TLSRPT_POLICY_STS;
        s.sts = r->policy;
    }
    record(dl, &s);
}
