/*
 * test_policy.c - the pure parts of MTA-STS and the cache: the TXT record
 * (RFC 8461 3.1), the policy file (3.2), MX matching (4.1), the HTTP
 * response checks (3.3), the TLS requirement (5), the override file, and
 * the cache rules (expiry, failed fetch keeps the old policy, backoff) on a
 * temporary LMDB file with a fake clock.
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
#include <lmdb.h>

#include "policy.h"

/* ---- TXT ---------------------------------------------------------------- */

struct txt_case {
    const char *rec;
    const char *id; /* NULL: invalid */
};

static const struct txt_case txt_cases[] = {
    /* RFC 8461 3.1 example */
    {"v=STSv1; id=20160831085700Z;", "20160831085700Z"},
    {"v=STSv1; id=20160831085700Z", "20160831085700Z"},
    {"v=STSv1;id=abc;", "abc"},
    {"v=STSv1;id=abc", "abc"},
    {"v=STSv1 ; id=abc", NULL}, /* not "v=STSv1;" exactly: discarded (3.1) */
    {"v=STSv1;\tid=abc ;", "abc"},
    {"v=STSv1; id=abc; ", "abc"},
    {"v=STSv1; id=abc; ext=value", "abc"},
    {"v=STSv1; ext=val:ue; id=abc", "abc"},
    {"v=STSv1; a_b-c.d=x; id=1", "1"},
    {"v=STSv1; id=first; id=second", "first"},
    {"v=STSv1; id=12345678901234567890123456789012", "12345678901234567890123456789012"},
    {"v=STSv1; id=123456789012345678901234567890123", NULL}, /* 33 */
    {"v=STSv1;", NULL},
    {"v=STSv1; id=", NULL},
    {"v=STSv1; id=ab-c", NULL},
    /* Trailing spaces or tabs after the last field: accepted (issue 13). */
    {"v=STSv1; id=abc ", "abc"},
    {"v=STSv1; id=20160831085700Z   ", "20160831085700Z"},
    {"v=STSv1; id=abc\t \t", "abc"},
    {"v=STSv1; id=abc; ext=value  ", "abc"},
    {"v=STSv1; ext=value \t", NULL}, /* still needs an id */
    {"v=STSv1; id=abc x", NULL},     /* junk after the space is not */
    {"v=STSv1; id=first; id=second ", "first"},
    {"v=STSv1 id=abc", NULL},  /* no ';' */
    {"v=STSv1; ID=abc", NULL}, /* %s"id=": ID is an extension; no id */
    {"v=STSv1; ext=; id=abc", NULL},
    {"v=STSv1; ext=a=b; id=abc", NULL},
    {"v=STSv1; =x; id=abc", NULL},
    {"v=STSv1;; id=abc", NULL},
    {"v=STSv1; id=abc;;", NULL},
    {"V=STSv1; id=abc", NULL},
    {"v=STSv1; id=ab\xc3\xa9", NULL},
};

static void test_txt_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(txt_cases) / sizeof(txt_cases[0]); i++) {
        const struct txt_case *c = &txt_cases[i];
        char id[POLICY_ID_MAX + 1];
        char why[200] = "";
        int rc = policy_txt_parse(c->rec, strlen(c->rec), id, why, sizeof(why));
        if (c->id) {
            if (rc != 0)
                fail_msg("case %zu \"%s\": %s", i, c->rec, why);
            assert_string_equal(id, c->id);
        } else {
            if (rc == 0)
                fail_msg("case %zu \"%s\" accepted with id %s", i, c->rec, id);
            assert_true(why[0] != '\0');
        }
    }
}

static void test_txt_select(void **state)
{
    (void)state;
    char id[POLICY_ID_MAX + 1];
    char why[200];
    {
        const char *r[] = {"v=spf1 -all", "v=STSv1; id=abc"};
        size_t l[] = {strlen(r[0]), strlen(r[1])};
        assert_int_equal(policy_txt_select(r, l, 2, id, why, sizeof(why)), 0);
        assert_string_equal(id, "abc");
    }
    {
        /* Two v=STSv1 records: no policy; never glued together. */
        const char *r[] = {"v=STSv1; id=a", "v=STSv1; id=b"};
        size_t l[] = {strlen(r[0]), strlen(r[1])};
        assert_int_equal(policy_txt_select(r, l, 2, id, why, sizeof(why)), ERR_INVAL);
        assert_non_null(strstr(why, "2 v=STSv1"));
    }
    {
        /* Records not starting with v=STSv1 are discarded before counting. */
        const char *r[] = {"v=STSv10; id=a", "v=STSv1", "id=a; v=STSv1", "v=STSv1; id=good"};
        size_t l[] = {strlen(r[0]), strlen(r[1]), strlen(r[2]), strlen(r[3])};
        assert_int_equal(policy_txt_select(r, l, 4, id, why, sizeof(why)), 0);
        assert_string_equal(id, "good");
    }
    {
        /* RFC 8461 3.1: only records beginning with exactly "v=STSv1;" count,
         * so decoys cannot make the count two and take the policy away. */
        const char *r[] = {"v=STSv1 is not a policy", "V=STSv1; id=upper", "v=STSv1 ; id=sp",
                           "v=STSv1", "v=STSv1; id=good"};
        size_t l[] = {strlen(r[0]), strlen(r[1]), strlen(r[2]), strlen(r[3]), strlen(r[4])};
        assert_int_equal(policy_txt_select(r, l, 5, id, why, sizeof(why)), 0);
        assert_string_equal(id, "good");
        /* Without the valid one, none of them is a record at all. */
        assert_int_equal(policy_txt_select(r, l, 4, id, why, sizeof(why)), ERR_NOTFOUND);
        assert_false(policy_txt_is_sts("V=STSv1; id=a", 13));
        assert_false(policy_txt_is_sts("v=STSv1 ;id=a", 13));
        assert_true(policy_txt_is_sts("v=STSv1;id=a", 12));
    }
    {
        const char *r[] = {"v=spf1 -all"};
        size_t l[] = {strlen(r[0])};
        assert_int_equal(policy_txt_select(r, l, 1, id, why, sizeof(why)), ERR_NOTFOUND);
        assert_int_equal(policy_txt_select(NULL, NULL, 0, id, why, sizeof(why)), ERR_NOTFOUND);
    }
    {
        /* One record that does not parse: no policy. */
        const char *r[] = {"v=STSv1; id=toolong1234567890123456789012345678"};
        size_t l[] = {strlen(r[0])};
        assert_int_equal(policy_txt_select(r, l, 1, id, why, sizeof(why)), ERR_INVAL);
    }
    {
        /* A NUL inside the record is not part of any production. */
        static const char rec[] = "v=STSv1; id=a\0b";
        const char *r[] = {rec};
        size_t l[] = {sizeof(rec) - 1};
        assert_int_equal(policy_txt_select(r, l, 1, id, why, sizeof(why)), ERR_INVAL);
    }
}

