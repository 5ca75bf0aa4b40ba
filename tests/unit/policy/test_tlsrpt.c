/*
 * test_tlsrpt.c - TLS-RPT (RFC 8460): the _smtp._tls record (3) as a table,
 * RRset selection, mailto: addresses, result-type names (4.3), UTC days,
 * the LMDB store (counting, reopening, idempotence keys, bounds, pruning),
 * the report JSON (4), the file name (5.1), gzip (5.2) and the mail message
 * (5.3).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <zlib.h>

#include "policy.h"

/* ---- the record -------------------------------------------------------------- */

struct rec_case {
    const char *rec;
    const char *rua; /* expected URIs joined by ' '; NULL: not usable */
};

static const struct rec_case rec_cases[] = {
    /* RFC 8460 Appendix A */
    {"v=TLSRPTv1;rua=mailto:reports@example.com", "mailto:reports@example.com"},
    {"v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt",
     "https://reporting.example.com/v1/tlsrpt"},
    {"v=TLSRPTv1; rua=mailto:a@example.com,https://r.example.com/x",
     "mailto:a@example.com https://r.example.com/x"},
    {"v=TLSRPTv1; rua=mailto:a@example.com , https://r.example.com/x",
     "mailto:a@example.com https://r.example.com/x"},
    {"v=TLSRPTv1 ; rua=mailto:a@example.com;", "mailto:a@example.com"},
    {"v=TLSRPTv1;\trua=mailto:a@example.com ;", "mailto:a@example.com"},
    {"v=TLSRPTv1; rua=mailto:a@example.com; ", "mailto:a@example.com"},
    /* unknown extensions are ignored, before or after rua */
    {"v=TLSRPTv1; ext=1; rua=mailto:a@example.com", "mailto:a@example.com"},
    {"v=TLSRPTv1; rua=mailto:a@example.com; a_b-c.d=x:y", "mailto:a@example.com"},
    /* other schemes are ignored; only they: not usable */
    {"v=TLSRPTv1; rua=ftp://x.example.com/r,mailto:a@example.com", "mailto:a@example.com"},
    {"v=TLSRPTv1; rua=http://r.example.com/x", NULL},
    {"v=TLSRPTv1; rua=ftp://r.example.com/x", NULL},
    /* the scheme is case-insensitive (RFC 3986 3.1) */
    {"v=TLSRPTv1; rua=MAILTO:a@example.com", "MAILTO:a@example.com"},
    /* several rua fields accumulate; duplicates are kept once */
    {"v=TLSRPTv1; rua=mailto:a@example.com; rua=https://r.example.com/",
     "mailto:a@example.com https://r.example.com/"},
    {"v=TLSRPTv1; rua=mailto:a@example.com,mailto:a@example.com", "mailto:a@example.com"},
    /* percent-encoded '!' is fine; no DMARC "!size" suffix */
    {"v=TLSRPTv1; rua=mailto:a%21b@example.com", "mailto:a%21b@example.com"},
    {"v=TLSRPTv1; rua=mailto:a@example.com!10m", NULL},
    /* grammar violations */
    {"v=TLSRPTv1", NULL},
    {"v=TLSRPTv1;", NULL},
    {"v=TLSRPTv1; ", NULL},
    {"v=TLSRPTv1; rua=", NULL},
    {"v=TLSRPTv1; rua=mailto:a@example.com ", NULL}, /* trailing space, no ';' */
    {"v=TLSRPTv1 rua=mailto:a@example.com", NULL},   /* no ';' */
    {"v=TLSRPTv1; RUA=mailto:a@example.com", NULL},  /* %s"rua=": an extension */
    {"v=TLSRPTv1; rua = mailto:a@example.com", NULL},
    {"v=TLSRPTv1; rua=mailto:a@example.com,", NULL},
    {"v=TLSRPTv1; rua=mailto:a@example.com,,mailto:b@example.com", NULL},
    {"v=TLSRPTv1; rua=mailto:a@example.com https://r.example.com/", NULL},
    {"v=TLSRPTv1; rua=no-scheme", NULL},
    {"v=TLSRPTv1; rua=mailto:", NULL},
    {"v=TLSRPTv1; ext=; rua=mailto:a@example.com", NULL},
    {"v=TLSRPTv1; =x; rua=mailto:a@example.com", NULL},
    {"v=TLSRPTv1; -ext=x; rua=mailto:a@example.com", NULL},
    {"v=TLSRPTv1; ext=a=b; rua=mailto:a@example.com", NULL},
    {"v=TLSRPTv1; a123456789012345678901234567890123=x; rua=mailto:a@example.com", NULL},
    {"v=TLSRPTv1;; rua=mailto:a@example.com", NULL},
    {"v=TLSRPTv1; rua=mailto:a@example.com\n", NULL},
    {"v=tlsrptv1; rua=mailto:a@example.com", NULL},
    {"v=TLSRPTv2; rua=mailto:a@example.com", NULL},
    {" v=TLSRPTv1; rua=mailto:a@example.com", NULL},
};

