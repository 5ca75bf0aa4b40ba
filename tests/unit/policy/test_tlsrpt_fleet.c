/*
 * test_tlsrpt_fleet.c - TLS-RPT across a fleet, the parts without Redis:
 * three nodes' stores, each node's record as it publishes it
 * (tlsrpt_store_record()), the sum of the records (tlsrpt_record_sum()):
 * counts add, same policies and failure rows merge, bounds hold, bad
 * records count nothing; the change hook; the fleet's sum put into a
 * store (tlsrpt_store_put_fleet()) and the report built from it; a node's
 * own report carries its name in the report-id.
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

#include "policy.h"

#define NODES 3
/* 2016-04-01 12:00:00 UTC */
#define T0 (1459468800 + 43200)
#define DAY "2016-04-01"
#define DOM "company-y.example"

static char g_dir[64];
static struct tlsrpt_store *g_s[NODES];

static char *mx_patterns[] = {"*.mail.company-y.example"};
static const struct sts_policy g_sts = {
    .mode = POLICY_MODE_ENFORCE, .max_age = 86400, .n_mx = 1, .mx = mx_patterns};

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/convoy-tlsrpt-fleet-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    for (int i = 0; i < NODES; i++) {
        char path[128], why[256];
        snprintf(path, sizeof(path), "%s/node%d.lmdb", g_dir, i);
        if (tlsrpt_store_open(path, false, &g_s[i], why, sizeof(why)) != 0)
            return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < NODES; i++) {
        char path[160];
        tlsrpt_store_close(g_s[i]);
        g_s[i] = NULL;
        snprintf(path, sizeof(path), "%s/node%d.lmdb", g_dir, i);
        unlink(path);
        snprintf(path, sizeof(path), "%s/node%d.lmdb-lock", g_dir, i);
        unlink(path);
    }
    rmdir(g_dir);
    return 0;
}

static void count(struct tlsrpt_store *s, enum tlsrpt_result res, const char *rip, bool sts)
{
    struct tlsrpt_session_result r = {
        .policy_domain = DOM,
        .time = T0,
        .policy_type = sts ? TLSRPT_POLICY_STS : TLSRPT_POLICY_NO_POLICY,
        .sts = sts ? &g_sts : NULL,
        .result = res,
        .sending_mta_ip = "192.0.2.1",
        .receiving_mx_hostname = "mx1.mail.company-y.example",
        .receiving_ip = rip,
    };
    assert_int_equal(tlsrpt_record_session(s, &r), 0);
}

struct changes {
    int n;
    char day[TLSRPT_DAY_SIZE], domain[POLICY_NAME_MAX];
};

static void on_change(void *arg, const char *day, const char *domain)
{
    struct changes *c = arg;
    c->n++;
    snprintf(c->day, sizeof(c->day), "%s", day);
    snprintf(c->domain, sizeof(c->domain), "%s", domain);
}

/* Each node's record as published. */
static void publish(struct buf recs[NODES], const char *v[NODES], size_t l[NODES])
{
    for (int i = 0; i < NODES; i++) {
        buf_init(&recs[i], 1 << 20);
        assert_int_equal(tlsrpt_store_record(g_s[i], DAY, DOM, &recs[i]), 0);
        v[i] = recs[i].data;
        l[i] = recs[i].len;
    }
}

static json_t *report_of(const char *rec, size_t len, const char *node, uint32_t seq)
{
    struct tlsrpt_report_info info = {"Org", "a@b.example", "b.example", node};
    struct buf out;
    buf_init(&out, 1 << 22);
    assert_int_equal(tlsrpt_report_json_record(rec, len, DAY, DOM, &info, seq, 0, false, &out), 0);
    json_error_t e;
    json_t *j = json_loadb(out.data, out.len, 0, &e);
    assert_non_null(j);
    buf_free(&out);
    return j;
}

static json_int_t summary(json_t *pol, const char *key)
{
    return json_integer_value(json_object_get(json_object_get(pol, "summary"), key));
}

