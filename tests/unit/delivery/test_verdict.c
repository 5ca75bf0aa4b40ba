/*
 * test_verdict.c - the verdict table (delivery/verdict.c): one row per
 * outcome class. Each table is data: the facts, then the expected action,
 * reason, status and RFC 8460 result type.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "verdict.h"

/* ---- transactions ------------------------------------------------------------ */

struct reply_row {
    const char *name;
    enum smtp_action client; /* what the client filled in (NONE: nothing) */
    int code;
    const char *status;
    enum smtp_stage stage;
    int err;
    enum verdict_action action;
    enum verdict_reason reason;
    const char *want_status;
};

static const struct reply_row reply_rows[] = {
    {"250 at the end of DATA", SMTP_ACT_SENT, 250, "2.0.0", SMTP_ST_DOT, 0, VERDICT_SENT,
     VR_DELIVERED, "2.0.0"},
    {"550 to RCPT", SMTP_ACT_BOUNCE, 550, "5.1.1", SMTP_ST_RCPT, 0, VERDICT_BOUNCE,
     VR_REPLY_PERMANENT, "5.1.1"},
    {"554 at the end of DATA", SMTP_ACT_BOUNCE, 554, "5.7.1", SMTP_ST_DOT, 0, VERDICT_BOUNCE,
     VR_REPLY_PERMANENT, "5.7.1"},
    {"553 to MAIL", SMTP_ACT_BOUNCE, 553, "5.0.0", SMTP_ST_MAIL, 0, VERDICT_BOUNCE,
     VR_REPLY_PERMANENT, "5.0.0"},
    {"450 to RCPT", SMTP_ACT_DEFER, 450, "4.2.0", SMTP_ST_RCPT, 0, VERDICT_DEFER,
     VR_REPLY_TRANSIENT, "4.2.0"},
    {"421 to DATA", SMTP_ACT_DEFER, 421, "4.0.0", SMTP_ST_DATA, ERR_PROTO, VERDICT_DEFER,
     VR_REPLY_TRANSIENT, "4.0.0"},
    {"250 instead of 354", SMTP_ACT_DEFER, 250, "4.5.0", SMTP_ST_DATA, 0, VERDICT_DEFER,
     VR_REPLY_UNEXPECTED, "4.5.0"},
    {"354 where none is due", SMTP_ACT_DEFER, 354, "4.5.0", SMTP_ST_RCPT, 0, VERDICT_DEFER,
     VR_REPLY_UNEXPECTED, "4.5.0"},
    {"lost connection in DATA", SMTP_ACT_DEFER, 0, "4.4.2", SMTP_ST_BODY, ERR_IO, VERDICT_DEFER,
     VR_LOST_CONNECTION, "4.4.2"},
    {"timeout after the dot", SMTP_ACT_DEFER, 0, "4.4.2", SMTP_ST_DOT, ERR_TIMEOUT, VERDICT_DEFER,
     VR_LOST_CONNECTION, "4.4.2"},
    {"message too big (SIZE)", SMTP_ACT_BOUNCE, 0, "5.3.4", SMTP_ST_IDLE, 0, VERDICT_BOUNCE,
     VR_LOCAL_PERMANENT, "5.3.4"},
    {"bad address syntax", SMTP_ACT_BOUNCE, 0, "5.1.3", SMTP_ST_IDLE, 0, VERDICT_BOUNCE,
     VR_LOCAL_PERMANENT, "5.1.3"},
    {"local transient", SMTP_ACT_DEFER, 0, "4.3.0", SMTP_ST_IDLE, 0, VERDICT_DEFER,
     VR_LOCAL_TRANSIENT, "4.3.0"},
    {"554 to STARTTLS with TLS required", SMTP_ACT_DEFER, 554, "4.7.4", SMTP_ST_STARTTLS, ERR_TLS,
     VERDICT_DEFER, VR_TLS_REQUIRED, "4.7.4"},
    {"no outcome", SMTP_ACT_NONE, 0, "", SMTP_ST_IDLE, 0, VERDICT_DEFER, VR_NO_RESULT, "4.3.0"},
    {"535 to AUTH (wrong password)", SMTP_ACT_DEFER, 535, "5.7.8", SMTP_ST_AUTH, ERR_PROTO,
     VERDICT_DEFER, VR_AUTH_FAILED, "4.7.8"},
    {"AUTH needs TLS, none", SMTP_ACT_DEFER, 0, "4.7.0", SMTP_ST_AUTH, ERR_PERM, VERDICT_DEFER,
     VR_AUTH_FAILED, "4.7.0"},
};