static void test_record_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(rec_cases) / sizeof(rec_cases[0]); i++) {
        const struct rec_case *c = &rec_cases[i];
        struct tlsrpt_record *r = malloc(sizeof(*r));
        char why[256] = "";
        int rc = tlsrpt_txt_parse(c->rec, strlen(c->rec), r, why, sizeof(why));
        if (!c->rua) {
            if (rc == 0)
                fail_msg("case %zu \"%s\": accepted", i, c->rec);
            assert_int_equal(rc, ERR_INVAL);
            assert_true(why[0] != '\0');
        } else {
            if (rc != 0)
                fail_msg("case %zu \"%s\": %s", i, c->rec, why);
            char joined[4096] = "";
            for (size_t k = 0; k < r->n_rua; k++) {
                if (k)
                    strcat(joined, " ");
                strcat(joined, r->rua[k]);
            }
            assert_string_equal(joined, c->rua);
        }
        free(r);
    }
}

static void test_record_ignored_count(void **state)
{
    (void)state;
    struct tlsrpt_record r;
    const char *rec = "v=TLSRPTv1; rua=ftp://a.example/,mailto:a@example.com,http://b.example/";
    assert_int_equal(tlsrpt_txt_parse(rec, strlen(rec), &r, NULL, 0), 0);
    assert_int_equal(r.n_rua, 1);
    assert_int_equal(r.n_ignored, 2);
}

static void test_record_select(void **state)
{
    (void)state;
    struct tlsrpt_record r;
    char why[256];
    const char *one[] = {"v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@example.com", "hello"};
    size_t one_len[] = {strlen(one[0]), strlen(one[1]), strlen(one[2])};
    assert_int_equal(tlsrpt_txt_select(one, one_len, 3, &r, why, sizeof(why)), 0);
    assert_string_equal(r.rua[0], "mailto:a@example.com");

    const char *two[] = {"v=TLSRPTv1; rua=mailto:a@example.com",
                         "v=TLSRPTv1; rua=mailto:b@example.com"};
    size_t two_len[] = {strlen(two[0]), strlen(two[1])};
    assert_int_equal(tlsrpt_txt_select(two, two_len, 2, &r, why, sizeof(why)), ERR_INVAL);
    assert_non_null(strstr(why, "2 v=TLSRPTv1 records"));

    /* An invalid TLS-RPT record still counts: with a valid one, two remain. */
    const char *bad[] = {"v=TLSRPTv1", "v=TLSRPTv1; rua=mailto:a@example.com"};
    size_t bad_len[] = {strlen(bad[0]), strlen(bad[1])};
    assert_int_equal(tlsrpt_txt_select(bad, bad_len, 2, &r, why, sizeof(why)), ERR_INVAL);

    const char *none[] = {"v=spf1 -all", "v=TLSRPTv10; rua=mailto:a@example.com"};
    size_t none_len[] = {strlen(none[0]), strlen(none[1])};
    assert_int_equal(tlsrpt_txt_select(none, none_len, 2, &r, why, sizeof(why)), ERR_NOTFOUND);
    assert_int_equal(tlsrpt_txt_select(NULL, NULL, 0, &r, why, sizeof(why)), ERR_NOTFOUND);

    /* Strings of one TXT record are concatenated before parsing: a record
     * split inside "rua=" is one record. */
    assert_true(tlsrpt_txt_is_tlsrpt("v=TLSRPTv1", 10));
    assert_true(tlsrpt_txt_is_tlsrpt("v=TLSRPTv1 ;", 12));
    assert_false(tlsrpt_txt_is_tlsrpt("v=TLSRPTv10", 11));
    assert_false(tlsrpt_txt_is_tlsrpt("v=TLSRPT", 8));
}

