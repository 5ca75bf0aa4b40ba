/*
 * verdict.h - what an outcome means for a recipient: the one place that
 * turns facts (SMTP replies, TLS facts against the policy, lost or never
 * made connections, DNS answers, expiry) into delivered, deferred or
 * bounced, in the spirit of Postfix's smtp_trouble.c.
 *
 * Pure functions: no I/O, no allocation, no clock, no global state. Each
 * takes the facts as typed input and fills a struct verdict (or struct
 * verdict_tls); the engine applies the result and writes the log line. The
 * table test tests/unit/delivery/test_verdict.c has a row per outcome
 * class.
 *
 * Extending: a new policy type (DANE, RFC 7672) adds a value to enum
 * verdict_policy and rows to verdict_tls(); TLS-RPT (RFC 8460) takes the
 * result type of each failure from result_type.
 */
#ifndef CONVOY_VERDICT_H
#define CONVOY_VERDICT_H

#include <stdbool.h>
#include <stddef.h>

#include "dns.h"
#include "policy.h"
#include "smtp.h"
#include "tls.h"

/* What happens to the recipient. */
enum verdict_action {
    VERDICT_NONE = 0, /* nothing decided (no failure) */
    VERDICT_SENT,     /* delivered: the remote 250 at the end of DATA */
    VERDICT_DEFER,    /* retry later (the queue backs off) */
    VERDICT_BOUNCE,   /* return to the sender with a DSN */
};

/* Why: one value per outcome class (a row of the table test). */
enum verdict_reason {
    VR_NONE = 0,
    VR_DELIVERED,            /* 2xx to the end of DATA */
    VR_REPLY_PERMANENT,      /* 5xx reply (RFC 5321 4.2.1) */
    VR_REPLY_TRANSIENT,      /* 4xx reply */
    VR_REPLY_UNEXPECTED,     /* 1xx, 2xx or 3xx where it makes no sense */
    VR_LOCAL_PERMANENT,      /* refused before sending: size, syntax, SMTPUTF8 */
    VR_LOCAL_TRANSIENT,      /* a local failure of the client or the engine */
    VR_LOST_CONNECTION,      /* connection lost or timed out */
    VR_TLS_REQUIRED,         /* a TLS requirement failed: never permanent */
    VR_NO_RESULT,            /* the client gave the recipient no outcome */
    VR_ALL_ADDRESSES_FAILED, /* the attempt ended: every address failed */
    VR_NO_ADDRESS,           /* the attempt ended: no address was tried */
    VR_POLICY,               /* the attempt ended: the TLS policy left no host */
    VR_NULL_MX,              /* RFC 7505 */
    VR_DNS_PERMANENT,        /* no such domain or host, no data, a bad name */
    VR_DNS_TRANSIENT,        /* the resolver failed: try again */
    VR_EXPIRED,              /* maximal_queue_lifetime ran out */
    VR_EXPIRED_RECHECK,      /* expired, but an enforce policy deferred the
                                last attempt: recheck the policy first */
    VR_RECHECK_CHANGED,      /* expired, and the recheck found another policy
                                (or none): one more attempt under it */
    VR_ADMIN,                /* bounced by the mail administrator */
    VR_AUTH_FAILED,          /* SMTP AUTH to the next hop failed (a refusal,
                                or TLS required for the credentials and not
                                there): never permanent, as Postfix's
                                smtp_sasl_auth_soft_bounce */
    VR_REASON_COUNT
};

/* RFC 8460 4.3 result types, for logs and TLS-RPT. */
enum verdict_result_type {
    VERDICT_RT_NONE = 0,
    VERDICT_RT_STARTTLS_NOT_SUPPORTED,
    VERDICT_RT_CERTIFICATE_HOST_MISMATCH,
    VERDICT_RT_CERTIFICATE_EXPIRED,
    VERDICT_RT_CERTIFICATE_NOT_TRUSTED,
    VERDICT_RT_VALIDATION_FAILURE,
    VERDICT_RT_TLSA_INVALID,           /* DANE (RFC 8460 4.3.2.1) */
    VERDICT_RT_DNSSEC_INVALID,         /* DANE */
    VERDICT_RT_DANE_REQUIRED,          /* DANE */
    VERDICT_RT_STS_POLICY_FETCH_ERROR, /* MTA-STS (RFC 8460 4.3.2.2) */
    VERDICT_RT_STS_POLICY_INVALID,     /* MTA-STS */
    VERDICT_RT_STS_WEBPKI_INVALID,     /* MTA-STS */
    VERDICT_RT_COUNT
};

/* "starttls-not-supported", ...; NULL for VERDICT_RT_NONE. */
const char *verdict_result_type_name(enum verdict_result_type t);
/* The result type of a TLS failure (tls.h); NONE for TLS_FAIL_NONE;
 * a failed handshake is a validation-failure. */
