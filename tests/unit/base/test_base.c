/*
 * test_base.c - bounded buffers, durations, error texts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base.h"

static void test_buf_bounds(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 8);
    assert_int_equal(buf_append_str(&b, "hello"), 0);
    assert_int_equal(buf_append_str(&b, "world"), ERR_TOOBIG);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "hello");
    assert_int_equal(buf_printf(&b, "%d", 123), 0);
    assert_string_equal(b.data, "hello123");
    assert_int_equal(buf_printf(&b, "x"), ERR_TOOBIG);
    buf_consume(&b, 5);
    assert_string_equal(b.data, "123");
    buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

static void test_durations(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        int64_t secs;
    } cases[] = {
        {"0", 0, 0},           {"300", 0, 300},
        {"300s", 0, 300},      {"5m", 0, 300},
        {"2h", 0, 7200},       {"5d", 0, 432000},
        {"1w", 0, 604800},     {"", ERR_INVAL, 0},
        {"5x", ERR_INVAL, 0},  {"-1", ERR_INVAL, 0},
        {"5 d", ERR_INVAL, 0}, {"d", ERR_INVAL, 0},
        {"5dd", ERR_INVAL, 0}, {"99999999999999999999", ERR_INVAL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t v = -1;
        assert_int_equal(time_parse_duration(cases[i].in, &v), cases[i].rc);
        if (cases[i].rc == 0)
            assert_int_equal(v, cases[i].secs);
    }
    char out[32];
    time_format_duration(432000, out, sizeof(out));
    assert_string_equal(out, "5d");
    time_format_duration(4000, out, sizeof(out));
    assert_string_equal(out, "4000s");
}

static void test_strings(void **state)
{
    (void)state;
    char small[4];
    assert_int_equal(str_copy(small, "abcdef", sizeof(small)), 6);
    assert_string_equal(small, "abc");
    uint64_t v;
    assert_int_equal(str_to_u64("18446744073709551615", &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(str_to_u64("18446744073709551616", &v), ERR_INVAL);
    assert_int_equal(str_to_u64("12a", &v), ERR_INVAL);
    assert_true(view_eq_ci(VIEW_LIT("StartTLS"), "STARTTLS"));
    assert_false(view_eq_ci(VIEW_LIT("START"), "STARTTLS"));
    assert_string_equal(err_str(ERR_FULL), "storage full");
    assert_string_equal(err_str(12345), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_bounds),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_strings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