static void test_mailto(void **state)
{
    (void)state;
    char a[256];
    assert_int_equal(tlsrpt_mailto_address("mailto:tlsrpt@example.com", a, sizeof(a)), 0);
    assert_string_equal(a, "tlsrpt@example.com");
    assert_int_equal(tlsrpt_mailto_address("MAILTO:x%2By@example.com?subject=hi", a, sizeof(a)), 0);
    assert_string_equal(a, "x+y@example.com");
    assert_int_equal(tlsrpt_mailto_address("mailto:a@b.example,c@d.example", a, sizeof(a)),
                     ERR_INVAL);
    assert_int_equal(tlsrpt_mailto_address("mailto:nobody", a, sizeof(a)), ERR_INVAL);
    assert_int_equal(tlsrpt_mailto_address("mailto:@example.com", a, sizeof(a)), ERR_INVAL);
    assert_int_equal(tlsrpt_mailto_address("mailto:a@", a, sizeof(a)), ERR_INVAL);
    assert_int_equal(tlsrpt_mailto_address("mailto:a%0d%0aBcc:x@example.com", a, sizeof(a)),
                     ERR_INVAL);
    assert_int_equal(tlsrpt_mailto_address("mailto:a%zz@example.com", a, sizeof(a)), ERR_INVAL);
    assert_int_equal(tlsrpt_mailto_address("https://example.com/", a, sizeof(a)), ERR_INVAL);
    assert_int_equal(tlsrpt_mailto_address("mailto:abcdef@example.com", a, 8), ERR_TOOBIG);
}

static void test_result_names(void **state)
{
    (void)state;
    static const char *const want[] = {
        "starttls-not-supported", "certificate-host-mismatch",
        "certificate-expired",    "certificate-not-trusted",
        "validation-failure",     "tlsa-invalid",
        "dnssec-invalid",         "dane-required",
        "sts-policy-fetch-error", "sts-policy-invalid",
        "sts-webpki-invalid",
    };
    assert_int_equal(sizeof(want) / sizeof(want[0]), TLSRPT_RESULT_LAST);
    for (int r = 1; r <= (int)TLSRPT_RESULT_LAST; r++) {
        assert_string_equal(tlsrpt_result_name((enum tlsrpt_result)r), want[r - 1]);
        enum tlsrpt_result back;
        assert_int_equal(tlsrpt_result_from_name(want[r - 1], &back), 0);
        assert_int_equal(back, r);
    }
    assert_null(tlsrpt_result_name(TLSRPT_SUCCESS));
    assert_null(tlsrpt_result_name((enum tlsrpt_result)99));
    enum tlsrpt_result x;
    assert_int_equal(tlsrpt_result_from_name("certificate-revoked", &x), ERR_INVAL);
    assert_int_equal(tlsrpt_result_from_policy_failure(POLICY_FAIL_FETCH),
                     TLSRPT_STS_POLICY_FETCH_ERROR);
    assert_int_equal(tlsrpt_result_from_policy_failure(POLICY_FAIL_INVALID),
                     TLSRPT_STS_POLICY_INVALID);
    assert_int_equal(tlsrpt_result_from_policy_failure(POLICY_FAIL_WEBPKI),
                     TLSRPT_STS_WEBPKI_INVALID);
    assert_int_equal(tlsrpt_result_from_policy_failure(POLICY_FAIL_NONE), TLSRPT_SUCCESS);
    /* Every TLS failure maps onto the name tls/ itself gives it. */
    for (int f = TLS_FAIL_STARTTLS_NOT_SUPPORTED; f <= TLS_FAIL_HANDSHAKE; f++)
        assert_string_equal(tlsrpt_result_name(tlsrpt_result_from_tls_failure((enum tls_failure)f)),
                            tls_failure_result_type((enum tls_failure)f));
    assert_int_equal(tlsrpt_result_from_tls_failure(TLS_FAIL_NONE), TLSRPT_SUCCESS);
    assert_string_equal(tlsrpt_policy_type_name(TLSRPT_POLICY_STS), "sts");
    assert_string_equal(tlsrpt_policy_type_name(TLSRPT_POLICY_TLSA), "tlsa");
    assert_string_equal(tlsrpt_policy_type_name(TLSRPT_POLICY_NO_POLICY), "no-policy-found");
}

static void test_days(void **state)
{
    (void)state;
    int64_t t;
    char d[TLSRPT_DAY_SIZE];
    assert_int_equal(tlsrpt_day_parse("1970-01-01", &t), 0);
    assert_int_equal(t, 0);
    assert_int_equal(tlsrpt_day_parse("2016-04-01", &t), 0);
    assert_int_equal(t, 1459468800);
    assert_int_equal(tlsrpt_day_parse("2024-02-29", &t), 0);
    tlsrpt_day_of(t + 86399, d);
    assert_string_equal(d, "2024-02-29");
    tlsrpt_day_of(t + 86400, d);
    assert_string_equal(d, "2024-03-01");
    assert_int_equal(tlsrpt_day_parse("2023-02-29", &t), ERR_INVAL);
    assert_int_equal(tlsrpt_day_parse("2026-13-01", &t), ERR_INVAL);
    assert_int_equal(tlsrpt_day_parse("2026-1-01", &t), ERR_INVAL);
    assert_int_equal(tlsrpt_day_parse("2026-01-01x", &t), ERR_INVAL);
    assert_int_equal(tlsrpt_day_parse("../../etc", &t), ERR_INVAL);
}

