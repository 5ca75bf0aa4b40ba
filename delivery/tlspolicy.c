/*
 * tlspolicy.c - the TLS policy of a connection (RFC 8461 4 and 5;
 * docs/mta-sts.md): per MX host policy_tls_requirement() says what the
 * session needs, a tls_policy_file entry first. enforce: hosts matching no
 * pattern are skipped, matching ones need SMTP_TLS_VERIFY for the MX name
 * and are never retried in plaintext. testing: opportunistic, the RFC 8460
 * result type of what would have failed is logged, counted and kept with
 * the recipient's result. Overrides: none, may, encrypt (SMTP_TLS_ENCRYPT),
 * verify/secure (SMTP_TLS_ENCRYPT plus conn_tls_check(): trusted chain and
 * a match= name).
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

/* ---- MTA-STS and tls_policy_file, per MX host (RFC 8461 4 and 5) --------------------- */

/* ---- DANE (RFC 7672), per MX host; its verdict stands over MTA-STS ------------------- */

/* What DANE says of the connection's current target (dane.c found it). A
 * tls_policy_file entry for the domain replaces the global level, DANE
 * included (as Postfix's policy table does). */
static void conn_dane_policy(struct conn *cn)
{
    struct dest *d = cn->dest;
    int level = dl_dane_level(d->dl);
    cn->dane = VERDICT_DANE_NONE;
    cn->dane_matched = false;
    cn->dane_label[0] = '\0';
    memset(&cn->dane_res, 0, sizeof(cn->dane_res));
    if (!level || cn->have_ov || cn->tls_optional || !dest_sts_applies(d))
        return;
    const struct dane_host *h = dest_dane_find(d, conn_target(cn)->host);
    if (h)
        cn->dane = h->state;
    else if (level == 2)
        cn->dane = VERDICT_DANE_REQUIRED;
    switch (cn->dane) {
    case VERDICT_DANE_DNS_FAIL:
        snprintf(cn->dane_label, sizeof(cn->dane_label), "dane=fail dnssec-invalid");
        break;
    case VERDICT_DANE_REQUIRED:
        snprintf(cn->dane_label, sizeof(cn->dane_label), "dane=fail dane-required");
        break;
    case VERDICT_DANE_ENCRYPT:
        snprintf(cn->dane_label, sizeof(cn->dane_label), "dane=encrypt no-usable-tlsa");
        break;
    default:
        break;
    }
}

/* Does DANE govern the connection's current target (its verdict instead
 * of MTA-STS's)? */
static bool conn_dane_governs(const struct conn *cn)
{
    return cn->dane != VERDICT_DANE_NONE;
}

/* Match the presented chain against the host's TLSA records (RFC 7672 3):
 * the reference names for DANE-TA are the MX host, its CNAME target (the
 * name the records were found at) and the recipient domain (3.2.2). */
static void conn_dane_match(struct conn *cn, struct smtp_client *c)
{
    struct dest *d = cn->dest;
    const char *host = conn_target(cn)->host;
    const struct dane_host *h = dest_dane_find(d, host);
    struct tls_der chain[16];
    size_t nchain = smtp_client_peer_chain(c, chain, 16);
    struct tls_tlsa recs[64];
    size_t n = 0;
    for (size_t i = 0; h && i < h->n && n < 64; i++)
        recs[n++] = (struct tls_tlsa){h->recs[i].usage, h->recs[i].selector, h->recs[i].mtype,
                                      h->recs[i].data, h->recs[i].len};
    const char *names[3];
    size_t nn = 0;
    names[nn++] = host;
    if (h && h->canonical[0])
        names[nn++] = h->canonical;
    names[nn++] = d->name;
    tls_dane_verify(recs, n, chain, nchain, names, nn, &cn->dane_res);
    cn->dane_matched = true;
    if (cn->dane_res.status == TLS_DANE_VERIFIED)
        snprintf(cn->dane_label, sizeof(cn->dane_label), "dane=verified %u %u %u",
                 cn->dane_res.usage, cn->dane_res.selector, cn->dane_res.mtype);
    else
        snprintf(cn->dane_label, sizeof(cn->dane_label), "dane=fail %s",
                 tls_dane_status_name(cn->dane_res.status));
}

