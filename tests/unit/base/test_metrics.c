/*
 * test_metrics.c - the metrics registry: counters, labelled series, the
 * label cap, histograms (cumulative buckets, _sum, _count), escaping, and
 * the reason classes of enhanced status codes (RFC 3463).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "base.h"

static char *render(void)
{
    static struct buf out;
    buf_free(&out);
    buf_init(&out, 1 << 20);
    assert_int_equal(metrics_render(&out), 0);
    assert_int_equal(buf_append(&out, "", 1), 0);
    return out.data;
}

static void test_counter_and_labels(void **state)
{
    (void)state;
    char *t = render();
    assert_non_null(strstr(t, "# TYPE convoy_messages_accepted_total counter\n"
                              "convoy_messages_accepted_total 0\n"));
    metric_add(MET_MSG_ACCEPTED, NULL, NULL, 1);
    metric_add(MET_MSG_ACCEPTED, NULL, NULL, 2);
    metric_add(MET_MSG_ACCEPTED, NULL, NULL, -5); /* refused: counters only go up */
    metric_add(MET_MSG_REFUSED, "policy", "5xx", 1);
    metric_add(MET_MSG_REFUSED, "policy", "5xx", 1);
    metric_add(MET_MSG_REFUSED, "sys\"tem\\\n", NULL, 1);
    t = render();
    assert_non_null(strstr(t, "\nconvoy_messages_accepted_total 3\n"));
    assert_non_null(
        strstr(t, "\nconvoy_messages_refused_total{reason=\"policy\",code=\"5xx\"} 2\n"));
    assert_non_null(
        strstr(t, "\nconvoy_messages_refused_total{reason=\"sys\\\"tem\\\\\\n\",code=\"\"} 1\n"));
}

static void test_label_cap(void **state)
{
    (void)state;
    char v[32];
    for (int i = 0; i < 200; i++) {
        snprintf(v, sizeof(v), "T%d", i);
        metric_add(MET_DNS_QUERIES, v, NULL, 1);
    }
    char *t = render();
    size_t n = 0;
    for (char *p = t; (p = strstr(p, "\nconvoy_dns_queries_total{")) != NULL; p++)
        n++;
    assert_int_equal(n, METRICS_MAX_CHILDREN);
    /* 200 - 63 named ones went to "other". */
    assert_non_null(strstr(t, "\nconvoy_dns_queries_total{type=\"other\"} 137\n"));
}

static void test_histogram(void **state)
{
    (void)state;
    metric_observe(MET_QUEUE_COMMIT, NULL, NULL, 1);
    metric_observe(MET_QUEUE_COMMIT, NULL, NULL, 3);
    metric_observe(MET_QUEUE_COMMIT, NULL, NULL, 1000);
    char *t = render();
    assert_non_null(strstr(t, "\nconvoy_queue_commit_requests_bucket{le=\"1\"} 1\n"
                              "convoy_queue_commit_requests_bucket{le=\"2\"} 1\n"
                              "convoy_queue_commit_requests_bucket{le=\"4\"} 2\n"));
    assert_non_null(strstr(t, "\nconvoy_queue_commit_requests_bucket{le=\"512\"} 2\n"
                              "convoy_queue_commit_requests_bucket{le=\"+Inf\"} 3\n"
                              "convoy_queue_commit_requests_sum 1004\n"
                              "convoy_queue_commit_requests_count 3\n"));
}

static void test_gauge_and_delivery_calls(void **state)
{
    (void)state;
    metric_set(MET_QUEUE_RCPTS, "queued", NULL, 5);
    metric_set(MET_QUEUE_RCPTS, "queued", NULL, 7);
    metrics_delivery_session(+1);
    metrics_delivery_session(+1);
    metrics_delivery_session(-1);
    metrics_delivery_result("sent", NULL, 2.5);
    metrics_delivery_result("deferred", "4.4.1", -1);
    metrics_delivery_tls("failed", "certificate-expired");
    char *t = render();
    assert_non_null(strstr(t, "\nconvoy_queue_recipients{state=\"queued\"} 7\n"));
    assert_non_null(strstr(t, "\nconvoy_smtp_sessions 1\n"));
    assert_non_null(strstr(t, "\nconvoy_recipients_delivered_total 1\n"));
    assert_non_null(strstr(t, "\nconvoy_recipients_deferred_total{reason=\"network\"} 1\n"));
    assert_non_null(strstr(t, "\nconvoy_delivery_latency_seconds_sum 2.5\n"));
    assert_non_null(strstr(
        t,
        "\nconvoy_tls_sessions_total{outcome=\"failed\",result_type=\"certificate-expired\"} 1\n"));
    metric_clear(MET_QUEUE_RCPTS);
    t = render();
    assert_null(strstr(t, "convoy_queue_recipients{"));
}

static void test_reason_class(void **state)
{
    (void)state;
    assert_string_equal(metrics_reason_class("5.7.1 relay denied"), "policy");
    assert_string_equal(metrics_reason_class("4.4.2"), "network");
    assert_string_equal(metrics_reason_class("5.1.7"), "address");
    assert_string_equal(metrics_reason_class("5.5.2 syntax"), "protocol");
    assert_string_equal(metrics_reason_class("Syntax error"), "other");
    assert_string_equal(metrics_reason_class("5.8.1"), "other");
    assert_string_equal(metrics_reason_class("5.71.1"), "other");
    assert_string_equal(metrics_reason_class(""), "other");
    assert_string_equal(metrics_reason_class(NULL), "other");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_and_labels), cmocka_unit_test(test_label_cap),
        cmocka_unit_test(test_histogram),          cmocka_unit_test(test_gauge_and_delivery_calls),
        cmocka_unit_test(test_reason_class),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
