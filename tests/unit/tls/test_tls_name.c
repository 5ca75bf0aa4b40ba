/*
 * test_tls_name.c - table tests for tls_name_matches(): RFC 6125 6.4 as
 * RFC 8461 4.2 uses it (SAN dNSName against the reference host name).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "tls.h"

struct name_case {
    const char *pattern;
    const char *host;
    bool match;
};

static const struct name_case cases[] = {
    /* RFC 6125 6.4.1: exact, case-insensitive */
    {"mx.example.com", "mx.example.com", true},
    {"MX.Example.COM", "mx.example.com", true},
    {"mx.example.com", "MX.EXAMPLE.COM", true},
    {"mx.example.com", "mx2.example.com", false},
    {"mx.example.com", "example.com", false},
    {"example.com", "mx.example.com", false},
    {"mx.example.com", "mx.example.com.evil", false},
    {"mx.example.co", "mx.example.com", false},
    /* trailing dot ignored on either side, but only one */
    {"mx.example.com.", "mx.example.com", true},
    {"mx.example.com", "mx.example.com.", true},
    {"mx.example.com.", "mx.example.com.", true},
    {"mx.example.com..", "mx.example.com", false},
    {"mx.example.com", "mx.example.com..", false},
    /* RFC 6125 6.4.3 / RFC 8461 4.1: wildcard is the whole leftmost label,
     * matching exactly one label */
    {"*.example.com", "mx.example.com", true},
    {"*.example.com", "MX.example.COM", true},
    {"*.EXAMPLE.com", "a.example.com.", true},
    {"*.example.com", "example.com", false},
    {"*.example.com", "a.b.example.com", false},
    {"*.example.com", ".example.com", false},
    {"*.example.com", "mx.example.org", false},
    {"*.example.com", "mxexample.com", false},
    {"*.mail.example.com", "mx.mail.example.com", true},
    {"*.mail.example.com", "mx.example.com", false},
    /* not wildcards: match nothing */
    {"f*.example.com", "foo.example.com", false},
    {"f*.example.com", "f*.example.com", false},
    {"*f.example.com", "ff.example.com", false},
    {"a.*.example.com", "a.b.example.com", false},
    {"*", "example", false},
    {"*.", "example.", false},
    {"**.example.com", "a.example.com", false},
    {"*.*.example.com", "a.b.example.com", false},
    {"mx.*", "mx.example", false},
    /* too broad: fewer than two labels after the wildcard */
    {"*.com", "example.com", false},
    {"*.com.", "example.com", false},
    /* a host never contains a wildcard */
    {"*.example.com", "*.example.com", false},
    {"mx.example.com", "*.example.com", false},
    /* malformed names match nothing */
    {"", "", false},
    {"", "mx.example.com", false},
    {"mx.example.com", "", false},
    {".", ".", false},
    {"mx..example.com", "mx..example.com", false},
    {".mx.example.com", ".mx.example.com", false},
    {"mx.example.com ", "mx.example.com", false},
    {"mx example.com", "mx example.com", false},
    {"m\xc3\xa9.example.com", "m\xc3\xa9.example.com", false},
    /* A-labels are plain LDH labels */
    {"xn--mnchen-3ya.example", "XN--MNCHEN-3YA.example", true},
    {"*.xn--mnchen-3ya.example", "mx.xn--mnchen-3ya.example", true},
    /* underscore and digits, single-label */
    {"mx_1.example.com", "MX_1.example.com", true},
    {"localhost", "localhost", true},
};

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct name_case *t = &cases[i];
        bool got = tls_name_matches(t->pattern, t->host);
        if (got != t->match)
            fail_msg("case %zu: tls_name_matches(\"%s\", \"%s\") = %d, want %d", i, t->pattern,
                     t->host, got, t->match);
    }
}

static void test_null(void **state)
{
    (void)state;
    assert_false(tls_name_matches(NULL, "mx.example.com"));
    assert_false(tls_name_matches("mx.example.com", NULL));
    assert_false(tls_name_matches(NULL, NULL));
}

/* tls_name_mismatch(): the same rule as tls_name_matches() over the whole
 * table, and the reasons an operator reads (convoyctl tls verify). */
static void test_mismatch_reasons(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *why = tls_name_mismatch(cases[i].pattern, cases[i].host);
        if ((why == NULL) != cases[i].match)
            fail_msg("case %zu: %s vs %s: %s", i, cases[i].pattern, cases[i].host,
                     why ? why : "match");
    }
    static const struct {
        const char *pattern, *host, *why;
    } r[] = {
        {"*.example.com", "a.b.example.com", "one label only"},
        {"*.example.com", "example.com", "exactly one label in front"},
        {"f*.example.com", "foo.example.com", "whole leftmost label"},
        {"a.*.example.com", "a.b.example.com", "whole leftmost label"},
        {"*.com", "example.com", "top-level domain"},
        {"other.example.net", "mx.example.com", "another name"},
        {"b\xc3\xbc"
         "cher.example",
         "b\xc3\xbc"
         "cher.example",
         "the host is not a DNS name"},
        {"b\xc3\xbc"
         "cher.example",
         "xn--bcher-kva.example", "A-label"},
        {"*.xn--bcher-kva.example", "mx.xn--bcher-kva.example", NULL},
        {"XN--BCHER-KVA.example", "xn--bcher-kva.example", NULL},
    };
    for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
        const char *why = tls_name_mismatch(r[i].pattern, r[i].host);
        if (r[i].why == NULL) {
            assert_null(why);
        } else if (why == NULL || strstr(why, r[i].why) == NULL) {
            fail_msg("%s vs %s: got \"%s\", want \"%s\"", r[i].pattern, r[i].host,
                     why ? why : "match", r[i].why);
        }
    }
}

static void test_failure_names(void **state)
{
    (void)state;
    assert_null(tls_failure_result_type(TLS_FAIL_NONE));
    assert_string_equal(tls_failure_result_type(TLS_FAIL_STARTTLS_NOT_SUPPORTED),
                        "starttls-not-supported");
    assert_string_equal(tls_failure_result_type(TLS_FAIL_HOST_MISMATCH),
                        "certificate-host-mismatch");
    assert_string_equal(tls_failure_result_type(TLS_FAIL_CERT_EXPIRED), "certificate-expired");
    assert_string_equal(tls_failure_result_type(TLS_FAIL_CERT_NOT_TRUSTED),
                        "certificate-not-trusted");
    assert_string_equal(tls_failure_result_type(TLS_FAIL_VALIDATION), "validation-failure");
    assert_string_equal(tls_failure_result_type(TLS_FAIL_HANDSHAKE), "validation-failure");
    for (int f = TLS_FAIL_NONE; f <= TLS_FAIL_HANDSHAKE; f++)
        assert_non_null(tls_failure_str((enum tls_failure)f));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_null),
        cmocka_unit_test(test_mismatch_reasons),
        cmocka_unit_test(test_failure_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
