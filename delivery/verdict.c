/*
 * verdict.c - what an outcome means for a recipient (verdict.h). Pure
 * functions; every row of the decision table is a branch here and a row of
 * tests/unit/delivery/test_verdict.c.
 *
 * Sources: RFC 5321 4.2.1 (reply classes), RFC 3463 (enhanced status
 * codes), RFC 8461 4.2 and 5 (MTA-STS: which hosts, what TLS, never a
 * bounce for a policy failure), RFC 8460 4.3 (result types), RFC 7505 (null
 * MX), Postfix's smtp_trouble.c and smtp_skip_5xx_greeting.
 */
#include "verdict.h"

#include <string.h>
#include <strings.h>

static void set(struct verdict *v, enum verdict_action a, enum verdict_reason r, const char *status)
{
    v->action = a;
    v->reason = r;
    str_copy(v->status, status ? status : "", sizeof(v->status));
    v->result_type = VERDICT_RT_NONE;
    v->sts_recheck = false;
}

const char *verdict_result_type_name(enum verdict_result_type t)
{
    switch (t) {
    case VERDICT_RT_NONE:
    case VERDICT_RT_COUNT:
        return NULL;
    case VERDICT_RT_STARTTLS_NOT_SUPPORTED:
        return "starttls-not-supported";
    case VERDICT_RT_CERTIFICATE_HOST_MISMATCH:
        return "certificate-host-mismatch";
    case VERDICT_RT_CERTIFICATE_EXPIRED:
        return "certificate-expired";
    case VERDICT_RT_CERTIFICATE_NOT_TRUSTED:
        return "certificate-not-trusted";
    case VERDICT_RT_VALIDATION_FAILURE:
        return "validation-failure";
    case VERDICT_RT_TLSA_INVALID:
        return "tlsa-invalid";
    case VERDICT_RT_DNSSEC_INVALID:
        return "dnssec-invalid";
    case VERDICT_RT_DANE_REQUIRED:
        return "dane-required";
    case VERDICT_RT_STS_POLICY_FETCH_ERROR:
        return "sts-policy-fetch-error";
    case VERDICT_RT_STS_POLICY_INVALID:
        return "sts-policy-invalid";
    case VERDICT_RT_STS_WEBPKI_INVALID:
        return "sts-webpki-invalid";
    }
    return NULL;
}

enum verdict_result_type verdict_result_type_of(enum tls_failure f)
{
    switch (f) {
    case TLS_FAIL_NONE:
        return VERDICT_RT_NONE;
    case TLS_FAIL_STARTTLS_NOT_SUPPORTED:
        return VERDICT_RT_STARTTLS_NOT_SUPPORTED;
    case TLS_FAIL_HOST_MISMATCH:
        return VERDICT_RT_CERTIFICATE_HOST_MISMATCH;
    case TLS_FAIL_CERT_EXPIRED:
        return VERDICT_RT_CERTIFICATE_EXPIRED;
    case TLS_FAIL_CERT_NOT_TRUSTED:
        return VERDICT_RT_CERTIFICATE_NOT_TRUSTED;
    case TLS_FAIL_VALIDATION:
    case TLS_FAIL_HANDSHAKE:
        return VERDICT_RT_VALIDATION_FAILURE;
    }
    return VERDICT_RT_VALIDATION_FAILURE;
}

const char *verdict_reason_name(enum verdict_reason r)
{
    static const char *const names[VR_REASON_COUNT] = {
        [VR_NONE] = "none",
        [VR_DELIVERED] = "delivered",
        [VR_REPLY_PERMANENT] = "reply-permanent",
        [VR_REPLY_TRANSIENT] = "reply-transient",
        [VR_REPLY_UNEXPECTED] = "reply-unexpected",
        [VR_LOCAL_PERMANENT] = "local-permanent",
        [VR_LOCAL_TRANSIENT] = "local-transient",
        [VR_LOST_CONNECTION] = "lost-connection",
        [VR_TLS_REQUIRED] = "tls-required",
        [VR_NO_RESULT] = "no-result",
        [VR_ALL_ADDRESSES_FAILED] = "all-addresses-failed",
        [VR_NO_ADDRESS] = "no-address",
        [VR_POLICY] = "policy",
        [VR_NULL_MX] = "null-mx",
        [VR_DNS_PERMANENT] = "dns-permanent",
        [VR_DNS_TRANSIENT] = "dns-transient",
        [VR_EXPIRED] = "expired",
        [VR_EXPIRED_RECHECK] = "expired-recheck",
        [VR_RECHECK_CHANGED] = "recheck-changed",
        [VR_ADMIN] = "admin",
        [VR_AUTH_FAILED] = "auth-failed",
    };
    return (unsigned)r < VR_REASON_COUNT && names[r] ? names[r] : "?";
}