static void test_reply_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(reply_rows) / sizeof(reply_rows[0]); i++) {
        const struct reply_row *r = &reply_rows[i];
        struct smtp_outcome o;
        memset(&o, 0, sizeof(o));
        o.action = r->client;
        o.code = r->code;
        str_copy(o.status, r->status, sizeof(o.status));
        o.stage = r->stage;
        o.err = r->err;
        struct verdict v;
        verdict_reply(&o, &v);
        if (v.action != r->action || v.reason != r->reason || strcmp(v.status, r->want_status))
            fail_msg("row \"%s\": got action %d reason %s status %s", r->name, (int)v.action,
                     verdict_reason_name(v.reason), v.status);
        assert_int_equal(v.result_type, VERDICT_RT_NONE);
    }
}

static void test_no_connection(void **state)
{
    (void)state;
    struct smtp_outcome o;
    memset(&o, 0, sizeof(o));
    o.stage = SMTP_ST_CONNECT;
    o.err = ERR_IO;
    assert_true(verdict_no_connection(&o)); /* refused */
    o.err = ERR_TIMEOUT;
    assert_true(verdict_no_connection(&o)); /* timed out */
    o.err = ERR_CLOSED;
    assert_false(verdict_no_connection(&o)); /* cancelled by us */
    o.err = ERR_IO;
    o.stage = SMTP_ST_GREETING;
    assert_false(verdict_no_connection(&o)); /* connected, then lost */
}

/* ---- the end of an attempt ----------------------------------------------------- */

