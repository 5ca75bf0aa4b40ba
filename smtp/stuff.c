/*
 * stuff.c - the DATA writer: message bytes to wire lines.
 *
 * RFC 5321 4.5.2 (transparency): a line that starts with "." gets one more.
 * RFC 5321 4.5.3.1.6: a text line is at most 998 octets plus CRLF; longer
 * lines are folded by inserting CRLF SP, as Postfix does
 * (smtp_line_length_limit), which keeps MIME structure readable.
 * RFC 5321 2.3.8 and the SMTP smuggling lessons: the output contains no bare
 * CR, no bare LF and no NUL, so no next hop can find an end of data anywhere
 * but at the final CRLF . CRLF.
 *
 * Invariants: the writer is a pure streaming transducer: the same input cut
 * into any chunks gives the same output. Every output line is at most
 * SMTP_LINE_MAX octets before its CRLF.
 */
#include <string.h>

#include "smtp.h"

void smtp_stuff_init(struct smtp_stuff *s)
{
    memset(s, 0, sizeof(*s));
}

int smtp_stuff_feed(struct smtp_stuff *s, const char *in, size_t n, struct buf *out)
{
    /* Worst case: every input octet becomes two (LF -> CRLF, "." -> ".."),
     * plus a fold or a pending CR line end. */
    int rc = buf_reserve(out, 2 * n + 3);
    if (rc != 0)
        return rc;
    char *o = out->data + out->len;
    size_t k = 0;
    size_t col = s->col;
    for (size_t i = 0; i < n; i++) {
        char ch = in[i];
        if (s->cr) {
            /* A CR followed by LF is one line end; a bare CR is a line end of
             * its own, written as CRLF. */
            s->cr = false;
            o[k++] = '\r';
            o[k++] = '\n';
            col = 0;
            if (ch == '\n')
                continue;
        }
        if (ch == '\r') {
            s->cr = true;
            s->any = true;
            continue;
        }
        if (ch == '\n') {
            o[k++] = '\r';
            o[k++] = '\n';
            col = 0;
            s->any = true;
            continue;
        }
        if (ch == '\0')
            continue; /* never on the wire: see the file header */
        s->any = true;
        if (col >= SMTP_LINE_MAX) {
            /* Fold. The continuation begins with SP, so it never needs a
             * stuffed dot. */
            o[k++] = '\r';
            o[k++] = '\n';
            o[k++] = ' ';
            col = 1;
        }
        if (col == 0 && ch == '.')
            o[k++] = '.', col++;
        o[k++] = ch;
        col++;
        /* Room check: the reservation covers two octets per input octet
         * plus three; a fold costs three but only happens after 998 octets
         * on the line, which were paid for with one octet each. */
    }
    s->col = col;
    out->len += k;
    out->data[out->len] = '\0';
    return 0;
}

int smtp_stuff_finish(struct smtp_stuff *s, struct buf *out)
{
    int rc;
    if (s->cr || s->col > 0)
        rc = buf_append(out, "\r\n.\r\n", 5);
    else
        rc = buf_append(out, ".\r\n", 3);
    if (rc == 0) {
        s->cr = false;
        s->col = 0;
    }
    return rc;
}
