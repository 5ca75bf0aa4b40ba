/*
 * server_parse.c - parsers of the SMTP server: command lines, paths and
 * mailboxes, MAIL/RCPT/BDAT parameters, xtext and base64.
 *
 * Standards: RFC 5321 2.4, 4.1.1, 4.1.2, 4.5.3.1; RFC 1870; RFC 6152;
 * RFC 6531 3.3; RFC 3461 4; RFC 3030 2; RFC 4954 5; RFC 4648 4.
 *
 * Invariants: pure functions; inputs are views that need not be
 * NUL-terminated; outputs are fixed-size and always NUL-terminated; every
 * reject carries a complete reply with an enhanced status code (RFC 3463).
 */
#include "server_parse.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

static const char *const verb_names[SMTP_V_COUNT] = {
    [SMTP_V_UNKNOWN] = "UNKNOWN", [SMTP_V_EHLO] = "EHLO",         [SMTP_V_HELO] = "HELO",
    [SMTP_V_MAIL] = "MAIL",       [SMTP_V_RCPT] = "RCPT",         [SMTP_V_DATA] = "DATA",
    [SMTP_V_BDAT] = "BDAT",       [SMTP_V_RSET] = "RSET",         [SMTP_V_NOOP] = "NOOP",
    [SMTP_V_QUIT] = "QUIT",       [SMTP_V_VRFY] = "VRFY",         [SMTP_V_EXPN] = "EXPN",
    [SMTP_V_HELP] = "HELP",       [SMTP_V_STARTTLS] = "STARTTLS", [SMTP_V_AUTH] = "AUTH",
};

const char *smtp_verb_name(enum smtp_verb v)
{
    return (unsigned)v < SMTP_V_COUNT ? verb_names[v] : "UNKNOWN";
}

static char upper(char c)
{
    return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
}

static bool prefix_ci(const char *p, size_t n, const char *pre)
{
    size_t k = strlen(pre);
    if (n < k)
        return false;
    for (size_t i = 0; i < k; i++)
        if (upper(p[i]) != pre[i])
            return false;
    return true;
}

int smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *out, const char **why)
{
    out->verb = SMTP_V_UNKNOWN;
    out->arg = (struct view){line + len, 0};
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if (c == 0) {
            *why = "500 5.5.2 Error: NUL character in command";
            return ERR_PROTO;
        }
        if ((c < 32 && c != '\t') || c == 127) {
            *why = "500 5.5.2 Error: control character in command";
            return ERR_PROTO;
        }
    }
    size_t v = 0;
    while (v < len && line[v] != ' ')
        v++;
    for (int i = 1; i < SMTP_V_COUNT; i++) {
        const char *name = verb_names[i];
        if (strlen(name) == v && prefix_ci(line, v, name)) {
            out->verb = (enum smtp_verb)i;
            break;
        }
    }
    if (v < len) {
        /* RFC 5321 4.1.1: exactly one space; tolerate more, as most servers do. */
        size_t a = v;
        while (a < len && line[a] == ' ')
            a++;
        size_t e = len;
        while (e > a && (line[e - 1] == ' ' || line[e - 1] == '\t'))
            e--;
        out->arg = (struct view){line + a, e - a};
    }
    return 0;
}

