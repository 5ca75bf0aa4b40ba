/*
 * test_conf.c - the configuration parser: every value type, continuations,
 * comments, overrides, and errors with the right file and line.
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

#include <arpa/inet.h>
#include <netinet/in.h>

#include "conf.h"

/* The host-name syntax conf applies to myhostname and relayhost (base.h's
 * one check, with conf's flags). */
static bool conf_host_ok(const char *s)
{
    return host_name_ok(s, strlen(s), HOST_NAME_TRAILING_DOT | HOST_NAME_UNDERSCORE);
}

static char dir[] = "/tmp/convoy-conf-XXXXXX";

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof(path), "%s/convoy.conf", dir);
    unlink(path);
    rmdir(dir);
    return 0;
}

/* Write text to dir/convoy.conf and load it with the overrides. */
static struct conf *load_text(const char *text, const char *const *ov, size_t nov,
                              struct buf *errors)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/convoy.conf", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    buf_reset(errors);
    return conf_load(path, ov, nov, errors);
}

static void test_defaults(void **state)
{
    (void)state;
    struct buf errors;
    buf_init(&errors, 4096);
    struct conf *c = conf_load(NULL, NULL, 0, &errors);
    assert_non_null(c);
    assert_int_equal(c->maximal_queue_lifetime, 5 * 86400);
    assert_int_equal(c->minimal_backoff_time, 300);
    assert_int_equal(c->maximal_backoff_time, 4000);
    assert_true(c->message_size_limit == 50u * 1024 * 1024);
    assert_int_equal(c->default_destination_concurrency_limit, 20);
    assert_int_equal(c->smtpd_listen.n, 1);
    assert_string_equal(c->smtpd_listen.v[0], "127.0.0.1:2525");
    assert_string_equal(c->queue_directory, "./var");
    assert_true(strlen(c->myhostname) > 0); /* derived from the system */
    for (size_t i = 0; i < CONF_NPARAMS; i++)
        assert_false(c->is_set[i]);
    conf_unref(c);
    buf_free(&errors);
}

/* Every value type, good and bad, as one table. */
static void test_value_types(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        bool ok;
        const char *error; /* substring of the error */
    } cases[] = {
        {"maximal_queue_lifetime = 3d", true, NULL},
        {"maximal_queue_lifetime = 90", true, NULL},
        {"maximal_queue_lifetime = 2w", true, NULL},
        {"maximal_queue_lifetime = 3y", false, "expected a time"},
        {"maximal_queue_lifetime = -1", false, "expected a time"},
        {"maximal_queue_lifetime = 101d", false, "from 0 to 100d"},
        {"message_size_limit = 10240000", true, NULL},
        {"message_size_limit = 64k", true, NULL},
        {"message_size_limit = 1G", true, NULL},
        {"message_size_limit = 3G", false, "from 1k to 2G"},
        {"message_size_limit = ten", false, "expected a size"},
        {"message_size_limit = 5T", false, "expected a size"},
        {"dns_tries = 4", true, NULL},
        {"dns_tries = 0", false, "expected an integer from 1 to 10"},
        {"dns_tries = 4.5", false, "expected an integer"},
        {"syslog_facility = local3", true, NULL},
        {"syslog_facility = mial", false, "syslog facility"},
        {"mynetworks = 10.0.0.0/8, 192.168.1.0/24 [2001:db8::]/32", true, NULL},
        {"mynetworks = 10.0.0.1/8", false, "host bits zero"},
        {"mynetworks = 10.0.0.0/33", false, "bad element \"10.0.0.0/33\""},
        {"mynetworks =", true, NULL},
        {"smtpd_listen = 127.0.0.1:25 [::1]:25 *:2525", true, NULL},
        {"smtpd_listen = 127.0.0.1", false, "expected address:port"},
        {"smtpd_listen = 127.0.0.1:25/smtp [::]:587/submission *:465/submissions", true, NULL},
        {"smtpd_listen = 127.0.0.1:25/lmtp", false, "/submission or /submissions"},
        {"smtpd_listen = 127.0.0.1/submission", false, "expected address:port"},
        {"smtpd_listen = localhost:25", false, "expected address:port"},
        {"smtpd_listen = 127.0.0.1:70000", false, "expected address:port"},
        {"relayhost = [smtp.example.com]:587", true, NULL},
        {"relayhost = smtp.example.com", true, NULL},
        {"relayhost = [192.0.2.1]", true, NULL},
        {"relayhost = bad host", false, "expected host"},
        {"myhostname = mx.example.com", true, NULL},
        {"myhostname = -bad-.example.com", false, "host name"},
        {"dns_servers = 127.0.0.1:5353, [::1]:53 127.0.0.2", true, NULL},
        {"dns_servers = ns.example.com", false, "IP address"},
        {"smtp_tls_security_level = dane", true, NULL},
        {"smtp_tls_security_level = dane-only", true, NULL},
        {"smtp_tls_security_level = secure", false, "dane-only"},
        {"smtp_dns_support_level = dnssec", true, NULL},
        {"smtp_dns_support_level = disabled", true, NULL},
        {"smtp_dns_support_level = DNSSEC", false, "disabled enabled dnssec"},
        {"smtp_dns_support_level = yes", false, "disabled enabled dnssec"},
        {"dns_validating_servers = 127.0.0.1 [::1] 10.53.0.0/16", true, NULL},
        {"dns_validating_servers = resolver.example", false, "bad element"},
    };
    struct buf errors;
    buf_init(&errors, 4096);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[512];
        snprintf(text, sizeof(text), "%s\n", cases[i].line);
        struct conf *c = load_text(text, NULL, 0, &errors);
        if (cases[i].ok) {
            if (!c)
                fail_msg("case %zu \"%s\" failed: %s", i, cases[i].line, errors.data);
            conf_unref(c);
        } else {
            if (c)
                fail_msg("case %zu \"%s\" was accepted", i, cases[i].line);
            if (!strstr(errors.data, cases[i].error) || !strstr(errors.data, "convoy.conf:1:"))
                fail_msg("case %zu: error \"%s\" lacks \"%s\"", i, errors.data, cases[i].error);
        }
    }
    buf_free(&errors);
}

