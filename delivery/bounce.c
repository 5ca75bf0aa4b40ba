/*
 * bounce.c - delivery status notifications: the text of the message that
 * tells a sender their mail failed (or is delayed).
 *
 * Standards: RFC 3464 (the message/delivery-status fields: 2.2 per message,
 * 2.3 per recipient), RFC 6522 (multipart/report), RFC 3461 (ENVID, ORCPT,
 * RET), RFC 3834 5 (Auto-Submitted: auto-replied), RFC 5322 (headers).
 *
 * Invariants:
 *  - The output has CRLF line ends only and no NUL; header-like lines that
 *    we write are short; long diagnostic texts are folded so no line we
 *    write exceeds 998 octets (the DATA writer would fold the original's
 *    own lines on the wire).
 *  - The MIME boundary does not occur anywhere in the original message.
 *  - Nothing here decides whether a DSN is due (null sender, NOTIFY): the
 *    caller does.
 */
#include <stdio.h>
#include <string.h>

#include "deliver_int.h"

size_t dsn_header_len(struct view msg)
{
    for (size_t i = 0; i < msg.len; i++) {
        if (msg.ptr[i] != '\n')
            continue;
        /* An empty line follows this line end? */
        if (i + 1 < msg.len && msg.ptr[i + 1] == '\n')
            return i + 2;
        if (i + 2 < msg.len && msg.ptr[i + 1] == '\r' && msg.ptr[i + 2] == '\n')
            return i + 3;
    }
    return msg.len;
}

/* Append text with any line end (CRLF, LF, CR) made CRLF and NUL dropped;
 * end with CRLF if the text did not. */
static int append_crlf(struct buf *out, const char *p, size_t n)
{
    int rc = 0;
    size_t start = 0;
    bool eol = true;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char ch = p[i];
        if (ch != '\r' && ch != '\n' && ch != '\0') {
            eol = false;
            continue;
        }
        rc = buf_append(out, p + start, i - start);
        if (ch != '\0') {
            if (rc == 0)
                rc = buf_append(out, "\r\n", 2);
            eol = true;
            if (ch == '\r' && i + 1 < n && p[i + 1] == '\n')
                i++;
        }
        start = i + 1;
    }
    if (rc == 0 && start < n)
        rc = buf_append(out, p + start, n - start);
    if (rc == 0 && !eol)
        rc = buf_append(out, "\r\n", 2);
    return rc;
}

/* A field "Name: value" where value may be long or contain controls:
 * controls become spaces, and the line is folded before 78 columns where a
 * space allows and always before 998 (RFC 5322 2.1.1, 2.2.3). */
static int append_field(struct buf *out, const char *name, const char *value)
{
    int rc = buf_printf(out, "%s: ", name);
    size_t col = strlen(name) + 2;
    size_t n = strlen(value);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char ch = value[i];
        if ((unsigned char)ch < 0x20 || ch == 0x7f)
            ch = ' ';
        if ((ch == ' ' && col > 76) || col >= 990) {
            rc = buf_append(out, "\r\n ", 3);
            col = 1;
            if (ch == ' ')
                continue;
        }
        if (rc == 0)
            rc = buf_append(out, &ch, 1);
        col++;
    }
    if (rc == 0)
        rc = buf_append(out, "\r\n", 2);
    return rc;
}

static void fmt_date(int64_t ms, char *out, size_t size)
{
    time_format_rfc5322((time_t)(ms / 1000), out, size);
}

/* RFC 3461 4.2: ORCPT is "addr-type;xtext". RFC 3464 2.3.1 wants
 * "addr-type; address" in Original-Recipient; keep the xtext decoded only
 * for the printable, non-special characters (others stay encoded). */
static int append_orcpt(struct buf *out, const char *orcpt)
{
    const char *semi = strchr(orcpt, ';');
    if (!semi || semi == orcpt)
        return 0;
    int rc = buf_append_str(out, "Original-Recipient: ");
    if (rc == 0)
        rc = buf_append(out, orcpt, (size_t)(semi - orcpt));
    if (rc == 0)
        rc = buf_append(out, ";", 1);
    for (const char *p = semi + 1; rc == 0 && *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x21 || ch > 0x7e)
            continue;
        rc = buf_append(out, p, 1);
    }
    if (rc == 0)
        rc = buf_append(out, "\r\n", 2);
    return rc;
}

static bool boundary_free(struct view orig, const char *b)
{
    size_t bl = strlen(b);
    if (bl == 0 || orig.len < bl)
        return true;
    for (size_t i = 0; i + bl <= orig.len; i++)
        if (orig.ptr[i] == b[0] && memcmp(orig.ptr + i, b, bl) == 0)
            return false;
    return true;
}