/* ---- the store ------------------------------------------------------------------ */

static char g_dir[64], g_path[128];

static int store_setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/convoy-tlsrpt-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_path, sizeof(g_path), "%s/%s", g_dir, TLSRPT_STORE_FILE);
    return 0;
}

static int store_teardown(void **state)
{
    (void)state;
    char p[160];
    unlink(g_path);
    snprintf(p, sizeof(p), "%s-lock", g_path);
    unlink(p);
    rmdir(g_dir);
    return 0;
}

static struct tlsrpt_store *open_rw(void)
{
    struct tlsrpt_store *s;
    char why[256];
    int rc = tlsrpt_store_open(g_path, false, &s, why, sizeof(why));
    if (rc != 0)
        fail_msg("open: %s", why);
    return s;
}

/* 2016-04-01 12:00:00 UTC */
#define T0 (1459468800 + 43200)

static char *mx_patterns[] = {"*.mail.company-y.example"};
static const struct sts_policy g_sts = {
    .mode = POLICY_MODE_TESTING, .max_age = 86400, .n_mx = 1, .mx = mx_patterns};

static struct tlsrpt_session_result session(enum tlsrpt_result res, const char *mx, const char *rip)
{
    struct tlsrpt_session_result r = {
        .policy_domain = "Company-Y.example.",
        .time = T0,
        .policy_type = TLSRPT_POLICY_STS,
        .sts = &g_sts,
        .result = res,
        .sending_mta_ip = "2001:db8:abcd:12::1",
        .receiving_mx_hostname = mx,
        .receiving_ip = rip,
    };
    return r;
}

struct sums {
    struct tlsrpt_summary s[8];
    size_t n;
};

static int collect(void *arg, const struct tlsrpt_summary *sum)
{
    struct sums *c = arg;
    if (c->n < 8)
        c->s[c->n++] = *sum;
    return 0;
}

