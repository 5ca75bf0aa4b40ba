/*
 * tlsrpt_report.c - a TLS-RPT report on its way out (RFC 8460 5): the file
 * name (5.1), gzip (5.2) and the mail message (5.3).
 *
 * The message is built whole, with CRLF line ends and no line over 78
 * characters, so the queue can take it as is; the attachment is base64
 * (RFC 2045 6.8, 76-character lines). Header values are ASCII: domains are
 * A-labels, report-ids and file names are built from them.
 *
 * DKIM is not done here (policy/ does not depend on dkim/): the caller signs
 * the returned message for the submitter domain (RFC 8460 5.3: signed, no
 * "l=" tag) and puts the DKIM-Signature field in front.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <zlib.h>

#include "policy.h"

/* A MIME token (RFC 2045 5.1): no space, control or tspecial. */
static bool is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || strchr("()<>@,;:\\\"/[]?=", c))
            return false;
    }
    return true;
}

/* A domain in a file name or header: letters, digits, '-', '.', '_'. */
static bool is_plain_domain(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '.' || *s == '_'))
            return false;
    return true;
}

int tlsrpt_report_filename(const char *submitter, const char *domain, int64_t begin, int64_t end,
                           const char *unique_id, char *out, size_t size)
{
    if (!is_plain_domain(submitter) || !is_plain_domain(domain) || begin < 0 || end < begin)
        return ERR_INVAL;
    bool uid = unique_id && *unique_id;
    if (uid && (!is_token(unique_id) || strchr(unique_id, '!')))
        return ERR_INVAL;
    int n = snprintf(out, size, "%s!%s!%lld!%lld%s%s.json.gz", submitter, domain, (long long)begin,
                     (long long)end, uid ? "!" : "", uid ? unique_id : "");
    return n < 0 || (size_t)n >= size ? ERR_TOOBIG : 0;
}

int tlsrpt_gzip(const void *data, size_t n, struct buf *out)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    /* windowBits 15 + 16: a gzip (RFC 1952) wrapper rather than zlib's. */
    if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return ERR_NOMEM;
    uLong bound = deflateBound(&z, (uLong)n);
    int rc = buf_reserve(out, bound);
    if (rc != 0) {
        deflateEnd(&z);
        return rc;
    }
    z.next_in = (Bytef *)data;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)out->data + out->len;
    z.avail_out = (uInt)(out->cap - out->len);
    int zr = deflate(&z, Z_FINISH);
    if (zr != Z_STREAM_END) {
        deflateEnd(&z);
        return ERR_IO;
    }
    out->len += z.total_out;
    out->data[out->len] = '\0';
    deflateEnd(&z);
    return 0;
}

/* Base64 in lines of 76 characters (RFC 2045 6.8), CRLF after each. */
static int base64_lines(const unsigned char *p, size_t n, struct buf *out)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i += 57) {
        rc = base64_encode(p + i, n - i < 57 ? n - i : 57, out);
        if (rc == 0)
            rc = buf_append(out, "\r\n", 2);
    }
    return rc;
}

