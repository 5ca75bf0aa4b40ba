/*
 * test_pausefile.c - the pause table's file format: what is written reads
 * back the same, and every kind of damage costs only its own line, with the
 * line number reported. Table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "deliver_int.h"

struct problems {
    unsigned n;
    unsigned lines[16];
    char last[256];
};

static void on_problem(void *arg, unsigned line, const char *why)
{
    struct problems *p = arg;
    if (p->n < 16)
        p->lines[p->n] = line;
    p->n++;
    str_copy(p->last, why, sizeof(p->last));
}

static void test_round_trip(void **state)
{
    (void)state;
    struct pause_rec in[3];
    memset(in, 0, sizeof(in));
    str_copy(in[0].reason, "maintenance: all of it", sizeof(in[0].reason));
    in[0].since_ms = 1764540000000;
    str_copy(in[1].domain, "example.com", sizeof(in[1].domain));
    str_copy(in[1].reason, "", sizeof(in[1].reason));
    in[1].since_ms = 1764540000001;
    in[1].until_ms = 1764547200000;
    str_copy(in[2].domain, "xn--bcher-kva.example", sizeof(in[2].domain));
    pause_reason_clean("line\r\nbreak\tand  spaces ", in[2].reason, sizeof(in[2].reason));
    assert_string_equal(in[2].reason, "line  break and  spaces ");
    in[2].since_ms = 5;
    struct buf b;
    buf_init(&b, 1 << 16);
    assert_int_equal(pause_file_format(in, 3, &b), 0);
    assert_true(strncmp(b.data, PAUSE_FILE_MAGIC "\n", strlen(PAUSE_FILE_MAGIC) + 1) == 0);
    struct pause_rec out[4];
    struct problems pr = {0};
    assert_int_equal(pause_file_parse(b.data, b.len, out, 4, on_problem, &pr), 3);
    assert_int_equal(pr.n, 0);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(out[i].domain, in[i].domain);
        assert_string_equal(out[i].reason, in[i].reason);
        assert_int_equal(out[i].since_ms, in[i].since_ms);
        assert_int_equal(out[i].until_ms, in[i].until_ms);
    }
    buf_free(&b);
}

static void test_damage(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t records;    /* read */
        unsigned problems; /* reported */
        unsigned line;     /* of the first problem */
    } cases[] = {
        {"", 0, 0, 0},
        {PAUSE_FILE_MAGIC "\n", 0, 0, 0},
        {"# comment\n\n" PAUSE_FILE_MAGIC "\r\n* 1 0 all\r\n", 1, 0, 0},
        {"convoy-pauses 2\n* 1 0 x\n", 0, 1, 1},
        {"garbage\n", 0, 1, 1},
        {"# only a comment\n", 0, 1, 1},
        {PAUSE_FILE_MAGIC "\na.test 1 0 ok\nb.test x 0 bad since\nc.test 1 0 ok\n", 2, 1, 3},
        {PAUSE_FILE_MAGIC "\na.test 10 5 ends before it starts\n", 0, 1, 2},
        {PAUSE_FILE_MAGIC "\na.test 0 0 since zero\n", 0, 1, 2},
        {PAUSE_FILE_MAGIC "\na.test 1\n", 0, 1, 2},
        {PAUSE_FILE_MAGIC "\na.test 1 -5 negative\n", 0, 1, 2},
        {PAUSE_FILE_MAGIC "\na.test 1 1234567890123456789 too many digits\n", 0, 1, 2},
        {PAUSE_FILE_MAGIC "\nA.Test 1 0 first\na.test 1 0 second\n", 1, 1, 3},
        {PAUSE_FILE_MAGIC "\n* 1 0 one\n* 2 0 two\n", 1, 1, 3},
        {PAUSE_FILE_MAGIC "\na.test 1 0 nul\0byte\nb.test 1 0 fine\n", 1, 1, 2},
        {PAUSE_FILE_MAGIC "\n a.test 1 0 leading space is fine\n", 1, 0, 0},
        {PAUSE_FILE_MAGIC "\n\x01.test 1 0 control\n", 0, 1, 2},
        {PAUSE_FILE_MAGIC "\n   # 1 0 a domain that is a comment\n", 0, 1, 2},
        {PAUSE_FILE_MAGIC "\na.test 1 0 no newline at the end", 1, 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = strlen(cases[i].text);
        if (strstr(cases[i].text, "nul"))
            len = sizeof(PAUSE_FILE_MAGIC "\na.test 1 0 nul\0byte\nb.test 1 0 fine\n") - 1;
        struct pause_rec out[4];
        struct problems pr = {0};
        size_t n = pause_file_parse(cases[i].text, len, out, 4, on_problem, &pr);
        if (n != cases[i].records || pr.n != cases[i].problems ||
            (pr.n && pr.lines[0] != cases[i].line))
            fail_msg("case %zu: %zu records, %u problems (first at line %u: %s)", i, n, pr.n,
                     pr.n ? pr.lines[0] : 0, pr.last);
    }
}

static void test_limits(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 1 << 20);
    buf_append_str(&b, PAUSE_FILE_MAGIC "\n");
    for (int i = 0; i < 10; i++)
        buf_printf(&b, "d%d.test 1 0 r\n", i);
    struct pause_rec out[4];
    struct problems pr = {0};
    assert_int_equal(pause_file_parse(b.data, b.len, out, 4, on_problem, &pr), 4);
    assert_int_equal(pr.n, 1);
    assert_non_null(strstr(pr.last, "more than 4"));
    /* A line over the bound is skipped. */
    buf_reset(&b);
    buf_append_str(&b, PAUSE_FILE_MAGIC "\na.test 1 0 ");
    for (int i = 0; i < 5000; i++)
        buf_append(&b, "x", 1);
    buf_append_str(&b, "\nb.test 1 0 ok\n");
    memset(&pr, 0, sizeof(pr));
    assert_int_equal(pause_file_parse(b.data, b.len, out, 4, on_problem, &pr), 1);
    assert_string_equal(out[0].domain, "b.test");
    assert_int_equal(pr.lines[0], 2);
    buf_free(&b);
    /* Domains a pause may name. */
    assert_true(pause_domain_ok("example.com"));
    assert_true(pause_domain_ok("[192.0.2.1]"));
    assert_false(pause_domain_ok(""));
    assert_false(pause_domain_ok("*"));
    assert_false(pause_domain_ok("a b"));
    assert_false(pause_domain_ok("a\nb"));
    assert_false(pause_domain_ok("#a"));
    /* A reason cut inside a UTF-8 sequence loses the whole character. */
    char r[6];
    pause_reason_clean("abcd\xc3\xa9", r, sizeof(r));
    assert_string_equal(r, "abcd");
    pause_reason_clean("abc\xc3\xa9", r, sizeof(r));
    assert_string_equal(r, "abc\xc3\xa9");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_damage),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
