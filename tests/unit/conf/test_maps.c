/*
 * test_maps.c - the routing tables: transport_maps, smtp_sasl_password_maps,
 * smtpd_sender_login_maps and destination_limits. Lookups (exact, parent
 * domains, "*"), values, and errors naming FILE:LINE.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "conf.h"

static char dir[] = "/tmp/convoy-maps-XXXXXX";
static char path[300];
static struct buf errors;

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof(path), "%s/map", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    rmdir(dir);
    return 0;
}

static void write_map(const char *text, mode_t mode)
{
    unlink(path);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
    buf_free(&errors);
    buf_init(&errors, 1 << 16);
}

static const char *errs(void)
{
    return errors.data ? (const char *)errors.data : "";
}

static void test_transport_lookup(void **state)
{
    (void)state;
    write_map("# routing\n"
              "example.net    smtp:[mx.example.net]:2525\n"
              ".example.net   smtp:relay.example.net\n"
              "example.org    relay:[192.0.2.1]\n"
              "Bad.Test       error:5.1.1 no such users here\n"
              "slow.test      defer:4.3.0 maintenance\n"
              "plain.test     error:gone\n"
              "own.test       smtp:\n"
              "*              smtp:[smarthost.test]:587\n",
              0644);
    struct conf_map *m = conf_transport_load(path, &errors);
    assert_non_null(m);
    assert_int_equal(conf_map_size(m), 8);

    static const struct {
        const char *domain;
        const char *matched;
        enum conf_transport_kind kind;
        const char *host;
        unsigned port;
        bool bracketed;
        const char *status;
        const char *text;
    } rows[] = {
        {"example.net", "example.net", CONF_TRANSPORT_SMTP, "mx.example.net", 2525, true, "", NULL},
        {"EXAMPLE.NET.", "example.net", CONF_TRANSPORT_SMTP, "mx.example.net", 2525, true, "",
         NULL},
        {"a.example.net", ".example.net", CONF_TRANSPORT_SMTP, "relay.example.net", 0, false, "",
         NULL},
        {"a.b.example.net", ".example.net", CONF_TRANSPORT_SMTP, "relay.example.net", 0, false, "",
         NULL},
        {"example.org", "example.org", CONF_TRANSPORT_SMTP, "192.0.2.1", 0, true, "", NULL},
        {"bad.test", "bad.test", CONF_TRANSPORT_ERROR, "", 0, false, "5.1.1", "no such users here"},
        {"slow.test", "slow.test", CONF_TRANSPORT_DEFER, "", 0, false, "4.3.0", "maintenance"},
        {"plain.test", "plain.test", CONF_TRANSPORT_ERROR, "", 0, false, "5.0.0", "gone"},
        {"own.test", "own.test", CONF_TRANSPORT_SMTP, "", 0, false, "", NULL},
        {"sub.own.test", "*", CONF_TRANSPORT_SMTP, "smarthost.test", 587, true, "", NULL},
        {"other.example", "*", CONF_TRANSPORT_SMTP, "smarthost.test", 587, true, "", NULL},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *matched = NULL;
        const struct conf_transport *t = conf_transport_find(m, rows[i].domain, &matched);
        assert_non_null(t);
        assert_string_equal(matched, rows[i].matched);
        assert_int_equal(t->kind, rows[i].kind);
        assert_string_equal(t->nexthop.host, rows[i].host);
        assert_int_equal(t->nexthop.port, rows[i].port);
        assert_int_equal(t->nexthop.bracketed, rows[i].bracketed);
        assert_string_equal(t->status, rows[i].status);
        if (rows[i].text)
            assert_string_equal(t->text, rows[i].text);
    }
    conf_map_free(m);

    /* Without "*", an unlisted domain has no entry. */
    write_map("example.net smtp:[mx.example.net]\n", 0644);
    m = conf_transport_load(path, &errors);
    assert_non_null(m);
    assert_null(conf_transport_find(m, "example.com", NULL));
    assert_null(conf_transport_find(m, "xexample.net", NULL));
    /* ".example.net" is not a key here: a subdomain does not match the
     * domain's exact entry. */
    assert_null(conf_transport_find(m, "a.example.net", NULL));
    conf_map_free(m);
}