static void test_sum_three_nodes(void **state)
{
    (void)state;
    struct changes ch = {0};
    tlsrpt_store_on_change(g_s[0], on_change, &ch);
    /* node 0: 5 ok, 2 expired at .55; node 1: 3 ok, 1 expired at .55, 1
     * expired at .56; node 2: 4 ok without a policy. */
    for (int i = 0; i < 5; i++)
        count(g_s[0], TLSRPT_SUCCESS, NULL, true);
    for (int i = 0; i < 2; i++)
        count(g_s[0], TLSRPT_CERTIFICATE_EXPIRED, "203.0.113.55", true);
    for (int i = 0; i < 3; i++)
        count(g_s[1], TLSRPT_SUCCESS, NULL, true);
    count(g_s[1], TLSRPT_CERTIFICATE_EXPIRED, "203.0.113.55", true);
    count(g_s[1], TLSRPT_CERTIFICATE_EXPIRED, "203.0.113.56", true);
    for (int i = 0; i < 4; i++)
        count(g_s[2], TLSRPT_SUCCESS, NULL, false);
    assert_int_equal(ch.n, 7);
    assert_string_equal(ch.day, DAY);
    assert_string_equal(ch.domain, DOM);
    tlsrpt_store_on_change(g_s[0], NULL, NULL);
    count(g_s[0], TLSRPT_SUCCESS, NULL, true);
    assert_int_equal(ch.n, 7);

    struct buf recs[NODES], sum;
    const char *v[NODES];
    size_t l[NODES];
    publish(recs, v, l);
    buf_init(&sum, 1 << 22);
    assert_int_equal(tlsrpt_record_sum(v, l, NODES, &sum), 0);
    json_t *rep = report_of(sum.data, sum.len, NULL, 2);
    assert_string_equal(json_string_value(json_object_get(rep, "report-id")),
                        "20160401.2.company-y.example@b.example");
    json_t *pols = json_object_get(rep, "policies");
    assert_int_equal(json_array_size(pols), 2);
    json_t *sts = json_array_get(pols, 0), *none = json_array_get(pols, 1);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(sts, "policy"), "policy-type")), "sts");
    assert_int_equal(summary(sts, "total-successful-session-count"), 6 + 3);
    assert_int_equal(summary(sts, "total-failure-session-count"), 2 + 2);
    json_t *fd = json_object_get(sts, "failure-details");
    assert_int_equal(json_array_size(fd), 2);
    json_t *d55 = json_array_get(fd, 0), *d56 = json_array_get(fd, 1);
    assert_string_equal(json_string_value(json_object_get(d55, "receiving-ip")), "203.0.113.55");
    assert_int_equal(json_integer_value(json_object_get(d55, "failed-session-count")), 3);
    assert_string_equal(json_string_value(json_object_get(d56, "receiving-ip")), "203.0.113.56");
    assert_int_equal(json_integer_value(json_object_get(d56, "failed-session-count")), 1);
    assert_int_equal(summary(none, "total-successful-session-count"), 4);
    json_decref(rep);

    /* A record published again replaces the node's own (a hash field):
     * the same text, so a republish never counts twice. */
    struct buf again;
    buf_init(&again, 1 << 20);
    assert_int_equal(tlsrpt_store_record(g_s[1], DAY, DOM, &again), 0);
    assert_int_equal(again.len, recs[1].len);
    assert_memory_equal(again.data, recs[1].data, again.len);
    buf_free(&again);

    /* A record this version cannot read counts nothing; none at all is
     * ERR_NOTFOUND. */
    const char *bad[2] = {"{\"v\":2}", v[2]};
    size_t bl[2] = {7, l[2]};
    buf_reset(&sum);
    assert_int_equal(tlsrpt_record_sum(bad, bl, 2, &sum), 0);
    rep = report_of(sum.data, sum.len, NULL, 0);
    assert_int_equal(json_array_size(json_object_get(rep, "policies")), 1);
    json_decref(rep);
    buf_reset(&sum);
    assert_int_equal(tlsrpt_record_sum(bad, bl, 1, &sum), ERR_NOTFOUND);
    buf_reset(&sum);
    assert_int_equal(tlsrpt_record_sum(NULL, NULL, 0, &sum), ERR_NOTFOUND);

    /* The sum into node 0's store: the report comes from the store with
     * the fleet's number; the record is no longer published. */
    buf_reset(&sum);
    assert_int_equal(tlsrpt_record_sum(v, l, NODES, &sum), 0);
    assert_int_equal(tlsrpt_store_put_fleet(g_s[0], DAY, DOM, sum.data, sum.len, 7), 0);
    struct buf tmp;
    buf_init(&tmp, 1 << 20);
    assert_int_equal(tlsrpt_store_record(g_s[0], DAY, DOM, &tmp), ERR_EXISTS);
    struct tlsrpt_report rp;
    struct tlsrpt_report_info info = {"Org", "a@b.example", "b.example", NULL};
    assert_int_equal(tlsrpt_report_build(g_s[0], DAY, DOM, &info, 7, 0, &rp), 0);
    assert_string_equal(rp.report_id, "20160401.7.company-y.example@b.example");
    assert_non_null(strstr(rp.json.data, "\"total-successful-session-count\":9"));
    tlsrpt_report_clear(&rp);
    buf_free(&tmp);
    for (int i = 0; i < NODES; i++)
        buf_free(&recs[i]);
    buf_free(&sum);
}

static int fleet_cb(void *arg, const struct tlsrpt_summary *sum)
{
    *(struct tlsrpt_summary *)arg = *sum;
    return 0;
}

