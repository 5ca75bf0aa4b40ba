/*
 * override.c - the operator's TLS policy table (tls_policy_file), in the
 * syntax of a Postfix smtp_tls_policy_maps text file:
 *
 *   example.com   secure match=mx1.example.com:.example.net
 *   example.net   may
 *   .example.org  encrypt
 *   legacy.test   none
 *
 * Levels: none, may, encrypt, verify, secure ("dane" and "fingerprint" are
 * refused: Convoy does not implement them, and quietly downgrading would be
 * worse than an error). An entry applies before MTA-STS.
 *
 * Invariants: every problem is reported with FILE:LINE; a table with any
 * problem is refused as a whole, so a typo never silently loosens TLS.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "policy.h"

#define OVERRIDE_FILE_MAX (4 * 1024 * 1024)

struct policy_overrides {
    size_t n;
    struct policy_override *v;
    char *name;
};

static int add_entry(struct policy_overrides *o, const struct policy_override *e)
{
    struct policy_override *nv = realloc(o->v, (o->n + 1) * sizeof(*nv));
    if (!nv)
        return ERR_NOMEM;
    o->v = nv;
    o->v[o->n++] = *e;
    return 0;
}

/* Split the next whitespace-separated word out of s. */
static char *next_word(char **s)
{
    char *p = *s;
    while (*p == ' ' || *p == '\t')
        p++;
    if (!*p) {
        *s = p;
        return NULL;
    }
    char *w = p;
    while (*p && *p != ' ' && *p != '\t')
        p++;
    if (*p)
        *p++ = '\0';
    *s = p;
    return w;
}

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static int parse_entry(struct policy_overrides *o, char *text, unsigned line, struct buf *err)
{
    char *s = text;
    char *dom = next_word(&s);
    char *lvl = next_word(&s);
    if (!dom)
        return 0;
    if (!lvl) {
        buf_printf(err, "%s:%u: missing TLS level after \"%s\"\n", o->name, line, dom);
        return ERR_INVAL;
    }
    struct policy_override e;
    memset(&e, 0, sizeof(e));
    e.file = o->name;
    e.line = line;
    const char *d = dom[0] == '.' ? dom + 1 : dom;
    char norm[POLICY_NAME_MAX];
    if (policy_domain_normalize(d, norm) != 0) {
        buf_printf(err, "%s:%u: invalid domain \"%s\"\n", o->name, line, dom);
        return ERR_INVAL;
    }
    /* A leading dot (".example.com": the subdomains) is kept in front of
     * the normalised name; a name that no longer fits is refused. */
    size_t nl = strlen(norm), dot = dom[0] == '.';
    if (dot + nl >= sizeof(e.domain)) {
        buf_printf(err, "%s:%u: domain \"%s\" is too long\n", o->name, line, dom);
        return ERR_INVAL;
    }
    if (dot)
        e.domain[0] = '.';
    memcpy(e.domain + dot, norm, nl + 1);
    lower(lvl);
    if (strcmp(lvl, "none") == 0)
        e.level = POLICY_TLS_NONE;
    else if (strcmp(lvl, "may") == 0)
        e.level = POLICY_TLS_MAY;
    else if (strcmp(lvl, "encrypt") == 0)
        e.level = POLICY_TLS_ENCRYPT;
    else if (strcmp(lvl, "verify") == 0)
        e.level = POLICY_TLS_VERIFY;
    else if (strcmp(lvl, "secure") == 0) {
        e.level = POLICY_TLS_VERIFY;
        e.secure = true;
    } else {
        buf_printf(err,
                   "%s:%u: unsupported TLS level \"%s\" (none, may, encrypt, verify or secure)\n",
                   o->name, line, lvl);
        return ERR_INVAL;
    }
    char *attr;
    while ((attr = next_word(&s)) != NULL) {
        char *eq = strchr(attr, '=');
        if (!eq || eq == attr) {
            buf_printf(err, "%s:%u: expected name=value, got \"%s\"\n", o->name, line, attr);
            return ERR_INVAL;
        }
        *eq = '\0';
        char *val = eq + 1;
        lower(attr);
        if (strcmp(attr, "match") == 0) {
            if (e.level != POLICY_TLS_VERIFY) {
                buf_printf(err, "%s:%u: match= needs level verify or secure\n", o->name, line);
                return ERR_INVAL;
            }
            char *save = NULL;
            for (char *m = strtok_r(val, ":", &save); m; m = strtok_r(NULL, ":", &save)) {
                if (e.n_match == POLICY_MATCH_MAX) {
                    buf_printf(err, "%s:%u: more than %d match names\n", o->name, line,
                               POLICY_MATCH_MAX);
                    return ERR_INVAL;
                }
                lower(m);
                const char *mn = m[0] == '.' ? m + 1 : m;
                char tmp[POLICY_NAME_MAX];
                if (strcmp(m, "hostname") != 0 && strcmp(m, "nexthop") != 0 &&
                    strcmp(m, "dot-nexthop") != 0 && policy_domain_normalize(mn, tmp) != 0) {
                    buf_printf(err, "%s:%u: invalid match name \"%s\"\n", o->name, line, m);
                    return ERR_INVAL;
                }
                str_copy(e.match[e.n_match++], m, POLICY_NAME_MAX);
            }
            if (e.n_match == 0) {
                buf_printf(err, "%s:%u: empty match=\n", o->name, line);
                return ERR_INVAL;
            }
        } else if (strcmp(attr, "ciphers") == 0 || strcmp(attr, "protocols") == 0 ||
                   strcmp(attr, "exclude") == 0 || strcmp(attr, "tafile") == 0 ||
                   strcmp(attr, "servername") == 0 || strcmp(attr, "connection_reuse") == 0) {
            /* Known to Postfix; accepted and not used by Convoy. */
        } else {
            buf_printf(err, "%s:%u: unknown attribute \"%s\"\n", o->name, line, attr);
            return ERR_INVAL;
        }
    }
    for (size_t i = 0; i < o->n; i++) {
        if (strcmp(o->v[i].domain, e.domain) == 0) {
            buf_printf(err, "%s:%u: duplicate entry for %s (first on line %u)\n", o->name, line,
                       e.domain, o->v[i].line);
            return ERR_INVAL;
        }
    }
    return add_entry(o, &e);
}

