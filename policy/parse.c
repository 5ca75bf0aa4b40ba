/*
 * parse.c - the pure parts of MTA-STS: the TXT record (RFC 8461 3.1), the
 * policy file (3.2), MX pattern matching (4.1), domain normalisation, and
 * the decision of which TLS one MX host needs (5).
 *
 * Invariants:
 *  - Nothing here does I/O or keeps state; every input is bounded by its
 *    length argument and may contain any byte, NUL included.
 *  - The grammars are applied as the RFC writes them (ABNF strings marked
 *    %s are case-sensitive); the only liberty taken is that one trailing
 *    dot on an mx pattern is accepted and dropped, since the matcher ignores
 *    it anyway.
 *  - An invalid input never yields a partial result: *out is zeroed.
 */
#include <ctype.h>
#include <idn2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

static void set_why(char *why, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_why(char *why, size_t size, const char *fmt, ...)
{
    if (!why || size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
}

static bool is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alnum(unsigned char c)
{
    return is_alpha(c) || is_digit(c);
}

static bool is_wsp(unsigned char c)
{
    return c == ' ' || c == '\t';
}

const char *policy_mode_name(enum policy_mode m)
{
    switch (m) {
    case POLICY_MODE_NONE:
        return "none";
    case POLICY_MODE_TESTING:
        return "testing";
    case POLICY_MODE_ENFORCE:
        return "enforce";
    }
    return "none";
}

const char *policy_failure_result_type(enum policy_failure f)
{
    switch (f) {
    case POLICY_FAIL_NONE:
        return NULL;
    case POLICY_FAIL_FETCH:
        return "sts-policy-fetch-error";
    case POLICY_FAIL_INVALID:
        return "sts-policy-invalid";
    case POLICY_FAIL_WEBPKI:
        return "sts-webpki-invalid";
    }
    return NULL;
}

const char *policy_tls_level_name(enum policy_tls_level l)
{
    switch (l) {
    case POLICY_TLS_NONE:
        return "none";
    case POLICY_TLS_MAY:
        return "may";
    case POLICY_TLS_ENCRYPT:
        return "encrypt";
    case POLICY_TLS_VERIFY:
        return "verify";
    }
    return "may";
}

/* ---- parsed policy values ------------------------------------------------ */

void policy_sts_clear(struct sts_policy *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_mx; i++)
        free(p->mx[i]);
    free(p->mx);
    memset(p, 0, sizeof(*p));
}

int policy_sts_copy(struct sts_policy *dst, const struct sts_policy *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->mode = src->mode;
    dst->max_age = src->max_age;
    if (src->n_mx == 0)
        return 0;
    dst->mx = calloc(src->n_mx, sizeof(char *));
    if (!dst->mx)
        return ERR_NOMEM;
    for (size_t i = 0; i < src->n_mx; i++) {
        dst->mx[i] = strdup(src->mx[i]);
        if (!dst->mx[i]) {
            dst->n_mx = i;
            policy_sts_clear(dst);
            return ERR_NOMEM;
        }
    }
    dst->n_mx = src->n_mx;
    return 0;
}

/* Is every pattern of a among those of b? */
static bool mx_subset(const struct sts_policy *a, const struct sts_policy *b)
{
    for (size_t i = 0; i < a->n_mx; i++) {
        bool found = false;
        for (size_t k = 0; k < b->n_mx && !found; k++)
            found = strcmp(a->mx[i], b->mx[k]) == 0;
        if (!found)
            return false;
    }
    return true;
}

bool policy_sts_equal(const struct sts_policy *a, const struct sts_policy *b)
{
    if (!a || !b)
        return a == b;
    return a->mode == b->mode && a->max_age == b->max_age && mx_subset(a, b) && mx_subset(b, a);
}

const char *policy_change_name(enum policy_change c)
{
    switch (c) {
    case POLICY_CHANGE_NEW:
        return "new";
    case POLICY_CHANGE_ID:
        return "id";
    case POLICY_CHANGE_CONTENT:
        return "content";
    default:
        return "none";
    }
}

/* ---- RFC 8461 3.1: the TXT record ---------------------------------------- */

/*
 * sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]
 * sts-field       = sts-id / sts-extension
 * sts-field-delim = *WSP ";" *WSP
 * sts-version     = %s"v=STSv1"
 * sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
 * sts-extension   = sts-ext-name "=" sts-ext-value
 * sts-ext-name    = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
 * sts-ext-value   = 1*(%x21-3A / %x3C / %x3E-7E)
 *
 * The rule of thumb for this parser: where RFC 8461 leaves a reading open,
 * choose the one that keeps the recipient domain protected. A record the
 * domain clearly meant as its policy is not refused over a detail the RFC
 * does not settle (spaces after the last field; an id given twice, where
 * the first wins as for repeated policy fields in 3.2), and nothing that is
 * not clearly a record is allowed to count against the one that is (the
 * exact "v=STSv1;" prefix of policy_txt_is_sts()).
 */

bool policy_txt_is_sts(const char *rec, size_t len)
{
    /* RFC 8461 3.1: "records that do not begin with "v=STSv1;" are
     * discarded", before they are counted. The prose is exact and
     * case-sensitive, so "V=STSv1; ...", "v=STSv1 is not a policy" and even
     * the grammar's "v=STSv1 ; id=..." (erratum 6285 notes the conflict)
     * are not records. Taking the prose literally is also the protective
     * reading: a decoy TXT record next to a valid one cannot make the
     * count two and so strip the domain of its policy. */
    static const char v[] = "v=STSv1;";
    size_t n = sizeof(v) - 1;
    return len >= n && memcmp(rec, v, n) == 0;
}

int policy_txt_parse(const char *rec, size_t len, char id_out[POLICY_ID_MAX + 1], char *why,
                     size_t why_size)
{
    id_out[0] = '\0';
    if (!policy_txt_is_sts(rec, len)) {
        set_why(why, why_size, "record does not start with v=STSv1;");
        return ERR_INVAL;
    }
    /* After "v=STSv1": the ';' that follows is read as the first delimiter. */
    size_t i = 7;
    bool have_id = false;
    size_t fields = 0;
    char id[POLICY_ID_MAX + 1] = "";
    for (;;) {
        /* sts-field-delim, or the end. */
        size_t j = i;
        while (j < len && is_wsp((unsigned char)rec[j]))
            j++;
        if (j == len) {
            /* Spaces or tabs after the last field without a ';' are not in
             * the grammar (only a delimiter may carry them), but refusing
             * the record would silently take the domain's policy away:
             * accept them (see the rule of thumb above). */
            break;
        }
        if (rec[j] != ';') {
            set_why(why, why_size, "expected ';' at offset %zu", j);
            return ERR_INVAL;
        }
        j++;
        while (j < len && is_wsp((unsigned char)rec[j]))
            j++;
        if (j == len) /* [sts-field-delim] at the end */
            break;
        /* sts-field: name '=' value */
        size_t ns = j;
        if (!is_alnum((unsigned char)rec[j])) {
            set_why(why, why_size, "bad field name at offset %zu", j);
            return ERR_INVAL;
        }
        j++;
        while (j < len &&
               (is_alnum((unsigned char)rec[j]) || rec[j] == '_' || rec[j] == '-' || rec[j] == '.'))
            j++;
        size_t nlen = j - ns;
        if (nlen > 32) {
            set_why(why, why_size, "field name longer than 32 characters");
            return ERR_INVAL;
        }
        if (j == len || rec[j] != '=') {
            set_why(why, why_size, "expected '=' after field name at offset %zu", j);
            return ERR_INVAL;
        }
        j++;
        size_t vs = j;
        bool is_id = nlen == 2 && memcmp(rec + ns, "id", 2) == 0;
        if (is_id) {
            while (j < len && is_alnum((unsigned char)rec[j]))
                j++;
            size_t vlen = j - vs;
            if (vlen == 0) {
                set_why(why, why_size, "empty id");
                return ERR_INVAL;
            }
            if (vlen > POLICY_ID_MAX) {
                set_why(why, why_size, "id longer than %d characters", POLICY_ID_MAX);
                return ERR_INVAL;
            }
            if (j < len && !(rec[j] == ';' || is_wsp((unsigned char)rec[j]))) {
                set_why(why, why_size, "id may hold only letters and digits");
                return ERR_INVAL;
            }
            /* A repeated id: the first wins, as for repeated policy fields
             * (RFC 8461 3.2); the grammar allows the repetition. */
            if (!have_id) {
                memcpy(id, rec + vs, vlen);
                id[vlen] = '\0';
                have_id = true;
            }
        } else {
            while (j < len) {
                unsigned char c = (unsigned char)rec[j];
                if (c < 0x21 || c > 0x7e || c == ';' || c == '=')
                    break;
                j++;
            }
            if (j == vs) {
                set_why(why, why_size, "empty value of field at offset %zu", ns);
                return ERR_INVAL;
            }
            if (j < len && !(rec[j] == ';' || is_wsp((unsigned char)rec[j]))) {
                set_why(why, why_size, "bad character in field value at offset %zu", j);
                return ERR_INVAL;
            }
        }
        fields++;
        i = j;
    }
    if (fields == 0 || !have_id) {
        set_why(why, why_size, "id missing");
        return ERR_INVAL;
    }
    memcpy(id_out, id, strlen(id) + 1);
    return 0;
}

int policy_txt_select(const char *const *recs, const size_t *lens, size_t n,
                      char id_out[POLICY_ID_MAX + 1], char *why, size_t why_size)
{
    size_t found = 0, which = 0;
    id_out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (policy_txt_is_sts(recs[i], lens[i])) {
            found++;
            which = i;
        }
    }
    if (found == 0) {
        set_why(why, why_size, "no TXT record begins with v=STSv1;");
        return ERR_NOTFOUND;
    }
    if (found > 1) {
        /* RFC 8461 3.1: not exactly one: no policy. Never glue them. */
        set_why(why, why_size, "%zu v=STSv1 TXT records (exactly one is allowed)", found);
        return ERR_INVAL;
    }
    char w[200] = "";
    if (policy_txt_parse(recs[which], lens[which], id_out, w, sizeof(w)) != 0) {
        set_why(why, why_size, "invalid TXT record: %s", w);
        return ERR_INVAL;
    }
    return 0;
}