bool smtp_utf8_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned min, cp;
        if (c >= 0xc2 && c <= 0xdf) {
            k = 1, min = 0x80, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2, min = 0x800, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i <= k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

bool smtp_has_8bit(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            return true;
    return false;
}

/* RFC 5322 3.2.3 atext. */
static bool is_atext(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static bool is_letdig(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int check_local(const char *p, size_t n, bool utf8, const char **why)
{
    if (n == 0) {
        *why = "5.1.3 Empty local part";
        return ERR_INVAL;
    }
    if (n > SMTP_LOCAL_MAX) {
        *why = "5.1.3 Local part longer than 64 octets (RFC 5321 4.5.3.1.1)";
        return ERR_INVAL;
    }
    if (p[0] == '"') {
        /* Quoted-string = DQUOTE *QcontentSMTP DQUOTE */
        if (n < 2 || p[n - 1] != '"') {
            *why = "5.1.3 Bad quoted local part";
            return ERR_INVAL;
        }
        for (size_t i = 1; i < n - 1; i++) {
            unsigned char c = (unsigned char)p[i];
            if (c == '\\') {
                if (i + 1 >= n - 1 || p[i + 1] < 32 || p[i + 1] > 126) {
                    *why = "5.1.3 Bad quoted local part";
                    return ERR_INVAL;
                }
                i++;
            } else if (c == '"' || (c < 32) || c == 127 || (c >= 0x80 && !utf8)) {
                *why = "5.1.3 Bad quoted local part";
                return ERR_INVAL;
            }
        }
        return 0;
    }
    /* Dot-string = Atom *("." Atom) */
    bool prev_dot = true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '.') {
            if (prev_dot) {
                *why = "5.1.3 Bad local part syntax (empty atom)";
                return ERR_INVAL;
            }
            prev_dot = true;
        } else if (is_atext(c) || (c >= 0x80 && utf8)) {
            prev_dot = false;
        } else {
            *why = "5.1.3 Bad local part syntax";
            return ERR_INVAL;
        }
    }
    if (prev_dot) {
        *why = "5.1.3 Bad local part syntax (trailing dot)";
        return ERR_INVAL;
    }
    return 0;
}

static int check_domain(const char *p, size_t n, bool utf8, const char **why)
{
    if (n == 0) {
        *why = "5.1.2 Empty domain";
        return ERR_INVAL;
    }
    if (n > SMTP_DOMAIN_MAX) {
        *why = "5.1.2 Domain longer than 255 octets (RFC 5321 4.5.3.1.2)";
        return ERR_INVAL;
    }
    if (p[0] == '[') {
        /* RFC 5321 4.1.3 address literals. */
        char lit[64];
        if (p[n - 1] != ']' || n - 2 >= sizeof(lit)) {
            *why = "5.1.2 Bad address literal";
            return ERR_INVAL;
        }
        const char *a = p + 1;
        size_t an = n - 2;
        unsigned char tmp[16];
        if (prefix_ci(a, an, "IPV6:")) {
            memcpy(lit, a + 5, an - 5);
            lit[an - 5] = '\0';
            if (inet_pton(AF_INET6, lit, tmp) == 1)
                return 0;
        } else {
            memcpy(lit, a, an);
            lit[an] = '\0';
            if (inet_pton(AF_INET, lit, tmp) == 1)
                return 0;
        }
        *why = "5.1.2 Bad address literal";
        return ERR_INVAL;
    }
    size_t label = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || p[i] == '.') {
            if (label == 0 || label > 63) {
                *why = "5.1.2 Bad domain syntax";
                return ERR_INVAL;
            }
            /* Let-dig [Ldh-str]: no hyphen at either end of a label. */
            if (p[i - 1] == '-' || p[i - label] == '-') {
                *why = "5.1.2 Bad domain syntax";
                return ERR_INVAL;
            }
            label = 0;
            continue;
        }
        unsigned char c = (unsigned char)p[i];
        if (!(is_letdig(c) || c == '-' || (c >= 0x80 && utf8))) {
            *why = "5.1.2 Bad domain syntax";
            return ERR_INVAL;
        }
        label++;
    }
    return 0;
}

int smtp_mailbox_check(const char *p, size_t n, bool utf8, const char **why)
{
    if (smtp_has_8bit(p, n)) {
        if (!utf8) {
            *why = "5.6.7 Non-ASCII address requires SMTPUTF8 (RFC 6531)";
            return ERR_INVAL;
        }
        if (!smtp_utf8_valid((const unsigned char *)p, n)) {
            *why = "5.1.3 Address is not valid UTF-8";
            return ERR_INVAL;
        }
    }
    /* The '@' that separates is the last one: a quoted local part may hold '@'. */
    size_t at = n;
    for (size_t i = n; i > 0; i--) {
        if (p[i - 1] == '@') {
            at = i - 1;
            break;
        }
    }
    if (at == n) {
        *why = "5.1.3 Address has no domain";
        return ERR_INVAL;
    }
    int rc = check_local(p, at, utf8, why);
    if (rc)
        return rc;
    return check_domain(p + at + 1, n - at - 1, utf8, why);
}