static void test_put_fleet_summary(void **state)
{
    (void)state;
    count(g_s[0], TLSRPT_SUCCESS, NULL, true);
    struct buf rec;
    buf_init(&rec, 1 << 20);
    assert_int_equal(tlsrpt_store_record(g_s[0], DAY, DOM, &rec), 0);
    const char *v[2] = {rec.data, rec.data};
    size_t l[2] = {rec.len, rec.len};
    struct buf sum;
    buf_init(&sum, 1 << 20);
    assert_int_equal(tlsrpt_record_sum(v, l, 2, &sum), 0);
    assert_int_equal(tlsrpt_store_put_fleet(g_s[1], DAY, DOM, sum.data, sum.len, 3), 0);
    struct tlsrpt_summary s = {0};
    tlsrpt_store_each(g_s[1], DAY, fleet_cb, &s);
    assert_true(s.fleet);
    assert_int_equal(s.reports, 3);
    assert_int_equal(s.successful, 2);
    tlsrpt_store_each(g_s[0], DAY, fleet_cb, &s);
    assert_false(s.fleet);
    assert_int_equal(tlsrpt_store_put_fleet(g_s[1], DAY, DOM, "{", 1, 3), ERR_INVAL);
    buf_free(&rec);
    buf_free(&sum);
}

/* A node reporting alone names itself: report-ids of two nodes differ. */
static void test_node_report_id(void **state)
{
    (void)state;
    char a[256], b[256], tag[80];
    struct tlsrpt_report_info ia = {"Org", "a@b.example", "b.example", "relay-a"};
    struct tlsrpt_report_info ib = {"Org", "a@b.example", "b.example", "relay_b.x"};
    tlsrpt_report_id_of(DAY, 0, DOM, &ia, a, sizeof(a));
    tlsrpt_report_id_of(DAY, 0, DOM, &ib, b, sizeof(b));
    assert_string_equal(a, "20160401.0.relay-a.company-y.example@b.example");
    assert_string_equal(b, "20160401.0.relay-b-x.company-y.example@b.example");
    tlsrpt_node_tag("a b\r\n\xc3\xa9", tag, sizeof(tag));
    assert_string_equal(tag, "a-b----");
    count(g_s[0], TLSRPT_SUCCESS, NULL, true);
    struct tlsrpt_report rp;
    assert_int_equal(tlsrpt_report_build(g_s[0], DAY, DOM, &ia, 0, 0, &rp), 0);
    assert_string_equal(rp.report_id, a);
    assert_non_null(strstr(rp.filename, "!relay-a.0.json.gz"));
    tlsrpt_report_clear(&rp);
}

/* The store's bounds hold for a sum: policies past TLSRPT_MAX_POLICIES
 * and rows past TLSRPT_MAX_DETAILS count as dropped. */
static void test_sum_bounds(void **state)
{
    (void)state;
    json_t *pols = json_array();
    for (int i = 0; i < TLSRPT_MAX_POLICIES + 2; i++) {
        json_t *details = json_array();
        for (int k = 0; k < (i == 0 ? TLSRPT_MAX_DETAILS + 5 : 0); k++) {
            char ip[32];
            snprintf(ip, sizeof(ip), "198.51.100.%d", k);
            json_array_append_new(details,
                                  json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:i}", "rt",
                                            "certificate-expired", "smi", "", "mx", "mx.example",
                                            "rip", ip, "code", "", "helo", "", "n", 1));
        }
        char str[32];
        snprintf(str, sizeof(str), "mode: m%d", i);
        json_array_append_new(pols, json_pack("{s:s,s:[s],s:[],s:i,s:i,s:i,s:o}", "type", "sts",
                                              "strings", str, "mx", "ok", 1, "fail",
                                              i == 0 ? TLSRPT_MAX_DETAILS + 5 : 0, "dropped", 0,
                                              "details", details));
    }
    json_t *o = json_pack("{s:i,s:i,s:i,s:o}", "v", 1, "seq", 0, "dropped", 0, "policies", pols);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    const char *v[1] = {text};
    size_t l[1] = {strlen(text)};
    struct buf sum;
    buf_init(&sum, 1 << 22);
    assert_int_equal(tlsrpt_record_sum(v, l, 1, &sum), 0);
    json_error_t e;
    json_t *s = json_loadb(sum.data, sum.len, 0, &e);
    assert_int_equal(json_array_size(json_object_get(s, "policies")), TLSRPT_MAX_POLICIES);
    assert_int_equal(json_integer_value(json_object_get(s, "dropped")), 2);
    json_t *p0 = json_array_get(json_object_get(s, "policies"), 0);
    assert_int_equal(json_array_size(json_object_get(p0, "details")), TLSRPT_MAX_DETAILS);
    assert_int_equal(json_integer_value(json_object_get(p0, "dropped")), 5);
    assert_int_equal(json_integer_value(json_object_get(p0, "fail")), TLSRPT_MAX_DETAILS + 5);
    json_decref(s);
    free(text);
    buf_free(&sum);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sum_three_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_fleet_summary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_report_id, setup, teardown),
        cmocka_unit_test(test_sum_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