/* ---- RFC 8461 3.2: the policy file --------------------------------------- */

static char *dup_lower(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++)
        d[i] = (char)tolower((unsigned char)s[i]);
    d[n] = '\0';
    return d;
}

/* sts-policy-vchar = %x21-7E / UTF8-2 / UTF8-3 / UTF8-4. We check ASCII
 * exactly and take bytes >= 0x80 as UTF-8 without decoding them: an unknown
 * field's value is never used. */
static bool ext_value_ok(const char *v, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == ' ' && i > 0 && i + 1 < n)
            continue;
        if (c < 0x21 || c == 0x7f)
            return false;
    }
    return true;
}

int policy_parse(const char *text, size_t len, struct sts_policy *out, char *why, size_t why_size)
{
    memset(out, 0, sizeof(*out));
    bool have_version = false, have_mode = false, have_max_age = false;
    unsigned line = 0;
    size_t i = 0;
    int rc = ERR_INVAL;
    if (len == 0) {
        set_why(why, why_size, "empty policy");
        return ERR_INVAL;
    }
    while (i < len) {
        line++;
        /* One line: up to LF; a CR is allowed only right before the LF. */
        size_t s = i, e = i;
        while (e < len && text[e] != '\n')
            e++;
        size_t next = e < len ? e + 1 : e;
        size_t end = e;
        if (end > s && text[end - 1] == '\r' && e < len)
            end--;
        i = next;
        /* The grammar has no empty lines: one term may end the last field
         * and nothing may follow it. */
        if (end == s) {
            set_why(why, why_size, "line %u: empty line", line);
            goto fail;
        }
        for (size_t k = s; k < end; k++) {
            unsigned char c = (unsigned char)text[k];
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                set_why(why, why_size, "line %u: control character", line);
                goto fail;
            }
        }
        /* Key: sts-policy-ext-name covers every field name. */
        size_t k = s;
        if (!is_alnum((unsigned char)text[k])) {
            set_why(why, why_size, "line %u: expected a field name", line);
            goto fail;
        }
        while (k < end && (is_alnum((unsigned char)text[k]) || text[k] == '_' || text[k] == '-' ||
                           text[k] == '.'))
            k++;
        size_t klen = k - s;
        if (klen > 32) {
            set_why(why, why_size, "line %u: field name longer than 32 characters", line);
            goto fail;
        }
        if (k == end || text[k] != ':') {
            set_why(why, why_size, "line %u: expected ':' after the field name", line);
            goto fail;
        }
        k++;
        while (k < end && is_wsp((unsigned char)text[k]))
            k++;
        /* Value: trailing WSP belongs to the line (field *WSP term). */
        size_t ve = end;
        while (ve > k && is_wsp((unsigned char)text[ve - 1]))
            ve--;
        const char *key = text + s;
        const char *val = text + k;
        size_t vlen = ve - k;
#define KEY_IS(lit) (klen == sizeof(lit) - 1 && memcmp(key, lit, klen) == 0)
#define VAL_IS(lit) (vlen == sizeof(lit) - 1 && memcmp(val, lit, vlen) == 0)
        if (KEY_IS("mx")) {
            /* sts-policy-mx-value = ["*."] Domain; mx accumulates. */
            const char *d = val;
            size_t dn = vlen;
            if (dn >= 2 && d[0] == '*' && d[1] == '.') {
                d += 2;
                dn -= 2;
            }
            if (dn > 0 && d[dn - 1] == '.')
                dn--; /* the one liberty: a trailing dot */
            if (!host_name_ok(d, dn, 0)) {
                set_why(why, why_size, "line %u: invalid mx pattern \"%.*s\"", line,
                        (int)(vlen > 80 ? 80 : vlen), val);
                goto fail;
            }
            if (out->n_mx == POLICY_MX_MAX) {
                set_why(why, why_size, "line %u: more than %d mx patterns", line, POLICY_MX_MAX);
                goto fail;
            }
            if (!out->mx) {
                out->mx = calloc(POLICY_MX_MAX, sizeof(char *));
                if (!out->mx) {
                    rc = ERR_NOMEM;
                    goto fail;
                }
            }
            size_t plen = (size_t)(d - val) + dn;
            char *pat = dup_lower(val, plen);
            if (!pat) {
                rc = ERR_NOMEM;
                goto fail;
            }
            out->mx[out->n_mx++] = pat;
            continue;
        }
        bool known = KEY_IS("version") || KEY_IS("mode") || KEY_IS("max_age");
        bool dup = (KEY_IS("version") && have_version) || (KEY_IS("mode") && have_mode) ||
                   (KEY_IS("max_age") && have_max_age);
        if (!known || dup) {
            /* RFC 8461 3.2: unknown fields are ignored, and so is every
             * repetition of a non-mx field after its first; both must
             * still be syntactically valid fields. */
            if (!ext_value_ok(val, vlen)) {
                set_why(why, why_size, "line %u: invalid value", line);
                goto fail;
            }
            continue;
        }
        if (KEY_IS("version")) {
            if (!VAL_IS("STSv1")) {
                set_why(why, why_size, "line %u: unsupported version \"%.*s\"", line,
                        (int)(vlen > 40 ? 40 : vlen), val);
                goto fail;
            }
            have_version = true;
        } else if (KEY_IS("mode")) {
            if (VAL_IS("enforce"))
                out->mode = POLICY_MODE_ENFORCE;
            else if (VAL_IS("testing"))
                out->mode = POLICY_MODE_TESTING;
            else if (VAL_IS("none"))
                out->mode = POLICY_MODE_NONE;
            else {
                set_why(why, why_size, "line %u: invalid mode \"%.*s\"", line,
                        (int)(vlen > 40 ? 40 : vlen), val);
                goto fail;
            }
            have_mode = true;
        } else {
            /* sts-policy-max-age-value = 1*10(DIGIT), at most 31557600. */
            if (vlen == 0 || vlen > 10) {
                set_why(why, why_size, "line %u: max_age must be 1 to 10 digits", line);
                goto fail;
            }
            uint64_t v = 0;
            for (size_t q = 0; q < vlen; q++) {
                if (!is_digit((unsigned char)val[q])) {
                    set_why(why, why_size, "line %u: max_age is not a number", line);
                    goto fail;
                }
                v = v * 10 + (uint64_t)(val[q] - '0');
            }
            if (v > 31557600) {
                set_why(why, why_size, "line %u: max_age %llu exceeds 31557600", line,
                        (unsigned long long)v);
                goto fail;
            }
            out->max_age = (uint32_t)v;
            have_max_age = true;
        }
#undef KEY_IS
#undef VAL_IS
    }
    if (!have_version) {
        set_why(why, why_size, "version missing");
        goto fail;
    }
    if (!have_mode) {
        set_why(why, why_size, "mode missing");
        goto fail;
    }
    if (!have_max_age) {
        set_why(why, why_size, "max_age missing");
        goto fail;
    }
    if (out->mode != POLICY_MODE_NONE && out->n_mx == 0) {
        set_why(why, why_size, "mx missing (required in mode %s)", policy_mode_name(out->mode));
        goto fail;
    }
    return 0;