static void test_transport_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *error;
    } rows[] = {
        {"example.net\n", ":1: \"example.net\" has no transport"},
        {"example.net mx.example.net\n", ":1: \"mx.example.net\": expected transport:nexthop"},
        {"\nexample.net lmtp:[x]\n", ":2: unknown transport \"lmtp\""},
        {"bad..name smtp:\n", ":1: \"bad..name\" is not a domain name"},
        {"user@example.net smtp:\n", "only domains are supported as keys"},
        {"b\xc3\xbc\x63her.test smtp:\n", "A-label form"},
        {"x.test error:4.1.1 nope\n", ":1: status 4.1.1 must be of class 5"},
        {"x.test defer:5.1.1 nope\n", ":1: status 5.1.1 must be of class 4"},
        {"x.test error:5.1 nope\n", "is not an enhanced status code"},
        {"x.test smtp:[mx]:99999\n", "is not a next hop"},
        {"a.test smtp:\n# c\nA.TEST smtp:[x]\n", ":3: \"a.test\" is already given on line 1"},
        {"  smtp:[x]\n", ":1: continuation line with nothing to continue"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        write_map(rows[i].text, 0644);
        struct conf_map *m = conf_transport_load(path, &errors);
        if (m || !strstr(errs(), rows[i].error))
            fail_msg("row %zu: %s: got \"%s\"", i, rows[i].text, errs());
        assert_non_null(strstr(errs(), path));
    }
    /* Every bad line is reported, not only the first. */
    write_map("a.test nope\nb.test smtp:\nc.test error:4.0.0 x\n", 0644);
    assert_null(conf_transport_load(path, &errors));
    assert_non_null(strstr(errs(), ":1:"));
    assert_null(strstr(errs(), ":2:"));
    assert_non_null(strstr(errs(), ":3:"));
    /* A missing file says so. */
    unlink(path);
    buf_reset(&errors);
    assert_null(conf_transport_load(path, &errors));
    assert_non_null(strstr(errs(), "cannot open"));
}

static void test_continuation_and_comments(void **state)
{
    (void)state;
    write_map("# a comment\n"
              "slow.test defer:4.3.0 down for\n"
              "   maintenance until monday\n"
              "\n"
              "   # indented comment\n"
              "x.test error:5.7.1 no\r\n",
              0644);
    struct conf_map *m = conf_transport_load(path, &errors);
    assert_non_null(m);
    const struct conf_transport *t = conf_transport_find(m, "slow.test", NULL);
    assert_non_null(t);
    assert_string_equal(t->text, "down for maintenance until monday");
    t = conf_transport_find(m, "x.test", NULL);
    assert_non_null(t);
    assert_string_equal(t->text, "no");
    conf_map_free(m);
}

static void test_sasl(void **state)
{
    (void)state;
    write_map("[smtp.example.net]:587  alice:s3cr:et\n"
              "relay.example.org       bob:pw\n"
              "[other.example]         carol:pw2\n",
              0600);
    struct conf_map *m = conf_sasl_passwords_load(path, &errors);
    assert_non_null(m);
    const char *u, *p;
    assert_int_equal(conf_sasl_find(m, "smtp.example.net", 587, true, &u, &p), 0);
    assert_string_equal(u, "alice");
    assert_string_equal(p, "s3cr:et");
    /* Another port of the same host is not the same key. */
    assert_int_equal(conf_sasl_find(m, "smtp.example.net", 25, true, &u, &p), ERR_NOTFOUND);
    assert_int_equal(conf_sasl_find(m, "Relay.Example.Org", 25, false, &u, &p), 0);
    assert_string_equal(u, "bob");
    /* [host] and host stand for each other when nothing closer matches. */
    assert_int_equal(conf_sasl_find(m, "relay.example.org", 587, true, &u, &p), 0);
    assert_int_equal(conf_sasl_find(m, "other.example", 0, false, &u, &p), 0);
    assert_string_equal(u, "carol");
    assert_int_equal(conf_sasl_find(m, "nope.example", 25, false, &u, &p), ERR_NOTFOUND);
    conf_map_free(m);

    /* World-readable: refused, and the password is not in the error. */
    write_map("[smtp.example.net]:587 alice:topsecret\n", 0644);
    assert_null(conf_sasl_passwords_load(path, &errors));
    assert_non_null(strstr(errs(), "readable or writable by every user"));
    assert_null(strstr(errs(), "topsecret"));
    /* A value that is not user:password; still no password in the text. */
    write_map("[smtp.example.net]:587 topsecret\n", 0600);
    assert_null(conf_sasl_passwords_load(path, &errors));
    assert_non_null(strstr(errs(), ":1: the value for"));
    assert_null(strstr(errs(), "topsecret"));
}