/* ---- transactions ------------------------------------------------------------ */

static void transient(const char *in, char *out, size_t size);

void verdict_reply(const struct smtp_outcome *o, struct verdict *v)
{
    if (o->action == SMTP_ACT_NONE) {
        /* Defensive: a recipient the client did not decide is retried. */
        set(v, VERDICT_DEFER, VR_NO_RESULT, "4.3.0");
        return;
    }
    int cls = o->code / 100;
    if (o->stage == SMTP_ST_AUTH) {
        /* The next hop refused our credentials (535 ...), or they could not
         * be sent safely: the operator's to fix, never the sender's: defer
         * (Postfix's smtp_sasl_auth_soft_bounce = yes). */
        set(v, VERDICT_DEFER, VR_AUTH_FAILED, NULL);
        transient(o->status[0] ? o->status : "4.7.0", v->status, sizeof(v->status));
    } else if (o->err == ERR_TLS) {
        /* A TLS requirement (or a TLS failure) is never permanent, whatever
         * a reply to STARTTLS said. */
        set(v, VERDICT_DEFER, VR_TLS_REQUIRED, o->status);
    } else if (cls == 2 && o->stage == SMTP_ST_DOT) {
        set(v, VERDICT_SENT, VR_DELIVERED, o->status);
    } else if (cls == 5) {
        set(v, VERDICT_BOUNCE, VR_REPLY_PERMANENT, o->status);
    } else if (cls == 4) {
        set(v, VERDICT_DEFER, VR_REPLY_TRANSIENT, o->status);
    } else if (o->code != 0) {
        /* 1xx, 3xx, or a 2xx that accepted nothing (a 250 to DATA). */
        set(v, VERDICT_DEFER, VR_REPLY_UNEXPECTED, o->status);
    } else if (o->err != 0) {
        set(v, VERDICT_DEFER, VR_LOST_CONNECTION, o->status);
    } else if (o->status[0] == '5') {
        /* No reply, no error: the client refused before sending (SIZE,
         * address syntax, SMTPUTF8): a permanent local reason. */
        set(v, VERDICT_BOUNCE, VR_LOCAL_PERMANENT, o->status);
    } else {
        set(v, VERDICT_DEFER, VR_LOCAL_TRANSIENT, o->status);
    }
}

bool verdict_no_connection(const struct smtp_outcome *o)
{
    return o->stage == SMTP_ST_CONNECT && o->code == 0 &&
           (o->err == ERR_IO || o->err == ERR_TIMEOUT);
}

/* ---- the end of an attempt ----------------------------------------------------- */

/* A status made transient: its class becomes 4 (X.Y.Z stays). */
static void transient(const char *in, char *out, size_t size)
{
    str_copy(out, in ? in : "", size);
    if (size > 1 && out[0] != '4') {
        if (out[0] == '\0' && size > 1)
            out[1] = '\0';
        out[0] = '4';
    }
}