bool smtp_xtext_valid(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '+') {
            if (n - i < 3)
                return false;
            for (int j = 1; j <= 2; j++) {
                char h = p[i + j];
                if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F')))
                    return false;
            }
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return false;
        }
    }
    return true;
}

/*
 * Split off the path "<...>" at the start of s (after "FROM:" or "TO:").
 * Drops an RFC 5321 4.1.2 source route ("@a,@b:") which 4.1.1.3 says to
 * ignore. Leaves *rest at the parameters.
 */
static int take_path(struct view s, char *addr, struct view *rest, bool allow_null, bool utf8,
                     const char **why_text)
{
    /* Tolerate spaces after the colon: many clients send "MAIL FROM: <a@b>". */
    size_t i = 0;
    while (i < s.len && s.ptr[i] == ' ')
        i++;
    if (i >= s.len || s.ptr[i] != '<') {
        *why_text = "5.5.2 Syntax: address must be in angle brackets <...>";
        return ERR_INVAL;
    }
    size_t start = i + 1, end = start;
    bool quoted = false;
    for (; end < s.len; end++) {
        char c = s.ptr[end];
        if (quoted && c == '\\' && end + 1 < s.len) {
            end++;
            continue;
        }
        if (c == '"')
            quoted = !quoted;
        else if (c == '>' && !quoted)
            break;
    }
    if (end >= s.len) {
        *why_text = "5.5.2 Syntax: missing '>'";
        return ERR_INVAL;
    }
    if (end - start + 2 > SMTP_PATH_MAX) {
        *why_text = "5.1.3 Path longer than 256 octets (RFC 5321 4.5.3.1.3)";
        return ERR_INVAL;
    }
    const char *a = s.ptr + start;
    size_t an = end - start;
    if (an > 0 && a[0] == '@') {
        size_t c = 0;
        while (c < an && a[c] != ':')
            c++;
        if (c == an) {
            *why_text = "5.1.3 Bad source route";
            return ERR_INVAL;
        }
        a += c + 1;
        an -= c + 1;
    }
    size_t r = end + 1;
    if (r < s.len && s.ptr[r] != ' ') {
        *why_text = "5.5.2 Syntax: junk after address";
        return ERR_INVAL;
    }
    while (r < s.len && s.ptr[r] == ' ')
        r++;
    *rest = (struct view){s.ptr + r, s.len - r};
    if (an == 0) {
        if (!allow_null) {
            *why_text = "5.1.3 Empty recipient address";
            return ERR_INVAL;
        }
        addr[0] = '\0';
        return 0;
    }
    int rc = smtp_mailbox_check(a, an, utf8, why_text);
    if (rc)
        return rc;
    memcpy(addr, a, an);
    addr[an] = '\0';
    return 0;
}

/* Next "KEY[=VALUE]" parameter from *rest. false at the end. */
static bool next_param(struct view *rest, struct view *key, struct view *val, bool *has_val)
{
    size_t i = 0;
    while (i < rest->len && rest->ptr[i] == ' ')
        i++;
    if (i >= rest->len)
        return false;
    size_t s = i;
    while (i < rest->len && rest->ptr[i] != ' ')
        i++;
    struct view p = {rest->ptr + s, i - s};
    *rest = (struct view){rest->ptr + i, rest->len - i};
    const char *eq = memchr(p.ptr, '=', p.len);
    if (eq) {
        *key = (struct view){p.ptr, (size_t)(eq - p.ptr)};
        *val = (struct view){eq + 1, p.len - (size_t)(eq - p.ptr) - 1};
        *has_val = true;
    } else {
        *key = p;
        *val = (struct view){p.ptr + p.len, 0};
        *has_val = false;
    }
    return true;
}

/* RFC 5321 4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"),
 * esmtp-value = 1*(%d33-60 / %d62-126) (plus UTF-8 under RFC 6531). */