static void test_store_counts_reopen(void **state)
{
    (void)state;
    struct tlsrpt_store *s = open_rw();
    for (int i = 0; i < 5; i++) {
        struct tlsrpt_session_result r =
            session(TLSRPT_SUCCESS, "mx1.mail.company-y.example", "203.0.113.55");
        assert_int_equal(tlsrpt_record_session(s, &r), 0);
    }
    for (int i = 0; i < 3; i++) {
        struct tlsrpt_session_result r =
            session(TLSRPT_CERTIFICATE_EXPIRED, "mx1.mail.company-y.example", "203.0.113.55");
        assert_int_equal(tlsrpt_record_session(s, &r), 0);
    }
    struct tlsrpt_session_result r =
        session(TLSRPT_STARTTLS_NOT_SUPPORTED, "mx2.mail.company-y.example", "203.0.113.56");
    r.receiving_mx_helo = "mx2.example";
    r.failure_reason_code = "no STARTTLS\r\nin EHLO";
    assert_int_equal(tlsrpt_record_session(s, &r), 0);
    /* Another domain, without a policy, the next day. */
    struct tlsrpt_session_result n = {
        .policy_domain = "other.example", .time = T0 + 86400, .result = TLSRPT_SUCCESS};
    assert_int_equal(tlsrpt_record_session(s, &n), 0);
    /* Bad input. */
    struct tlsrpt_session_result bad = n;
    bad.policy_domain = "not a domain";
    assert_int_equal(tlsrpt_record_session(s, &bad), ERR_INVAL);
    bad = n;
    bad.result = (enum tlsrpt_result)99;
    assert_int_equal(tlsrpt_record_session(s, &bad), ERR_INVAL);
    tlsrpt_store_close(s);

    /* Reopened read-only, as convoyctl does. */
    char why[256];
    assert_int_equal(tlsrpt_store_open(g_path, true, &s, why, sizeof(why)), 0);
    struct sums c = {.n = 0};
    assert_int_equal(tlsrpt_store_each(s, NULL, collect, &c), 0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.s[0].day, "2016-04-01");
    assert_string_equal(c.s[0].domain, "company-y.example");
    assert_int_equal(c.s[0].successful, 5);
    assert_int_equal(c.s[0].failed, 4);
    assert_int_equal(c.s[0].n_policies, 1);
    assert_string_equal(c.s[1].day, "2016-04-02");
    assert_string_equal(c.s[1].domain, "other.example");
    c.n = 0;
    assert_int_equal(tlsrpt_store_each(s, "2016-04-02", collect, &c), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(tlsrpt_record_session(s, &n), ERR_PERM);

    /* The report. */
    struct tlsrpt_report_info info = {
        .organization_name = "Company-X",
        .contact_info = "sts-reporting@company-x.example",
        .submitter = "company-x.example",
    };
    struct buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(
        tlsrpt_report_json(s, "2016-04-01", "company-y.example", &info, 0, 0, false, &out), 0);
    json_error_t e;
    json_t *j = json_loadb(out.data, out.len, 0, &e);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "organization-name")), "Company-X");
    assert_string_equal(json_string_value(json_object_get(j, "report-id")),
                        "20160401.0.company-y.example@company-x.example");
    json_t *range = json_object_get(j, "date-range");
    assert_string_equal(json_string_value(json_object_get(range, "start-datetime")),
                        "2016-04-01T00:00:00Z");
    assert_string_equal(json_string_value(json_object_get(range, "end-datetime")),
                        "2016-04-01T23:59:59Z");
    json_t *p = json_array_get(json_object_get(j, "policies"), 0);
    json_t *pol = json_object_get(p, "policy");
    assert_string_equal(json_string_value(json_object_get(pol, "policy-type")), "sts");
    assert_string_equal(json_string_value(json_object_get(pol, "policy-domain")),
                        "company-y.example");
    json_t *ps = json_object_get(pol, "policy-string");
    assert_int_equal(json_array_size(ps), 4);
    assert_string_equal(json_string_value(json_array_get(ps, 0)), "version: STSv1");
    assert_string_equal(json_string_value(json_array_get(ps, 1)), "mode: testing");
    assert_string_equal(json_string_value(json_array_get(ps, 2)), "mx: *.mail.company-y.example");
    assert_string_equal(json_string_value(json_array_get(ps, 3)), "max_age: 86400");
    assert_string_equal(json_string_value(json_array_get(json_object_get(pol, "mx-host"), 0)),
                        "*.mail.company-y.example");
    json_t *sum = json_object_get(p, "summary");
    assert_int_equal(json_integer_value(json_object_get(sum, "total-successful-session-count")), 5);
    assert_int_equal(json_integer_value(json_object_get(sum, "total-failure-session-count")), 4);
    json_t *fd = json_object_get(p, "failure-details");
    assert_int_equal(json_array_size(fd), 2);
    json_t *d0 = json_array_get(fd, 0), *d1 = json_array_get(fd, 1);
    assert_string_equal(json_string_value(json_object_get(d0, "result-type")),
                        "certificate-expired");
    assert_int_equal(json_integer_value(json_object_get(d0, "failed-session-count")), 3);
    assert_string_equal(json_string_value(json_object_get(d0, "sending-mta-ip")),
                        "2001:db8:abcd:12::1");
    assert_string_equal(json_string_value(json_object_get(d0, "receiving-ip")), "203.0.113.55");
    assert_null(json_object_get(d0, "failure-reason-code"));
    assert_null(json_object_get(d0, "receiving-mx-helo"));
    assert_string_equal(json_string_value(json_object_get(d1, "result-type")),
                        "starttls-not-supported");
    assert_string_equal(json_string_value(json_object_get(d1, "receiving-mx-helo")), "mx2.example");
    /* Control characters from a peer never reach the report. */
    assert_string_equal(json_string_value(json_object_get(d1, "failure-reason-code")),
                        "no STARTTLS  in EHLO");
    json_decref(j);

    /* no-policy-found: empty arrays, the counts. */
    buf_reset(&out);
    assert_int_equal(tlsrpt_report_json(s, "2016-04-02", "other.example", &info, 0, 0, true, &out),
                     0);
    j = json_loadb(out.data, out.len, 0, &e);
    p = json_array_get(json_object_get(j, "policies"), 0);
    pol = json_object_get(p, "policy");
    assert_string_equal(json_string_value(json_object_get(pol, "policy-type")), "no-policy-found");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(p, "summary"),
                                                        "total-successful-session-count")),
                     1);
    json_decref(j);

    /* A partial day ends where asked. */
    buf_reset(&out);
    assert_int_equal(tlsrpt_report_json(s, "2016-04-02", "other.example", &info, 1,
                                        1459468800 + 86400 + 3600, false, &out),
                     0);
    assert_non_null(strstr(out.data, "\"end-datetime\":\"2016-04-02T01:00:00Z\""));
    assert_non_null(strstr(out.data, "\"report-id\":\"20160402.1.other.example@"));
    buf_reset(&out);
    assert_int_equal(tlsrpt_report_json(s, "2016-04-03", "other.example", &info, 0, 0, false, &out),
                     ERR_NOTFOUND);
    buf_free(&out);
    tlsrpt_store_close(s);

    /* seq, delete, prune. */
    s = open_rw();
    uint32_t seq;
    assert_int_equal(tlsrpt_store_next_seq(s, "2016-04-01", "company-y.example", &seq), 0);
    assert_int_equal(seq, 0);
    assert_int_equal(tlsrpt_store_next_seq(s, "2016-04-01", "company-y.example", &seq), 0);
    assert_int_equal(seq, 1);
    assert_int_equal(tlsrpt_store_next_seq(s, "2016-04-01", "nobody.example", &seq), ERR_NOTFOUND);
    c.n = 0;
    tlsrpt_store_each(s, "2016-04-01", collect, &c);
    assert_int_equal(c.s[0].reports, 2);
    assert_int_equal(tlsrpt_store_delete(s, "2016-04-01", "company-y.example"), 0);
    assert_int_equal(tlsrpt_store_delete(s, "2016-04-01", "company-y.example"), ERR_NOTFOUND);
    assert_int_equal(tlsrpt_store_prune(s, "2016-04-02"), 0);
    assert_int_equal(tlsrpt_store_prune(s, "2016-04-03"), 1);
    c.n = 0;
    tlsrpt_store_each(s, NULL, collect, &c);
    assert_int_equal(c.n, 0);
    assert_int_equal(tlsrpt_store_prune(s, "garbage"), ERR_INVAL);
    tlsrpt_store_close(s);
}

