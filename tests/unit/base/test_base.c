/*
 * test_base.c - bounded buffers, durations, error texts, host names, the
 * domain of an address, bounded file reads.
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

/* One table for host_name_ok(): each name with what conf (trailing dot,
 * '_'), policy (strict LDH) and dns (query names) say of it. */
static void test_host_names(void **state)
{
    (void)state;
    const unsigned conf = HOST_NAME_TRAILING_DOT | HOST_NAME_UNDERSCORE;
    const unsigned dns = HOST_NAME_TRAILING_DOT | HOST_NAME_DNS;
    char label64[80], name254[300];
    memset(label64, 'a', 64);
    label64[64] = '\0';
    memset(name254, 'a', 254);
    for (int i = 50; i < 254; i += 50)
        name254[i] = '.';
    name254[254] = '\0';
    static const struct {
        const char *name;
        bool conf, policy, dns;
    } cases[] = {
        {"example.com", true, true, true},
        {"a", true, true, true},
        {"a.b-c.example.", true, false, true},
        {"mx1.good.test", true, true, true},
        {"_mta-sts.example.com", true, false, true},
        {"xn--bcher-kva.example", true, true, true},
        {"", false, false, false},
        {".", false, false, false},
        {"a..b", false, false, false},
        {".a", false, false, false},
        {"a.", true, false, true},
        {"a..", false, false, false},
        {"-a.b", false, false, true},
        {"a-.b", false, false, true},
        {"a.b-", false, false, true},
        {"a b", false, false, false},
        {"a\\b", false, false, false},
        {"a\nb", false, false, false},
        {"a@b", false, false, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *n = cases[i].name;
        size_t len = strlen(n);
        assert_int_equal(host_name_ok(n, len, conf), cases[i].conf);
        assert_int_equal(host_name_ok(n, len, 0), cases[i].policy);
        assert_int_equal(host_name_ok(n, len, dns), cases[i].dns);
    }
    const char *longs[] = {label64, name254};
    for (size_t i = 0; i < 2; i++) {
        assert_false(host_name_ok(longs[i], strlen(longs[i]), conf));
        assert_false(host_name_ok(longs[i], strlen(longs[i]), 0));
        assert_false(host_name_ok(longs[i], strlen(longs[i]), dns));
    }
    /* The length bounds the check: "ab.c" read as "ab". */
    assert_true(host_name_ok("ab.c", 2, 0));
    assert_false(host_name_ok("ab.c", 3, 0));
}

static void test_addr_domain(void **state)
{
    (void)state;
    static const struct {
        const char *addr, *domain;
    } cases[] = {
        {"User@Example.COM", "example.com"},
        {"a@b@C.org.", "c.org"},
        {"postmaster", ""},
        {"", ""},
        {"x@", ""},
    };
    char d[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        addr_domain(cases[i].addr, d, sizeof(d));
        assert_string_equal(d, cases[i].domain);
    }
    addr_domain(NULL, d, sizeof(d));
    assert_string_equal(d, "");
    char small[4];
    addr_domain("u@abcdef", small, sizeof(small));
    assert_string_equal(small, "abc");
}

static void test_file_read(void **state)
{
    (void)state;
    char path[] = "/tmp/convoy-test-base-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char data[20000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (char)('a' + i % 26);
    assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
    close(fd);

    struct buf b;
    buf_init(&b, sizeof(data));
    assert_int_equal(file_read_all(path, &b), 0);
    assert_int_equal(b.len, sizeof(data));
    assert_memory_equal(b.data, data, sizeof(data));
    buf_free(&b);

    /* One byte short of room: ERR_TOOBIG, never more than max. */
    buf_init(&b, sizeof(data) - 1);
    assert_int_equal(file_read_all(path, &b), ERR_TOOBIG);
    assert_true(b.len <= sizeof(data) - 1);
    buf_free(&b);

    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    buf_init(&b, 1 << 20);
    assert_int_equal(file_read_stream(f, &b), 0);
    assert_int_equal(b.len, sizeof(data));
    fclose(f);
    buf_free(&b);

    unlink(path);
    buf_init(&b, 100);
    assert_int_equal(file_read_all(path, &b), ERR_IO);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_bounds),  cmocka_unit_test(test_durations),
        cmocka_unit_test(test_strings),     cmocka_unit_test(test_host_names),
        cmocka_unit_test(test_addr_domain), cmocka_unit_test(test_file_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