static bool param_syntax_ok(struct view k, struct view v, bool has_val)
{
    if (k.len == 0 || !is_letdig((unsigned char)k.ptr[0]))
        return false;
    for (size_t i = 0; i < k.len; i++)
        if (!is_letdig((unsigned char)k.ptr[i]) && k.ptr[i] != '-')
            return false;
    if (has_val) {
        if (v.len == 0)
            return false;
        for (size_t i = 0; i < v.len; i++) {
            unsigned char c = (unsigned char)v.ptr[i];
            if (c == '=' || c < 33 || c == 127)
                return false;
        }
    }
    return true;
}

static int view_to_u64(struct view v, uint64_t *out)
{
    char tmp[24];
    if (v.len == 0 || v.len >= sizeof(tmp))
        return ERR_INVAL;
    memcpy(tmp, v.ptr, v.len);
    tmp[v.len] = '\0';
    return str_to_u64(tmp, out);
}

int smtp_parse_mail(struct view arg, bool smtputf8_ok, struct smtp_mail_args *out, const char **why)
{
    static char reply[160];
    memset(out, 0, sizeof(*out));
    if (!prefix_ci(arg.ptr, arg.len, "FROM:")) {
        *why = "501 5.5.4 Syntax: MAIL FROM:<address>";
        return ERR_INVAL;
    }
    struct view s = {arg.ptr + 5, arg.len - 5};
    /* SMTPUTF8 decides whether the path may be non-ASCII, so find the
     * parameters before judging the path: parse leniently first. */
    bool utf8 = false;
    if (smtputf8_ok) {
        for (size_t i = 0; i + 8 <= s.len; i++)
            if (prefix_ci(s.ptr + i, s.len - i, "SMTPUTF8") && i > 0 && s.ptr[i - 1] == ' ' &&
                (i + 8 == s.len || s.ptr[i + 8] == ' '))
                utf8 = true;
    }
    struct view rest;
    const char *t = NULL;
    if (take_path(s, out->addr, &rest, true, utf8, &t)) {
        /* Address problems are 501 with the sender's subject code (5.1.7),
         * except the SMTPUTF8 one which has its own (RFC 6531 3.6.1: 553 5.6.7). */
        if (strncmp(t, "5.6.7", 5) == 0)
            snprintf(reply, sizeof(reply), "553 %s", t);
        else if (strncmp(t, "5.5.2", 5) == 0)
            snprintf(reply, sizeof(reply), "501 %s", t);
        else
            snprintf(reply, sizeof(reply), "501 5.1.7 Bad sender address syntax: %s", t + 6);
        *why = reply;
        return ERR_INVAL;
    }
    struct view k, v;
    bool hv;
    while (next_param(&rest, &k, &v, &hv)) {
        if (!param_syntax_ok(k, v, hv)) {
            *why = "501 5.5.4 Bad MAIL parameter syntax";
            return ERR_INVAL;
        }
        if (view_eq_ci(k, "SIZE") && hv) {
            if (out->has_size || view_to_u64(v, &out->size)) {
                *why = "501 5.5.4 Bad SIZE parameter";
                return ERR_INVAL;
            }
            out->has_size = true;
        } else if (view_eq_ci(k, "BODY") && hv) {
            if (out->body != SMTP_BODY_NONE) {
                *why = "501 5.5.4 Duplicate BODY parameter";
                return ERR_INVAL;
            }
            if (view_eq_ci(v, "7BIT"))
                out->body = SMTP_BODY_7BIT;
            else if (view_eq_ci(v, "8BITMIME"))
                out->body = SMTP_BODY_8BITMIME;
            else {
                *why = "501 5.5.4 Unsupported BODY type (7BIT or 8BITMIME)";
                return ERR_INVAL;
            }
        } else if (view_eq_ci(k, "SMTPUTF8") && !hv && smtputf8_ok) {
            if (out->smtputf8) {
                *why = "501 5.5.4 Duplicate SMTPUTF8 parameter";
                return ERR_INVAL;
            }
            out->smtputf8 = true;
        } else if (view_eq_ci(k, "RET") && hv) {
            if (out->ret != SMTP_PARSE_RET_NONE) {
                *why = "501 5.5.4 Duplicate RET parameter";
                return ERR_INVAL;
            }
            if (view_eq_ci(v, "FULL"))
                out->ret = SMTP_PARSE_RET_FULL;
            else if (view_eq_ci(v, "HDRS"))
                out->ret = SMTP_PARSE_RET_HDRS;
            else {
                *why = "501 5.5.4 Bad RET parameter (FULL or HDRS)";
                return ERR_INVAL;
            }
        } else if (view_eq_ci(k, "ENVID") && hv) {
            if (out->envid[0] || v.len > SMTP_ENVID_MAX || !smtp_xtext_valid(v.ptr, v.len)) {
                *why = "501 5.5.4 Bad ENVID parameter (RFC 3461 4.4)";
                return ERR_INVAL;
            }
            memcpy(out->envid, v.ptr, v.len);
            out->envid[v.len] = '\0';
        } else if (view_eq_ci(k, "AUTH") && hv) {
            /* RFC 4954 5: we do not relay the AUTH= identity; it is checked
             * for syntax and otherwise ignored, which the RFC permits. */
            if (!(v.len == 2 && v.ptr[0] == '<' && v.ptr[1] == '>') &&
                !smtp_xtext_valid(v.ptr, v.len)) {
                *why = "501 5.5.4 Bad AUTH parameter";
                return ERR_INVAL;
            }
        } else {
            *why = "555 5.5.4 Unsupported MAIL parameter";
            return ERR_INVAL;
        }
    }
    /* The lenient scan above may have been fooled by a quoted local part. */
    if (!out->smtputf8 && smtp_has_8bit(out->addr, strlen(out->addr))) {
        *why = "553 5.6.7 Non-ASCII address requires SMTPUTF8 (RFC 6531)";
        return ERR_INVAL;
    }
    return 0;
}