static const char *d_name(const struct conn *cn)
{
    return cn->dest->name;
}

/* Does MTA-STS apply to this destination at all? Not to relayhost (the
 * relay is the operator's choice, not the recipient domain's MX) and not to
 * address literals. */
bool dest_sts_applies(const struct dest *d)
{
    return !d->has_nexthop && d->name[0] != '[';
}

/* The policy of the connection's current target: an override entry wins,
 * then the domain's MTA-STS policy (policy_tls_requirement()). */
void conn_policy(struct conn *cn)
{
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    const struct policy_override *ov =
        dest_sts_applies(d) ? policy_override_find(dl->ov, d->name) : NULL;
    cn->have_ov = ov != NULL;
    if (ov)
        cn->ov = *ov;
    /* TLS-Required: No (RFC 8689 4.1): MTA-STS (and DANE, conn_dane_policy())
     * is ignored for the message. */
    bool sts = d->sts_have && !cn->tls_optional;
    cn->req = policy_tls_requirement(sts ? &d->sts : NULL, cn->have_ov ? &cn->ov : NULL,
                                     conn_target(cn)->host);
    cn->report[0] = cn->report_text[0] = '\0';
    cn->rt = VERDICT_RT_NONE;
    conn_dane_policy(cn);
}

/* The SMTP client's TLS mode for the connection's policy. */
enum smtp_tls_mode conn_tls_mode(const struct conn *cn)
{
    const struct policy_tls_req *q = &cn->req;
    /* RFC 7672 2.2: secure TLSA records, usable or not, require TLS. */
    if (cn->dane == VERDICT_DANE_AUTH || cn->dane == VERDICT_DANE_ENCRYPT)
        return SMTP_TLS_ENCRYPT;
    if (q->origin == POLICY_ORIGIN_OVERRIDE) {
        switch (q->level) {
        case POLICY_TLS_NONE:
            return SMTP_TLS_NONE;
        case POLICY_TLS_MAY:
            return SMTP_TLS_MAY;
        default:
            /* encrypt; verify and secure are judged by conn_tls_check()
             * against the entry's match= names. */
            return SMTP_TLS_ENCRYPT;
        }
    }
    if (q->level == POLICY_TLS_VERIFY)
        return SMTP_TLS_VERIFY; /* enforce: a matching MX host, RFC 8461 4.2 */
    enum smtp_tls_mode m = conn_tls_level(cn->dest->dl);
    if (cn->tls_optional && m == SMTP_TLS_VERIFY)
        return SMTP_TLS_MAY; /* TLS-Required: No (RFC 8689 4.1) */
    return m;
}

/* "sts=enforce id=X", "sts=testing id=X", "sts=none", "tls_policy=secure". */
static void dest_label(const struct dest *d, const struct conn *cn, char *out, size_t size)
{
    if (cn && conn_dane_governs(cn))
        str_copy(out, cn->dane_label[0] ? cn->dane_label : "dane=pending", size);
    else if (cn && cn->req.origin == POLICY_ORIGIN_OVERRIDE)
        snprintf(out, size, "tls_policy=%s",
                 cn->ov.secure ? "secure" : policy_tls_level_name(cn->ov.level));
    else if (!cn && dest_sts_applies(d) && policy_override_find(d->dl->ov, d->name)) {
        const struct policy_override *ov = policy_override_find(d->dl->ov, d->name);
        snprintf(out, size, "tls_policy=%s",
                 ov->secure ? "secure" : policy_tls_level_name(ov->level));
    } else if (d->sts_have)
        snprintf(out, size, "sts=%s id=%s", policy_mode_name(d->sts.mode), d->sts_id);
    else if (dest_sts_applies(d))
        snprintf(out, size, "sts=none");
    else if (d->transport)
        snprintf(out, size, "tls_policy=transport"); /* the operator's next hop (route.c) */
    else
        out[0] = '\0';
}

/* Record on the job which policy applied to its attempt (log line, queue
 * result: sts_mode and sts_id), from the connection when there was one. */