struct policy_overrides *policy_overrides_load_mem(const char *name, const char *text, size_t len,
                                                   struct buf *err)
{
    struct policy_overrides *o = calloc(1, sizeof(*o));
    if (!o || !(o->name = strdup(name ? name : "tls_policy_file"))) {
        free(o);
        buf_printf(err, "%s: out of memory\n", name ? name : "tls_policy_file");
        return NULL;
    }
    struct buf logical;
    buf_init(&logical, 64 * 1024);
    unsigned line = 0, start_line = 0;
    bool bad = false;
    size_t i = 0;
    while (i <= len) {
        size_t e = i;
        while (e < len && text[e] != '\n')
            e++;
        bool at_end = e >= len;
        line++;
        size_t n = e - i;
        if (n > 0 && text[i + n - 1] == '\r')
            n--;
        const char *l = text + i;
        bool nul = memchr(l, '\0', n) != NULL;
        size_t k = 0;
        while (k < n && (l[k] == ' ' || l[k] == '\t'))
            k++;
        bool blank = k == n;
        bool comment = !blank && l[k] == '#';
        bool cont = k > 0 && !blank && !comment;
        if (nul) {
            buf_printf(err, "%s:%u: NUL byte\n", o->name, line);
            bad = true;
        } else if (cont) {
            /* Postfix: a line starting with whitespace continues the
             * logical line. */
            if (logical.len == 0) {
                buf_printf(err, "%s:%u: continuation line without an entry\n", o->name, line);
                bad = true;
            } else if (buf_append(&logical, " ", 1) != 0 || buf_append(&logical, l + k, n - k)) {
                buf_printf(err, "%s:%u: entry too long\n", o->name, line);
                bad = true;
            }
        } else if (!blank && !comment) {
            if (logical.len && parse_entry(o, logical.data, start_line, err) != 0)
                bad = true;
            buf_reset(&logical);
            start_line = line;
            if (buf_append(&logical, l, n) != 0) {
                buf_printf(err, "%s:%u: entry too long\n", o->name, line);
                bad = true;
            }
        }
        if (at_end)
            break;
        i = e + 1;
    }
    if (logical.len && parse_entry(o, logical.data, start_line, err) != 0)
        bad = true;
    buf_free(&logical);
    if (bad) {
        policy_overrides_free(o);
        return NULL;
    }
    return o;
}

