/*
 * tlsrpt.c - TLS-RPT (RFC 8460) reporting policies and result types.
 *
 * The _smtp._tls TXT record (RFC 8460 3), applied exactly as its ABNF
 * reads (see policy.h): "v=TLSRPTv1" first and case-sensitive, fields
 * separated by *WSP ";" *WSP, an optional final delimiter, "rua=" with one
 * or more URIs separated by *WSP "," *WSP, extensions name=value checked
 * for syntax and ignored. Only mailto: and https: URIs are used (RFC 8460
 * 3: "two URI schemes are supported"); a record whose rua has neither is
 * not usable. Over an RRset, records not beginning with v=TLSRPTv1 are
 * discarded and exactly one must remain.
 *
 * The result-type vocabulary is RFC 8460 4.3 (IANA "STARTTLS Validation
 * Result Types").
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "policy.h"

static const char *const result_names[] = {
    [TLSRPT_STARTTLS_NOT_SUPPORTED] = "starttls-not-supported",
    [TLSRPT_CERTIFICATE_HOST_MISMATCH] = "certificate-host-mismatch",
    [TLSRPT_CERTIFICATE_EXPIRED] = "certificate-expired",
    [TLSRPT_CERTIFICATE_NOT_TRUSTED] = "certificate-not-trusted",
    [TLSRPT_VALIDATION_FAILURE] = "validation-failure",
    [TLSRPT_TLSA_INVALID] = "tlsa-invalid",
    [TLSRPT_DNSSEC_INVALID] = "dnssec-invalid",
    [TLSRPT_DANE_REQUIRED] = "dane-required",
    [TLSRPT_STS_POLICY_FETCH_ERROR] = "sts-policy-fetch-error",
    [TLSRPT_STS_POLICY_INVALID] = "sts-policy-invalid",
    [TLSRPT_STS_WEBPKI_INVALID] = "sts-webpki-invalid",
};

const char *tlsrpt_result_name(enum tlsrpt_result r)
{
    if ((int)r <= 0 || (int)r > (int)TLSRPT_RESULT_LAST)
        return NULL;
    return result_names[r];
}

int tlsrpt_result_from_name(const char *name, enum tlsrpt_result *out)
{
    for (int r = 1; name && r <= (int)TLSRPT_RESULT_LAST; r++)
        if (strcmp(name, result_names[r]) == 0) {
            *out = (enum tlsrpt_result)r;
            return 0;
        }
    return ERR_INVAL;
}

enum tlsrpt_result tlsrpt_result_from_policy_failure(enum policy_failure f)
{
    switch (f) {
    case POLICY_FAIL_FETCH:
        return TLSRPT_STS_POLICY_FETCH_ERROR;
    case POLICY_FAIL_INVALID:
        return TLSRPT_STS_POLICY_INVALID;
    case POLICY_FAIL_WEBPKI:
        return TLSRPT_STS_WEBPKI_INVALID;
    case POLICY_FAIL_NONE:
        break;
    }
    return TLSRPT_SUCCESS;
}

enum tlsrpt_result tlsrpt_result_from_tls_failure(enum tls_failure f)
{
    switch (f) {
    case TLS_FAIL_NONE:
        return TLSRPT_SUCCESS;
    case TLS_FAIL_STARTTLS_NOT_SUPPORTED:
        return TLSRPT_STARTTLS_NOT_SUPPORTED;
    case TLS_FAIL_HOST_MISMATCH:
        return TLSRPT_CERTIFICATE_HOST_MISMATCH;
    case TLS_FAIL_CERT_EXPIRED:
        return TLSRPT_CERTIFICATE_EXPIRED;
    case TLS_FAIL_CERT_NOT_TRUSTED:
        return TLSRPT_CERTIFICATE_NOT_TRUSTED;
    case TLS_FAIL_VALIDATION:
    case TLS_FAIL_HANDSHAKE:
        break;
    }
    return TLSRPT_VALIDATION_FAILURE;
}

const char *tlsrpt_policy_type_name(enum tlsrpt_policy_type t)
{
    switch (t) {
    case TLSRPT_POLICY_STS:
        return "sts";
    case TLSRPT_POLICY_TLSA:
        return "tlsa";
    case TLSRPT_POLICY_NO_POLICY:
        break;
    }
    return "no-policy-found";
}

/* ---- the record ------------------------------------------------------------ */

#define VERSION "v=TLSRPTv1"
#define VERSION_LEN (sizeof(VERSION) - 1)