fail:
    policy_sts_clear(out);
    return rc;
}

/* ---- RFC 8461 4.1: matching ---------------------------------------------- */

static size_t strip_dot(const char *s)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '.')
        n--;
    return n;
}

static bool eq_ci(const char *a, size_t an, const char *b, size_t bn)
{
    if (an != bn)
        return false;
    for (size_t i = 0; i < an; i++)
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i]))
            return false;
    return true;
}

bool policy_pattern_matches(const char *pattern, const char *host)
{
    if (!pattern || !host)
        return false;
    size_t pn = strip_dot(pattern), hn = strip_dot(host);
    if (pn == 0 || hn == 0 || memchr(host, '*', hn))
        return false; /* a host name is never a pattern itself */
    if (pn >= 2 && pattern[0] == '*' && pattern[1] == '.') {
        /* RFC 8461 4.1: the wildcard stands for exactly one leftmost label. */
        const char *dot = memchr(host, '.', hn);
        if (!dot || dot == host)
            return false;
        size_t rest = hn - (size_t)(dot + 1 - host);
        return rest > 0 && eq_ci(pattern + 2, pn - 2, dot + 1, rest);
    }
    return eq_ci(pattern, pn, host, hn);
}

bool policy_mx_matches(const struct sts_policy *p, const char *host)
{
    if (!p)
        return false;
    for (size_t i = 0; i < p->n_mx; i++)
        if (policy_pattern_matches(p->mx[i], host))
            return true;
    return false;
}

