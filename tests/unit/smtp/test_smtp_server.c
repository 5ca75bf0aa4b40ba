/*
 * test_smtp_server.c - unit tests of the SMTP server's parsers: command
 * lines, mailbox syntax (RFC 5321 4.1.2, 4.5.3.1), MAIL/RCPT parameters
 * (RFC 1870, 6152, 6531, 3461), BDAT arguments, base64, the line splitter,
 * and the DATA/BDAT reader against a table of SMTP smuggling inputs.
 *
 * Each table row is one case; feeding is repeated in every split (one byte
 * at a time, and at every cut point) to show the readers do not depend on
 * how the bytes arrive.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "server_parse.h"
#include "smtp.h"

/* ---- command lines --------------------------------------------------------- */

static void test_cmd_parse(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        enum smtp_verb verb;
        const char *arg;
        int rc;
    } t[] = {
        {"EHLO client.example", SMTP_V_EHLO, "client.example", 0},
        {"ehlo client.example", SMTP_V_EHLO, "client.example", 0},
        {"MAIL FROM:<a@b.example>", SMTP_V_MAIL, "FROM:<a@b.example>", 0},
        {"rcpt   TO:<a@b.example>  ", SMTP_V_RCPT, "TO:<a@b.example>", 0},
        {"DATA", SMTP_V_DATA, "", 0},
        {"BDAT 100 LAST", SMTP_V_BDAT, "100 LAST", 0},
        {"STARTTLS", SMTP_V_STARTTLS, "", 0},
        {"QUIT", SMTP_V_QUIT, "", 0},
        {"DATAX", SMTP_V_UNKNOWN, "", 0},
        {"", SMTP_V_UNKNOWN, "", 0},
        {"XYZZY plugh", SMTP_V_UNKNOWN, "plugh", 0},
        {"NOOP \x01", SMTP_V_UNKNOWN, "", ERR_PROTO},
        {"NOOP \x7f", SMTP_V_UNKNOWN, "", ERR_PROTO},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct smtp_cmd c;
        const char *why = NULL;
        int rc = smtp_cmd_parse(t[i].line, strlen(t[i].line), &c, &why);
        assert_int_equal(rc, t[i].rc);
        if (rc == 0) {
            assert_int_equal(c.verb, t[i].verb);
            assert_int_equal(c.arg.len, strlen(t[i].arg));
            assert_memory_equal(c.arg.ptr, t[i].arg, c.arg.len);
        } else {
            assert_non_null(why);
            assert_int_equal(why[0], '5');
        }
    }
    /* A NUL inside the line. */
    struct smtp_cmd c;
    const char *why = NULL;
    assert_int_equal(smtp_cmd_parse("NOOP\0x", 6, &c, &why), ERR_PROTO);
    assert_string_equal(smtp_verb_name(SMTP_V_STARTTLS), "STARTTLS");
}

/* ---- mailboxes ------------------------------------------------------------- */