static void test_sender_logins(void **state)
{
    (void)state;
    write_map("alice@example.net    alice\n"
              "@example.org         bob, carol\n"
              "shared@example.org   alice,dave\n",
              0644);
    struct conf_map *m = conf_sender_logins_load(path, &errors);
    assert_non_null(m);
    assert_true(conf_sender_login_ok(m, "alice@example.net", "alice"));
    assert_true(conf_sender_login_ok(m, "Alice@Example.NET", "alice"));
    assert_false(conf_sender_login_ok(m, "alice@example.net", "bob"));
    assert_true(conf_sender_login_ok(m, "anyone@example.org", "carol"));
    assert_false(conf_sender_login_ok(m, "anyone@example.org", "alice"));
    /* The exact address wins over @domain. */
    assert_true(conf_sender_login_ok(m, "shared@example.org", "dave"));
    assert_false(conf_sender_login_ok(m, "shared@example.org", "bob"));
    /* Unmapped sender: nobody's. Null sender: allowed. No table: allowed. */
    assert_false(conf_sender_login_ok(m, "x@elsewhere.test", "alice"));
    assert_true(conf_sender_login_ok(m, "", "alice"));
    assert_true(conf_sender_login_ok(NULL, "x@elsewhere.test", "alice"));
    conf_map_free(m);

    write_map("example.net alice\n", 0644);
    assert_null(conf_sender_logins_load(path, &errors));
    assert_non_null(strstr(errs(), ":1: \"example.net\": a key is an address"));
    write_map("@example.net\n", 0644);
    assert_null(conf_sender_logins_load(path, &errors));
    assert_non_null(strstr(errs(), "has no login names"));
}

static void test_dest_limits(void **state)
{
    (void)state;
    write_map("gmail.com      concurrency=20 rate=100/s recipients=100\n"
              ".outlook.com   rate=30/m\n"
              "yahoo.com      concurrency=5\n",
              0644);
    struct conf_map *m = conf_dest_limits_load(path, &errors);
    assert_non_null(m);
    const struct conf_dest_limit *l = conf_dest_limit_find(m, "gmail.com");
    assert_non_null(l);
    assert_int_equal(l->concurrency, 20);
    assert_true(l->rate_per_s > 99.99 && l->rate_per_s < 100.01);
    assert_int_equal(l->recipients, 100);
    l = conf_dest_limit_find(m, "eur.outlook.com");
    assert_non_null(l);
    assert_int_equal(l->concurrency, 0);
    assert_true(l->rate_per_s > 0.49 && l->rate_per_s < 0.51);
    assert_null(conf_dest_limit_find(m, "outlook.com"));
    assert_null(conf_dest_limit_find(m, "example.com"));
    conf_map_free(m);

    static const struct {
        const char *text;
        const char *error;
    } rows[] = {
        {"x.test\n", "sets no limit"},
        {"x.test speed=3\n", "unknown limit \"speed\""},
        {"x.test concurrency=0\n", "concurrency=0: a number from 1 to 1000"},
        {"x.test rate=10\n", "rate=10: expected N/s"},
        {"x.test rate=10/d\n", "rate=10/d: expected N/s"},
        {"x.test fast\n", "\"fast\": expected name=value"},
        {"* concurrency=1\n", "\"*\" is not a domain name"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        write_map(rows[i].text, 0644);
        if (conf_dest_limits_load(path, &errors) || !strstr(errs(), rows[i].error))
            fail_msg("row %zu: %s: got \"%s\"", i, rows[i].text, errs());
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transport_lookup),
        cmocka_unit_test(test_transport_errors),
        cmocka_unit_test(test_continuation_and_comments),
        cmocka_unit_test(test_sasl),
        cmocka_unit_test(test_sender_logins),
        cmocka_unit_test(test_dest_limits),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    buf_free(&errors);
    return rc;
}