static void test_values_parsed(void **state)
{
    (void)state;
    struct buf errors;
    buf_init(&errors, 4096);
    struct conf *c = load_text("maximal_queue_lifetime = 2w\n"
                               "message_size_limit = 64k\n"
                               "mynetworks = 10.0.0.0/8,192.168.1.0/24\n"
                               "   [2001:db8::]/32\n"
                               "dns_tries = 7\n",
                               NULL, 0, &errors);
    assert_non_null(c);
    assert_int_equal(c->maximal_queue_lifetime, 14 * 86400);
    assert_true(c->message_size_limit == 65536);
    assert_int_equal(c->dns_tries, 7);
    assert_int_equal(c->mynetworks.n, 3);
    assert_string_equal(c->mynetworks.v[2], "[2001:db8::]/32");
    assert_true(c->is_set[CONF_P_dns_tries]);
    assert_false(c->is_set[CONF_P_dns_timeout]);

    struct sockaddr_in in = {.sin_family = AF_INET};
    inet_pton(AF_INET, "10.1.2.3", &in.sin_addr);
    assert_true(conf_mynetworks_match(c, (struct sockaddr *)&in));
    inet_pton(AF_INET, "11.1.2.3", &in.sin_addr);
    assert_false(conf_mynetworks_match(c, (struct sockaddr *)&in));
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "2001:db8:1::5", &in6.sin6_addr);
    assert_true(conf_mynetworks_match(c, (struct sockaddr *)&in6));
    inet_pton(AF_INET6, "::ffff:192.168.1.9", &in6.sin6_addr); /* v4-mapped */
    assert_true(conf_mynetworks_match(c, (struct sockaddr *)&in6));
    inet_pton(AF_INET6, "2001:db9::1", &in6.sin6_addr);
    assert_false(conf_mynetworks_match(c, (struct sockaddr *)&in6));
    conf_unref(c);
    buf_free(&errors);
}

static void test_syntax_and_lines(void **state)
{
    (void)state;
    struct buf errors;
    buf_init(&errors, 4096);
    /* Comments, blank lines, continuation, last one wins, CRLF. */
    struct conf *c = load_text("# a comment\n"
                               "\n"
                               "dns_tries = 2\n"
                               "  # an indented comment inside is ignored\n"
                               "myhostname =\n"
                               "   mx.example.com\n"
                               "dns_tries=5\r\n"
                               "   \n",
                               NULL, 0, &errors);
    if (!c)
        fail_msg("%s", errors.data);
    assert_int_equal(c->dns_tries, 5);
    assert_string_equal(c->myhostname, "mx.example.com");
    conf_unref(c);

    /* Errors name the line where the logical line starts; all are listed. */
    c = load_text("dns_tries = 2\n"
                  "mynetwork = 10.0.0.0/8\n"
                  "# comment\n"
                  "dns_timeout =\n"
                  "   5x\n"
                  "just words\n"
                  "queue_lifetime = 1d\n"
                  "= 3\n",
                  NULL, 0, &errors);
    assert_null(c);
    assert_non_null(strstr(errors.data, "convoy.conf:2: unknown parameter \"mynetwork\" "
                                        "(did you mean \"mynetworks\"?)"));
    assert_non_null(strstr(errors.data, "convoy.conf:4: bad value \"5x\" for dns_timeout"));
    assert_non_null(strstr(errors.data, "convoy.conf:6: syntax error"));
    assert_non_null(strstr(errors.data, "convoy.conf:7: unknown parameter \"queue_lifetime\""));
    assert_non_null(strstr(errors.data, "convoy.conf:8: syntax error: missing parameter name"));

    /* A continuation with nothing before it. */
    c = load_text("  dns_tries = 2\n", NULL, 0, &errors);
    assert_null(c);
    assert_non_null(strstr(errors.data, "convoy.conf:1: syntax error: continuation line"));

    /* Cross-parameter rule. */
    c = load_text("minimal_backoff_time = 2h\nmaximal_backoff_time = 1h\n", NULL, 0, &errors);
    assert_null(c);
    assert_non_null(strstr(errors.data, "minimal_backoff_time"));
    buf_free(&errors);
}