void verdict_attempt(const struct verdict_attempt_in *in, struct verdict *v)
{
    if (in->policy_status) {
        /* RFC 8461 5: the policy left no usable host: defer, never bounce
         * for it, never deliver in plaintext or unverified. */
        set(v, VERDICT_DEFER, VR_POLICY, NULL);
        transient(in->policy_status, v->status, sizeof(v->status));
        /* RFC 8461 5: the domain may have fixed its policy (perhaps under
         * the same id): look again before the next attempt. */
        v->sts_recheck = in->sts_enforce;
    } else if (!in->last) {
        set(v, VERDICT_DEFER, VR_NO_ADDRESS, "4.4.3");
    } else if (in->last->stage == SMTP_ST_AUTH) {
        set(v, VERDICT_DEFER, VR_AUTH_FAILED, NULL);
        transient(in->last->status[0] ? in->last->status : "4.7.0", v->status, sizeof(v->status));
    } else {
        /* Every address failed: retry later, whatever the last one said
         * (Postfix's smtp_skip_5xx_greeting: a 5xx greeting does not bounce
         * mail). */
        set(v, VERDICT_DEFER, VR_ALL_ADDRESSES_FAILED, NULL);
        transient(in->last->status, v->status, sizeof(v->status));
    }
}

/* ---- TLS facts against the policy ----------------------------------------- */

static void host_fail(struct verdict_tls *out, enum verdict_tls_fail why, const char *status,
                      enum verdict_result_type rt)
{
    out->host_failed = true;
    out->why = why;
    str_copy(out->status, status, sizeof(out->status));
    out->result_type = rt;
}

static void report(struct verdict_tls *out, enum verdict_result_type rt)
{
    out->report = true;
    out->result_type = rt;
}

/* The result type of a DANE match that failed (RFC 8460 4.3.1). */
static enum verdict_result_type dane_result_type(const struct tls_dane_result *m)
{
    if (m && m->status == TLS_DANE_NAME)
        return VERDICT_RT_CERTIFICATE_HOST_MISMATCH;
    if (m && m->status == TLS_DANE_EXPIRED)
        return VERDICT_RT_CERTIFICATE_EXPIRED;
    /* RFC 8460 4.3.2 tlsa-invalid: none of the records of the RRset was
     * found valid for the presented chain. */
    if (m && m->status == TLS_DANE_NO_MATCH)
        return VERDICT_RT_TLSA_INVALID;
    return VERDICT_RT_VALIDATION_FAILURE;
}

/* DANE rows (RFC 7672 2.2 and 3): where DANE applies its verdict stands
 * whatever MTA-STS says of the host (RFC 8461 2), both ways. */
static void verdict_tls_dane(const struct verdict_tls_in *in, struct verdict_tls *out)
{
    bool applies = in->dane == VERDICT_DANE_AUTH || in->dane == VERDICT_DANE_ENCRYPT;
    const struct tls_dane_result *m = in->dane_match;
    bool match_failed = in->dane == VERDICT_DANE_AUTH && m && m->status != TLS_DANE_VERIFIED;
    switch (in->event) {
    case VERDICT_TLS_SKIP:
        /* 2.2: a failed or bogus TLSA lookup never falls back to plaintext
         * or to another policy: the host is not used. */
        if (in->dane == VERDICT_DANE_DNS_FAIL)
            host_fail(out, VERDICT_TLSF_DANE_DNS, "4.7.5", VERDICT_RT_DNSSEC_INVALID);
        else if (in->dane == VERDICT_DANE_REQUIRED)
            host_fail(out, VERDICT_TLSF_DANE_REQUIRED, "4.7.5", VERDICT_RT_DANE_REQUIRED);
        return;
    case VERDICT_TLS_HANDSHAKE:
        /* 3.1: AUTH needs a record that matches the chain; ENCRYPT (no
         * usable record) accepts any certificate. */
        if (in->dane == VERDICT_DANE_AUTH && (!m || m->status != TLS_DANE_VERIFIED))
            host_fail(out, VERDICT_TLSF_DANE_CERT, "4.7.5", dane_result_type(m));
        return;
    case VERDICT_TLS_READY:
        return;
    case VERDICT_TLS_CLOSED:
        if (!applies || !in->res || in->res->err != ERR_TLS)
            return; /* connection trouble: the next address */
        if (match_failed)
            host_fail(out, VERDICT_TLSF_DANE_CERT, "4.7.5", dane_result_type(m));
        else if (in->res->tls_missing)
            host_fail(out, VERDICT_TLSF_DANE_NOT_OFFERED, "4.7.5",
                      VERDICT_RT_STARTTLS_NOT_SUPPORTED);
        else
            host_fail(out, VERDICT_TLSF_DANE_HANDSHAKE, "4.7.5", VERDICT_RT_VALIDATION_FAILURE);
        return;
    }
}