static void fail(char *why, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(char *why, size_t size, const char *fmt, ...)
{
    if (!why || size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
}

static bool is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* tlsrpt-ext-value characters: %x21-3A / %x3C / %x3E-7E. */
static bool is_ext_value_char(char c)
{
    unsigned char u = (unsigned char)c;
    return (u >= 0x21 && u <= 0x3a) || u == 0x3c || (u >= 0x3e && u <= 0x7e);
}

bool tlsrpt_txt_is_tlsrpt(const char *rec, size_t len)
{
    if (len < VERSION_LEN || memcmp(rec, VERSION, VERSION_LEN) != 0)
        return false;
    return len == VERSION_LEN || rec[VERSION_LEN] == ';' || is_wsp(rec[VERSION_LEN]);
}

static bool ascii_prefix_ci(const char *s, size_t n, const char *prefix)
{
    size_t k = strlen(prefix);
    if (n < k)
        return false;
    for (size_t i = 0; i < k; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != prefix[i])
            return false;
    }
    return true;
}

/*
 * One URI of a rua list. RFC 3986 syntax is checked loosely but enough to
 * refuse what cannot be a URI: a scheme (ALPHA *(ALPHA / DIGIT / "+" / "-"
 * / ".")) and ":", then visible ASCII without the characters RFC 8460 3
 * says must be encoded (",", "!", ";"). Returns 0, or ERR_INVAL.
 */
static int check_uri(const char *u, size_t n, char *why, size_t why_size)
{
    size_t i = 0;
    if (n == 0 || !((u[0] >= 'a' && u[0] <= 'z') || (u[0] >= 'A' && u[0] <= 'Z'))) {
        fail(why, why_size, "rua: URI without a scheme");
        return ERR_INVAL;
    }
    while (i < n && (is_alnum(u[i]) || u[i] == '+' || u[i] == '-' || u[i] == '.'))
        i++;
    if (i == n || u[i] != ':') {
        fail(why, why_size, "rua: URI without a scheme");
        return ERR_INVAL;
    }
    if (i + 1 == n) {
        fail(why, why_size, "rua: empty URI after the scheme");
        return ERR_INVAL;
    }
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)u[k];
        if (c <= 0x20 || c >= 0x7f || c == '!' || c == '"' || c == '<' || c == '>' || c == '\\' ||
            c == '^' || c == '`' || c == '{' || c == '|' || c == '}') {
            fail(why, why_size, "rua: invalid character in URI");
            return ERR_INVAL;
        }
    }
    return 0;
}

static void add_uri(struct tlsrpt_record *out, const char *u, size_t n)
{
    bool usable =
        (ascii_prefix_ci(u, n, "mailto:") && n > 7) || (ascii_prefix_ci(u, n, "https://") && n > 8);
    if (!usable || n >= TLSRPT_URI_MAX) {
        out->n_ignored++;
        return;
    }
    for (size_t i = 0; i < out->n_rua; i++)
        if (strlen(out->rua[i]) == n && memcmp(out->rua[i], u, n) == 0)
            return;
    if (out->n_rua == TLSRPT_RUA_MAX) {
        out->n_ignored++;
        return;
    }
    memcpy(out->rua[out->n_rua], u, n);
    out->rua[out->n_rua][n] = '\0';
    out->n_rua++;
}

/* The value of a rua field, rec[p..end): URIs separated by *WSP "," *WSP. */
static int parse_rua(const char *v, size_t n, struct tlsrpt_record *out, char *why, size_t why_size)
{
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < n && v[i] != ',' && !is_wsp(v[i]))
            i++;
        if (i == start) {
            fail(why, why_size, "rua: empty URI");
            return ERR_INVAL;
        }
        if (i - start >= TLSRPT_URI_MAX) {
            fail(why, why_size, "rua: URI longer than %d bytes", TLSRPT_URI_MAX - 1);
            return ERR_INVAL;
        }
        if (check_uri(v + start, i - start, why, why_size) != 0)
            return ERR_INVAL;
        add_uri(out, v + start, i - start);
        while (i < n && is_wsp(v[i]))
            i++;
        if (i == n)
            return 0;
        if (v[i] != ',') {
            fail(why, why_size, "rua: URIs must be separated by ','");
            return ERR_INVAL;
        }
        i++;
        while (i < n && is_wsp(v[i]))
            i++;
    }
}