enum verdict_result_type verdict_result_type_of(enum tls_failure f);
/* "reply-permanent", ...: a short name of a reason, for tests and debug. */
const char *verdict_reason_name(enum verdict_reason r);

/* The decision for a recipient. */
struct verdict {
    enum verdict_action action;
    enum verdict_reason reason;
    char status[12]; /* the enhanced status to log, record and report */
    /* The RFC 8460 result type behind a TLS-caused outcome, else NONE. */
    enum verdict_result_type result_type;
    /* An MTA-STS enforce policy caused this deferral: look for a newer
     * policy (policy_recheck(), even under an unchanged id) before the
     * next attempt to the domain (RFC 8461 5). */
    bool sts_recheck;
};

/* ---- transactions ------------------------------------------------------------ */

/*
 * A recipient's outcome from the SMTP client: 2xx at the end of DATA is
 * delivered; 5xx bounces; 4xx, lost connections and timeouts defer; a
 * reply that makes no sense defers; a refusal before sending (no reply, no
 * error, a 5.X.X status) bounces; a TLS requirement defers whatever the
 * code; an AUTH failure (stage SMTP_ST_AUTH) defers whatever the code, its
 * status made 4.X.X; no outcome at all defers with 4.3.0. The status is the
 * outcome's.
 */
void verdict_reply(const struct smtp_outcome *o, struct verdict *v);

/* Was no connection made at all (Postfix's relay=none)? */
bool verdict_no_connection(const struct smtp_outcome *o);

/* ---- the end of an attempt that reached no ready session -------------------- */

struct verdict_attempt_in {
    /* The TLS policy failed a host in this attempt (verdict_tls()), with
     * its status; NULL when not. */
    const char *policy_status;
    /* The last address's outcome; NULL when no address was tried. */
    const struct smtp_outcome *last;
    /* The policy that failed the hosts is an MTA-STS policy in enforce
     * mode (not a tls_policy_file entry). */
    bool sts_enforce;
};

/*
 * Every address of the attempt failed before a session was ready: defer,
 * never bounce (RFC 8461 5: a policy failure is never a bounce; Postfix's
 * smtp_skip_5xx_greeting: a 5xx greeting does not bounce mail). The status
 * is the policy's, else the last outcome's, with its class made 4; 4.4.3
 * when no address was tried. A deferral for an enforce MTA-STS policy asks
 * for a recheck of the policy (sts_recheck). VR_AUTH_FAILED when the last
 * address failed in SMTP AUTH.
 */
void verdict_attempt(const struct verdict_attempt_in *in, struct verdict *v);

/* ---- TLS facts against the policy ----------------------------------------- */

/* The kind of policy that governs a host. */
enum verdict_policy {
    VERDICT_POLICY_NONE = 0, /* opportunistic: no policy, or mode none */
    VERDICT_POLICY_STS,      /* MTA-STS (RFC 8461): sts_mode says which */
    VERDICT_POLICY_OVERRIDE, /* a tls_policy_file entry: level says which */
    VERDICT_POLICY_DANE,     /* DANE (RFC 7672): dane says which */
};

/* What DANE says of a host (RFC 7672 2.2), under smtp_tls_security_level
 * dane or dane-only. */
enum verdict_dane {
    VERDICT_DANE_NONE = 0, /* DANE does not apply: no secure TLSA */
    VERDICT_DANE_AUTH,     /* secure TLSA with usable records: STARTTLS and a
                              chain that matches (tls_dane_verify()) */
    VERDICT_DANE_ENCRYPT,  /* secure TLSA, none usable: STARTTLS without
                              authentication (2.2, Postfix) */
    VERDICT_DANE_DNS_FAIL, /* the TLSA lookup failed or was bogus: the host
                              is not used (2.2, never plaintext) */
    VERDICT_DANE_REQUIRED, /* dane-only, and DANE does not apply to the host */
};

/* When the facts are judged. */
enum verdict_tls_event {
    VERDICT_TLS_SKIP,      /* before connecting: may the host be used? */
    VERDICT_TLS_HANDSHAKE, /* the handshake completed (the tls_check hook) */
    VERDICT_TLS_READY,     /* the session is ready (with TLS or without) */
    VERDICT_TLS_CLOSED,    /* the session failed before it was ready */
};

struct verdict_tls_in {
    enum verdict_policy policy;
    enum policy_mode sts_mode;   /* STS: enforce or testing */
    enum policy_tls_level level; /* what the policy requires of this host */
    bool deliver;                /* the policy lets this host be used */
    bool mx_matches;             /* STS: the MX host matches a pattern */
    enum verdict_tls_event event;
    const struct tls_facts *facts;  /* NULL: no TLS session was tried */
    const struct smtp_outcome *res; /* CLOSED: why the session ended */
    bool name_ok;                   /* override verify/secure: the certificate carries a name
                                       the entry allows (policy_override_cert_ok()) */
    enum verdict_dane dane;         /* DANE: what applies to the host */
    /* DANE AUTH: the match of the presented chain (HANDSHAKE, and CLOSED
     * after it), NULL when none was made. */
    const struct tls_dane_result *dane_match;
};