/* ---- policy file ------------------------------------------------------------ */

struct pol_case {
    const char *text;
    int ok;
    enum policy_mode mode;
    uint32_t max_age;
    size_t n_mx;
    const char *err; /* substring of the reason when invalid */
};

#define RFC_EXAMPLE                                                                                \
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"             \
    "mx: backupmx.example.com\r\nmax_age: 604800\r\n"

static const struct pol_case pol_cases[] = {
    /* RFC 8461 3.2 example, CRLF */
    {RFC_EXAMPLE, 1, POLICY_MODE_ENFORCE, 604800, 3, NULL},
    /* LF, no final newline */
    {"version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 86400", 1, POLICY_MODE_TESTING,
     86400, 1, NULL},
    /* order does not matter; version need not be first */
    {"mode: enforce\nmx: a.example\nmax_age: 5\nversion: STSv1\n", 1, POLICY_MODE_ENFORCE, 5, 1,
     NULL},
    /* none needs no mx */
    {"version: STSv1\nmode: none\nmax_age: 86400\n", 1, POLICY_MODE_NONE, 86400, 0, NULL},
    /* no space after ':' and tabs, trailing spaces */
    {"version:STSv1\nmode:\tenforce  \nmx:  mx.example.com\t\nmax_age: 0\n", 1, POLICY_MODE_ENFORCE,
     0, 1, NULL},
    /* unknown keys ignored (with UTF-8 and inner spaces in the value) */
    {"version: STSv1\nmode: enforce\nfoo_bar: some value \xc3\xa9\nmx: m.example\nmax_age: 1\n", 1,
     POLICY_MODE_ENFORCE, 1, 1, NULL},
    /* duplicates: the first wins (mode, max_age), even if later ones are odd */
    {"version: STSv1\nmode: testing\nmode: enforce\nmx: m.example\nmax_age: 10\nmax_age: 20\n", 1,
     POLICY_MODE_TESTING, 10, 1, NULL},
    {"version: STSv1\nmode: testing\nmode: bogus\nmx: m.example\nmax_age: 10\n", 1,
     POLICY_MODE_TESTING, 10, 1, NULL},
    /* mx accumulates; a trailing dot is dropped */
    {"version: STSv1\nmode: enforce\nmx: a.example.\nmx: *.b.example\nmax_age: 31557600\n", 1,
     POLICY_MODE_ENFORCE, 31557600, 2, NULL},
    {"version: STSv1\r\nmode: enforce\r\nmx: m.example\r\nmax_age: 31557601\r\n", 0, 0, 0, 0,
     "exceeds"},
    {"version: STSv1\nmode: enforce\nmx: m.example\nmax_age: 12345678901\n", 0, 0, 0, 0,
     "10 digits"},
    {"version: STSv1\nmode: enforce\nmx: m.example\nmax_age: -1\n", 0, 0, 0, 0, "number"},
    {"version: STSv1\nmode: enforce\nmx: m.example\nmax_age: 1d\n", 0, 0, 0, 0, "number"},
    {"version: STSv1\nmode: enforce\nmx: m.example\nmax_age:\n", 0, 0, 0, 0, "digits"},
    {"mode: enforce\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "version missing"},
    {"version: STSv2\nmode: enforce\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "version"},
    {"version: stsv1\nmode: enforce\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "version"},
    {"version: STSv1\nmode: Enforce\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "invalid mode"},
    {"version: STSv1\nmode: report\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "invalid mode"},
    {"version: STSv1\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "mode missing"},
    {"version: STSv1\nmode: enforce\nmax_age: 1\n", 0, 0, 0, 0, "mx missing"},
    {"version: STSv1\nmode: testing\nmax_age: 1\n", 0, 0, 0, 0, "mx missing"},
    {"version: STSv1\nmode: enforce\nmx: m.example\n", 0, 0, 0, 0, "max_age missing"},
    /* key case matters: "Mode" is an unknown field, so mode is missing */
    {"version: STSv1\nMode: enforce\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "mode missing"},
    /* syntax */
    {"version: STSv1\n\nmode: enforce\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "empty line"},
    {"version: STSv1\nmode: enforce\nmx: m.example\nmax_age: 1\n\n", 0, 0, 0, 0, "empty line"},
    {" version: STSv1\nmode: enforce\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "field name"},
    {"version : STSv1\nmode: enforce\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "':'"},
    {"version STSv1\nmode: enforce\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "':'"},
    {"version: STSv1\rmode: enforce\nmx: m.example\nmax_age: 1\n", 0, 0, 0, 0, "control"},
    {"version: STSv1\nmode: enforce\nmx: m.example\nmax_age: 1\nfoo:\n", 0, 0, 0, 0,
     "invalid value"},
    {"version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n", 0, 0, 0, 0, "mx pattern"},
    {"version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", 0, 0, 0, 0, "mx pattern"},
    {"version: STSv1\nmode: enforce\nmx: m.exa mple\nmax_age: 1\n", 0, 0, 0, 0, "mx pattern"},
    {"version: STSv1\nmode: enforce\nmx: mx*.example\nmax_age: 1\n", 0, 0, 0, 0, "mx pattern"},
    {"version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n", 0, 0, 0, 0, "mx pattern"},
    {"version: STSv1\nmode: enforce\nmx: \nmax_age: 1\n", 0, 0, 0, 0, "mx pattern"},
    {"", 0, 0, 0, 0, "empty"},
    {"\xef\xbb\xbfversion: STSv1\nmode: none\nmax_age: 1\n", 0, 0, 0, 0, "field name"},
};

static void test_policy_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(pol_cases) / sizeof(pol_cases[0]); i++) {
        const struct pol_case *c = &pol_cases[i];
        struct sts_policy p;
        char why[200] = "";
        int rc = policy_parse(c->text, strlen(c->text), &p, why, sizeof(why));
        if (c->ok) {
            if (rc != 0)
                fail_msg("case %zu: %s", i, why);
            assert_int_equal(p.mode, c->mode);
            assert_int_equal(p.max_age, c->max_age);
            assert_int_equal(p.n_mx, c->n_mx);
        } else {
            if (rc == 0)
                fail_msg("case %zu accepted", i);
            if (!strstr(why, c->err))
                fail_msg("case %zu: reason \"%s\" lacks \"%s\"", i, why, c->err);
            assert_int_equal(p.n_mx, 0);
            assert_null(p.mx);
        }
        policy_sts_clear(&p);
    }
}

static void test_policy_values(void **state)
{
    (void)state;
    struct sts_policy p;
    const char *t = "version: STSv1\nmode: enforce\nmx: MX1.Example.COM.\nmx: *.example.NET\n"
                    "max_age: 604800\n";
    assert_int_equal(policy_parse(t, strlen(t), &p, NULL, 0), 0);
    assert_string_equal(p.mx[0], "mx1.example.com");
    assert_string_equal(p.mx[1], "*.example.net");
    struct sts_policy q;
    assert_int_equal(policy_sts_copy(&q, &p), 0);
    policy_sts_clear(&p);
    assert_string_equal(q.mx[1], "*.example.net");
    policy_sts_clear(&q);
    /* NUL in the middle is a control character */
    static const char nul[] = "version: STSv1\nmode: none\nmax_age: 1\nx: a\0b\n";
    assert_int_equal(policy_parse(nul, sizeof(nul) - 1, &p, NULL, 0), ERR_INVAL);
    /* too many mx lines */
    struct buf b;
    buf_init(&b, 1 << 20);
    buf_append_str(&b, "version: STSv1\nmode: enforce\nmax_age: 1\n");
    for (int i = 0; i <= POLICY_MX_MAX; i++)
        buf_printf(&b, "mx: m%d.example\n", i);
    char why[200];
    assert_int_equal(policy_parse(b.data, b.len, &p, why, sizeof(why)), ERR_INVAL);
    assert_non_null(strstr(why, "more than"));
    buf_free(&b);
}

/* ---- matching ------------------------------------------------------------------ */

struct match_case {
    const char *pattern, *host;
    bool match;
};

static const struct match_case match_cases[] = {
    {"mail.example.com", "mail.example.com", true},
    {"mail.example.com", "MAIL.Example.Com", true},
    {"mail.example.com", "mail.example.com.", true},
    {"mail.example.com.", "mail.example.com", true},
    {"mail.example.com", "mail2.example.com", false},
    {"mail.example.com", "example.com", false},
    /* RFC 8461 4.1: the wildcard matches exactly one label */
    {"*.example.net", "mx.example.net", true},
    {"*.example.net", "MX.EXAMPLE.NET.", true},
    {"*.example.net", "example.net", false},
    {"*.example.net", "a.b.example.net", false},
    {"*.example.net", ".example.net", false},
    {"*.example.net", "mx.example.net.evil", false},
    {"*.example.net", "mxexample.net", false},
    {"*.example.net", "*.example.net", false},
    {"*.example.com", "example.com", false},
    {"example.com", "x.example.com", false},
    {"", "a", false},
    {"a", "", false},
};

static void test_match_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(match_cases) / sizeof(match_cases[0]); i++) {
        const struct match_case *c = &match_cases[i];
        if (policy_pattern_matches(c->pattern, c->host) != c->match)
            fail_msg("case %zu: %s vs %s", i, c->pattern, c->host);
    }
    assert_false(policy_pattern_matches(NULL, "a"));
    struct sts_policy p;
    const char *t = RFC_EXAMPLE;
    assert_int_equal(policy_parse(t, strlen(t), &p, NULL, 0), 0);
    assert_true(policy_mx_matches(&p, "mail.example.com"));
    assert_true(policy_mx_matches(&p, "x.example.net"));
    assert_true(policy_mx_matches(&p, "backupmx.example.com"));
    assert_false(policy_mx_matches(&p, "a.b.example.net"));
    assert_false(policy_mx_matches(NULL, "mail.example.com"));
    policy_sts_clear(&p);
}

static void test_normalize(void **state)
{
    (void)state;
    char out[POLICY_NAME_MAX];
    assert_int_equal(policy_domain_normalize("Example.COM.", out), 0);
    assert_string_equal(out, "example.com");
    assert_int_equal(policy_domain_normalize("b\xc3\xbc"
                                             "cher.example",
                                             out),
                     0);
    assert_string_equal(out, "xn--bcher-kva.example");
    assert_int_equal(policy_domain_normalize("", out), ERR_INVAL);
    assert_int_equal(policy_domain_normalize(".", out), ERR_INVAL);
    assert_int_equal(policy_domain_normalize("a..b", out), ERR_INVAL);
    assert_int_equal(policy_domain_normalize("a b.example", out), ERR_INVAL);
    assert_int_equal(policy_domain_normalize("a/b", out), ERR_INVAL);
}

/* ---- decisions ------------------------------------------------------------------- */

static void test_requirement(void **state)
{
    (void)state;
    struct sts_policy enf, tst, non;
    const char *e = "version: STSv1\nmode: enforce\nmx: *.example.com\nmax_age: 100\n";
    const char *t = "version: STSv1\nmode: testing\nmx: *.example.com\nmax_age: 100\n";
    const char *n = "version: STSv1\nmode: none\nmax_age: 100\n";
    assert_int_equal(policy_parse(e, strlen(e), &enf, NULL, 0), 0);
    assert_int_equal(policy_parse(t, strlen(t), &tst, NULL, 0), 0);
    assert_int_equal(policy_parse(n, strlen(n), &non, NULL, 0), 0);

    struct policy_tls_req r = policy_tls_requirement(&enf, NULL, "mx.example.com");
    assert_int_equal(r.level, POLICY_TLS_VERIFY);
    assert_true(r.deliver);
    assert_true(r.mx_matches);
    assert_int_equal(r.origin, POLICY_ORIGIN_STS);
    r = policy_tls_requirement(&enf, NULL, "mx.evil.test");
    assert_false(r.deliver);
    assert_false(r.mx_matches);
    r = policy_tls_requirement(&tst, NULL, "mx.evil.test");
    assert_true(r.deliver);
    assert_false(r.mx_matches);
    assert_true(r.report_only);
    assert_int_equal(r.level, POLICY_TLS_MAY);
    r = policy_tls_requirement(&non, NULL, "mx.evil.test");
    assert_int_equal(r.level, POLICY_TLS_MAY);
    assert_int_equal(r.origin, POLICY_ORIGIN_DEFAULT);
    assert_true(r.deliver);
    r = policy_tls_requirement(NULL, NULL, "mx.evil.test");
    assert_int_equal(r.level, POLICY_TLS_MAY);

    /* An override wins over MTA-STS. */
    struct buf err;
    buf_init(&err, 4096);
    const char *tab = "example.org none\n";
    struct policy_overrides *o = policy_overrides_load_mem("t", tab, strlen(tab), &err);
    assert_non_null(o);
    r = policy_tls_requirement(&enf, policy_override_find(o, "example.org"), "mx.evil.test");
    assert_int_equal(r.level, POLICY_TLS_NONE);
    assert_int_equal(r.origin, POLICY_ORIGIN_OVERRIDE);
    assert_true(r.deliver);
    policy_overrides_free(o);
    buf_free(&err);

    /* Filtering: enforce keeps matching hosts in order; testing keeps all. */
    const char *hosts[] = {"a.example.com", "evil.test", "b.example.com", "x.y.example.com"};
    size_t keep[4];
    bool m[4];
    assert_int_equal(policy_filter_mx(&enf, hosts, 4, keep, m), 2);
    assert_int_equal(keep[0], 0);
    assert_int_equal(keep[1], 2);
    assert_false(m[1]);
    assert_false(m[3]);
    assert_int_equal(policy_filter_mx(&tst, hosts, 4, keep, m), 4);
    assert_false(m[1]);
    assert_int_equal(policy_filter_mx(NULL, hosts, 4, keep, NULL), 4);
    assert_int_equal(policy_filter_mx(&non, hosts, 4, keep, m), 4);
    assert_true(m[1]);
    policy_sts_clear(&enf);
    policy_sts_clear(&tst);
    policy_sts_clear(&non);
}

/* ---- HTTP ------------------------------------------------------------------------- */

#define POL "version: STSv1\r\nmode: enforce\r\nmx: mx.example\r\nmax_age: 86400\r\n"

struct http_case {
    const char *resp;
    int rc;
    const char *body; /* expected body when rc == 1 */
    const char *why;  /* substring of the reason otherwise */
    enum policy_failure f;
};

static const struct http_case http_cases[] = {
    {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 63\r\n\r\n" POL, 1, POL, NULL,
     0},
    {"HTTP/1.1 200 OK\r\ncontent-type: TEXT/PLAIN; charset=utf-8\r\nContent-Length: 63\r\n\r\n" POL,
     1, POL, NULL, 0},
    {"HTTP/1.1 200 OK\r\nContent-Type: text/plain;charset=UTF-8\r\n\r\n" POL, 1, POL, NULL, 0},
    {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
     "10\r\nversion: STSv1\r\n\r\n2f\r\nmode: enforce\r\nmx: mx.example\r\nmax_age: 86400\r\n\r\n"
     "0\r\n\r\n",
     1, POL, NULL, 0},
    {"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc", 1, "abc", NULL, 0},
    {"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n", ERR_PROTO,
     NULL, "404", POLICY_FAIL_FETCH},
    {"HTTP/1.1 301 Moved\r\nLocation: https://x/\r\nContent-Length: 0\r\n\r\n", ERR_PROTO, NULL,
     "redirect", POLICY_FAIL_FETCH},
    {"HTTP/1.1 302 Found\r\nLocation: https://x/\r\nContent-Type: text/plain\r\n\r\n", ERR_PROTO,
     NULL, "redirect", POLICY_FAIL_FETCH},
    {"HTTP/1.1 204 No Content\r\n\r\n", ERR_PROTO, NULL, "204", POLICY_FAIL_FETCH},
    {"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 3\r\n\r\nabc", ERR_INVAL, NULL,
     "text/html", POLICY_FAIL_INVALID},
    {"HTTP/1.1 200 OK\r\nContent-Type: text/plainx\r\nContent-Length: 3\r\n\r\nabc", ERR_INVAL,
     NULL, "not text/plain", POLICY_FAIL_INVALID},
    {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", ERR_INVAL, NULL, "no Content-Type",
     POLICY_FAIL_INVALID},
    {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Type: text/plain\r\n\r\nabc",
     ERR_INVAL, NULL, "more than one", POLICY_FAIL_INVALID},
    {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 101\r\n\r\nabc", ERR_TOOBIG,
     NULL, "larger", POLICY_FAIL_FETCH},
    {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nabc", ERR_PROTO,
     NULL, "closed", POLICY_FAIL_FETCH},
    {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
     "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n"
     "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n0\r\n\r\n",
     ERR_TOOBIG, NULL, "larger", POLICY_FAIL_FETCH},
    {"SSH-2.0-OpenSSH\r\n", ERR_PROTO, NULL, "bad HTTP", POLICY_FAIL_FETCH},
    {"", ERR_PROTO, NULL, "closed", POLICY_FAIL_FETCH},
};

static void test_http_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(http_cases) / sizeof(http_cases[0]); i++) {
        const struct http_case *c = &http_cases[i];
        /* max 100 bytes: the policy (63) fits, 128 bytes do not. */
        for (int mode = 0; mode < 2; mode++) {
            struct policy_http *h = policy_http_new(100);
            int rc = 0;
            size_t n = strlen(c->resp);
            if (mode == 0) {
                rc = policy_http_feed(h, c->resp, n);
            } else {
                for (size_t k = 0; k < n && rc == 0; k++)
                    rc = policy_http_feed(h, c->resp + k, 1);
            }
            if (rc == 0)
                rc = policy_http_eof(h);
            if (rc != c->rc)
                fail_msg("case %zu mode %d: rc %d, want %d (%s)", i, mode, rc, c->rc,
                         policy_http_why(h));
            if (rc == 1) {
                struct view v = policy_http_body(h);
                assert_int_equal(v.len, strlen(c->body));
                assert_memory_equal(v.ptr, c->body, v.len);
            } else {
                if (!strstr(policy_http_why(h), c->why))
                    fail_msg("case %zu: \"%s\" lacks \"%s\"", i, policy_http_why(h), c->why);
                assert_int_equal(policy_http_failure(h), c->f);
            }
            policy_http_free(h);
        }
    }
    struct buf body;
    buf_init(&body, 1000);
    char why[100];
    const char *ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi";
    assert_int_equal(policy_http_parse_all(ok, strlen(ok), 10, &body, why, sizeof(why)), 1);
    assert_string_equal(body.data, "hi");
    buf_free(&body);
    assert_string_equal(policy_failure_result_type(POLICY_FAIL_WEBPKI), "sts-webpki-invalid");
    assert_null(policy_failure_result_type(POLICY_FAIL_NONE));
}

/* ---- overrides ---------------------------------------------------------------------- */

static void test_overrides(void **state)
{
    (void)state;
    struct buf err;
    buf_init(&err, 8192);
    const char *ok = "# TLS policy\n"
                     "example.com   secure match=mx1.example.com:.example.net\n"
                     "example.net   may\n"
                     "\n"
                     "example.org   encrypt\n"
                     "legacy.test   none\n"
                     ".sub.test     verify\n"
                     "cont.test     secure\n"
                     "   match=hostname  ciphers=high\n";
    struct policy_overrides *o = policy_overrides_load_mem("tls_policy", ok, strlen(ok), &err);
    if (!o)
        fail_msg("%s", err.data);
    assert_int_equal(policy_overrides_count(o), 6);
    const struct policy_override *e = policy_override_find(o, "example.com");
    assert_non_null(e);
    assert_int_equal(e->level, POLICY_TLS_VERIFY);
    assert_true(e->secure);
    assert_int_equal(e->n_match, 2);
    assert_string_equal(e->match[1], ".example.net");
    assert_int_equal(policy_override_find(o, "EXAMPLE.NET")->level, POLICY_TLS_MAY);
    assert_int_equal(policy_override_find(o, "example.org")->level, POLICY_TLS_ENCRYPT);
    assert_int_equal(policy_override_find(o, "legacy.test")->level, POLICY_TLS_NONE);
    assert_int_equal(policy_override_find(o, "a.sub.test")->level, POLICY_TLS_VERIFY);
    assert_null(policy_override_find(o, "sub.test"));
    assert_null(policy_override_find(o, "other.test"));
    e = policy_override_find(o, "cont.test");
    assert_int_equal(e->n_match, 1);
    assert_int_equal(e->line, 8);

    /* Certificate names against match rules. */
    struct tls_facts f;
    memset(&f, 0, sizeof(f));
    f.chain_ok = true;
    f.n_peer_names = f.n_peer_names_total = 1;
    str_copy(f.peer_names[0], "mx9.example.net", sizeof(f.peer_names[0]));
    e = policy_override_find(o, "example.com");
    assert_true(policy_override_cert_ok(e, "example.com", "mx1.example.com", &f));
    str_copy(f.peer_names[0], "mx1.example.com", sizeof(f.peer_names[0]));
    assert_true(policy_override_cert_ok(e, "example.com", "whatever", &f));
    str_copy(f.peer_names[0], "evil.test", sizeof(f.peer_names[0]));
    assert_false(policy_override_cert_ok(e, "example.com", "mx1.example.com", &f));
    f.chain_ok = false;
    str_copy(f.peer_names[0], "mx1.example.com", sizeof(f.peer_names[0]));
    assert_false(policy_override_cert_ok(e, "example.com", "mx1.example.com", &f));
    policy_overrides_free(o);

    /* Errors carry file:line, every one of them. */
    buf_reset(&err);
    const char *bad = "example.com secure\n"
                      "example.net sometimes\n"
                      "example.org\n"
                      "ex ample.com may\n"
                      "example.com may\n"
                      "   orphan=1\n"
                      "x.test may foo=bar\n"
                      "y.test may match=a.test\n"
                      "z.test dane\n";
    o = policy_overrides_load_mem("pol.txt", bad, strlen(bad), &err);
    assert_null(o);
    assert_non_null(strstr(err.data, "pol.txt:2: unsupported TLS level \"sometimes\""));
    assert_non_null(strstr(err.data, "pol.txt:3: missing TLS level"));
    assert_non_null(strstr(err.data, "pol.txt:4: "));
    assert_non_null(strstr(err.data, "pol.txt:5: unknown attribute \"orphan\""));
    assert_non_null(strstr(err.data, "pol.txt:7: unknown attribute \"foo\""));
    assert_non_null(strstr(err.data, "pol.txt:8: match= needs"));
    assert_non_null(strstr(err.data, "pol.txt:9: unsupported TLS level \"dane\""));
    buf_reset(&err);
    const char *dup = "a.test may\nA.test. encrypt\n";
    assert_null(policy_overrides_load_mem("d", dup, strlen(dup), &err));
    assert_non_null(strstr(err.data, "d:2: duplicate entry for a.test (first on line 1)"));
    buf_reset(&err);
    const char *orphan = "  match=x\n";
    assert_null(policy_overrides_load_mem("o", orphan, strlen(orphan), &err));
    assert_non_null(strstr(err.data, "o:1: continuation line"));

    /* The file loader. */
    char path[] = "/tmp/convoy-ovr-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *ft = "a.test may\nb.test encrypt\n";
    assert_int_equal(write(fd, ft, strlen(ft)), (ssize_t)strlen(ft));
    close(fd);
    buf_reset(&err);
    o = policy_overrides_load(path, &err);
    assert_non_null(o);
    assert_int_equal(policy_overrides_count(o), 2);
    policy_overrides_free(o);
    unlink(path);
    buf_reset(&err);
    assert_null(policy_overrides_load("/nonexistent/x", &err));
    assert_non_null(strstr(err.data, "/nonexistent/x: cannot open"));
    o = policy_overrides_load("", &err);
    assert_int_equal(policy_overrides_count(o), 0);
    policy_overrides_free(o);
    buf_free(&err);
}

/* ---- cache --------------------------------------------------------------------------- */

static char cdir[] = "/tmp/convoy-sts-XXXXXX";

static void parse_or_die(const char *t, struct sts_policy *p)
{
    char why[200];
    if (policy_parse(t, strlen(t), p, why, sizeof(why)) != 0)
        fail_msg("%s", why);
}

static void test_entry_rules(void **state)
{
    (void)state;
    struct policy_entry e;
    memset(&e, 0, sizeof(e));
    str_copy(e.domain, "example.com", sizeof(e.domain));
    int64_t t0 = 1000000;
    /* No policy: fetch. */
    assert_true(policy_entry_should_fetch(&e, "id1", false, t0, 300));
    /* A failed fetch of id1 backs off for 300 s, not id2. */
    policy_entry_fail(&e, "id1", t0, POLICY_FAIL_FETCH, "HTTP status 404");
    assert_false(e.have_policy);
    assert_false(policy_entry_should_fetch(&e, "id1", false, t0 + 299, 300));
    assert_false(policy_entry_should_fetch(&e, "id1", true, t0 + 10, 300));
    assert_true(policy_entry_should_fetch(&e, "id1", false, t0 + 300, 300));
    assert_true(policy_entry_should_fetch(&e, "id2", false, t0 + 1, 300));
    /* Success. */
    const char *t = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 1000\n";
    struct sts_policy p;
    parse_or_die(t, &p);
    assert_int_equal(policy_entry_success(&e, "id1", t, strlen(t), &p, t0 + 400), 0);
    policy_sts_clear(&p);
    assert_true(policy_entry_valid(&e, t0 + 400));
    assert_true(policy_entry_valid(&e, t0 + 1399));
    assert_false(policy_entry_valid(&e, t0 + 1400));
    assert_false(policy_entry_should_fetch(&e, "id1", false, t0 + 500, 300));
    assert_true(policy_entry_should_fetch(&e, "id1", true, t0 + 500, 300));
    assert_true(policy_entry_should_fetch(&e, "id1", false, t0 + 1400, 300)); /* expired */
    /* A new id whose fetch fails: the old policy stays, and applies. */
    assert_true(policy_entry_should_fetch(&e, "id2", false, t0 + 500, 300));
    policy_entry_fail(&e, "id2", t0 + 500, POLICY_FAIL_INVALID, "line 2: invalid mode");
    assert_true(e.have_policy);
    assert_string_equal(e.id, "id1");
    assert_true(policy_entry_valid(&e, t0 + 600));
    assert_false(policy_entry_should_fetch(&e, "id2", false, t0 + 600, 300));
    assert_true(policy_entry_should_fetch(&e, "id2", false, t0 + 800, 300));
    policy_entry_clear(&e);
}

static int count_cb(void *arg, const struct policy_entry *e)
{
    (void)e;
    (*(int *)arg)++;
    return 0;
}

/* Write a raw record with LMDB itself. */
static void raw_put(const char *path, const char *db, const char *key, const char *val)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 4);
    mdb_env_set_mapsize(env, 1024UL * 1024 * 1024);
    assert_int_equal(mdb_env_open(env, path, MDB_NOSUBDIR, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, db, MDB_CREATE, &dbi), 0);
    MDB_val k = {strlen(key), (void *)key}, v = {strlen(val), (void *)val};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void test_cache(void **state)
{
    (void)state;
    assert_non_null(mkdtemp(cdir));
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", cdir, POLICY_CACHE_FILE);
    struct policy_cache *c;
    char why[256];
    /* Read-only open of a missing file fails. */
    assert_true(policy_cache_open(path, true, &c, why, sizeof(why)) != 0);
    assert_int_equal(policy_cache_open(path, false, &c, why, sizeof(why)), 0);

    struct policy_entry e, g;
    memset(&e, 0, sizeof(e));
    str_copy(e.domain, "example.com", sizeof(e.domain));
    assert_int_equal(policy_cache_get(c, "example.com", &g), ERR_NOTFOUND);
    const char *t = "version: STSv1\r\nmode: testing\r\nmx: *.example.com\r\nmax_age: 86400\r\n";
    struct sts_policy p;
    parse_or_die(t, &p);
    assert_int_equal(policy_entry_success(&e, "abc", t, strlen(t), &p, 5000), 0);
    policy_sts_clear(&p);
    assert_int_equal(policy_cache_put(c, &e), 0);

    /* A failed fetch is stored without touching the policy. */
    policy_entry_fail(&e, "abd", 6000, POLICY_FAIL_WEBPKI, "certificate has expired");
    assert_int_equal(policy_cache_put(c, &e), 0);
    policy_entry_clear(&e);
    policy_cache_close(c);

    /* Survives a reopen, also read-only. */
    assert_int_equal(policy_cache_open(path, true, &c, why, sizeof(why)), 0);
    assert_int_equal(policy_cache_get(c, "example.com", &g), 0);
    assert_true(g.have_policy);
    assert_string_equal(g.id, "abc");
    assert_int_equal(g.policy.mode, POLICY_MODE_TESTING);
    assert_int_equal(g.policy.n_mx, 1);
    assert_string_equal(g.policy.mx[0], "*.example.com");
    assert_int_equal(g.fetched, 5000);
    assert_int_equal(g.expires, 5000 + 86400);
    assert_int_equal(g.last_attempt, 6000);
    assert_string_equal(g.attempt_id, "abd");
    assert_true(g.attempt_failed);
    assert_int_equal(g.last_failure, POLICY_FAIL_WEBPKI);
    assert_string_equal(g.last_error, "certificate has expired");
    assert_int_equal(g.text_len, strlen(t));
    assert_false(policy_entry_should_fetch(&g, "abd", false, 6100, 300));
    assert_true(policy_entry_valid(&g, 6100));
    assert_int_equal(policy_cache_put(c, &g), ERR_PERM);
    policy_entry_clear(&g);
    policy_cache_close(c);

    /* Two processes' worth of handles: list, delete. */
    assert_int_equal(policy_cache_open(path, false, &c, why, sizeof(why)), 0);
    memset(&e, 0, sizeof(e));
    str_copy(e.domain, "nopolicy.test", sizeof(e.domain));
    policy_entry_fail(&e, "x1", 7000, POLICY_FAIL_FETCH, "HTTP status 404");
    assert_int_equal(policy_cache_put(c, &e), 0);
    int n = 0;
    assert_int_equal(policy_cache_each(c, count_cb, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(policy_cache_get(c, "nopolicy.test", &g), 0);
    assert_false(g.have_policy);
    policy_entry_clear(&g);
    assert_int_equal(policy_cache_del(c, "example.com"), 0);
    assert_int_equal(policy_cache_del(c, "example.com"), ERR_NOTFOUND);
    n = 0;
    policy_cache_each(c, count_cb, &n);
    assert_int_equal(n, 1);
    policy_cache_close(c);

    /* Records written behind our back: garbage, fields that disagree with
     * the text, and a layout version we do not know. */
    raw_put(path, "domains", "bad.test", "{not json");
    raw_put(path, "domains", "liar.test",
            "{\"v\":1,\"domain\":\"liar.test\",\"have_policy\":true,\"id\":\"1\","
            "\"text\":\"version: STSv1\\nmode: testing\\nmx: a.test\\nmax_age: 9\\n\","
            "\"mode\":\"enforce\",\"mx\":[\"a.test\"],\"max_age\":9}");
    raw_put(path, "domains", "v2.test", "{\"v\":2}");
    assert_int_equal(policy_cache_open(path, true, &c, why, sizeof(why)), 0);
    assert_int_equal(policy_cache_get(c, "bad.test", &g), ERR_CORRUPT);
    assert_int_equal(policy_cache_get(c, "liar.test", &g), ERR_CORRUPT);
    assert_int_equal(policy_cache_get(c, "v2.test", &g), ERR_VERSION);
    n = 0;
    policy_cache_each(c, count_cb, &n); /* unreadable records are skipped */
    assert_int_equal(n, 1);
    policy_cache_close(c);
    raw_put(path, "meta", "version", "2");
    assert_int_equal(policy_cache_open(path, false, &c, why, sizeof(why)), ERR_VERSION);
    assert_non_null(strstr(why, "layout version 2"));

    char lock[300];
    snprintf(lock, sizeof(lock), "%s-lock", path);
    unlink(path);
    unlink(lock);
    rmdir(cdir);
}

/* The whole policy, not only its id (RFC 8461 5 recheck): mode, max_age
 * and the mx patterns as a set. */
static void test_sts_equal(void **state)
{
    (void)state;
    static const struct {
        const char *a, *b;
        bool equal;
    } rows[] = {
        {"mode: enforce\nmx: a.example\nmx: *.b.example\nmax_age: 86400\n",
         "mode: enforce\nmx: *.b.example\nmx: a.example\nmax_age: 86400\n", true},
        {"mode: enforce\nmx: a.example\nmax_age: 86400\n",
         "mode: enforce\nmx: a.example\nmx: a.example\nmax_age: 86400\n", true},
        {"mode: enforce\nmx: a.example\nmax_age: 86400\n",
         "mode: enforce\nmx: c.example\nmax_age: 86400\n", false},
        {"mode: enforce\nmx: a.example\nmax_age: 86400\n",
         "mode: enforce\nmx: a.example\nmx: c.example\nmax_age: 86400\n", false},
        {"mode: enforce\nmx: a.example\nmax_age: 86400\n",
         "mode: testing\nmx: a.example\nmax_age: 86400\n", false},
        {"mode: enforce\nmx: a.example\nmax_age: 86400\n",
         "mode: enforce\nmx: a.example\nmax_age: 604800\n", false},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char ta[256], tb[256];
        snprintf(ta, sizeof(ta), "version: STSv1\n%s", rows[i].a);
        snprintf(tb, sizeof(tb), "version: STSv1\n%s", rows[i].b);
        struct sts_policy a, b;
        assert_int_equal(policy_parse(ta, strlen(ta), &a, NULL, 0), 0);
        assert_int_equal(policy_parse(tb, strlen(tb), &b, NULL, 0), 0);
        if (policy_sts_equal(&a, &b) != rows[i].equal || policy_sts_equal(&b, &a) != rows[i].equal)
            fail_msg("row %zu: equal should be %d", i, (int)rows[i].equal);
        policy_sts_clear(&a);
        policy_sts_clear(&b);
    }
    assert_true(policy_sts_equal(NULL, NULL));
    assert_string_equal(policy_change_name(POLICY_CHANGE_CONTENT), "content");
    assert_string_equal(policy_change_name(POLICY_CHANGE_NONE), "none");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt_table),    cmocka_unit_test(test_txt_select),
        cmocka_unit_test(test_policy_table), cmocka_unit_test(test_policy_values),
        cmocka_unit_test(test_match_table),  cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_requirement),  cmocka_unit_test(test_http_table),
        cmocka_unit_test(test_overrides),    cmocka_unit_test(test_entry_rules),
        cmocka_unit_test(test_sts_equal),    cmocka_unit_test(test_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