/* A header value must not break the message: no CR, LF or NUL, ASCII. */
static bool header_safe(const char *s)
{
    for (; s && *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return s != NULL;
}

int tlsrpt_mail_build(const struct tlsrpt_mail *m, struct buf *out)
{
    if (!header_safe(m->from) || !header_safe(m->to) || !is_plain_domain(m->policy_domain) ||
        !is_plain_domain(m->submitter) || !header_safe(m->report_id) || !*m->report_id ||
        strchr(m->report_id, ' ') || !header_safe(m->filename) || strchr(m->filename, '"') ||
        (m->boundary && !header_safe(m->boundary)))
        return ERR_INVAL;
    char date[64], boundary[128], t0[32], t1[32];
    time_format_rfc5322((time_t)m->date, date, sizeof(date));
    if (m->boundary) {
        str_copy(boundary, m->boundary, sizeof(boundary));
    } else {
        /* Cannot occur in base64 or in the text part: "=_" is not base64
         * and the text part does not contain it. RFC 2046 5.1.1 allows
         * only bcharsnospace: the report-id's '@' becomes '.'. */
        snprintf(boundary, sizeof(boundary), "=_tlsrpt_%.60s", m->report_id);
        for (char *p = boundary; *p; p++)
            if (!strchr(
                    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?",
                    *p))
                *p = '.';
    }
    time_t b = (time_t)m->begin, e = (time_t)m->end;
    struct tm tm;
    gmtime_r(&b, &tm);
    strftime(t0, sizeof(t0), "%Y-%m-%d %H:%M:%S", &tm);
    gmtime_r(&e, &tm);
    strftime(t1, sizeof(t1), "%Y-%m-%d %H:%M:%S", &tm);

    /* RFC 8460 5.3: Subject "Report Domain: D Submitter: S Report-ID: <ID>";
     * folded (FWS) before each part so no line passes 78 characters. */
    int rc = buf_printf(out,
                        "From: %s\r\n"
                        "To: %s\r\n"
                        "Date: %s\r\n"
                        "Message-ID: <%s>\r\n"
                        "Subject: Report Domain: %s\r\n"
                        " Submitter: %s\r\n"
                        " Report-ID: <%s>\r\n"
                        "TLS-Report-Domain: %s\r\n"
                        "TLS-Report-Submitter: %s\r\n"
                        "TLS-Required: No\r\n"
                        "Auto-Submitted: auto-generated\r\n"
                        "MIME-Version: 1.0\r\n"
                        "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n"
                        "\tboundary=\"%s\"\r\n"
                        "\r\n"
                        "This is a multipart message in MIME format.\r\n"
                        "\r\n"
                        "--%s\r\n"
                        "Content-Type: text/plain; charset=\"us-ascii\"\r\n"
                        "Content-Transfer-Encoding: 7bit\r\n"
                        "\r\n"
                        "This is an aggregate TLS report (RFC 8460) from %s\r\n"
                        "for the policy domain %s,\r\n"
                        "covering %s to %s UTC.\r\n"
                        "\r\n"
                        "--%s\r\n"
                        "Content-Type: application/tlsrpt+gzip\r\n"
                        "Content-Transfer-Encoding: base64\r\n"
                        "Content-Disposition: attachment;\r\n"
                        "\tfilename=\"%s\"\r\n"
                        "\r\n",
                        m->from, m->to, date, m->report_id, m->policy_domain, m->submitter,
                        m->report_id, m->policy_domain, m->submitter, boundary, boundary,
                        m->submitter, m->policy_domain, t0, t1, boundary, m->filename);
    if (rc == 0)
        rc = base64_lines(m->gz, m->gz_len, out);
    if (rc == 0)
        rc = buf_printf(out, "\r\n--%s--\r\n", boundary);
    return rc;
}

/* A report from the store (s) or from a record's text (rec). */
static int build(struct tlsrpt_store *s, const char *rec, size_t len, const char *day,
                 const char *domain, const struct tlsrpt_report_info *info, uint32_t seq,
                 int64_t end, struct tlsrpt_report *out)
{
    memset(out, 0, sizeof(*out));
    buf_init(&out->json, 64 * 1024 * 1024);
    buf_init(&out->gz, 64 * 1024 * 1024);
    int64_t begin;
    int rc = tlsrpt_day_parse(day, &begin);
    if (rc != 0)
        return rc;
    /* The same range tlsrpt_report_json() puts into date-range. */
    if (end <= begin || end > begin + 86399)
        end = begin + 86399;
    out->begin = begin;
    out->end = end;
    tlsrpt_report_id_of(day, seq, domain, info, out->report_id, sizeof(out->report_id));
    /* A node's own report in a fleet names the node in its unique-id too,
     * so two nodes' file names never collide. */
    char uid[96] = "", tag[72] = "";
    if (info->node && *info->node)
        tlsrpt_node_tag(info->node, tag, sizeof(tag));
    if (seq > 0 || tag[0])
        snprintf(uid, sizeof(uid), "%s%s%u", tag, tag[0] ? "." : "", seq);
    rc = tlsrpt_report_filename(info->submitter, domain, begin, end, uid, out->filename,
                                sizeof(out->filename));
    if (rc == 0 && rec)
        rc = tlsrpt_report_json_record(rec, len, day, domain, info, seq, end, false, &out->json);
    else if (rc == 0)
        rc = tlsrpt_report_json(s, day, domain, info, seq, end, false, &out->json);
    if (rc == 0)
        rc = tlsrpt_gzip(out->json.data, out->json.len, &out->gz);
    if (rc != 0)
        tlsrpt_report_clear(out);
    return rc;
}

int tlsrpt_report_build(struct tlsrpt_store *s, const char *day, const char *domain,
                        const struct tlsrpt_report_info *info, uint32_t seq, int64_t end,
                        struct tlsrpt_report *out)
{
    return build(s, NULL, 0, day, domain, info, seq, end, out);
}

int tlsrpt_report_build_record(const char *rec, size_t len, const char *day, const char *domain,
                               const struct tlsrpt_report_info *info, uint32_t seq, int64_t end,
                               struct tlsrpt_report *out)
{
    return build(NULL, rec, len, day, domain, info, seq, end, out);
}

void tlsrpt_report_clear(struct tlsrpt_report *r)
{
    if (!r)
        return;
    buf_free(&r->json);
    buf_free(&r->gz);
    memset(r, 0, sizeof(*r));
}