/* Why the policy failed a host: selects the engine's text. */
enum verdict_tls_fail {
    VERDICT_TLSF_NONE = 0,
    VERDICT_TLSF_MX_MISMATCH,      /* STS enforce: the MX host matches no pattern */
    VERDICT_TLSF_NOT_OFFERED,      /* STS enforce: no STARTTLS */
    VERDICT_TLSF_CERT,             /* STS enforce: certificate not verified */
    VERDICT_TLSF_HANDSHAKE,        /* STS enforce: TLS failed otherwise */
    VERDICT_TLSF_OVERRIDE,         /* override encrypt and up: the session's reason */
    VERDICT_TLSF_OVERRIDE_CHAIN,   /* override verify/secure: chain not trusted */
    VERDICT_TLSF_OVERRIDE_NAME,    /* override verify/secure: no allowed name */
    VERDICT_TLSF_DANE_DNS,         /* DANE: TLSA lookup failed or bogus */
    VERDICT_TLSF_DANE_REQUIRED,    /* dane-only: no secure TLSA for the host */
    VERDICT_TLSF_DANE_NOT_OFFERED, /* DANE: no STARTTLS */
    VERDICT_TLSF_DANE_CERT,        /* DANE AUTH: the chain matches no record */
    VERDICT_TLSF_DANE_HANDSHAKE,   /* DANE: TLS failed otherwise */
};

/* What the policy says of the facts. */
struct verdict_tls {
    /* The host fails the policy: do not deliver to it (HANDSHAKE: end the
     * session); the attempt defers with status unless another host works. */
    bool host_failed;
    enum verdict_tls_fail why;
    char status[12];
    enum tls_failure cert_failure; /* CERT, OVERRIDE_CHAIN: which */
    /* testing (RFC 8461 5): a failure to log, count and report; delivery
     * goes on. */
    bool report;
    bool report_mx; /* the report is for an MX host matching no pattern */
    /* The RFC 8460 result type of a failure or report, else NONE. */
    enum verdict_result_type result_type;
};

void verdict_tls(const struct verdict_tls_in *in, struct verdict_tls *out);

/* ---- DNS, expiry, local and operator outcomes ------------------------------- */

/*
 * The destination's lookup found no address: RFC 7505 null MX bounces with
 * 5.1.10; no such domain or no data bounces with 5.4.4, a bad name with
 * 5.1.2; anything else defers with 4.4.3.
 */
void verdict_dns(enum dns_status st, struct verdict *v);

/* An enhanced status code parsed ("4.7.5" -> 4, 7, 5); all 0 when it is
 * not one. */
struct verdict_status {
    int cls, subject, detail;
};
struct verdict_status verdict_status_parse(const char *s);
/* "enforce", "testing", "none" -> the mode; POLICY_MODE_NONE otherwise. */
enum policy_mode verdict_mode_parse(const char *s);

struct verdict_expiry_in {
    bool can_recheck;           /* an MTA-STS engine applies to the domain */
    bool have_last;             /* the recipient has a last result */
    enum policy_mode last_mode; /* the MTA-STS mode of the last attempt */
    struct verdict_status last_status;
};

/*
 * The recipient's lifetime ran out: a bounce with 4.4.7 (RFC 3463: delivery
 * time expired), unless the last attempt was deferred by an enforce policy
 * (4.7.5): then VR_EXPIRED_RECHECK with action DEFER: look for a newer
 * policy before giving up (RFC 8461 5).
 */
void verdict_expired(const struct verdict_expiry_in *in, struct verdict *v);

struct verdict_recheck_in {
    bool have_policy;          /* a policy applies after the recheck */
    enum policy_mode mode;     /* its mode */
    enum policy_change change; /* what the recheck changed (the whole policy
                                  compared, policy_result.change) */
    bool same_as_last;         /* it is the policy (id) the last attempt had */
};

/*
 * The policy recheck of an expired recipient (VR_EXPIRED_RECHECK) is back:
 * the same enforce policy as the last attempt, unchanged, bounces with
 * 4.4.7 (VR_EXPIRED); another policy - a new id, new content under the
 * same id, another mode, or none - gives one more attempt under it
 * (VR_RECHECK_CHANGED, action DEFER).
 */
void verdict_recheck(const struct verdict_recheck_in *in, struct verdict *v);

/* A local failure of the engine (out of memory, the queue unreadable):
 * defer with 4.3.0. */
void verdict_local(struct verdict *v);

/* The operator bounced the message: bounce with 5.0.0. */
void verdict_admin(struct verdict *v);

/* The smtp_action that stands for a verdict (for outcome records). */
enum smtp_action verdict_smtp_action(enum verdict_action a);

#endif