static int parse_notify(struct view v, unsigned *out)
{
    unsigned bits = 0;
    size_t i = 0;
    while (i <= v.len) {
        size_t s = i;
        while (i < v.len && v.ptr[i] != ',')
            i++;
        struct view w = {v.ptr + s, i - s};
        unsigned b;
        if (view_eq_ci(w, "NEVER"))
            b = SMTP_NOTIFY_NEVER;
        else if (view_eq_ci(w, "SUCCESS"))
            b = SMTP_NOTIFY_SUCCESS;
        else if (view_eq_ci(w, "FAILURE"))
            b = SMTP_NOTIFY_FAILURE;
        else if (view_eq_ci(w, "DELAY"))
            b = SMTP_NOTIFY_DELAY;
        else
            return ERR_INVAL;
        if (bits & b)
            return ERR_INVAL;
        bits |= b;
        i++;
    }
    /* RFC 3461 4.1: NEVER stands alone. */
    if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
        return ERR_INVAL;
    *out = bits;
    return 0;
}

/* RFC 5321 4.1.1.3: "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
 * Forward-path ). The bare form has no domain, and 4.5.1 makes it
 * case-insensitive and a MUST. On a match *rest is left at the parameters. */
static bool bare_postmaster(struct view s, struct view *rest)
{
    static const char pm[] = "<POSTMASTER>";
    size_t k = sizeof(pm) - 1;
    size_t i = 0;
    while (i < s.len && s.ptr[i] == ' ')
        i++;
    if (!prefix_ci(s.ptr + i, s.len - i, pm))
        return false;
    i += k;
    if (i < s.len && s.ptr[i] != ' ')
        return false; /* junk after '>': let take_path() say so */
    while (i < s.len && s.ptr[i] == ' ')
        i++;
    *rest = (struct view){s.ptr + i, s.len - i};
    return true;
}