/* ---- names ----------------------------------------------------------------- */

int policy_domain_normalize(const char *in, char out[POLICY_NAME_MAX])
{
    if (!in)
        return ERR_INVAL;
    size_t n = strlen(in);
    if (n > 0 && in[n - 1] == '.')
        n--;
    if (n == 0 || n >= POLICY_NAME_MAX)
        return ERR_INVAL;
    bool ascii = true;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)in[i] >= 0x80)
            ascii = false;
    char tmp[POLICY_NAME_MAX];
    if (ascii) {
        for (size_t i = 0; i < n; i++)
            tmp[i] = (char)tolower((unsigned char)in[i]);
        tmp[n] = '\0';
    } else {
        /* An internationalised domain: its A-label form is what DNS and
         * the certificate of mta-sts.DOMAIN use (RFC 8461 3.1). */
        char u[POLICY_NAME_MAX];
        memcpy(u, in, n);
        u[n] = '\0';
        char *a = NULL;
        if (idn2_to_ascii_8z(u, &a, IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT) != IDN2_OK || !a)
            return ERR_INVAL;
        size_t an = strlen(a);
        if (an >= POLICY_NAME_MAX) {
            idn2_free(a);
            return ERR_INVAL;
        }
        for (size_t i = 0; i <= an; i++)
            tmp[i] = (char)tolower((unsigned char)a[i]);
        idn2_free(a);
        n = an;
    }
    if (!host_name_ok(tmp, n, 0))
        return ERR_INVAL;
    memcpy(out, tmp, n + 1);
    return 0;
}

