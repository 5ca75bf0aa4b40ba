/*
 * fuzz_smtp_command.c - libFuzzer driver for the SMTP server's command
 * side: the line splitter over arbitrary bytes, the command parser, and the
 * argument parsers (MAIL, RCPT, BDAT, AUTH's base64, mailbox syntax).
 *
 * Invariants checked: no crash or sanitizer report; every refusal comes
 * with a reply whose first digit is 4 or 5; accepted addresses pass the
 * mailbox check they were parsed with and fit RFC 5321's path limit.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server_parse.h"

static void check_reply(const char *why)
{
    if (!why || (why[0] != '4' && why[0] != '5'))
        abort();
}

static void one_line(const char *line, size_t len)
{
    struct smtp_cmd c;
    const char *why = NULL;
    if (smtp_cmd_parse(line, len, &c, &why) != 0) {
        check_reply(why);
        return;
    }
    switch (c.verb) {
    case SMTP_V_MAIL:
        for (int utf8 = 0; utf8 <= 1; utf8++) {
            struct smtp_mail_args m;
            if (smtp_parse_mail(c.arg, utf8, &m, &why) != 0) {
                check_reply(why);
                continue;
            }
            size_t n = strlen(m.addr);
            if (n + 2 > SMTP_PATH_MAX)
                abort();
            if (n && smtp_mailbox_check(m.addr, n, m.smtputf8, &why) != 0)
                abort();
        }
        break;
    case SMTP_V_RCPT:
        for (int utf8 = 0; utf8 <= 1; utf8++) {
            struct smtp_rcpt_args r;
            if (smtp_parse_rcpt(c.arg, utf8, &r, &why) != 0) {
                check_reply(why);
                continue;
            }
            /* The bare <Postmaster> (RFC 5321 4.1.1.3) is the one path
             * without a domain; the server routes it to a full address. */
            if (r.postmaster ? strcmp(r.addr, "postmaster") != 0
                             : smtp_mailbox_check(r.addr, strlen(r.addr), utf8, &why) != 0)
                abort();
        }
        break;
    case SMTP_V_BDAT: {
        uint64_t size;
        bool last;
        (void)smtp_parse_bdat(c.arg, &size, &last);
        break;
    }
    default: {
        unsigned char out[SMTP_CMD_LINE_MAX];
        int n = smtp_base64_decode(c.arg.ptr, c.arg.len, out, sizeof(out));
        if (n > (int)sizeof(out))
            abort();
        (void)smtp_mailbox_check(c.arg.ptr, c.arg.len, true, &why);
        break;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char store[SMTP_CMD_LINE_MAX];
    struct smtp_lines l;
    smtp_lines_init(&l, store, sizeof(store));
    const char *p = (const char *)data;
    size_t off = 0;
    while (off < size) {
        bool complete;
        enum smtp_eol eol;
        size_t k = smtp_lines_feed(&l, p + off, size - off, &complete, &eol);
        if (k > size - off)
            abort();
        off += k;
        if (!complete)
            break;
        if (l.len > l.max)
            abort();
        one_line(l.line, l.len);
        smtp_lines_next(&l);
    }
    return 0;
}
