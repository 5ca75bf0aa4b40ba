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

/* smtp_client tls_check: judge the handshake's facts by the policy. */
bool conn_tls_check(struct smtp_client *c, const struct tls_facts *f, struct smtp_outcome *out,
                    void *arg)
{
    (void)c;
    struct conn *cn = arg;
    struct dest *d = cn->dest;
    const char *host = conn_target(cn)->host;
    if (cn->req.origin == POLICY_ORIGIN_OVERRIDE && cn->req.level == POLICY_TLS_VERIFY) {
        /* verify/secure: a trusted chain in date, and a name the entry's
         * match= list allows (Postfix smtp_tls_policy_maps semantics). */
        const char *why = NULL;
        if (!f->chain_ok)
            why = tls_failure_str(f->failure != TLS_FAIL_NONE ? f->failure
                                                              : TLS_FAIL_CERT_NOT_TRUSTED);
        else if (!policy_override_cert_ok(&cn->ov, d->name, host, f))
            why = "no certificate name matches the policy";
        if (why) {
            out->action = SMTP_ACT_DEFER;
            str_copy(out->status, "4.7.5", sizeof(out->status));
            snprintf(out->text, sizeof(out->text), "TLS policy %s: certificate for %s: %s",
                     cn->ov.secure ? "secure" : "verify", host, why);
            return false;
        }
        return true;
    }
    if (cn->req.report_only && !f->verified) {
        const char *type = tls_failure_result_type(f->failure);
        conn_report(cn, type ? type : "validation-failure",
                    f->text[0] ? f->text : tls_failure_str(f->failure));
    }
    return true;
}

/* The session ended before it was ready: was the policy the reason? */
void conn_closed_policy(struct conn *cn, const struct smtp_outcome *res, const struct tls_facts *f)
{
    const char *host = conn_target(cn)->host;
    if (res->err != ERR_TLS)
        return; /* connection trouble: not a policy matter */
    if (cn->req.origin == POLICY_ORIGIN_STS && cn->req.level == POLICY_TLS_VERIFY) {
        /* RFC 8461 4.2 failed on this host: never the plaintext retry. */
        if (strcmp(res->status, "4.7.4") == 0)
            conn_policy_fail(cn, "4.7.5", "MTA-STS enforce: %s does not offer STARTTLS: %s", host,
                             res->text);
        else if (f && f->failure != TLS_FAIL_NONE && f->failure != TLS_FAIL_HANDSHAKE)
            conn_policy_fail(cn, "4.7.5", "MTA-STS enforce: certificate for %s: %s", host,
                             tls_failure_str(f->failure));
        else
            conn_policy_fail(cn, "4.7.5", "MTA-STS enforce: TLS with %s failed: %s", host,
                             res->text);
        return;
    }
    if (cn->req.origin == POLICY_ORIGIN_OVERRIDE && cn->req.level >= POLICY_TLS_ENCRYPT) {
        conn_policy_fail(cn, res->status[0] ? res->status : "4.7.5", "%s", res->text);
        return;
    }
    if (cn->req.report_only) {
        const char *type = f ? tls_failure_result_type(f->failure) : NULL;
        conn_report(cn, type ? type : "validation-failure", res->text);
    }
}