static void test_mailbox(void **state)
{
    (void)state;
    char l64[65], l65[66], dom[300];
    memset(l64, 'a', 64);
    l64[64] = '\0';
    memset(l65, 'a', 65);
    l65[65] = '\0';
    char ok64[128], bad65[128];
    snprintf(ok64, sizeof(ok64), "%s@example.com", l64);
    snprintf(bad65, sizeof(bad65), "%s@example.com", l65);
    /* A 256-octet domain of 63-octet labels. */
    size_t o = 0;
    for (int i = 0; i < 4; i++) {
        memset(dom + o, 'd', 63);
        o += 63;
        dom[o++] = '.';
    }
    memcpy(dom + o, "com", 3);
    o += 3;
    dom[o] = '\0';
    char longdom[320];
    snprintf(longdom, sizeof(longdom), "a@%s", dom);

    static const struct {
        const char *addr;
        bool utf8;
        int rc;
        const char *code; /* prefix of why */
    } t[] = {
        {"user@example.com", false, 0, NULL},
        {"first.last+tag@sub.example.com", false, 0, NULL},
        {"\"quoted local\"@example.com", false, 0, NULL},
        {"\"a\\\"b\"@example.com", false, 0, NULL},
        {"\"odd@local\"@example.com", false, 0, NULL},
        {"user@[192.0.2.1]", false, 0, NULL},
        {"user@[IPv6:2001:db8::1]", false, 0, NULL},
        {"user@[300.1.1.1]", false, ERR_INVAL, "5.1.2"},
        {"user@[mumble]", false, ERR_INVAL, "5.1.2"},
        {"userexample.com", false, ERR_INVAL, "5.1.3"},
        {"@example.com", false, ERR_INVAL, "5.1.3"},
        {"user@", false, ERR_INVAL, "5.1.2"},
        {".user@example.com", false, ERR_INVAL, "5.1.3"},
        {"us..er@example.com", false, ERR_INVAL, "5.1.3"},
        {"user.@example.com", false, ERR_INVAL, "5.1.3"},
        {"us er@example.com", false, ERR_INVAL, "5.1.3"},
        {"user@-example.com", false, ERR_INVAL, "5.1.2"},
        {"user@example-.com", false, ERR_INVAL, "5.1.2"},
        {"user@exa_mple.com", false, ERR_INVAL, "5.1.2"},
        {"user@example..com", false, ERR_INVAL, "5.1.2"},
        {"user@example.com.", false, ERR_INVAL, "5.1.2"},
        {"j\xc3\xb6rg@example.com", false, ERR_INVAL, "5.6.7"},
        {"j\xc3\xb6rg@example.com", true, 0, NULL},
        {"user@b\xc3\xbc\x63her.example", true, 0, NULL},
        {"j\xc3rg@example.com", true, ERR_INVAL, "5.1.3"},
        {"j\xed\xa0\x80@example.com", true, ERR_INVAL, "5.1.3"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        const char *why = NULL;
        int rc = smtp_mailbox_check(t[i].addr, strlen(t[i].addr), t[i].utf8, &why);
        if (rc != t[i].rc)
            fail_msg("case %zu (%s): rc %d, want %d (%s)", i, t[i].addr, rc, t[i].rc,
                     why ? why : "");
        if (t[i].code)
            assert_memory_equal(why, t[i].code, strlen(t[i].code));
    }
    const char *why = NULL;
    assert_int_equal(smtp_mailbox_check(ok64, strlen(ok64), false, &why), 0);
    assert_int_equal(smtp_mailbox_check(bad65, strlen(bad65), false, &why), ERR_INVAL);
    assert_non_null(strstr(why, "64"));
    assert_int_equal(smtp_mailbox_check(longdom, strlen(longdom), false, &why), ERR_INVAL);
    assert_non_null(strstr(why, "255"));
}

/* ---- MAIL and RCPT ---------------------------------------------------------- */

static struct view V(const char *s) {
    return (struct view){s, strlen(s)};
}

static void
test_mail_args(void **state)
{
    (void)state;
    static const struct {
        const char *arg;
        bool utf8_ok;
        const char *want; /* NULL: accepted; else the reply's first 9 octets */
    } t[] = {
        {"FROM:<a@example.com>", true, NULL},
        {"from:<a@example.com>", true, NULL},
        {"FROM: <a@example.com>", true, NULL},
        {"FROM:<>", true, NULL},
        {"FROM:<@relay.example:a@example.com>", true, NULL},
        {"FROM:<a@example.com> SIZE=1000 BODY=8BITMIME", true, NULL},
        {"FROM:<a@example.com> RET=HDRS ENVID=QQ314159", true, NULL},
        {"FROM:<a@example.com> ENVID=a+2Bb", true, NULL},
        {"FROM:<a@example.com> AUTH=<>", true, NULL},
        {"FROM:<j\xc3\xb6rg@example.com> SMTPUTF8", true, NULL},
        {"FROM:<j\xc3\xb6rg@example.com>", true, "553 5.6.7"},
        {"FROM:<j\xc3\xb6rg@example.com> SMTPUTF8", false, "553 5.6.7"},
        {"FROM:a@example.com", true, "501 5.5.2"},
        {"FROM:<a@example.com", true, "501 5.5.2"},
        {"FROM:<a@example.com>x", true, "501 5.5.2"},
        {"FROM:<a@@example.com>", true, "501 5.1.7"},
        {"TO:<a@example.com>", true, "501 5.5.4"},
        {"FROM:<a@example.com> SIZE=abc", true, "501 5.5.4"},
        {"FROM:<a@example.com> SIZE=1 SIZE=2", true, "501 5.5.4"},
        {"FROM:<a@example.com> BODY=BINARYMIME", true, "501 5.5.4"},
        {"FROM:<a@example.com> RET=ALL", true, "501 5.5.4"},
        {"FROM:<a@example.com> ENVID=a=b", true, "501 5.5.4"},
        {"FROM:<a@example.com> ENVID=a+zz", true, "501 5.5.4"},
        {"FROM:<a@example.com> FOO=bar", true, "555 5.5.4"},
        {"FROM:<a@example.com> SIZE=", true, "501 5.5.4"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct smtp_mail_args m;
        const char *why = NULL;
        int rc = smtp_parse_mail(V(t[i].arg), t[i].utf8_ok, &m, &why);
        if (!t[i].want) {
            if (rc != 0)
                fail_msg("case %zu (%s): refused: %s", i, t[i].arg, why);
        } else {
            if (rc == 0)
                fail_msg("case %zu (%s): accepted", i, t[i].arg);
            if (strncmp(why, t[i].want, 9) != 0)
                fail_msg("case %zu (%s): reply %s, want %s", i, t[i].arg, why, t[i].want);
        }
    }
    struct smtp_mail_args m;
    const char *why;
    assert_int_equal(smtp_parse_mail(V("FROM:<@r.example:a@example.com> SIZE=1234 BODY=8BITMIME "
                                       "RET=FULL ENVID=x+2By"),
                                     true, &m, &why),
                     0);
    assert_string_equal(m.addr, "a@example.com");
    assert_true(m.has_size);
    assert_int_equal(m.size, 1234);
    assert_int_equal(m.body, SMTP_BODY_8BITMIME);
    assert_int_equal(m.ret, SMTP_PARSE_RET_FULL);
    assert_string_equal(m.envid, "x+2By");
    assert_int_equal(smtp_parse_mail(V("FROM:<>"), true, &m, &why), 0);
    assert_string_equal(m.addr, "");
}

static void test_rcpt_args(void **state)
{
    (void)state;
    static const struct {
        const char *arg;
        bool utf8;
        const char *want;
        unsigned notify;
    } t[] = {
        {"TO:<b@example.com>", false, NULL, 0},
        {"TO:<b@example.com> NOTIFY=SUCCESS,FAILURE", false, NULL,
         SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE},
        {"TO:<b@example.com> NOTIFY=NEVER", false, NULL, SMTP_NOTIFY_NEVER},
        {"TO:<b@example.com> NOTIFY=never ORCPT=rfc822;b+40example.com", false, NULL,
         SMTP_NOTIFY_NEVER},
        {"TO:<b@example.com> NOTIFY=NEVER,DELAY", false, "501 5.5.4", 0},
        {"TO:<b@example.com> NOTIFY=SUCCESS,SUCCESS", false, "501 5.5.4", 0},
        {"TO:<b@example.com> NOTIFY=", false, "501 5.5.4", 0},
        {"TO:<b@example.com> ORCPT=b@example.com", false, "501 5.5.4", 0},
        {"TO:<b@example.com> ORCPT=rfc822;", false, "501 5.5.4", 0},
        {"TO:<b@example.com> ORCPT=rfc822;a=b", false, "501 5.5.4", 0},
        {"TO:<>", false, "501 5.1.3", 0},
        {"TO:<b>", false, "501 5.1.3", 0},
        /* RFC 5321 4.1.1.3, 4.5.1: the bare <Postmaster>, any case. */
        {"TO:<postmaster>", false, NULL, 0},
        {"TO:<PostMaster> NOTIFY=NEVER", false, NULL, SMTP_NOTIFY_NEVER},
        {"TO: <POSTMASTER>", false, NULL, 0},
        {"TO:<postmaster>x", false, "501 5.5.2", 0},
        {"TO:<postmasterx>", false, "501 5.1.3", 0},
        {"TO:<post master>", false, "501 5.1.3", 0},
        {"TO:<\xc3\xa5@example.com>", false, "553 5.6.7", 0},
        {"TO:<\xc3\xa5@example.com>", true, NULL, 0},
        {"TO:<b@example.com> FOO", false, "555 5.5.4", 0},
        {"FROM:<b@example.com>", false, "501 5.5.4", 0},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct smtp_rcpt_args r;
        const char *pwhy = NULL;
        assert_int_equal(smtp_parse_rcpt(V("TO:<pOstmaster>"), false, &r, &pwhy), 0);
        assert_true(r.postmaster);
        assert_string_equal(r.addr, "postmaster");
        assert_int_equal(smtp_parse_rcpt(V("TO:<postmaster@example.com>"), false, &r, &pwhy), 0);
        assert_false(r.postmaster);
        const char *why = NULL;
        int rc = smtp_parse_rcpt(V(t[i].arg), t[i].utf8, &r, &why);
        if (!t[i].want) {
            if (rc != 0)
                fail_msg("case %zu (%s): refused: %s", i, t[i].arg, why);
            assert_int_equal(r.notify, t[i].notify);
        } else {
            if (rc == 0)
                fail_msg("case %zu (%s): accepted", i, t[i].arg);
            if (strncmp(why, t[i].want, 9) != 0)
                fail_msg("case %zu (%s): reply %s, want %s", i, t[i].arg, why, t[i].want);
        }
    }
    struct smtp_rcpt_args r;
    const char *why;
    assert_int_equal(
        smtp_parse_rcpt(V("TO:<b@example.com> ORCPT=rfc822;b+40example.com"), false, &r, &why), 0);
    assert_string_equal(r.orcpt, "rfc822;b+40example.com");
    assert_string_equal(r.addr, "b@example.com");
}

static void test_bdat_args(void **state)
{
    (void)state;
    uint64_t n;
    bool last;
    assert_int_equal(smtp_parse_bdat(V("100"), &n, &last), 0);
    assert_int_equal(n, 100);
    assert_false(last);
    assert_int_equal(smtp_parse_bdat(V("0 LAST"), &n, &last), 0);
    assert_int_equal(n, 0);
    assert_true(last);
    assert_int_equal(smtp_parse_bdat(V("12 last"), &n, &last), 0);
    assert_true(last);
    assert_int_equal(smtp_parse_bdat(V(""), &n, &last), ERR_INVAL);
    assert_int_equal(smtp_parse_bdat(V("-1"), &n, &last), ERR_INVAL);
    assert_int_equal(smtp_parse_bdat(V("12 FIRST"), &n, &last), ERR_INVAL);
    assert_int_equal(smtp_parse_bdat(V("99999999999999999999999"), &n, &last), ERR_INVAL);
}

static void test_base64(void **state)
{
    (void)state;
    unsigned char out[64];
    int n = smtp_base64_decode("AHVzZXIAcGFzcw==", 16, out, sizeof(out));
    assert_int_equal(n, 10);
    assert_memory_equal(out, "\0user\0pass", 10);
    assert_int_equal(smtp_base64_decode("Zm9v", 4, out, sizeof(out)), 3);
    assert_int_equal(smtp_base64_decode("Zm8=", 4, out, sizeof(out)), 2);
    assert_int_equal(smtp_base64_decode("Zg==", 4, out, sizeof(out)), 1);
    assert_int_equal(smtp_base64_decode("", 0, out, sizeof(out)), 0);
    assert_int_equal(smtp_base64_decode("Zm9", 3, out, sizeof(out)), ERR_INVAL);
    assert_int_equal(smtp_base64_decode("Z===", 4, out, sizeof(out)), ERR_INVAL);
    assert_int_equal(smtp_base64_decode("Zg==Zg==", 8, out, sizeof(out)), ERR_INVAL);
    assert_int_equal(smtp_base64_decode("Zm 9", 4, out, sizeof(out)), ERR_INVAL);
    assert_int_equal(smtp_base64_decode("Zm9v", 4, out, 2), ERR_TOOBIG);
}

/* ---- the line splitter -------------------------------------------------------- */

/* Split input into lines, n bytes per feed; write "text|EOL\n" records. */
static void split_lines(const char *in, size_t len, size_t step, char *out, size_t outsz)
{
    char store[16];
    struct smtp_lines l;
    smtp_lines_init(&l, store, sizeof(store));
    size_t o = 0, off = 0;
    out[0] = '\0';
    while (off < len) {
        size_t n = len - off < step ? len - off : step;
        size_t used = 0;
        while (used < n || (l.pending_cr && used < n)) {
            bool complete;
            enum smtp_eol eol;
            used += smtp_lines_feed(&l, in + off + used, n - used, &complete, &eol);
            if (!complete)
                break;
            static const char *const names[] = {"CRLF", "LF", "CR"};
            o += (size_t)snprintf(out + o, outsz - o, "%.*s%s|%s\n", (int)l.len, l.line,
                                  l.overflow ? "+" : "", names[eol]);
            smtp_lines_next(&l);
        }
        off += n;
    }
    if (l.pending_cr)
        o += (size_t)snprintf(out + o, outsz - o, "(pending CR)\n");
}

static void test_lines(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *want;
    } t[] = {
        {"A\r\nB\r\n", "A|CRLF\nB|CRLF\n"},
        {"A\nB\r\n", "A|LF\nB|CRLF\n"},
        {"A\rB\r\n", "A|CR\nB|CRLF\n"},
        {"A\r\r\n", "A|CR\n|CRLF\n"},
        {"A\n\r\n", "A|LF\n|CRLF\n"},
        {"A\r", "(pending CR)\n"},
        {"0123456789abcdefXYZ\r\nB\r\n", "0123456789abcdef+|CRLF\nB|CRLF\n"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        for (size_t step = 1; step <= strlen(t[i].in); step++) {
            char out[256];
            split_lines(t[i].in, strlen(t[i].in), step, out, sizeof(out));
            if (strcmp(out, t[i].want) != 0)
                fail_msg("case %zu step %zu: got\n%s\nwant\n%s", i, step, out, t[i].want);
        }
    }
}

/* ---- the DATA reader: smuggling and friends ----------------------------------- */

struct data_case {
    const char *name;
    const char *in;
    size_t len; /* 0: strlen */
    enum smtp_bare_mode mode;
    int rc;           /* 0, or ERR_PROTO (reject mode, bare CR/LF) */
    bool done;        /* end of data found */
    const char *body; /* stored message when done and clean */
    const char *rest; /* bytes left after the end of data */
    unsigned flags;
};

static const struct data_case data_cases[] = {
    {"plain", "Subject: x\r\n\r\nhello\r\n.\r\n", 0, SMTP_BARE_REJECT, 0, true,
     "Subject: x\r\n\r\nhello\r\n", "", 0},
    {"empty message", ".\r\n", 0, SMTP_BARE_REJECT, 0, true, "", "", 0},
    {"dot-stuffing removed", "..a\r\n...\r\n.\r\n", 0, SMTP_BARE_REJECT, 0, true, ".a\r\n..\r\n",
     "", 0},
    {"pipelined commands after the dot", "x\r\n.\r\nMAIL FROM:<a@b>\r\n", 0, SMTP_BARE_REJECT, 0,
     true, "x\r\n", "MAIL FROM:<a@b>\r\n", 0},
    {"not done without the final dot", "x\r\n.y\r\n", 0, SMTP_BARE_REJECT, 0, false, NULL, NULL, 0},
    /* The smuggling shapes (CVE-2023-51764 and relatives). */
    {"LF.LF in reject mode", "x\n.\nMAIL FROM:<evil@x>\r\n.\r\n", 0, SMTP_BARE_REJECT, ERR_PROTO,
     false, NULL, NULL, SMTP_DATA_BARE_LF},
    {"CR.CR in reject mode", "x\r.\rMAIL FROM:<evil@x>\r\n.\r\n", 0, SMTP_BARE_REJECT, ERR_PROTO,
     false, NULL, NULL, SMTP_DATA_BARE_CR},
    {"LF.CRLF in reject mode", "x\n.\r\nMAIL\r\n.\r\n", 0, SMTP_BARE_REJECT, ERR_PROTO, false, NULL,
     NULL, SMTP_DATA_BARE_LF},
    {"CRLF.LF in reject mode", "x\r\n.\nMAIL\r\n.\r\n", 0, SMTP_BARE_REJECT, ERR_PROTO, false, NULL,
     NULL, SMTP_DATA_BARE_LF},
    {"CR LF split by CR in reject mode", "x\r\r\n.\r\n", 0, SMTP_BARE_REJECT, ERR_PROTO, false,
     NULL, NULL, SMTP_DATA_BARE_CR},
    {"LF.LF normalized is not an end", "x\n.\nMAIL FROM:<evil@x>\r\n.\r\n", 0, SMTP_BARE_NORMALIZE,
     0, true, "x\r\n.\r\nMAIL FROM:<evil@x>\r\n", "", 0},
    {"CR.CR normalized is not an end", "x\r.\rMAIL\r\n.\r\n", 0, SMTP_BARE_NORMALIZE, 0, true,
     "x\r\n.\r\nMAIL\r\n", "", 0},
    {"LF.CRLF normalized is not an end", "x\n.\r\nMAIL\r\n.\r\n", 0, SMTP_BARE_NORMALIZE, 0, true,
     "x\r\n.\r\nMAIL\r\n", "", 0},
    {"CRLF.LF normalized is not an end", "x\r\n.\nMAIL\r\n.\r\n", 0, SMTP_BARE_NORMALIZE, 0, true,
     "x\r\n.\r\nMAIL\r\n", "", 0},
    {"CRLF.CR normalized is not an end", "x\r\n.\rMAIL\r\n.\r\n", 0, SMTP_BARE_NORMALIZE, 0, true,
     "x\r\n.\r\nMAIL\r\n", "", 0},
    {"bare LF inside a line normalized", "a\nb\r\n.\r\n", 0, SMTP_BARE_NORMALIZE, 0, true,
     "a\r\nb\r\n", "", 0},
    {"NUL is refused", "a\0b\r\n.\r\n", 8, SMTP_BARE_REJECT, 0, true, NULL, "", SMTP_DATA_NUL},
    {"NUL is refused when normalizing", "a\0b\r\n.\r\n", 8, SMTP_BARE_NORMALIZE, 0, true, NULL, "",
     SMTP_DATA_NUL},
    {"dot then space is text", "x\r\n. \r\n.\r\n", 0, SMTP_BARE_REJECT, 0, true, "x\r\n \r\n", "",
     0},
};

/* Feed a case in chunks of step bytes; return the reader's verdict. */
static int run_data(const struct data_case *c, size_t step, struct buf *out, size_t *consumed,
                    struct smtp_data *d)
{
    size_t len = c->len ? c->len : strlen(c->in);
    buf_reset(out);
    smtp_data_init(d, c->mode, false, 1 << 20, true, out);
    size_t off = 0;
    while (off < len && !d->done) {
        size_t n = len - off < step ? len - off : step;
        long k = smtp_data_feed(d, c->in + off, n);
        if (k < 0) {
            *consumed = off;
            return (int)k;
        }
        off += (size_t)k;
        if ((size_t)k < n && !d->done)
            fail_msg("%s: reader stopped early", c->name);
    }
    *consumed = off;
    return 0;
}

static void test_data_smuggling(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out, 1 << 20);
    for (size_t i = 0; i < sizeof(data_cases) / sizeof(data_cases[0]); i++) {
        const struct data_case *c = &data_cases[i];
        size_t len = c->len ? c->len : strlen(c->in);
        for (size_t step = 1; step <= len; step++) {
            struct smtp_data d;
            size_t used;
            int rc = run_data(c, step, &out, &used, &d);
            if (rc != c->rc)
                fail_msg("%s (step %zu): rc %d, want %d", c->name, step, rc, c->rc);
            if ((d.flags & c->flags) != c->flags)
                fail_msg("%s (step %zu): flags %#x, want %#x", c->name, step, d.flags, c->flags);
            if (rc)
                continue;
            if (d.done != c->done)
                fail_msg("%s (step %zu): done %d, want %d", c->name, step, d.done, c->done);
            if (!c->done)
                continue;
            if (c->body) {
                assert_null(smtp_data_reject_reply(&d));
                if (out.len != strlen(c->body) || memcmp(out.data, c->body, out.len) != 0)
                    fail_msg("%s (step %zu): body \"%s\"", c->name, step, out.data);
            } else {
                assert_non_null(smtp_data_reject_reply(&d));
            }
            const char *rest = c->in + used;
            if (len - used != strlen(c->rest) || memcmp(rest, c->rest, len - used) != 0)
                fail_msg("%s (step %zu): rest differs", c->name, step);
        }
    }
    buf_free(&out);
}

/* The DATA command itself ended in a bare LF: a "." line right after it
 * cannot be an end of data. */
static void test_data_prev_line(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out, 4096);
    struct smtp_data d;
    smtp_data_init(&d, SMTP_BARE_NORMALIZE, false, 4096, false, &out);
    long k = smtp_data_feed(&d, ".\r\nx\r\n.\r\n", 9);
    assert_int_equal(k, 9);
    assert_true(d.done);
    assert_string_equal(out.data, ".\r\nx\r\n");
    buf_free(&out);
}

