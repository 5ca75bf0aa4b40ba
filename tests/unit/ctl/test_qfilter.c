/*
 * test_qfilter.c - message selection for convoyctl queue (list and the
 * actions share it) and qshape's age buckets, table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qfilter.h"

#define NOW 1800000000000LL
#define MINUTE 60000LL

/* A message: sender, age in minutes, two recipients with states and the
 * last result of the second. */
static struct queue_rcpt rcpts[2];
static struct queue_message msg;

static void build(void)
{
    memset(&msg, 0, sizeof(msg));
    memset(rcpts, 0, sizeof(rcpts));
    str_copy(msg.id, "06H2TRBFVWQ31RYJ", sizeof(msg.id));
    msg.env.sender = "Alice@Example.ORG";
    msg.env.arrival_ms = NOW - 30 * MINUTE;
    msg.n_rcpts = 2;
    msg.rcpts = rcpts;
    static const struct queue_result none = {0, "", "", "", "", "", "", "", 0};
    rcpts[0] = (struct queue_rcpt){.index = 0,
                                   .addr = "bob@Dest.example",
                                   .orcpt = "",
                                   .state = QUEUE_RCPT_QUEUED,
                                   .last = none};
    rcpts[1] = (struct queue_rcpt){
        .index = 1,
        .addr = "carol@mta-sts.example",
        .orcpt = "",
        .state = QUEUE_RCPT_DEFERRED,
        .attempts = 3,
        .has_result = true,
        .last = {0, "4.7.5", "MTA-STS: certificate of mx1.mta-sts.example not trusted",
                 "mx1.mta-sts.example", "192.0.2.1", "", "enforce", "20261130", NOW - MINUTE}};
}

struct fcase {
    const char *opts[6]; /* option, value, option, value, ... NULL */
    bool match;
};

static const struct fcase cases[] = {
    {{NULL}, true},
    {{"--state", "queued", NULL}, true},
    {{"--state", "deferred", NULL}, true},
    {{"--state", "held", NULL}, false},
    {{"--state", "held", "--state", "deferred", NULL}, true},
    {{"--from", "^alice@example\\.org$", NULL}, true}, /* case-insensitive */
    {{"--from", "^bob@", NULL}, false},
    {{"--to", "CAROL", NULL}, true},
    {{"--to", "^dave@", NULL}, false},
    {{"--domain", "dest.EXAMPLE", NULL}, true},
    {{"--domain", "dest.example.", NULL}, true},
    {{"--domain", "example", NULL}, false}, /* exact, not a suffix */
    {{"--reason", "not trusted", NULL}, true},
    {{"--reason", "sts=enforce id=20261130", NULL}, true},
    {{"--reason", "mx=mx1\\.mta-sts", NULL}, false}, /* the text names the MX already */
    {{"--reason", "4\\.7\\.5", NULL}, true},
    {{"--reason", "refused", NULL}, false},
    /* Recipient criteria must hold for one recipient together. */
    {{"--state", "queued", "--reason", "trusted", NULL}, false},
    {{"--state", "deferred", "--to", "carol", "--reason", "trusted"}, true},
    {{"--domain", "dest.example", "--to", "carol", NULL}, false},
    {{"--older", "29m", NULL}, true},
    {{"--older", "31m", NULL}, false},
    {{"--younger", "31m", NULL}, true},
    {{"--younger", "1h", "--older", "10m", NULL}, true},
    {{"--younger", "29m", NULL}, false},
};

static void test_filter_table(void **state)
{
    (void)state;
    build();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct qfilter f;
        qfilter_init(&f);
        char why[200];
        for (size_t k = 0; k + 1 < 6 && cases[i].opts[k]; k += 2)
            assert_int_equal(
                qfilter_option(&f, cases[i].opts[k], cases[i].opts[k + 1], why, sizeof(why)), 1);
        if (qfilter_match(&f, &msg, NOW) != cases[i].match)
            fail_msg("case %zu (%s %s): expected %s", i, cases[i].opts[0] ? cases[i].opts[0] : "",
                     cases[i].opts[1] ? cases[i].opts[1] : "", cases[i].match ? "match" : "none");
        assert_int_equal(f.any, cases[i].opts[0] != NULL);
        qfilter_free(&f);
    }
}