void verdict_tls(const struct verdict_tls_in *in, struct verdict_tls *out)
{
    memset(out, 0, sizeof(*out));
    const struct tls_facts *f = in->facts;
    bool sts_verify = in->policy == VERDICT_POLICY_STS && in->level == POLICY_TLS_VERIFY;
    bool report_only = in->policy == VERDICT_POLICY_STS && in->sts_mode == POLICY_MODE_TESTING;
    bool ov = in->policy == VERDICT_POLICY_OVERRIDE;
    if (in->policy == VERDICT_POLICY_DANE) {
        verdict_tls_dane(in, out);
        return;
    }
    switch (in->event) {
    case VERDICT_TLS_SKIP:
        /* RFC 8461 4.1 and 5 (enforce): a host matching no pattern is never
         * used. */
        if (!in->deliver)
            host_fail(out, VERDICT_TLSF_MX_MISMATCH, "4.7.5", VERDICT_RT_VALIDATION_FAILURE);
        return;
    case VERDICT_TLS_HANDSHAKE:
        if (ov && in->level == POLICY_TLS_VERIFY) {
            /* verify/secure: a trusted chain in date, and a name the
             * entry's match= list allows. */
            if (!f->chain_ok) {
                enum tls_failure w =
                    f->failure != TLS_FAIL_NONE ? f->failure : TLS_FAIL_CERT_NOT_TRUSTED;
                host_fail(out, VERDICT_TLSF_OVERRIDE_CHAIN, "4.7.5", verdict_result_type_of(w));
                out->cert_failure = w;
            } else if (!in->name_ok) {
                host_fail(out, VERDICT_TLSF_OVERRIDE_NAME, "4.7.5",
                          VERDICT_RT_CERTIFICATE_HOST_MISMATCH);
            }
            return;
        }
        if (report_only && !f->verified) {
            enum verdict_result_type rt = verdict_result_type_of(f->failure);
            report(out, rt != VERDICT_RT_NONE ? rt : VERDICT_RT_VALIDATION_FAILURE);
        }
        return;
    case VERDICT_TLS_READY:
        if (!report_only)
            return;
        if (!in->mx_matches) {
            report(out, VERDICT_RT_VALIDATION_FAILURE);
            out->report_mx = true;
        } else if (!f || !f->handshake_done) {
            report(out, VERDICT_RT_STARTTLS_NOT_SUPPORTED);
        }
        return;
    case VERDICT_TLS_CLOSED:
        if (!in->res || in->res->err != ERR_TLS)
            return; /* connection trouble: not a policy matter */
        if (sts_verify) {
            /* RFC 8461 4.2 failed on this host: never the plaintext retry. */
            if (in->res->tls_missing)
                host_fail(out, VERDICT_TLSF_NOT_OFFERED, "4.7.5",
                          VERDICT_RT_STARTTLS_NOT_SUPPORTED);
            else if (f && f->failure != TLS_FAIL_NONE && f->failure != TLS_FAIL_HANDSHAKE) {
                host_fail(out, VERDICT_TLSF_CERT, "4.7.5", verdict_result_type_of(f->failure));
                out->cert_failure = f->failure;
            } else
                host_fail(out, VERDICT_TLSF_HANDSHAKE, "4.7.5", VERDICT_RT_VALIDATION_FAILURE);
            return;
        }
        if (ov && in->level >= POLICY_TLS_ENCRYPT) {
            host_fail(out, VERDICT_TLSF_OVERRIDE, in->res->status[0] ? in->res->status : "4.7.5",
                      in->res->tls_missing ? VERDICT_RT_STARTTLS_NOT_SUPPORTED
                      : f                  ? verdict_result_type_of(f->failure)
                                           : VERDICT_RT_VALIDATION_FAILURE);
            if (out->result_type == VERDICT_RT_NONE)
                out->result_type = VERDICT_RT_VALIDATION_FAILURE;
            return;
        }
        if (report_only) {
            enum verdict_result_type rt = f ? verdict_result_type_of(f->failure) : VERDICT_RT_NONE;
            report(out, rt != VERDICT_RT_NONE ? rt : VERDICT_RT_VALIDATION_FAILURE);
        }
        return;
    }
}