static void test_data_limits(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out, 1 << 20);
    struct smtp_data d;
    /* A message over the size limit reads to its end, then is refused. */
    smtp_data_init(&d, SMTP_BARE_REJECT, false, 10, true, &out);
    const char *big = "0123456789\r\n0123456789\r\n.\r\nQUIT\r\n";
    long k = smtp_data_feed(&d, big, strlen(big));
    assert_int_equal(k, (long)strlen(big) - 6);
    assert_true(d.done);
    assert_true(d.flags & SMTP_DATA_TOO_BIG);
    assert_non_null(strstr(smtp_data_reject_reply(&d), "552 5.3.4"));
    /* A line of 998 octets is fine; 999 is not. */
    char line[1100];
    for (int n = 998; n <= 999; n++) {
        memset(line, 'x', (size_t)n);
        memcpy(line + n, "\r\n.\r\n", 5);
        buf_reset(&out);
        smtp_data_init(&d, SMTP_BARE_REJECT, false, 1 << 20, true, &out);
        assert_int_equal(smtp_data_feed(&d, line, (size_t)n + 5), n + 5);
        assert_true(d.done);
        if (n == 998)
            assert_null(smtp_data_reject_reply(&d));
        else
            assert_non_null(strstr(smtp_data_reject_reply(&d), "998"));
    }
    /* A dot-stuffed line of 998 after unstuffing is fine. */
    line[0] = '.';
    memset(line + 1, 'x', 998);
    memcpy(line + 999, "\r\n.\r\n", 5);
    buf_reset(&out);
    smtp_data_init(&d, SMTP_BARE_REJECT, false, 1 << 20, true, &out);
    assert_int_equal(smtp_data_feed(&d, line, 1004), 1004);
    assert_null(smtp_data_reject_reply(&d));
    buf_free(&out);
}

