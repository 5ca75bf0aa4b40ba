/*
 * test_route.c - the pure parts of per-destination flow control
 * (delivery/destlimit.c) on a fake clock: the concurrency window, the
 * token bucket of destination_limits rate=, and the dead-destination
 * state machine.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "route.h"

/* Starts at the initial value, +1 per success up to the limit, -1 per
 * failure, never below 1; a new limit cuts it down. */
static void test_window(void **state)
{
    (void)state;
    struct conc_window w;
    window_init(&w, 5, 20);
    assert_int_equal(w.cur, 5);
    for (int i = 0; i < 30; i++)
        window_success(&w);
    assert_int_equal(w.cur, 20);
    window_failure(&w);
    assert_int_equal(w.cur, 19);
    for (int i = 0; i < 30; i++)
        window_failure(&w);
    assert_int_equal(w.cur, 1);
    window_success(&w);
    assert_int_equal(w.cur, 2);
    /* The initial value above the limit (destination_limits concurrency=1). */
    window_init(&w, 5, 1);
    assert_int_equal(w.cur, 1);
    window_success(&w);
    assert_int_equal(w.cur, 1);
    /* A reload lowers the limit. */
    window_init(&w, 5, 20);
    for (int i = 0; i < 10; i++)
        window_success(&w);
    window_set_limit(&w, 3);
    assert_int_equal(w.cur, 3);
    assert_int_equal(w.limit, 3);
    window_set_limit(&w, 0);
    assert_int_equal(w.cur, 1);
}

/* rate tokens a second, a burst of one second's worth. */
static void test_bucket(void **state)
{
    (void)state;
    struct token_bucket b;
    int64_t now = 1000000, wait = -1;
    bucket_init(&b, 2.0, now);
    assert_true(bucket_take(&b, now, &wait));
    assert_true(bucket_take(&b, now, &wait));
    assert_false(bucket_take(&b, now, &wait));
    assert_in_range(wait, 490, 510);
    now += 499;
    assert_false(bucket_take(&b, now, &wait));
    now += 2;
    assert_true(bucket_take(&b, now, &wait));
    /* A long pause refills no more than the burst. */
    now += 60000;
    assert_true(bucket_take(&b, now, &wait));
    assert_true(bucket_take(&b, now, &wait));
    assert_false(bucket_take(&b, now, &wait));
    /* Below one a second: one message, then one per 1/rate seconds. */
    bucket_init(&b, 0.5, now);
    assert_true(bucket_take(&b, now, &wait));
    assert_false(bucket_take(&b, now, &wait));
    assert_in_range(wait, 1990, 2010);
    now += 2001;
    assert_true(bucket_take(&b, now, &wait));
    /* No rate: no limit. */
    bucket_init(&b, 0, now);
    for (int i = 0; i < 1000; i++)
        assert_true(bucket_take(&b, now, &wait));
    /* The clock going backwards takes nothing away. */
    bucket_init(&b, 1.0, now);
    assert_true(bucket_take(&b, now, &wait));
    assert_false(bucket_take(&b, now - 5000, &wait));
}

/* Dead after threshold failures in a row; a success in between resets the
 * count; one probe at a time after the dead time; a failed probe waits
 * another period; a ready session revives. */
static void test_dead(void **state)
{
    (void)state;
    struct deadness x;
    memset(&x, 0, sizeof(x));
    int64_t now = 5000;
    assert_int_equal(dead_state(&x, now), DEST_ALIVE);
    assert_false(dead_failure(&x, 3, now, 10000));
    assert_false(dead_failure(&x, 3, now, 10000));
    assert_false(dead_success(&x)); /* was not dead */
    assert_int_equal(x.fails, 0);
    assert_false(dead_failure(&x, 3, now, 10000));
    assert_false(dead_failure(&x, 3, now, 10000));
    assert_int_equal(dead_state(&x, now), DEST_ALIVE);
    assert_true(dead_failure(&x, 3, now, 10000)); /* the third: dead */
    assert_int_equal(dead_state(&x, now), DEST_DEAD);
    assert_int_equal(dead_state(&x, now + 9999), DEST_DEAD);
    assert_int_equal(dead_state(&x, now + 10000), DEST_PROBE);
    /* A probe is under way: nothing else. */
    x.probing = true;
    assert_int_equal(dead_state(&x, now + 10000), DEST_DEAD);
    /* The probe fails: dead again for a period, not "newly dead". */
    now += 10500;
    assert_false(dead_failure(&x, 3, now, 10000));
    assert_false(x.probing);
    assert_int_equal(dead_state(&x, now + 9000), DEST_DEAD);
    assert_int_equal(dead_state(&x, now + 10000), DEST_PROBE);
    /* The next probe gets a session: alive. */
    assert_true(dead_success(&x));
    assert_int_equal(dead_state(&x, now), DEST_ALIVE);
    assert_int_equal(x.fails, 0);
    /* Threshold 1: the first failure kills. */
    assert_true(dead_failure(&x, 1, now, 1000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_dead),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