int tlsrpt_txt_parse(const char *rec, size_t len, struct tlsrpt_record *out, char *why,
                     size_t why_size)
{
    memset(out, 0, sizeof(*out));
    if (!tlsrpt_txt_is_tlsrpt(rec, len)) {
        fail(why, why_size, "does not begin with v=TLSRPTv1");
        return ERR_INVAL;
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)rec[i] < 0x20 && rec[i] != '\t') {
            fail(why, why_size, "control character in record");
            return ERR_INVAL;
        }
    size_t p = VERSION_LEN;
    bool have_rua = false;
    size_t n_fields = 0;
    for (;;) {
        /* field-delim = *WSP ";" *WSP, or the end (after at least one field,
         * with the optional final delimiter already consumed). */
        size_t q = p;
        while (q < len && is_wsp(rec[q]))
            q++;
        if (q == len && p == len && n_fields > 0)
            break;
        if (q == len || rec[q] != ';') {
            if (q == len && n_fields == 0)
                fail(why, why_size, "rua missing");
            else if (q == len)
                fail(why, why_size, "trailing space after the last field");
            else
                fail(why, why_size, "fields must be separated by ';'");
            return ERR_INVAL;
        }
        q++;
        while (q < len && is_wsp(rec[q]))
            q++;
        p = q;
        if (p == len) {
            if (n_fields == 0) {
                fail(why, why_size, "rua missing");
                return ERR_INVAL;
            }
            break; /* the optional final delimiter */
        }
        /* A field runs to the next ';' (which no value may contain). */
        size_t end = p;
        while (end < len && rec[end] != ';')
            end++;
        /* Trailing WSP belongs to the next delimiter. */
        size_t fend = end;
        while (fend > p && is_wsp(rec[fend - 1]))
            fend--;
        if (fend - p >= 4 && memcmp(rec + p, "rua=", 4) == 0) {
            int rc = parse_rua(rec + p + 4, fend - p - 4, out, why, why_size);
            if (rc != 0)
                return rc;
            have_rua = true;
        } else {
            /* tlsrpt-extension: name "=" value, checked and ignored. */
            size_t k = p;
            if (k == fend || !is_alnum(rec[k])) {
                fail(why, why_size, "invalid field name");
                return ERR_INVAL;
            }
            k++;
            while (k < fend &&
                   (is_alnum(rec[k]) || rec[k] == '_' || rec[k] == '-' || rec[k] == '.'))
                k++;
            if (k - p > 32 || k == fend || rec[k] != '=') {
                fail(why, why_size, "invalid field \"%.*s\"", (int)(fend - p > 40 ? 40 : fend - p),
                     rec + p);
                return ERR_INVAL;
            }
            k++;
            if (k == fend) {
                fail(why, why_size, "empty value of field \"%.*s\"", (int)(k - p - 1), rec + p);
                return ERR_INVAL;
            }
            for (; k < fend; k++)
                if (!is_ext_value_char(rec[k])) {
                    fail(why, why_size, "invalid character in field \"%.*s\"",
                         (int)(fend - p > 40 ? 40 : fend - p), rec + p);
                    return ERR_INVAL;
                }
        }
        n_fields++;
        p = fend;
    }
    if (!have_rua) {
        fail(why, why_size, "rua missing");
        return ERR_INVAL;
    }
    if (out->n_rua == 0) {
        fail(why, why_size, "no mailto: or https: URI in rua");
        return ERR_INVAL;
    }
    return 0;
}

int tlsrpt_txt_select(const char *const *recs, const size_t *lens, size_t n,
                      struct tlsrpt_record *out, char *why, size_t why_size)
{
    memset(out, 0, sizeof(*out));
    size_t found = 0, which = 0;
    for (size_t i = 0; i < n; i++)
        if (tlsrpt_txt_is_tlsrpt(recs[i], lens[i])) {
            found++;
            which = i;
        }
    if (found == 0) {
        fail(why, why_size, "no v=TLSRPTv1 record");
        return ERR_NOTFOUND;
    }
    if (found > 1) {
        fail(why, why_size, "%zu v=TLSRPTv1 records (exactly one is allowed)", found);
        return ERR_INVAL;
    }
    return tlsrpt_txt_parse(recs[which], lens[which], out, why, why_size);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int tlsrpt_mailto_address(const char *uri, char *out, size_t size)
{
    size_t n = strlen(uri);
    if (size == 0 || !ascii_prefix_ci(uri, n, "mailto:"))
        return ERR_INVAL;
    size_t o = 0, at = 0;
    for (size_t i = 7; i < n && uri[i] != '?'; i++) {
        char c = uri[i];
        if (c == '%') {
            int h = i + 2 < n ? hexval(uri[i + 1]) : -1;
            int l = h >= 0 ? hexval(uri[i + 2]) : -1;
            if (l < 0)
                return ERR_INVAL;
            c = (char)(h * 16 + l);
            i += 2;
        }
        /* One address only (RFC 6068 allows a list: we take none of it). */
        if ((unsigned char)c <= 0x20 || (unsigned char)c >= 0x7f || c == ',' || c == '<' ||
            c == '>')
            return ERR_INVAL;
        if (c == '@')
            at++;
        if (o + 1 >= size)
            return ERR_TOOBIG;
        out[o++] = c;
    }
    out[o] = '\0';
    const char *a = strrchr(out, '@');
    if (at != 1 || !a || a == out || a[1] == '\0')
        return ERR_INVAL;
    return 0;
}