static void test_store_idempotent(void **state)
{
    (void)state;
    struct tlsrpt_store *s = open_rw();
    struct tlsrpt_session_result r =
        session(TLSRPT_CERTIFICATE_HOST_MISMATCH, "mx1.mail.company-y.example", "203.0.113.1");
    r.session_id = "1700000000000.123.1";
    assert_int_equal(tlsrpt_record_session(s, &r), 0);
    assert_int_equal(tlsrpt_record_session(s, &r), ERR_EXISTS);
    r.session_id = "1700000000000.123.2";
    assert_int_equal(tlsrpt_record_session(s, &r), 0);
    /* The same id on another day is another key (ids are per day). */
    r.time += 86400;
    r.session_id = "1700000000000.123.1";
    assert_int_equal(tlsrpt_record_session(s, &r), 0);
    struct sums c = {.n = 0};
    tlsrpt_store_each(s, NULL, collect, &c);
    assert_int_equal(c.n, 2);
    assert_int_equal(c.s[0].failed, 2);
    assert_int_equal(c.s[1].failed, 1);
    r.session_id = "";
    assert_int_equal(tlsrpt_record_session(s, &r), ERR_INVAL);
    /* Pruning takes the keys too: the id can be counted again. */
    assert_int_equal(tlsrpt_store_prune(s, "2016-04-03"), 2);
    r.session_id = "1700000000000.123.1";
    assert_int_equal(tlsrpt_record_session(s, &r), 0);
    tlsrpt_store_close(s);
}

static void test_store_bounds(void **state)
{
    (void)state;
    struct tlsrpt_store *s = open_rw();
    /* More detail rows than the bound: every failure still counts. */
    for (int i = 0; i < TLSRPT_MAX_DETAILS + 10; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "198.51.100.%d", i % 250);
        struct tlsrpt_session_result r = session(TLSRPT_VALIDATION_FAILURE, "mx.example", ip);
        r.failure_reason_code = i < 250 ? "x" : "y";
        r.receiving_ip = ip;
        char code[16];
        snprintf(code, sizeof(code), "c%d", i);
        r.failure_reason_code = code;
        assert_int_equal(tlsrpt_record_session(s, &r), 0);
    }
    /* More policies than the bound: the session is dropped, counted. */
    for (int i = 0; i < TLSRPT_MAX_POLICIES + 3; i++) {
        char pat[64];
        snprintf(pat, sizeof(pat), "mx%d.example", i);
        const char *mx[] = {pat};
        struct tlsrpt_session_result r = session(TLSRPT_SUCCESS, "mx.example", "192.0.2.1");
        r.sts = NULL;
        r.mx_hosts = mx;
        r.n_mx_hosts = 1;
        assert_int_equal(tlsrpt_record_session(s, &r), 0);
    }
    struct sums c = {.n = 0};
    tlsrpt_store_each(s, NULL, collect, &c);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.s[0].failed, TLSRPT_MAX_DETAILS + 10);
    assert_int_equal(c.s[0].n_policies, TLSRPT_MAX_POLICIES);
    assert_int_equal(c.s[0].successful, TLSRPT_MAX_POLICIES - 1);
    assert_int_equal(c.s[0].dropped, 10 + 4);
    struct tlsrpt_report_info info = {"Org", "a@b.example", "b.example", NULL};
    struct buf out;
    buf_init(&out, 1 << 22);
    assert_int_equal(
        tlsrpt_report_json(s, "2016-04-01", "company-y.example", &info, 0, 0, false, &out), 0);
    json_error_t e;
    json_t *j = json_loadb(out.data, out.len, 0, &e);
    json_t *p = json_array_get(json_object_get(j, "policies"), 0);
    assert_int_equal(json_array_size(json_object_get(p, "failure-details")), TLSRPT_MAX_DETAILS);
    json_decref(j);
    buf_free(&out);
    assert_int_equal(tlsrpt_store_prune(s, "2100-01-01"), 1);
    tlsrpt_store_close(s);
}