int dsn_build(const struct dsn_msg *d, struct buf *out)
{
    if (!d || d->nrcpt == 0 || !d->sender || !d->sender[0])
        return ERR_INVAL;
    const char *host = d->reporting_mta && d->reporting_mta[0] ? d->reporting_mta : "localhost";
    /* RFC 2046 5.1.1: a boundary is 1 to 70 characters, so a long host
     * name is cut; the queue ID, time and counter come first and stay. */
    char boundary[70 + 1];
    for (unsigned n = 0;; n++) {
        int k = snprintf(boundary, sizeof(boundary), "%s.%lld.%u/", d->queue_id,
                         (long long)(d->now_ms / 1000), n);
        if (k > 0 && (size_t)k < sizeof(boundary) - 1)
            snprintf(boundary + k, sizeof(boundary) - (size_t)k, "%s", host);
        if (boundary_free(d->original, boundary))
            break;
    }
    char date[64], arrival[64];
    fmt_date(d->now_ms, date, sizeof(date));
    fmt_date(d->arrival_ms, arrival, sizeof(arrival));

    int rc = 0;
#define P(...)                                                                                     \
    do {                                                                                           \
        if (rc == 0)                                                                               \
            rc = buf_printf(out, __VA_ARGS__);                                                     \
    } while (0)
#define F(name, value)                                                                             \
    do {                                                                                           \
        if (rc == 0)                                                                               \
            rc = append_field(out, name, value);                                                   \
    } while (0)

    /* The message header (RFC 5322, RFC 3834 5). */
    P("Date: %s\r\n", date);
    P("From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", host);
    P("To: <%s>\r\n", d->sender);
    P("Subject: %s\r\n",
      d->delayed ? "Delayed Mail (still being retried)" : "Undelivered Mail Returned to Sender");
    P("Message-ID: <%s.dsn.%lld@%s>\r\n", d->queue_id, (long long)(d->now_ms / 1000), host);
    P("Auto-Submitted: auto-replied\r\n");
    P("MIME-Version: 1.0\r\n");
    P("Content-Type: multipart/report; report-type=delivery-status;\r\n"
      "\tboundary=\"%s\"\r\n",
      boundary);
    P("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    /* 1. The human-readable part. */
    P("--%s\r\n", boundary);
    P("Content-Description: Notification\r\n");
    P("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    P("This is the mail system at host %s.\r\n\r\n", host);
    if (d->delayed)
        P("Your message could not be delivered yet to one or more recipients.\r\n"
          "It will be retried until it is too old; you need not send it again.\r\n\r\n");
    else
        P("I'm sorry to have to inform you that your message could not\r\n"
          "be delivered to one or more recipients. It's attached below.\r\n\r\n");
    for (size_t i = 0; i < d->nrcpt; i++) {
        const struct dsn_rcpt *r = &d->rcpts[i];
        char head[300];
        snprintf(head, sizeof(head), "<%s>", r->addr);
        if (rc == 0)
            rc = append_field(out, head, r->reason && r->reason[0] ? r->reason : r->status);
        P("\r\n");
    }

    /* 2. The machine-readable part (RFC 3464 2.2, 2.3). */
    P("--%s\r\n", boundary);
    P("Content-Description: Delivery report\r\n");
    P("Content-Type: message/delivery-status\r\n\r\n");
    P("Reporting-MTA: dns; %s\r\n", host);
    P("X-Convoy-Queue-ID: %s\r\n", d->queue_id);
    if (d->envid && d->envid[0])
        F("Original-Envelope-Id", d->envid);
    P("Arrival-Date: %s\r\n", arrival);
    for (size_t i = 0; i < d->nrcpt; i++) {
        const struct dsn_rcpt *r = &d->rcpts[i];
        P("\r\n");
        P("Final-Recipient: rfc822; %s\r\n", r->addr);
        if (rc == 0 && r->orcpt && r->orcpt[0])
            rc = append_orcpt(out, r->orcpt);
        P("Action: %s\r\n", r->action ? r->action : (d->delayed ? "delayed" : "failed"));
        P("Status: %s\r\n", r->status);
        if (r->remote_mta && r->remote_mta[0])
            P("Remote-MTA: dns; %s\r\n", r->remote_mta);
        if (r->diag && r->diag[0]) {
            char v[600];
            snprintf(v, sizeof(v), "smtp; %s", r->diag);
            F("Diagnostic-Code", v);
        }
        if (r->last_attempt_ms > 0) {
            char la[64];
            fmt_date(r->last_attempt_ms, la, sizeof(la));
            P("Last-Attempt-Date: %s\r\n", la);
        }
        if (d->delayed && r->will_retry_until_ms > 0) {
            /* RFC 3464 2.3.9: only with Action: delayed. */
            char wr[64];
            fmt_date(r->will_retry_until_ms, wr, sizeof(wr));
            P("Will-Retry-Until: %s\r\n", wr);
        }
    }
    P("\r\n");

    /* 3. The original: headers or the whole message (RFC 3461 4.3 RET). */
    P("--%s\r\n", boundary);
    if (d->ret_full) {
        P("Content-Description: Undelivered Message\r\n");
        P("Content-Type: message/rfc822\r\n\r\n");
        if (rc == 0)
            rc = append_crlf(out, d->original.ptr, d->original.len);
    } else {
        P("Content-Description: Undelivered Message Headers\r\n");
        P("Content-Type: text/rfc822-headers\r\n\r\n");
        size_t hl = dsn_header_len(d->original);
        if (rc == 0)
            rc = append_crlf(out, d->original.ptr, hl);
    }
    P("\r\n--%s--\r\n", boundary);
#undef P
#undef F
    return rc;
}