static void test_attempt_table(void **state)
{
    (void)state;
    struct smtp_outcome greet5;
    memset(&greet5, 0, sizeof(greet5));
    greet5.action = SMTP_ACT_BOUNCE;
    greet5.code = 554;
    str_copy(greet5.status, "5.0.0", sizeof(greet5.status));
    struct smtp_outcome refused = greet5;
    refused.action = SMTP_ACT_DEFER;
    refused.code = 0;
    str_copy(refused.status, "4.4.1", sizeof(refused.status));
    struct smtp_outcome auth535 = greet5;
    auth535.code = 535;
    auth535.stage = SMTP_ST_AUTH;
    str_copy(auth535.status, "5.7.8", sizeof(auth535.status));
    const struct {
        const char *name;
        struct verdict_attempt_in in;
        enum verdict_reason reason;
        const char *status;
    } rows[] = {
        {"5xx greeting on the last address",
         {NULL, &greet5, false},
         VR_ALL_ADDRESSES_FAILED,
         "4.0.0"},
        {"connection refused everywhere",
         {NULL, &refused, false},
         VR_ALL_ADDRESSES_FAILED,
         "4.4.1"},
        {"no address tried", {NULL, NULL, false}, VR_NO_ADDRESS, "4.4.3"},
        {"enforce policy left no host", {"4.7.5", &refused, true}, VR_POLICY, "4.7.5"},
        {"override failed with a 5.X.X", {"5.7.1", NULL, false}, VR_POLICY, "4.7.1"},
        {"AUTH refused on the last address", {NULL, &auth535, false}, VR_AUTH_FAILED, "4.7.8"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct verdict v;
        verdict_attempt(&rows[i].in, &v);
        if (v.action != VERDICT_DEFER || v.reason != rows[i].reason ||
            strcmp(v.status, rows[i].status) != 0)
            fail_msg("row \"%s\": got action %d reason %s status %s", rows[i].name, (int)v.action,
                     verdict_reason_name(v.reason), v.status);
    }
}

/* ---- TLS facts against the policy ----------------------------------------- */

struct tls_row {
    const char *name;
    enum verdict_policy policy;
    enum policy_mode mode;
    enum policy_tls_level level;
    bool deliver, mx_matches;
    enum verdict_tls_event event;
    int facts; /* 0: none; 1: verified; 2: expired; 3: name mismatch; 4: handshake failed;
                  5: untrusted chain */
    int res;   /* 0: none; 1: TLS not offered; 2: TLS failure; 3: connection refused */
    bool name_ok;
    /* expected */
    bool host_failed;
    enum verdict_tls_fail why;
    bool report;
    enum verdict_result_type rt;
    /* DANE (policy VERDICT_POLICY_DANE): what applies to the host, and the
     * match of the chain: 0 none made; 1 verified; 2 no-match; 3 the leaf
     * names no reference name (DANE-TA); 4 expired (DANE-TA). */
    enum verdict_dane dane;
    int match;
};

static const struct tls_row tls_rows[] = {
    /* MTA-STS enforce */
    {"enforce: MX matches no pattern", VERDICT_POLICY_STS, POLICY_MODE_ENFORCE, POLICY_TLS_VERIFY,
     false, false, VERDICT_TLS_SKIP, 0, 0, false, true, VERDICT_TLSF_MX_MISMATCH, false,
     VERDICT_RT_VALIDATION_FAILURE, VERDICT_DANE_NONE, 0},
    {"enforce: matching MX may be used", VERDICT_POLICY_STS, POLICY_MODE_ENFORCE, POLICY_TLS_VERIFY,
     true, true, VERDICT_TLS_SKIP, 0, 0, false, false, VERDICT_TLSF_NONE, false, VERDICT_RT_NONE,
     VERDICT_DANE_NONE, 0},
    {"enforce: STARTTLS not offered", VERDICT_POLICY_STS, POLICY_MODE_ENFORCE, POLICY_TLS_VERIFY,
     true, true, VERDICT_TLS_CLOSED, 0, 1, false, true, VERDICT_TLSF_NOT_OFFERED, false,
     VERDICT_RT_STARTTLS_NOT_SUPPORTED, VERDICT_DANE_NONE, 0},
    {"enforce: certificate expired", VERDICT_POLICY_STS, POLICY_MODE_ENFORCE, POLICY_TLS_VERIFY,
     true, true, VERDICT_TLS_CLOSED, 2, 2, false, true, VERDICT_TLSF_CERT, false,
     VERDICT_RT_CERTIFICATE_EXPIRED, VERDICT_DANE_NONE, 0},
    {"enforce: certificate names another host", VERDICT_POLICY_STS, POLICY_MODE_ENFORCE,
     POLICY_TLS_VERIFY, true, true, VERDICT_TLS_CLOSED, 3, 2, false, true, VERDICT_TLSF_CERT, false,
     VERDICT_RT_CERTIFICATE_HOST_MISMATCH, VERDICT_DANE_NONE, 0},
    {"enforce: handshake failed", VERDICT_POLICY_STS, POLICY_MODE_ENFORCE, POLICY_TLS_VERIFY, true,
     true, VERDICT_TLS_CLOSED, 4, 2, false, true, VERDICT_TLSF_HANDSHAKE, false,
     VERDICT_RT_VALIDATION_FAILURE, VERDICT_DANE_NONE, 0},
    {"enforce: connection refused is not a policy matter", VERDICT_POLICY_STS, POLICY_MODE_ENFORCE,
     POLICY_TLS_VERIFY, true, true, VERDICT_TLS_CLOSED, 0, 3, false, false, VERDICT_TLSF_NONE,
     false, VERDICT_RT_NONE, VERDICT_DANE_NONE, 0},
    {"enforce: verified session", VERDICT_POLICY_STS, POLICY_MODE_ENFORCE, POLICY_TLS_VERIFY, true,
     true, VERDICT_TLS_READY, 1, 0, false, false, VERDICT_TLSF_NONE, false, VERDICT_RT_NONE,
     VERDICT_DANE_NONE, 0},
    /* MTA-STS testing: report, deliver anyway */
    {"testing: MX matches no pattern", VERDICT_POLICY_STS, POLICY_MODE_TESTING, POLICY_TLS_MAY,
     true, false, VERDICT_TLS_READY, 1, 0, false, false, VERDICT_TLSF_NONE, true,
     VERDICT_RT_VALIDATION_FAILURE, VERDICT_DANE_NONE, 0},
    {"testing: no TLS session", VERDICT_POLICY_STS, POLICY_MODE_TESTING, POLICY_TLS_MAY, true, true,
     VERDICT_TLS_READY, 0, 0, false, false, VERDICT_TLSF_NONE, true,
     VERDICT_RT_STARTTLS_NOT_SUPPORTED, VERDICT_DANE_NONE, 0},
    {"testing: certificate expired", VERDICT_POLICY_STS, POLICY_MODE_TESTING, POLICY_TLS_MAY, true,
     true, VERDICT_TLS_HANDSHAKE, 2, 0, false, false, VERDICT_TLSF_NONE, true,
     VERDICT_RT_CERTIFICATE_EXPIRED, VERDICT_DANE_NONE, 0},
    {"testing: verified", VERDICT_POLICY_STS, POLICY_MODE_TESTING, POLICY_TLS_MAY, true, true,
     VERDICT_TLS_HANDSHAKE, 1, 0, false, false, VERDICT_TLSF_NONE, false, VERDICT_RT_NONE,
     VERDICT_DANE_NONE, 0},
    {"testing: handshake failed", VERDICT_POLICY_STS, POLICY_MODE_TESTING, POLICY_TLS_MAY, true,
     true, VERDICT_TLS_CLOSED, 4, 2, false, false, VERDICT_TLSF_NONE, true,
     VERDICT_RT_VALIDATION_FAILURE, VERDICT_DANE_NONE, 0},
    /* no policy: opportunistic */
    {"none: no TLS is fine", VERDICT_POLICY_NONE, POLICY_MODE_NONE, POLICY_TLS_MAY, true, true,
     VERDICT_TLS_READY, 0, 0, false, false, VERDICT_TLSF_NONE, false, VERDICT_RT_NONE,
     VERDICT_DANE_NONE, 0},
    {"none: TLS failure is no policy failure", VERDICT_POLICY_NONE, POLICY_MODE_NONE,
     POLICY_TLS_MAY, true, true, VERDICT_TLS_CLOSED, 4, 2, false, false, VERDICT_TLSF_NONE, false,
     VERDICT_RT_NONE, VERDICT_DANE_NONE, 0},
    /* tls_policy_file overrides */
    {"override encrypt: TLS not offered", VERDICT_POLICY_OVERRIDE, POLICY_MODE_NONE,
     POLICY_TLS_ENCRYPT, true, true, VERDICT_TLS_CLOSED, 0, 1, false, true, VERDICT_TLSF_OVERRIDE,
     false, VERDICT_RT_STARTTLS_NOT_SUPPORTED, VERDICT_DANE_NONE, 0},
    {"override verify: untrusted chain", VERDICT_POLICY_OVERRIDE, POLICY_MODE_NONE,
     POLICY_TLS_VERIFY, true, true, VERDICT_TLS_HANDSHAKE, 5, 0, false, true,
     VERDICT_TLSF_OVERRIDE_CHAIN, false, VERDICT_RT_CERTIFICATE_NOT_TRUSTED, VERDICT_DANE_NONE, 0},
    {"override verify: no allowed name", VERDICT_POLICY_OVERRIDE, POLICY_MODE_NONE,
     POLICY_TLS_VERIFY, true, true, VERDICT_TLS_HANDSHAKE, 1, 0, false, true,
     VERDICT_TLSF_OVERRIDE_NAME, false, VERDICT_RT_CERTIFICATE_HOST_MISMATCH, VERDICT_DANE_NONE, 0},
    {"override verify: good", VERDICT_POLICY_OVERRIDE, POLICY_MODE_NONE, POLICY_TLS_VERIFY, true,
     true, VERDICT_TLS_HANDSHAKE, 1, 0, true, false, VERDICT_TLSF_NONE, false, VERDICT_RT_NONE,
     VERDICT_DANE_NONE, 0},
    {"override may: TLS failure is fine", VERDICT_POLICY_OVERRIDE, POLICY_MODE_NONE, POLICY_TLS_MAY,
     true, true, VERDICT_TLS_CLOSED, 4, 2, false, false, VERDICT_TLSF_NONE, false, VERDICT_RT_NONE,
     VERDICT_DANE_NONE, 0},
    /* DANE (RFC 7672): its verdict stands whatever MTA-STS would say, so
     * the STS fields (deliver false: a host the policy does not list) are
     * ignored. */
    {"dane: TLSA bogus: host not used", VERDICT_POLICY_DANE, POLICY_MODE_ENFORCE, POLICY_TLS_VERIFY,
     true, true, VERDICT_TLS_SKIP, 0, 0, false, true, VERDICT_TLSF_DANE_DNS, false,
     VERDICT_RT_DNSSEC_INVALID, VERDICT_DANE_DNS_FAIL, 0},
    {"dane-only: no secure TLSA: host not used", VERDICT_POLICY_DANE, POLICY_MODE_NONE,
     POLICY_TLS_MAY, true, true, VERDICT_TLS_SKIP, 0, 0, false, true, VERDICT_TLSF_DANE_REQUIRED,
     false, VERDICT_RT_DANE_REQUIRED, VERDICT_DANE_REQUIRED, 0},
    {"dane: host not in the STS policy is used", VERDICT_POLICY_DANE, POLICY_MODE_ENFORCE,
     POLICY_TLS_VERIFY, false, false, VERDICT_TLS_SKIP, 0, 0, false, false, VERDICT_TLSF_NONE,
     false, VERDICT_RT_NONE, VERDICT_DANE_AUTH, 0},
    {"dane: chain matches (self-signed, other name)", VERDICT_POLICY_DANE, POLICY_MODE_ENFORCE,
     POLICY_TLS_VERIFY, false, false, VERDICT_TLS_HANDSHAKE, 5, 0, false, false, VERDICT_TLSF_NONE,
     false, VERDICT_RT_NONE, VERDICT_DANE_AUTH, 1},
    {"dane: no record matches, though PKIX verifies", VERDICT_POLICY_DANE, POLICY_MODE_ENFORCE,
     POLICY_TLS_VERIFY, true, true, VERDICT_TLS_HANDSHAKE, 1, 0, false, true,
     VERDICT_TLSF_DANE_CERT, false, VERDICT_RT_TLSA_INVALID, VERDICT_DANE_AUTH, 2},
    {"dane: TA leaf names another host", VERDICT_POLICY_DANE, POLICY_MODE_NONE, POLICY_TLS_MAY,
     true, true, VERDICT_TLS_HANDSHAKE, 3, 0, false, true, VERDICT_TLSF_DANE_CERT, false,
     VERDICT_RT_CERTIFICATE_HOST_MISMATCH, VERDICT_DANE_AUTH, 3},
    {"dane: TA chain expired", VERDICT_POLICY_DANE, POLICY_MODE_NONE, POLICY_TLS_MAY, true, true,
     VERDICT_TLS_HANDSHAKE, 2, 0, false, true, VERDICT_TLSF_DANE_CERT, false,
     VERDICT_RT_CERTIFICATE_EXPIRED, VERDICT_DANE_AUTH, 4},
    {"dane: the session closed after a failed match", VERDICT_POLICY_DANE, POLICY_MODE_NONE,
     POLICY_TLS_MAY, true, true, VERDICT_TLS_CLOSED, 1, 2, false, true, VERDICT_TLSF_DANE_CERT,
     false, VERDICT_RT_TLSA_INVALID, VERDICT_DANE_AUTH, 2},
    {"dane: STARTTLS not offered", VERDICT_POLICY_DANE, POLICY_MODE_NONE, POLICY_TLS_MAY, true,
     true, VERDICT_TLS_CLOSED, 0, 1, false, true, VERDICT_TLSF_DANE_NOT_OFFERED, false,
     VERDICT_RT_STARTTLS_NOT_SUPPORTED, VERDICT_DANE_AUTH, 0},
    {"dane: handshake failed", VERDICT_POLICY_DANE, POLICY_MODE_NONE, POLICY_TLS_MAY, true, true,
     VERDICT_TLS_CLOSED, 4, 2, false, true, VERDICT_TLSF_DANE_HANDSHAKE, false,
     VERDICT_RT_VALIDATION_FAILURE, VERDICT_DANE_AUTH, 0},
    {"dane: connection refused is not a policy matter", VERDICT_POLICY_DANE, POLICY_MODE_NONE,
     POLICY_TLS_MAY, true, true, VERDICT_TLS_CLOSED, 0, 3, false, false, VERDICT_TLSF_NONE, false,
     VERDICT_RT_NONE, VERDICT_DANE_AUTH, 0},
    {"dane: no usable record: any certificate", VERDICT_POLICY_DANE, POLICY_MODE_NONE,
     POLICY_TLS_MAY, true, true, VERDICT_TLS_HANDSHAKE, 5, 0, false, false, VERDICT_TLSF_NONE,
     false, VERDICT_RT_NONE, VERDICT_DANE_ENCRYPT, 0},
    {"dane: no usable record: STARTTLS still required", VERDICT_POLICY_DANE, POLICY_MODE_NONE,
     POLICY_TLS_MAY, true, true, VERDICT_TLS_CLOSED, 0, 1, false, true,
     VERDICT_TLSF_DANE_NOT_OFFERED, false, VERDICT_RT_STARTTLS_NOT_SUPPORTED, VERDICT_DANE_ENCRYPT,
     0},
};

static void make_facts(int kind, struct tls_facts *f)
{
    memset(f, 0, sizeof(*f));
    f->handshake_done = kind != 4;
    switch (kind) {
    case 1:
        f->chain_ok = f->name_ok = f->verified = true;
        break;
    case 2:
        f->name_ok = true;
        f->failure = TLS_FAIL_CERT_EXPIRED;
        break;
    case 3:
        f->chain_ok = true;
        f->failure = TLS_FAIL_HOST_MISMATCH;
        break;
    case 4:
        f->failure = TLS_FAIL_HANDSHAKE;
        break;
    case 5:
        f->name_ok = true;
        f->failure = TLS_FAIL_CERT_NOT_TRUSTED;
        break;
    }
}

static void test_tls_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(tls_rows) / sizeof(tls_rows[0]); i++) {
        const struct tls_row *r = &tls_rows[i];
        struct tls_facts f;
        make_facts(r->facts, &f);
        struct smtp_outcome res;
        memset(&res, 0, sizeof(res));
        res.action = SMTP_ACT_DEFER;
        if (r->res == 1) {
            res.err = ERR_TLS;
            res.tls_missing = true;
            str_copy(res.status, "4.7.4", sizeof(res.status));
        } else if (r->res == 2) {
            res.err = ERR_TLS;
            str_copy(res.status, "4.7.5", sizeof(res.status));
        } else if (r->res == 3) {
            res.err = ERR_IO;
            res.stage = SMTP_ST_CONNECT;
            str_copy(res.status, "4.4.1", sizeof(res.status));
        }
        struct tls_dane_result m;
        memset(&m, 0, sizeof(m));
        static const enum tls_dane_status match_status[] = {TLS_DANE_VERIFIED, TLS_DANE_VERIFIED,
                                                            TLS_DANE_NO_MATCH, TLS_DANE_NAME,
                                                            TLS_DANE_EXPIRED};
        m.status = match_status[r->match];
        struct verdict_tls_in in = {
            .dane = r->dane,
            .dane_match = r->match ? &m : NULL,
            .policy = r->policy,
            .sts_mode = r->mode,
            .level = r->level,
            .deliver = r->deliver,
            .mx_matches = r->mx_matches,
            .event = r->event,
            .facts = r->facts ? &f : NULL,
            .res = r->res ? &res : NULL,
            .name_ok = r->name_ok,
        };
        struct verdict_tls v;
        verdict_tls(&in, &v);
        if (v.host_failed != r->host_failed || v.why != r->why || v.report != r->report ||
            v.result_type != r->rt)
            fail_msg("row \"%s\": got failed %d why %d report %d type %s", r->name,
                     (int)v.host_failed, (int)v.why, (int)v.report,
                     verdict_result_type_name(v.result_type)
                         ? verdict_result_type_name(v.result_type)
                         : "none");
        /* A policy failure never bounces: its status is transient. */
        if (v.host_failed)
            assert_int_equal(v.status[0], '4');
    }
}