void job_policy(struct job *j, const struct conn *cn)
{
    const struct dest *d = j->dest;
    dest_label(d, cn, j->label, sizeof(j->label));
    bool override = cn ? cn->req.origin == POLICY_ORIGIN_OVERRIDE
                       : dest_sts_applies(d) && policy_override_find(d->dl->ov, d->name);
    if (!dest_sts_applies(d)) {
        j->sts_mode[0] = j->sts_id[0] = '\0';
    } else if (d->sts_have && !override) {
        str_copy(j->sts_mode, policy_mode_name(d->sts.mode), sizeof(j->sts_mode));
        str_copy(j->sts_id, d->sts_id, sizeof(j->sts_id));
    } else {
        str_copy(j->sts_mode, "none", sizeof(j->sts_mode));
        j->sts_id[0] = '\0';
    }
    const struct tls_facts *f = cn && cn->c ? smtp_client_tls(cn->c) : NULL;
    /* Where DANE governs, "verified" means the TLSA match, not PKIX. */
    bool dane = cn && conn_dane_governs(cn);
    bool ok =
        dane ? cn->dane_matched && cn->dane_res.status == TLS_DANE_VERIFIED : f && f->verified;
    str_copy(j->verdict, f && f->handshake_done ? (ok ? "verified" : "encrypted") : "none",
             sizeof(j->verdict));
    str_copy(j->dane, cn && conn_dane_governs(cn) ? j->label : "", sizeof(j->dane));
    str_copy(j->report, cn ? cn->report : "", sizeof(j->report));
}

/* testing (RFC 8461 5): the failure a report would carry; delivery goes on.
 * The first failure of a connection is kept, logged and counted. */
void conn_report(struct conn *cn, const char *type, const char *text)
{
    struct dest *d = cn->dest;
    if (cn->report[0])
        return;
    str_copy(cn->report, type, sizeof(cn->report));
    str_copy(cn->report_text, text, sizeof(cn->report_text));
    d->dl->sts_testing_failures++;
    log_info(COMPONENT, "sts: testing policy failure domain=%s id=%s mx=%s result=%s (%s)", d->name,
             d->sts_id, conn_target(cn)->host, type, text);
}

/* A policy (enforce, or an override's encrypt/verify/secure) made this host
 * fail: keep the reason; the attempt ends with it if no host succeeds. */
void conn_policy_fail(struct conn *cn, const char *status, const char *fmt, ...)
{
    struct smtp_outcome *o = &cn->sts_fail;
    memset(o, 0, sizeof(*o));
    o->action = SMTP_ACT_DEFER;
    o->err = ERR_TLS;
    str_copy(o->status, status, sizeof(o->status));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->text, sizeof(o->text), fmt, ap);
    va_end(ap);
    cn->have_sts_fail = true;
}

/* The verdict's input for the connection's current target. */
static void conn_verdict_in(const struct conn *cn, enum verdict_tls_event ev,
                            const struct tls_facts *f, const struct smtp_outcome *res,
                            struct verdict_tls_in *in)
{
    const struct policy_tls_req *q = &cn->req;
    memset(in, 0, sizeof(*in));
    in->event = ev;
    in->facts = f;
    in->res = res;
    if (conn_dane_governs(cn)) {
        in->policy = VERDICT_POLICY_DANE;
        in->dane = cn->dane;
        in->dane_match = cn->dane_matched ? &cn->dane_res : NULL;
        in->deliver = true;
        return;
    }
    if (q->origin == POLICY_ORIGIN_OVERRIDE)
        in->policy = VERDICT_POLICY_OVERRIDE;
    else if (q->origin == POLICY_ORIGIN_STS || q->report_only)
        in->policy = VERDICT_POLICY_STS;
    in->sts_mode = q->report_only ? POLICY_MODE_TESTING : q->sts_mode;
    in->level = q->level;
    in->deliver = q->deliver;
    in->mx_matches = q->mx_matches;
    in->event = ev;
    in->facts = f;
    in->res = res;
}

