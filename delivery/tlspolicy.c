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

/* Does MTA-STS apply to this destination at all? Not to relayhost (the
 * relay is the operator's choice, not the recipient domain's MX) and not to
 * address literals. */
bool dest_sts_applies(const struct dest *d)
{
    return !d->dl->relay && d->name[0] != '[';
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
    cn->req = policy_tls_requirement(d->sts_have ? &d->sts : NULL, cn->have_ov ? &cn->ov : NULL,
                                     conn_target(cn)->host);
    cn->report[0] = cn->report_text[0] = '\0';
}

/* The SMTP client's TLS mode for the connection's policy. */
enum smtp_tls_mode conn_tls_mode(const struct conn *cn)
{
    const struct policy_tls_req *q = &cn->req;
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
    return conn_tls_level(cn->dest->dl);
}

/* "sts=enforce id=X", "sts=testing id=X", "sts=none", "tls_policy=secure". */
static void dest_label(const struct dest *d, const struct conn *cn, char *out, size_t size)
{
    if (cn && cn->req.origin == POLICY_ORIGIN_OVERRIDE)
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
    str_copy(j->verdict, f && f->handshake_done ? (f->verified ? "verified" : "encrypted") : "none",
             sizeof(j->verdict));
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
    switch (v->why) {
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
    if (!cn->have_sts_fail)
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
    (void)c;
    struct conn *cn = arg;
    struct dest *d = cn->dest;
    const char *host = conn_target(cn)->host;
    struct verdict_tls_in in;
    struct verdict_tls v;
    conn_verdict_in(cn, VERDICT_TLS_HANDSHAKE, f, NULL, &in);
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
    conn_tls_verdict(cn, &v, res->text);
}