static void test_result_type_names(void **state)
{
    (void)state;
    /* The names TLS-RPT reports carry (RFC 8460 4.3). */
    assert_null(verdict_result_type_name(VERDICT_RT_NONE));
    assert_string_equal(verdict_result_type_name(VERDICT_RT_STARTTLS_NOT_SUPPORTED),
                        "starttls-not-supported");
    assert_string_equal(verdict_result_type_name(VERDICT_RT_CERTIFICATE_HOST_MISMATCH),
                        "certificate-host-mismatch");
    assert_string_equal(verdict_result_type_name(VERDICT_RT_CERTIFICATE_EXPIRED),
                        "certificate-expired");
    assert_string_equal(verdict_result_type_name(VERDICT_RT_CERTIFICATE_NOT_TRUSTED),
                        "certificate-not-trusted");
    assert_string_equal(verdict_result_type_name(VERDICT_RT_VALIDATION_FAILURE),
                        "validation-failure");
    assert_string_equal(verdict_result_type_name(VERDICT_RT_TLSA_INVALID), "tlsa-invalid");
    assert_string_equal(verdict_result_type_name(VERDICT_RT_DNSSEC_INVALID), "dnssec-invalid");
    assert_string_equal(verdict_result_type_name(VERDICT_RT_DANE_REQUIRED), "dane-required");
    assert_string_equal(verdict_result_type_name(VERDICT_RT_STS_POLICY_FETCH_ERROR),
                        "sts-policy-fetch-error");
    assert_string_equal(verdict_result_type_name(VERDICT_RT_STS_POLICY_INVALID),
                        "sts-policy-invalid");
    assert_string_equal(verdict_result_type_name(VERDICT_RT_STS_WEBPKI_INVALID),
                        "sts-webpki-invalid");
    /* The same names as tls/ gives for each failure. */
    for (int f = TLS_FAIL_NONE; f <= TLS_FAIL_HANDSHAKE; f++) {
        const char *a = tls_failure_result_type((enum tls_failure)f);
        const char *b = verdict_result_type_name(verdict_result_type_of((enum tls_failure)f));
        if (!a)
            assert_null(b);
        else
            assert_string_equal(a, b);
    }
}