/* Feed msg to a folding reader in pieces of step octets. */
static void fold_feed(struct smtp_data *d, struct buf *out, bool bdat, const char *msg, size_t len,
                      size_t step)
{
    buf_reset(out);
    smtp_data_init(d, SMTP_BARE_REJECT, bdat, 1 << 20, true, out);
    d->fold = true;
    size_t off = 0;
    while (off < len && !d->done) {
        size_t n = len - off < step ? len - off : step;
        long k = smtp_data_feed(d, msg + off, n);
        assert_true(k >= 0);
        off += (size_t)k;
        if ((size_t)k < n)
            break;
    }
    if (bdat)
        assert_int_equal(smtp_data_finish(d), 0);
}

/* Delete every CRLF SP: the unfolding that gives back the client's lines. */
static size_t unfold(const char *p, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 2 < n && p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == ' ') {
            i += 2;
            continue;
        }
        out[k++] = p[i];
    }
    return k;
}

static void test_data_fold(void **state)
{
    (void)state;
    /* Text as stored (no dot-stuffing): a long header with spaces, a long
     * body line without, a line of exactly 998, one of 999, one starting
     * with a dot, and lines longer than two folds. */
    static char text[20000];
    size_t n = 0;
    n += (size_t)snprintf(text + n, sizeof(text) - n, "Subject: ");
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "w%03d ", i);
    n += (size_t)snprintf(text + n, sizeof(text) - n, "end\r\n\r\n");
    const size_t lens[] = {998, 999, 1995, 1996, 3000, 5};
    for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
        text[n++] = j == 4 ? '.' : 'a';
        memset(text + n, 'a' + (int)j, lens[j] - 1);
        n += lens[j] - 1;
        memcpy(text + n, "\r\n", 2);
        n += 2;
    }
    /* The same on the wire for DATA: dot-stuffed, with the end. */
    static char wire[21000];
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (text[i] == '.' && (i == 0 || text[i - 1] == '\n'))
            wire[w++] = '.';
        wire[w++] = text[i];
    }
    memcpy(wire + w, ".\r\n", 3);
    w += 3;

    struct buf out;
    buf_init(&out, 1 << 20);
    struct smtp_data d;
    static char back[21000];
    const size_t steps[] = {1, 7, 998, 999, 1000, 4096, 100000};
    for (int bdat = 0; bdat <= 1; bdat++) {
        for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
            fold_feed(&d, &out, bdat, bdat ? text : wire, bdat ? n : w, steps[s]);
            assert_true(bdat || d.done);
            assert_null(smtp_data_reject_reply(&d));
            /* Every stored line is at most 998 octets and ends in CRLF. */
            size_t col = 0;
            for (size_t i = 0; i < out.len; i++) {
                if (out.data[i] == '\r') {
                    assert_true(i + 1 < out.len && out.data[i + 1] == '\n');
                    i++;
                    col = 0;
                    continue;
                }
                assert_true(++col <= SMTP_TEXT_LINE_MAX);
            }
            /* Unfolding gives back the text exactly. */
            size_t k = unfold(out.data, out.len, back);
            assert_int_equal(k, n);
            assert_memory_equal(back, text, n);
            assert_true(d.seen_date == false);
        }
    }
    /* The header is folded right after a space; the 998 line is untouched;
     * the 999 line is folded at 998. */
    assert_non_null(strstr(out.data, " \r\n w"));
    assert_non_null(strstr(out.data, "b\r\n b\r\n"));
    /* A NUL in a long line is caught before any piece of it is stored. */
    static char nul[2000];
    memset(nul, 'n', sizeof(nul));
    nul[10] = '\0';
    fold_feed(&d, &out, false, nul, sizeof(nul), sizeof(nul));
    assert_true(d.flags & SMTP_DATA_NUL);
    assert_null(memchr(out.data, '\0', out.len));
    buf_free(&out);
}