struct policy_overrides *policy_overrides_load(const char *path, struct buf *err)
{
    if (!path || !*path)
        return policy_overrides_load_mem("tls_policy_file", "", 0, err);
    FILE *f = fopen(path, "rb");
    if (!f) {
        buf_printf(err, "%s: cannot open: %s\n", path, strerror(errno));
        return NULL;
    }
    struct buf b;
    buf_init(&b, OVERRIDE_FILE_MAX);
    int rc = file_read_stream(f, &b);
    fclose(f);
    bool big = rc == ERR_TOOBIG;
    if (rc != 0) {
        buf_printf(err, "%s: %s\n", path, big ? "file too large" : "read error");
        buf_free(&b);
        return NULL;
    }
    struct policy_overrides *o = policy_overrides_load_mem(path, b.data ? b.data : "", b.len, err);
    buf_free(&b);
    return o;
}

void policy_overrides_free(struct policy_overrides *o)
{
    if (!o)
        return;
    free(o->v);
    free(o->name);
    free(o);
}

size_t policy_overrides_count(const struct policy_overrides *o)
{
    return o ? o->n : 0;
}

const struct policy_override *policy_override_find(const struct policy_overrides *o,
                                                   const char *domain)
{
    if (!o || !domain)
        return NULL;
    for (size_t i = 0; i < o->n; i++)
        if (strcasecmp(o->v[i].domain, domain) == 0)
            return &o->v[i];
    /* The nearest ".parent" entry. */
    for (const char *d = strchr(domain, '.'); d; d = strchr(d + 1, '.'))
        for (size_t i = 0; i < o->n; i++)
            if (o->v[i].domain[0] == '.' && strcasecmp(o->v[i].domain, d) == 0)
                return &o->v[i];
    return NULL;
}

/* Does one certificate name satisfy one match rule? */
static bool rule_ok(const char *rule, const char *domain, const char *mx_host, const char *name)
{
    if (strcmp(rule, "hostname") == 0)
        return tls_name_matches(name, mx_host);
    if (strcmp(rule, "nexthop") == 0)
        return tls_name_matches(name, domain);
    if (strcmp(rule, "dot-nexthop") == 0 || rule[0] == '.') {
        /* Any host below the domain: the certificate name, minus a
         * wildcard, must end in ".domain". */
        const char *base = rule[0] == '.' ? rule + 1 : domain;
        const char *n = name[0] == '*' && name[1] == '.' ? name + 2 : name;
        size_t bl = strlen(base), nl = strlen(n);
        if (name[0] == '*' && name[1] == '.' && strcasecmp(n, base) == 0)
            return true;
        return nl > bl + 1 && n[nl - bl - 1] == '.' && strcasecmp(n + nl - bl, base) == 0;
    }
    return tls_name_matches(name, rule);
}

bool policy_override_cert_ok(const struct policy_override *ov, const char *domain,
                             const char *mx_host, const struct tls_facts *facts)
{
    if (!ov || !facts || !facts->chain_ok)
        return false;
    static const char *const verify_default[] = {"hostname"};
    static const char *const secure_default[] = {"nexthop", "dot-nexthop"};
    const char *rules[POLICY_MATCH_MAX];
    size_t nr = 0;
    if (ov->n_match) {
        for (size_t i = 0; i < ov->n_match; i++)
            rules[nr++] = ov->match[i];
    } else if (ov->secure) {
        rules[nr++] = secure_default[0];
        rules[nr++] = secure_default[1];
    } else {
        rules[nr++] = verify_default[0];
    }
    size_t nn = facts->n_peer_names;
    for (size_t r = 0; r < nr; r++) {
        for (size_t i = 0; i < nn; i++)
            if (rule_ok(rules[r], domain, mx_host, facts->peer_names[i]))
                return true;
        /* RFC 6125: the CN only when the certificate has no DNS SAN. */
        if (facts->n_peer_names_total == 0 && facts->peer_cn[0] &&
            rule_ok(rules[r], domain, mx_host, facts->peer_cn))
            return true;
    }
    return false;
}