static void test_filter_errors(void **state)
{
    (void)state;
    static const char *const bad[][2] = {
        {"--state", "stuck"}, {"--from", "("},    {"--to", "[a-"},     {"--older", "5x"},
        {"--younger", ""},    {"--older", "-1m"}, {"--domain", "a@b"}, {"--domain", ""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct qfilter f;
        qfilter_init(&f);
        char why[200] = "";
        assert_true(qfilter_option(&f, bad[i][0], bad[i][1], why, sizeof(why)) < 0);
        assert_true(why[0] != 0);
        qfilter_free(&f);
    }
    struct qfilter f;
    qfilter_init(&f);
    char why[200];
    assert_int_equal(qfilter_option(&f, "--json", "x", why, sizeof(why)), 0);
    assert_false(f.any);
    assert_int_equal(qfilter_option(&f, "--from", "a", why, sizeof(why)), 1);
    assert_true(qfilter_option(&f, "--from", "b", why, sizeof(why)) < 0); /* twice */
    qfilter_free(&f);
}

static void test_reason_text(void **state)
{
    (void)state;
    build();
    char out[512];
    qfilter_reason(&rcpts[1], out, sizeof(out));
    assert_string_equal(out, "4.7.5 MTA-STS: certificate of mx1.mta-sts.example not trusted "
                             "(sts=enforce id=20261130)");
    rcpts[1].last.text = "connection refused\r\nsecond line";
    qfilter_reason(&rcpts[1], out, sizeof(out));
    assert_string_equal(out, "4.7.5 connection refused  second line (mx=mx1.mta-sts.example"
                             "[192.0.2.1], sts=enforce id=20261130)");
    rcpts[1].last.sts_mode = "none";
    rcpts[1].last.dsn = "";
    qfilter_reason(&rcpts[1], out, sizeof(out));
    assert_string_equal(out, "connection refused  second line (mx=mx1.mta-sts.example"
                             "[192.0.2.1])");
    qfilter_reason(&rcpts[0], out, sizeof(out));
    assert_string_equal(out, "");
    char small[8];
    rcpts[1].last.text = "a long text that does not fit";
    qfilter_reason(&rcpts[1], small, sizeof(small));
    assert_int_equal(strlen(small), 7);
}

static void test_qshape_buckets(void **state)
{
    (void)state;
    static const struct {
        int64_t age_ms;
        int bucket;
    } t[] = {
        {-5000, 0},
        {0, 0},
        {5 * MINUTE, 0},
        {5 * MINUTE + 1, 1},
        {10 * MINUTE, 1},
        {11 * MINUTE, 2},
        {20 * MINUTE, 2},
        {39 * MINUTE, 3},
        {80 * MINUTE, 4},
        {81 * MINUTE, 5},
        {160 * MINUTE, 5},
        {320 * MINUTE, 6},
        {640 * MINUTE, 7},
        {641 * MINUTE, 8},
        {1280 * MINUTE, 8},
        {1280 * MINUTE + 1, 9},
        {30 * 1440 * MINUTE, 9},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (qshape_bucket(t[i].age_ms) != t[i].bucket)
            fail_msg("age %lld ms: bucket %d, expected %d", (long long)t[i].age_ms,
                     qshape_bucket(t[i].age_ms), t[i].bucket);
    assert_string_equal(qshape_labels[0], "5");
    assert_string_equal(qshape_labels[QSHAPE_BUCKETS - 1], "1280+");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filter_table),
        cmocka_unit_test(test_filter_errors),
        cmocka_unit_test(test_reason_text),
        cmocka_unit_test(test_qshape_buckets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