static void test_store_version(void **state)
{
    (void)state;
    struct tlsrpt_store *s;
    char why[256];
    /* Read-only open of a store that does not exist fails cleanly. */
    assert_int_not_equal(tlsrpt_store_open(g_path, true, &s, why, sizeof(why)), 0);
    s = open_rw();
    tlsrpt_store_close(s);
    tlsrpt_store_close(NULL);
}

/* ---- file name, gzip, mail ---------------------------------------------------------- */

static void test_filename(void **state)
{
    (void)state;
    char f[512];
    /* RFC 8460 5.1: submitter!policy-domain!begin!end[!unique-id].json.gz */
    assert_int_equal(tlsrpt_report_filename("mail.sender.example.com", "example.com", 1013662812,
                                            1013749130, NULL, f, sizeof(f)),
                     0);
    assert_string_equal(f, "mail.sender.example.com!example.com!1013662812!1013749130.json.gz");
    assert_int_equal(tlsrpt_report_filename("s.example", "d.example", 1, 2, "1", f, sizeof(f)), 0);
    assert_string_equal(f, "s.example!d.example!1!2!1.json.gz");
    assert_int_equal(tlsrpt_report_filename("s.example", "d.example", 1, 2, "a b", f, sizeof(f)),
                     ERR_INVAL);
    assert_int_equal(tlsrpt_report_filename("s.example", "d.ex!ample", 1, 2, NULL, f, sizeof(f)),
                     ERR_INVAL);
    assert_int_equal(tlsrpt_report_filename("s\"x", "d.example", 1, 2, NULL, f, sizeof(f)),
                     ERR_INVAL);
    assert_int_equal(tlsrpt_report_filename("s.example", "d.example", 2, 1, NULL, f, sizeof(f)),
                     ERR_INVAL);
    assert_int_equal(tlsrpt_report_filename("s.example", "d.example", 1, 2, NULL, f, 10),
                     ERR_TOOBIG);
}

static void gunzip(const struct buf *gz, struct buf *out)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
    assert_int_equal(buf_reserve(out, 1 << 20), 0);
    z.next_in = (Bytef *)gz->data;
    z.avail_in = (uInt)gz->len;
    z.next_out = (Bytef *)out->data;
    z.avail_out = (uInt)out->cap;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    out->len = z.total_out;
    inflateEnd(&z);
}

static void test_gzip(void **state)
{
    (void)state;
    const char *text = "{\"organization-name\":\"Company-X\",\"policies\":[]}";
    struct buf gz, back;
    buf_init(&gz, 1 << 20);
    buf_init(&back, 1 << 21);
    assert_int_equal(tlsrpt_gzip(text, strlen(text), &gz), 0);
    /* RFC 1952: magic 1f 8b, method 8 (deflate). */
    assert_true(gz.len > 18);
    assert_int_equal((unsigned char)gz.data[0], 0x1f);
    assert_int_equal((unsigned char)gz.data[1], 0x8b);
    assert_int_equal((unsigned char)gz.data[2], 8);
    gunzip(&gz, &back);
    assert_int_equal(back.len, strlen(text));
    assert_memory_equal(back.data, text, back.len);
    buf_free(&gz);
    buf_free(&back);
}

static int b64val(char c)
{
    const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = strchr(tab, c);
    return p && c ? (int)(p - tab) : -1;
}