static void test_overrides(void **state)
{
    (void)state;
    struct buf errors;
    buf_init(&errors, 4096);
    const char *ov[] = {"dns_tries=9", "relayhost = [10.0.0.1]:587"};
    struct conf *c = load_text("dns_tries = 2\n", ov, 2, &errors);
    if (!c)
        fail_msg("%s", errors.data);
    assert_int_equal(c->dns_tries, 9);
    assert_string_equal(c->relayhost, "[10.0.0.1]:587");
    conf_unref(c);

    const char *bad[] = {"mynetwork=10.0.0.0/8"};
    c = load_text("", bad, 1, &errors);
    assert_null(c);
    assert_non_null(strstr(errors.data, "-o mynetwork=10.0.0.0/8: unknown parameter "
                                        "\"mynetwork\" (did you mean \"mynetworks\"?)"));

    /* A missing file is an error naming it. */
    buf_reset(&errors);
    c = conf_load("/nonexistent/convoy.conf", NULL, 0, &errors);
    assert_null(c);
    assert_non_null(strstr(errors.data, "/nonexistent/convoy.conf: cannot open"));
    buf_free(&errors);
}

static void test_value_text_and_refs(void **state)
{
    (void)state;
    struct buf errors, out;
    buf_init(&errors, 4096);
    buf_init(&out, 4096);
    struct conf *c = load_text("mynetworks = 10.0.0.0/8 127.0.0.0/8\n", NULL, 0, &errors);
    assert_non_null(c);
    conf_value_text(c, CONF_P_mynetworks, &out);
    assert_string_equal(out.data, "10.0.0.0/8, 127.0.0.0/8");
    buf_reset(&out);
    conf_value_text(c, CONF_P_maximal_queue_lifetime, &out);
    assert_string_equal(out.data, "5d");
    buf_reset(&out);
    conf_value_text(c, CONF_P_message_size_limit, &out);
    assert_string_equal(out.data, "52428800");
    /* A reference outlives the first owner. */
    struct conf *r = conf_ref(c);
    conf_unref(c);
    assert_int_equal(r->mynetworks.n, 2);
    conf_unref(r);

    buf_free(&out);
    buf_init(&out, 1 << 20);
    assert_int_equal(conf_doc_markdown(&out), 0);
    assert_non_null(strstr(out.data, "### maximal_queue_lifetime"));
    buf_free(&out);
    buf_free(&errors);
}

/* Every row of the table has a valid default, a description and a sane check. */
static void test_table(void **state)
{
    (void)state;
    const struct conf_param_info *t = conf_params();
    for (size_t i = 0; i < CONF_NPARAMS; i++) {
        assert_non_null(t[i].desc);
        assert_true(strlen(t[i].desc) > 10);
        assert_ptr_equal(conf_param_find(t[i].name), &t[i]);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(t[i].name, t[j].name);
    }
}

static void test_parsers(void **state)
{
    (void)state;
    struct conf_hostport hp;
    assert_int_equal(conf_parse_hostport("[::1]:53", false, &hp), 0);
    assert_string_equal(hp.host, "::1");
    assert_int_equal(hp.port, 53);
    assert_true(hp.bracketed);
    assert_int_equal(conf_parse_hostport("::1", true, &hp), 0);
    assert_string_equal(hp.host, "::1");
    assert_int_equal(hp.port, 0);
    assert_int_equal(conf_parse_hostport("mx.example.com:0", true, &hp), ERR_INVAL);
    assert_int_equal(conf_parse_hostport("[]:25", true, &hp), ERR_INVAL);
    assert_int_equal(conf_parse_hostport("[a]x", true, &hp), ERR_INVAL);
    assert_true(conf_host_ok("a.b-c.example."));
    assert_false(conf_host_ok("a..b"));
    assert_false(conf_host_ok("-a.b"));
    assert_false(conf_host_ok(""));
    char big[300];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_false(conf_host_ok(big));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),      cmocka_unit_test(test_value_types),
        cmocka_unit_test(test_values_parsed), cmocka_unit_test(test_syntax_and_lines),
        cmocka_unit_test(test_overrides),     cmocka_unit_test(test_value_text_and_refs),
        cmocka_unit_test(test_table),         cmocka_unit_test(test_parsers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
