/*
 * reply.c - the SMTP reply parser, shared by the client and server sides.
 *
 * RFC 5321 4.2: a reply is one or more lines "NNN-text" ending with one line
 * "NNN text" or "NNN"; every line carries the same code. RFC 2034 / 3463: the
 * text may begin with an enhanced status "class.subject.detail" whose class
 * matches the first digit of the code.
 *
 * Invariants: the parser is fed one line at a time (without CRLF) and never
 * reads past the given length; lines, line counts and total text are bounded
 * (SMTP_REPLY_*); a malformed line is reported, never guessed at.
 */
#include <string.h>

#include "smtp.h"

void smtp_reply_init(struct smtp_reply *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->text, SMTP_REPLY_TEXT_MAX);
}

void smtp_reply_reset(struct smtp_reply *r)
{
    r->code = 0;
    r->status[0] = '\0';
    r->nlines = 0;
    r->done = false;
    buf_reset(&r->text);
}

void smtp_reply_free(struct smtp_reply *r)
{
    buf_free(&r->text);
    smtp_reply_reset(r);
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Digits at s[*i..], at least 1 and at most max; advances *i. */
static bool digits(const char *s, size_t n, size_t *i, size_t max)
{
    size_t start = *i;
    while (*i < n && is_digit(s[*i]) && *i - start < max)
        (*i)++;
    if (*i == start)
        return false;
    /* More digits than allowed: not a status code. */
    return !(*i < n && is_digit(s[*i]));
}

bool smtp_status_parse(const char *s, size_t n, size_t *len)
{
    size_t i = 0;
    if (n < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5'))
        return false;
    i = 1;
    if (i >= n || s[i] != '.')
        return false;
    i++;
    if (!digits(s, n, &i, 3))
        return false;
    if (i >= n || s[i] != '.')
        return false;
    i++;
    if (!digits(s, n, &i, 3))
        return false;
    /* The code must end the text or be followed by a space. */
    if (i < n && s[i] != ' ')
        return false;
    if (len)
        *len = i;
    return true;
}

int smtp_reply_feed(struct smtp_reply *r, const char *line, size_t len)
{
    if (r->done)
        return ERR_INVAL;
    if (len > SMTP_REPLY_LINE_MAX || r->nlines >= SMTP_REPLY_LINES_MAX)
        return ERR_TOOBIG;
    /* RFC 5321 4.2: reply codes are 2yz..5yz with y in 0..5 in practice;
     * accept any third digit. */
    if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' ||
        !is_digit(line[2]))
        return ERR_PROTO;
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    bool last;
    size_t off;
    if (len == 3) {
        last = true;
        off = 3;
    } else if (line[3] == ' ') {
        last = true;
        off = 4;
    } else if (line[3] == '-') {
        last = false;
        off = 4;
    } else {
        return ERR_PROTO;
    }
    if (r->nlines > 0 && code != r->code)
        return ERR_PROTO;
    const char *t = line + off;
    size_t tn = len - off;
    if (r->nlines > 0 && buf_append(&r->text, "\n", 1) != 0)
        return ERR_TOOBIG;
    if (tn > 0 && buf_append(&r->text, t, tn) != 0)
        return ERR_TOOBIG;
    if (r->nlines == 0) {
        r->code = code;
        size_t sl;
        /* RFC 3463 2: the class of the enhanced code matches the reply's. */
        if (smtp_status_parse(t, tn, &sl) && t[0] == line[0] && sl < sizeof(r->status)) {
            memcpy(r->status, t, sl);
            r->status[sl] = '\0';
        }
    }
    r->nlines++;
    if (last) {
        r->done = true;
        return 0;
    }
    return 1;
}

int smtp_reply_oneline(const struct smtp_reply *r, struct buf *out)
{
    int rc = buf_printf(out, "%03d", r->code);
    if (rc != 0)
        return rc;
    if (r->text.len == 0)
        return 0;
    rc = buf_append(out, " ", 1);
    for (size_t i = 0; rc == 0 && i < r->text.len; i++) {
        unsigned char ch = (unsigned char)r->text.data[i];
        char o = (char)ch;
        if (ch == '\n')
            o = ' ';
        else if (ch < 0x20 || ch == 0x7f)
            o = '?';
        rc = buf_append(out, &o, 1);
    }
    return rc;
}