/* Act on what the verdict says of a host: a testing report, or a policy
 * failure with its text. detail: the session's or the facts' text. */
static void conn_tls_verdict(struct conn *cn, const struct verdict_tls *v, const char *detail)
{
    const char *host = conn_target(cn)->host;
    if ((v->report || v->host_failed) && cn->rt == VERDICT_RT_NONE)
        cn->rt = v->result_type; /* for TLS-RPT (tlsrpt.c) */
    if (v->report) {
        const char *type = verdict_result_type_name(v->result_type);
        if (v->report_mx)
            conn_report(cn, type, "MX host matches no pattern of the policy");
        else
            conn_report(cn, type, detail);
        return;
    }
    if (!v->host_failed)
        return;
    const struct dane_host *h = dest_dane_find(cn->dest, host);
    switch (v->why) {
    case VERDICT_TLSF_DANE_DNS:
        conn_policy_fail(cn, v->status, "DANE: TLSA lookup for MX host %s failed: %s", host,
                         h ? h->why : "no answer");
        break;
    case VERDICT_TLSF_DANE_REQUIRED:
        conn_policy_fail(cn, v->status,
                         "DANE required (dane-only), but it does not apply to MX host %s: %s", host,
                         h ? h->why : "no secure TLSA records");
        break;
    case VERDICT_TLSF_DANE_NOT_OFFERED:
        conn_policy_fail(cn, v->status, "DANE: %s does not offer STARTTLS: %s", host, detail);
        break;
    case VERDICT_TLSF_DANE_CERT:
        conn_policy_fail(cn, v->status, "DANE: certificate of %s: %s (%s)", host,
                         tls_dane_status_name(cn->dane_res.status),
                         strncmp(cn->dane_res.text, "dane: ", 6) == 0 ? cn->dane_res.text + 6
                                                                      : cn->dane_res.text);
        break;
    case VERDICT_TLSF_DANE_HANDSHAKE:
        conn_policy_fail(cn, v->status, "DANE: TLS with %s failed: %s", host, detail);
        break;
    case VERDICT_TLSF_MX_MISMATCH:
        conn_policy_fail(cn, v->status,
                         "MTA-STS enforce: MX host %s matches no pattern of the policy", host);
        break;
    case VERDICT_TLSF_NOT_OFFERED:
        conn_policy_fail(cn, v->status, "MTA-STS enforce: %s does not offer STARTTLS: %s", host,
                         detail);
        break;
    case VERDICT_TLSF_CERT:
        conn_policy_fail(cn, v->status, "MTA-STS enforce: certificate for %s: %s", host,
                         tls_failure_str(v->cert_failure));
        break;
    case VERDICT_TLSF_HANDSHAKE:
        conn_policy_fail(cn, v->status, "MTA-STS enforce: TLS with %s failed: %s", host, detail);
        break;
    default:
        conn_policy_fail(cn, v->status, "%s", detail);
        break;
    }
    if (v->why >= VERDICT_TLSF_DANE_DNS)
        log_info(COMPONENT, "%s: %s: MX host %s not used: %s", d_name(cn), cn->dane_label, host,
                 cn->sts_fail.text);
}

/* The verdict on a target before connecting: false if the policy excludes
 * it (the failure is kept for the attempt's end). */
bool conn_target_allowed(struct conn *cn)
{
    struct verdict_tls_in in;
    struct verdict_tls v;
    conn_verdict_in(cn, VERDICT_TLS_SKIP, NULL, NULL, &in);
    verdict_tls(&in, &v);
    if (in.policy == VERDICT_POLICY_STS && v.host_failed)
        metrics_delivery_sts(policy_mode_name(in.sts_mode), "refused");
    if (!v.host_failed)
        return true;
    if (!cn->have_sts_fail || in.policy == VERDICT_POLICY_DANE)
        conn_tls_verdict(cn, &v, "");
    return false;
}

/* The session is ready: testing reports what would have failed. */
void conn_ready_policy(struct conn *cn, const struct tls_facts *f)
{
    struct verdict_tls_in in;
    struct verdict_tls v;
    conn_verdict_in(cn, VERDICT_TLS_READY, f, NULL, &in);
    verdict_tls(&in, &v);
    conn_tls_verdict(cn, &v, "no TLS session");
}