static void test_mail(void **state)
{
    (void)state;
    const char *text = "{\"report\":\"a report long enough to make more than one base64 line of "
                       "output after compression? perhaps not, so add some entropy: "
                       "0a8f7d6c5b4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7\"}";
    struct buf gz;
    buf_init(&gz, 1 << 20);
    assert_int_equal(tlsrpt_gzip(text, strlen(text), &gz), 0);
    char fname[256];
    assert_int_equal(tlsrpt_report_filename("company-x.example", "company-y.example", 1459468800,
                                            1459555199, NULL, fname, sizeof(fname)),
                     0);
    struct tlsrpt_mail m = {
        .from = "noreply-tlsrpt@company-x.example",
        .to = "tlsrpt@company-y.example",
        .policy_domain = "company-y.example",
        .submitter = "company-x.example",
        .report_id = "20160401.0.company-y.example@company-x.example",
        .filename = fname,
        .gz = gz.data,
        .gz_len = gz.len,
        .date = 1459555200 + 3600,
        .begin = 1459468800,
        .end = 1459555199,
    };
    struct buf msg;
    buf_init(&msg, 1 << 20);
    assert_int_equal(tlsrpt_mail_build(&m, &msg), 0);
    const char *s = msg.data;
    /* Headers, RFC 8460 5.3 and RFC 8689. */
    assert_non_null(strstr(s, "From: noreply-tlsrpt@company-x.example\r\n"));
    assert_non_null(strstr(s, "To: tlsrpt@company-y.example\r\n"));
    assert_non_null(strstr(s, "Subject: Report Domain: company-y.example\r\n"
                              " Submitter: company-x.example\r\n"
                              " Report-ID: <20160401.0.company-y.example@company-x.example>\r\n"));
    assert_non_null(strstr(s, "TLS-Report-Domain: company-y.example\r\n"));
    assert_non_null(strstr(s, "TLS-Report-Submitter: company-x.example\r\n"));
    assert_non_null(strstr(s, "TLS-Required: No\r\n"));
    assert_non_null(strstr(s, "Message-ID: <20160401.0.company-y.example@company-x.example>\r\n"));
    assert_non_null(strstr(s, "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n"));
    assert_non_null(strstr(s, "Content-Type: text/plain; charset=\"us-ascii\"\r\n"));
    assert_non_null(strstr(s, "Content-Type: application/tlsrpt+gzip\r\n"));
    assert_non_null(strstr(s, "filename=\"company-x.example!company-y.example!1459468800!"
                              "1459555199.json.gz\"\r\n"));
    /* Every line ends in CRLF, none is over 78 characters, no bare CR/LF. */
    size_t col = 0;
    for (size_t i = 0; i < msg.len; i++) {
        if (s[i] == '\r') {
            assert_true(i + 1 < msg.len && s[i + 1] == '\n');
            i++;
            col = 0;
            continue;
        }
        assert_true(s[i] != '\n');
        col++;
        assert_true(col <= 78);
    }
    /* The attachment decodes back to the gzip bytes. */
    const char *b = strstr(s, "filename=");
    b = strstr(b, "\r\n\r\n") + 4;
    const char *end = strstr(b, "\r\n--");
    assert_non_null(end);
    struct buf dec;
    buf_init(&dec, 1 << 20);
    uint32_t acc = 0;
    int bits = 0;
    for (const char *p = b; p < end; p++) {
        if (*p == '\r' || *p == '\n' || *p == '=')
            continue;
        int v = b64val(*p);
        assert_true(v >= 0);
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            char c = (char)((acc >> bits) & 0xff);
            buf_append(&dec, &c, 1);
        }
    }
    assert_int_equal(dec.len, gz.len);
    assert_memory_equal(dec.data, gz.data, gz.len);
    /* The closing boundary ends the message. */
    assert_non_null(
        strstr(s, "\r\n--=_tlsrpt_20160401.0.company-y.example.company-x.example--\r\n"));
    /* RFC 2046 5.1.1: no '@' in a boundary. */
    assert_non_null(
        strstr(s, "\tboundary=\"=_tlsrpt_20160401.0.company-y.example.company-x.example\"\r\n"));
    /* Header injection is refused. */
    m.to = "a@b.example\r\nBcc: x@y.example";
    buf_reset(&msg);
    assert_int_equal(tlsrpt_mail_build(&m, &msg), ERR_INVAL);
    buf_free(&dec);
    buf_free(&msg);
    buf_free(&gz);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_table),
        cmocka_unit_test(test_record_ignored_count),
        cmocka_unit_test(test_record_select),
        cmocka_unit_test(test_mailto),
        cmocka_unit_test(test_result_names),
        cmocka_unit_test(test_days),
        cmocka_unit_test_setup_teardown(test_store_counts_reopen, store_setup, store_teardown),
        cmocka_unit_test_setup_teardown(test_store_idempotent, store_setup, store_teardown),
        cmocka_unit_test_setup_teardown(test_store_bounds, store_setup, store_teardown),
        cmocka_unit_test_setup_teardown(test_store_version, store_setup, store_teardown),
        cmocka_unit_test(test_filename),
        cmocka_unit_test(test_gzip),
        cmocka_unit_test(test_mail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