/* ---- DNS, expiry, local and operator outcomes ------------------------------- */

static void test_dns_table(void **state)
{
    (void)state;
    const struct {
        enum dns_status st;
        enum verdict_action action;
        enum verdict_reason reason;
        const char *status;
    } rows[] = {
        {DNS_NULL_MX, VERDICT_BOUNCE, VR_NULL_MX, "5.1.10"},
        {DNS_NXDOMAIN, VERDICT_BOUNCE, VR_DNS_PERMANENT, "5.4.4"},
        {DNS_NODATA, VERDICT_BOUNCE, VR_DNS_PERMANENT, "5.4.4"},
        {DNS_INVALID, VERDICT_BOUNCE, VR_DNS_PERMANENT, "5.1.2"},
        {DNS_TEMPFAIL, VERDICT_DEFER, VR_DNS_TRANSIENT, "4.4.3"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct verdict v;
        verdict_dns(rows[i].st, &v);
        assert_int_equal(v.action, rows[i].action);
        assert_int_equal(v.reason, rows[i].reason);
        assert_string_equal(v.status, rows[i].status);
    }
}

static void test_expiry_table(void **state)
{
    (void)state;
    const struct {
        const char *name;
        bool can_recheck, have_last;
        const char *mode, *status;
        enum verdict_action action;
        enum verdict_reason reason;
    } rows[] = {
        {"never tried", true, false, NULL, NULL, VERDICT_BOUNCE, VR_EXPIRED},
        {"last 4xx from the host", true, true, "enforce", "4.2.0", VERDICT_BOUNCE, VR_EXPIRED},
        {"enforce deferred it", true, true, "enforce", "4.7.5", VERDICT_DEFER, VR_EXPIRED_RECHECK},
        {"testing, 4.7.5", true, true, "testing", "4.7.5", VERDICT_BOUNCE, VR_EXPIRED},
        {"enforce, but relayhost", false, true, "enforce", "4.7.5", VERDICT_BOUNCE, VR_EXPIRED},
        {"damaged status", true, true, "enforce", "4.7.5x", VERDICT_BOUNCE, VR_EXPIRED},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct verdict_expiry_in in = {
            .can_recheck = rows[i].can_recheck,
            .have_last = rows[i].have_last,
            .last_mode = verdict_mode_parse(rows[i].mode),
            .last_status = verdict_status_parse(rows[i].status),
        };
        struct verdict v;
        verdict_expired(&in, &v);
        if (v.action != rows[i].action || v.reason != rows[i].reason)
            fail_msg("row \"%s\": got action %d reason %s", rows[i].name, (int)v.action,
                     verdict_reason_name(v.reason));
        assert_string_equal(v.status, "4.4.7");
    }
    struct verdict_status s = verdict_status_parse("5.1.10");
    assert_int_equal(s.cls, 5);
    assert_int_equal(s.subject, 1);
    assert_int_equal(s.detail, 10);
    assert_int_equal(verdict_status_parse("3.1.1").cls, 0);
    assert_int_equal(verdict_status_parse("4.1").cls, 0);
    assert_int_equal(verdict_status_parse("").cls, 0);
}

/* RFC 8461 5: an enforce deferral asks for a policy recheck before the
 * next attempt; an override's does not. */
static void test_attempt_asks_recheck(void **state)
{
    (void)state;
    struct smtp_outcome last;
    memset(&last, 0, sizeof(last));
    str_copy(last.status, "4.4.1", sizeof(last.status));
    struct verdict v;
    struct verdict_attempt_in in = {.policy_status = "4.7.5", .sts_enforce = true};
    verdict_attempt(&in, &v);
    assert_int_equal(v.reason, VR_POLICY);
    assert_true(v.sts_recheck);
    in.sts_enforce = false; /* a tls_policy_file entry failed the hosts */
    verdict_attempt(&in, &v);
    assert_false(v.sts_recheck);
    struct verdict_attempt_in other = {.last = &last, .sts_enforce = true};
    verdict_attempt(&other, &v);
    assert_int_equal(v.reason, VR_ALL_ADDRESSES_FAILED);
    assert_false(v.sts_recheck);
}

/* After the recheck of an expired recipient: only the same enforce policy,
 * unchanged as a whole, bounces. */
static void test_recheck_table(void **state)
{
    (void)state;
    const struct {
        const char *name;
        bool have;
        enum policy_mode mode;
        enum policy_change change;
        bool same;
        enum verdict_action action;
        enum verdict_reason reason;
    } rows[] = {
        {"same policy", true, POLICY_MODE_ENFORCE, POLICY_CHANGE_NONE, true, VERDICT_BOUNCE,
         VR_EXPIRED},
        {"same id, new content", true, POLICY_MODE_ENFORCE, POLICY_CHANGE_CONTENT, true,
         VERDICT_DEFER, VR_RECHECK_CHANGED},
        {"new id fetched", true, POLICY_MODE_ENFORCE, POLICY_CHANGE_ID, false, VERDICT_DEFER,
         VR_RECHECK_CHANGED},
        {"changed before the recheck", true, POLICY_MODE_ENFORCE, POLICY_CHANGE_NONE, false,
         VERDICT_DEFER, VR_RECHECK_CHANGED},
        {"now testing", true, POLICY_MODE_TESTING, POLICY_CHANGE_NONE, true, VERDICT_DEFER,
         VR_RECHECK_CHANGED},
        {"gone", false, POLICY_MODE_NONE, POLICY_CHANGE_NONE, false, VERDICT_DEFER,
         VR_RECHECK_CHANGED},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct verdict_recheck_in in = {.have_policy = rows[i].have,
                                        .mode = rows[i].mode,
                                        .change = rows[i].change,
                                        .same_as_last = rows[i].same};
        struct verdict v;
        verdict_recheck(&in, &v);
        if (v.action != rows[i].action || v.reason != rows[i].reason)
            fail_msg("row \"%s\": got action %d reason %s", rows[i].name, (int)v.action,
                     verdict_reason_name(v.reason));
        assert_string_equal(v.status, "4.4.7");
    }
}

static void test_local_and_admin(void **state)
{
    (void)state;
    struct verdict v;
    verdict_local(&v);
    assert_int_equal(v.action, VERDICT_DEFER);
    assert_string_equal(v.status, "4.3.0");
    verdict_admin(&v);
    assert_int_equal(v.action, VERDICT_BOUNCE);
    assert_int_equal(v.reason, VR_ADMIN);
    assert_string_equal(v.status, "5.0.0");
    assert_int_equal(verdict_smtp_action(VERDICT_SENT), SMTP_ACT_SENT);
    assert_int_equal(verdict_smtp_action(VERDICT_DEFER), SMTP_ACT_DEFER);
    assert_int_equal(verdict_smtp_action(VERDICT_BOUNCE), SMTP_ACT_BOUNCE);
    for (int r = 0; r < VR_REASON_COUNT; r++)
        assert_string_not_equal(verdict_reason_name((enum verdict_reason)r), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_table),       cmocka_unit_test(test_no_connection),
        cmocka_unit_test(test_attempt_table),     cmocka_unit_test(test_tls_table),
        cmocka_unit_test(test_result_type_names), cmocka_unit_test(test_dns_table),
        cmocka_unit_test(test_expiry_table),      cmocka_unit_test(test_attempt_asks_recheck),
        cmocka_unit_test(test_recheck_table),     cmocka_unit_test(test_local_and_admin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