static void test_data_received_count(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out, 1 << 16);
    struct smtp_data d;
    smtp_data_init(&d, SMTP_BARE_REJECT, false, 1 << 16, true, &out);
    const char *m = "Received: a\r\n\tcontinued\r\nRECEIVED: b\r\nReceived : c\r\n"
                    "Received-SPF: pass\r\nX-Received: d\r\nSubject: s\r\n\r\n"
                    "Received: in the body\r\n.\r\n";
    smtp_data_feed(&d, m, strlen(m));
    assert_true(d.done);
    assert_int_equal(d.received, 3);
    buf_free(&out);
}

static void test_data_headers(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out, 4096);
    struct smtp_data d;
    smtp_data_init(&d, SMTP_BARE_REJECT, false, 4096, true, &out);
    const char *m = "Subject: x\r\nDATE: today\r\n\r\nMessage-ID: <not a header>\r\n.\r\n";
    smtp_data_feed(&d, m, strlen(m));
    assert_true(d.done);
    assert_true(d.seen_date);
    assert_false(d.seen_msgid);
    buf_free(&out);
}

static void test_bdat_reader(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out, 4096);
    struct smtp_data d;
    /* No dot handling; a last line without CRLF gets one. */
    smtp_data_init(&d, SMTP_BARE_REJECT, true, 4096, true, &out);
    const char *c1 = "a\r\n.\r\n..b\r\nlast";
    assert_int_equal(smtp_data_feed(&d, c1, strlen(c1)), (long)strlen(c1));
    assert_false(d.done);
    assert_int_equal(smtp_data_finish(&d), 0);
    assert_string_equal(out.data, "a\r\n.\r\n..b\r\nlast\r\n");
    /* A chunk that ends in CR, then LF in the next chunk, is one CRLF. */
    buf_reset(&out);
    smtp_data_init(&d, SMTP_BARE_REJECT, true, 4096, true, &out);
    assert_int_equal(smtp_data_feed(&d, "a\r", 2), 2);
    assert_int_equal(smtp_data_feed(&d, "\nb\r\n", 4), 4);
    assert_int_equal(smtp_data_finish(&d), 0);
    assert_string_equal(out.data, "a\r\nb\r\n");
    /* A final bare CR is refused in reject mode, normalized otherwise. */
    buf_reset(&out);
    smtp_data_init(&d, SMTP_BARE_REJECT, true, 4096, true, &out);
    smtp_data_feed(&d, "a\r", 2);
    assert_int_equal(smtp_data_finish(&d), ERR_PROTO);
    buf_reset(&out);
    smtp_data_init(&d, SMTP_BARE_NORMALIZE, true, 4096, true, &out);
    smtp_data_feed(&d, "a\r", 2);
    assert_int_equal(smtp_data_finish(&d), 0);
    assert_string_equal(out.data, "a\r\n");
    buf_free(&out);
}