/* ---- DNS, expiry, local and operator outcomes ------------------------------- */

void verdict_dns(enum dns_status st, struct verdict *v)
{
    switch (st) {
    case DNS_NULL_MX:
        set(v, VERDICT_BOUNCE, VR_NULL_MX, "5.1.10");
        break;
    case DNS_NXDOMAIN:
    case DNS_NODATA:
        set(v, VERDICT_BOUNCE, VR_DNS_PERMANENT, "5.4.4");
        break;
    case DNS_INVALID:
        set(v, VERDICT_BOUNCE, VR_DNS_PERMANENT, "5.1.2");
        break;
    default:
        set(v, VERDICT_DEFER, VR_DNS_TRANSIENT, "4.4.3");
        break;
    }
}

struct verdict_status verdict_status_parse(const char *s)
{
    struct verdict_status r = {0, 0, 0};
    int part[3] = {0, 0, 0};
    size_t k = 0, digits = 0;
    for (const char *p = s ? s : ""; *p; p++) {
        if (*p >= '0' && *p <= '9' && digits < 3) {
            part[k] = part[k] * 10 + (*p - '0');
            digits++;
        } else if (*p == '.' && digits > 0 && k < 2) {
            k++;
            digits = 0;
        } else {
            return r;
        }
    }
    if (k != 2 || digits == 0 || (part[0] != 2 && part[0] != 4 && part[0] != 5))
        return r;
    r.cls = part[0];
    r.subject = part[1];
    r.detail = part[2];
    return r;
}

enum policy_mode verdict_mode_parse(const char *s)
{
    if (s && strcasecmp(s, "enforce") == 0)
        return POLICY_MODE_ENFORCE;
    if (s && strcasecmp(s, "testing") == 0)
        return POLICY_MODE_TESTING;
    return POLICY_MODE_NONE;
}

void verdict_expired(const struct verdict_expiry_in *in, struct verdict *v)
{
    /* The last attempt found no host the enforce policy allows (4.7.5,
     * RFC 3463: delivery not authorized by security policy). */
    bool policy_caused = in->can_recheck && in->have_last && in->last_mode == POLICY_MODE_ENFORCE &&
                         in->last_status.cls == 4 && in->last_status.subject == 7 &&
                         in->last_status.detail == 5;
    if (policy_caused) {
        set(v, VERDICT_DEFER, VR_EXPIRED_RECHECK, "4.4.7");
        v->sts_recheck = true;
    } else {
        set(v, VERDICT_BOUNCE, VR_EXPIRED, "4.4.7");
    }
}

void verdict_recheck(const struct verdict_recheck_in *in, struct verdict *v)
{
    bool same = in->have_policy && in->mode == POLICY_MODE_ENFORCE &&
                in->change == POLICY_CHANGE_NONE && in->same_as_last;
    if (same)
        set(v, VERDICT_BOUNCE, VR_EXPIRED, "4.4.7");
    else
        set(v, VERDICT_DEFER, VR_RECHECK_CHANGED, "4.4.7");
}

void verdict_local(struct verdict *v)
{
    set(v, VERDICT_DEFER, VR_LOCAL_TRANSIENT, "4.3.0");
}

void verdict_admin(struct verdict *v)
{
    set(v, VERDICT_BOUNCE, VR_ADMIN, "5.0.0");
}

enum smtp_action verdict_smtp_action(enum verdict_action a)
{
    switch (a) {
    case VERDICT_SENT:
        return SMTP_ACT_SENT;
    case VERDICT_BOUNCE:
        return SMTP_ACT_BOUNCE;
    case VERDICT_DEFER:
        return SMTP_ACT_DEFER;
    case VERDICT_NONE:
        break;
    }
    return SMTP_ACT_NONE;
}