/* ---- RFC 8461 5: the decision for one MX ---------------------------------- */

struct policy_tls_req policy_tls_requirement(const struct sts_policy *sts,
                                             const struct policy_override *ov, const char *mx_host)
{
    struct policy_tls_req r;
    memset(&r, 0, sizeof(r));
    r.level = POLICY_TLS_MAY;
    r.deliver = true;
    r.mx_matches = true;
    if (sts) {
        r.sts_mode = sts->mode;
        if (sts->mode != POLICY_MODE_NONE)
            r.mx_matches = policy_mx_matches(sts, mx_host);
    }
    if (ov) {
        /* The operator's entry is the whole answer for this domain. */
        r.origin = POLICY_ORIGIN_OVERRIDE;
        r.level = ov->level;
        r.override = ov;
        return r;
    }
    if (!sts || sts->mode == POLICY_MODE_NONE)
        return r;
    r.origin = POLICY_ORIGIN_STS;
    if (sts->mode == POLICY_MODE_ENFORCE) {
        /* RFC 8461 5: a host that fails 4.1 must not be used; one that
         * matches needs STARTTLS and a certificate valid for its name. */
        r.deliver = r.mx_matches;
        r.level = POLICY_TLS_VERIFY;
        return r;
    }
    /* testing: deliver regardless; the caller reports what VERIFY would
     * have said (RFC 8461 5, RFC 8460). */
    r.level = POLICY_TLS_MAY;
    r.report_only = true;
    return r;
}

size_t policy_filter_mx(const struct sts_policy *sts, const char *const *hosts, size_t n,
                        size_t *keep, bool *matches)
{
    size_t k = 0;
    bool enforce = sts && sts->mode == POLICY_MODE_ENFORCE;
    for (size_t i = 0; i < n; i++) {
        bool m = !sts || sts->mode == POLICY_MODE_NONE || policy_mx_matches(sts, hosts[i]);
        if (matches)
            matches[i] = m;
        if (!enforce || m)
            keep[k++] = i;
    }
    return k;
}