/* ---- credentials ----------------------------------------------------------------- */

static void test_credentials(void **state)
{
    (void)state;
    char path[] = "/tmp/convoy-creds-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    /* SHA-512-crypt of "secret" with salt "saltsalt". */
    const char *good =
        "# "
        "users\n\nalice:$6$saltsalt$"
        "TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1\n";
    assert_int_equal(write(fd, good, strlen(good)), (ssize_t)strlen(good));
    close(fd);
    struct buf err;
    buf_init(&err, 4096);
    struct smtpd_credentials *c = smtpd_credentials_load(path, &err);
    assert_non_null(c);
    assert_int_equal(smtpd_credentials_count(c), 1);
    smtpd_credentials_free(c);

    fd = open(path, O_WRONLY | O_TRUNC);
    const char *bad = "bob:plaintext\nnocolon\n";
    assert_int_equal(write(fd, bad, strlen(bad)), (ssize_t)strlen(bad));
    close(fd);
    buf_reset(&err);
    assert_null(smtpd_credentials_load(path, &err));
    assert_non_null(strstr(err.data, ":1:"));
    assert_non_null(strstr(err.data, ":2:"));
    unlink(path);
    buf_free(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cmd_parse),      cmocka_unit_test(test_mailbox),
        cmocka_unit_test(test_mail_args),      cmocka_unit_test(test_rcpt_args),
        cmocka_unit_test(test_bdat_args),      cmocka_unit_test(test_base64),
        cmocka_unit_test(test_lines),          cmocka_unit_test(test_data_smuggling),
        cmocka_unit_test(test_data_prev_line), cmocka_unit_test(test_data_limits),
        cmocka_unit_test(test_data_headers),   cmocka_unit_test(test_bdat_reader),
        cmocka_unit_test(test_data_fold),      cmocka_unit_test(test_data_received_count),
        cmocka_unit_test(test_credentials),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