int smtp_parse_rcpt(struct view arg, bool utf8, struct smtp_rcpt_args *out, const char **why)
{
    static char reply[160];
    memset(out, 0, sizeof(*out));
    if (!prefix_ci(arg.ptr, arg.len, "TO:")) {
        *why = "501 5.5.4 Syntax: RCPT TO:<address>";
        return ERR_INVAL;
    }
    struct view s = {arg.ptr + 3, arg.len - 3};
    struct view rest;
    const char *t = NULL;
    if (bare_postmaster(s, &rest)) {
        memcpy(out->addr, "postmaster", sizeof("postmaster"));
        out->postmaster = true;
    } else if (take_path(s, out->addr, &rest, false, utf8, &t)) {
        if (strncmp(t, "5.6.7", 5) == 0)
            snprintf(reply, sizeof(reply), "553 %s", t);
        else if (strncmp(t, "5.5.2", 5) == 0)
            snprintf(reply, sizeof(reply), "501 %s", t);
        else
            snprintf(reply, sizeof(reply), "501 %s", t);
        *why = reply;
        return ERR_INVAL;
    }
    struct view k, v;
    bool hv;
    while (next_param(&rest, &k, &v, &hv)) {
        if (!param_syntax_ok(k, v, hv)) {
            *why = "501 5.5.4 Bad RCPT parameter syntax";
            return ERR_INVAL;
        }
        if (view_eq_ci(k, "NOTIFY") && hv) {
            if (out->notify || parse_notify(v, &out->notify)) {
                *why = "501 5.5.4 Bad NOTIFY parameter (RFC 3461 4.1)";
                return ERR_INVAL;
            }
        } else if (view_eq_ci(k, "ORCPT") && hv) {
            /* RFC 3461 4.2: addr-type ";" xtext. */
            const char *semi = memchr(v.ptr, ';', v.len);
            if (out->orcpt[0] || !semi || semi == v.ptr || v.len > SMTP_ORCPT_MAX ||
                !smtp_xtext_valid(semi + 1, v.len - (size_t)(semi - v.ptr) - 1) ||
                semi + 1 == v.ptr + v.len) {
                *why = "501 5.5.4 Bad ORCPT parameter (RFC 3461 4.2)";
                return ERR_INVAL;
            }
            for (const char *c = v.ptr; c < semi; c++) {
                if (!is_letdig((unsigned char)*c) && *c != '-') {
                    *why = "501 5.5.4 Bad ORCPT parameter (RFC 3461 4.2)";
                    return ERR_INVAL;
                }
            }
            memcpy(out->orcpt, v.ptr, v.len);
            out->orcpt[v.len] = '\0';
        } else {
            *why = "555 5.5.4 Unsupported RCPT parameter";
            return ERR_INVAL;
        }
    }
    return 0;
}

int smtp_parse_bdat(struct view arg, uint64_t *size, bool *last)
{
    size_t i = 0;
    while (i < arg.len && arg.ptr[i] != ' ')
        i++;
    if (view_to_u64((struct view){arg.ptr, i}, size))
        return ERR_INVAL;
    while (i < arg.len && arg.ptr[i] == ' ')
        i++;
    struct view rest = {arg.ptr + i, arg.len - i};
    if (rest.len == 0) {
        *last = false;
        return 0;
    }
    if (view_eq_ci(rest, "LAST")) {
        *last = true;
        return 0;
    }
    return ERR_INVAL;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int smtp_base64_decode(const char *in, size_t n, unsigned char *out, size_t out_size)
{
    if (n % 4)
        return ERR_INVAL;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            unsigned char c = (unsigned char)in[i + j];
            if (c == '=') {
                /* Padding only in the last quantum, only at its end. */
                if (i + 4 != n || j < 2)
                    return ERR_INVAL;
                pad++;
                v[j] = 0;
            } else {
                if (pad)
                    return ERR_INVAL;
                v[j] = b64val(c);
                if (v[j] < 0)
                    return ERR_INVAL;
            }
        }
        unsigned triple = ((unsigned)v[0] << 18) | ((unsigned)v[1] << 12) | ((unsigned)v[2] << 6) |
                          (unsigned)v[3];
        size_t k = 3 - (size_t)pad;
        if (out_size - o < k)
            return ERR_TOOBIG;
        unsigned char bytes[3] = {(unsigned char)(triple >> 16), (unsigned char)(triple >> 8),
                                  (unsigned char)triple};
        memcpy(out + o, bytes, k);
        o += k;
    }
    return (int)o;
}