/* smtp_client tls_check: judge the handshake's facts by the policy. */
bool conn_tls_check(struct smtp_client *c, const struct tls_facts *f, struct smtp_outcome *out,
                    void *arg)
{
    struct conn *cn = arg;
    struct dest *d = cn->dest;
    const char *host = conn_target(cn)->host;
    struct verdict_tls_in in;
    struct verdict_tls v;
    if (cn->dane == VERDICT_DANE_AUTH)
        conn_dane_match(cn, c);
    else if (cn->dane == VERDICT_DANE_ENCRYPT)
        snprintf(cn->dane_label, sizeof(cn->dane_label), "dane=encrypt no-usable-tlsa");
    conn_verdict_in(cn, VERDICT_TLS_HANDSHAKE, f, NULL, &in);
    if (in.policy == VERDICT_POLICY_DANE) {
        verdict_tls(&in, &v);
        bool dane_ok = cn->dane_matched && cn->dane_res.status == TLS_DANE_VERIFIED;
        metrics_delivery_tls(v.host_failed ? "failed"
                             : dane_ok     ? "verified"
                                           : "opportunistic",
                             v.host_failed ? verdict_result_type_name(v.result_type) : NULL);
        if (!v.host_failed)
            return true;
        conn_tls_verdict(cn, &v, "");
        out->action = SMTP_ACT_DEFER;
        str_copy(out->status, v.status, sizeof(out->status));
        str_copy(out->text, cn->sts_fail.text, sizeof(out->text));
        return false;
    }
    /* verify/secure: a name the entry's match= list allows (Postfix
     * smtp_tls_policy_maps semantics). */
    in.name_ok = in.policy == VERDICT_POLICY_OVERRIDE && in.level == POLICY_TLS_VERIFY &&
                 f->chain_ok && policy_override_cert_ok(&cn->ov, d->name, host, f);
    verdict_tls(&in, &v);
    bool failed = v.host_failed || (v.report && !f->verified);
    metrics_delivery_tls(failed        ? "failed"
                         : f->verified ? "verified"
                                       : "opportunistic",
                         failed ? verdict_result_type_name(v.result_type) : NULL);
    if (in.policy == VERDICT_POLICY_STS)
        metrics_delivery_sts(policy_mode_name(in.sts_mode), v.host_failed ? "refused" : "ok");
    if (v.host_failed) {
        const char *why = v.why == VERDICT_TLSF_OVERRIDE_CHAIN
                              ? tls_failure_str(v.cert_failure)
                              : "no certificate name matches the policy";
        out->action = SMTP_ACT_DEFER;
        str_copy(out->status, v.status, sizeof(out->status));
        snprintf(out->text, sizeof(out->text), "TLS policy %s: certificate for %s: %s",
                 cn->ov.secure ? "secure" : "verify", host, why);
        return false;
    }
    conn_tls_verdict(cn, &v, f->text[0] ? f->text : tls_failure_str(f->failure));
    return true;
}

/* The session ended before it was ready: was the policy the reason? */
void conn_closed_policy(struct conn *cn, const struct smtp_outcome *res, const struct tls_facts *f)
{
    struct verdict_tls_in in;
    struct verdict_tls v;
    conn_verdict_in(cn, VERDICT_TLS_CLOSED, f, res, &in);
    verdict_tls(&in, &v);
    if (in.policy == VERDICT_POLICY_DANE && v.host_failed && !cn->dane_matched)
        snprintf(cn->dane_label, sizeof(cn->dane_label), "dane=fail %s",
                 v.why == VERDICT_TLSF_DANE_NOT_OFFERED ? "starttls-not-offered" : "tls-failed");
    if (in.policy == VERDICT_POLICY_DANE && cn->dane_matched &&
        cn->dane_res.status != TLS_DANE_VERIFIED && v.host_failed)
        return; /* conn_tls_check() kept the reason */
    conn_tls_verdict(cn, &v, res->text);
}
