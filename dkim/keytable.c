/*
 * keytable.c - the dkim_key_table file: "DOMAIN SELECTOR KEYFILE" lines,
 * '#' comments and empty lines ignored. A relative KEYFILE is taken from
 * the directory of the table.
 *
 * Invariants:
 *  - All or nothing: one bad line (syntax, duplicate, unreadable or weak
 *    key) fails the whole load, and every problem is reported as
 *    FILE:LINE: why.
 *  - A loaded table never changes; reloads build a new one, and holders of
 *    the old one keep it alive with their reference.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dkim.h"

#define TABLE_MAX (1024 * 1024)
#define MAX_LINES 100000

struct dkim_keytable {
    atomic_int refs;
    struct dkim_signer *v;
    size_t n;
};

static void signer_clear(struct dkim_signer *s)
{
    free((char *)s->domain);
    free((char *)s->selector);
    free((char *)s->keyfile);
    dkim_key_free(s->key);
}

void dkim_keytable_free(struct dkim_keytable *t)
{
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    for (size_t i = 0; i < t->n; i++)
        signer_clear(&t->v[i]);
    free(t->v);
    free(t);
}

struct dkim_keytable *dkim_keytable_ref(struct dkim_keytable *t)
{
    if (t)
        atomic_fetch_add(&t->refs, 1);
    return t;
}

size_t dkim_keytable_count(const struct dkim_keytable *t)
{
    return t ? t->n : 0;
}

size_t dkim_keytable_find(const struct dkim_keytable *t, const char *domain,
                          const struct dkim_signer **out, size_t max)
{
    size_t found = 0;
    for (size_t i = 0; t && i < t->n; i++) {
        if (strcasecmp(t->v[i].domain, domain) == 0) {
            if (found < max)
                out[found] = &t->v[i];
            found++;
        }
    }
    return found;
}

/* RFC 6376 3.1: a selector is dot-separated sub-domain labels. */
static bool selector_ok(const char *s)
{
    size_t label = 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   (c == '-' && label > 0) || c == '_') {
            label++;
            if (label > 63)
                return false;
        } else {
            return false;
        }
    }
    return label > 0 && strlen(s) < 200;
}

static bool ascii_domain_ok(const char *d)
{
    size_t label = 0, n = strlen(d);
    if (n == 0 || n > 253)
        return false;
    for (const char *p = d; *p; p++) {
        char c = *p;
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '_') {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return label > 0;
}

/* The key file's path: absolute, or next to the table. */
static char *key_path(const char *table, const char *file)
{
    if (file[0] == '/')
        return strdup(file);
    const char *slash = strrchr(table, '/');
    size_t dl = slash ? (size_t)(slash - table) + 1 : 0;
    size_t fl = strlen(file);
    char *p = malloc(dl + fl + 1);
    if (!p)
        return NULL;
    memcpy(p, table, dl);
    memcpy(p + dl, file, fl + 1);
    return p;
}

static int parse_line(struct dkim_keytable *t, size_t *cap, const char *path, unsigned line,
                      char *l, dkim_domain_fn to_alabel, struct buf *err)
{
    char *save = NULL;
    char *domain = strtok_r(l, " \t", &save);
    char *selector = strtok_r(NULL, " \t", &save);
    char *file = strtok_r(NULL, " \t", &save);
    char *extra = strtok_r(NULL, " \t", &save);
    if (!domain || !selector || !file || extra) {
        buf_printf(err, "%s:%u: expected \"DOMAIN SELECTOR KEYFILE\"\n", path, line);
        return ERR_INVAL;
    }
    char alabel[256];
    bool ascii = true;
    for (const char *p = domain; *p; p++)
        if ((unsigned char)*p >= 0x80)
            ascii = false;
    if (ascii) {
        if (str_copy(alabel, domain, sizeof(alabel)) >= sizeof(alabel))
            alabel[0] = '\0';
        for (char *p = alabel; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
    } else if (!to_alabel || to_alabel(domain, alabel, sizeof(alabel)) != 0) {
        alabel[0] = '\0';
    }
    size_t dl = strlen(alabel);
    if (dl > 0 && alabel[dl - 1] == '.')
        alabel[dl - 1] = '\0';
    if (!ascii_domain_ok(alabel)) {
        buf_printf(err, "%s:%u: \"%s\" is not a domain name\n", path, line, domain);
        return ERR_INVAL;
    }
    if (!selector_ok(selector)) {
        buf_printf(err, "%s:%u: \"%s\" is not a selector (RFC 6376 3.1)\n", path, line, selector);
        return ERR_INVAL;
    }
    for (size_t i = 0; i < t->n; i++) {
        if (strcasecmp(t->v[i].domain, alabel) == 0 &&
            strcasecmp(t->v[i].selector, selector) == 0) {
            buf_printf(err, "%s:%u: %s %s is listed twice\n", path, line, alabel, selector);
            return ERR_INVAL;
        }
    }
    char *kp = key_path(path, file);
    if (!kp) {
        buf_printf(err, "%s:%u: out of memory\n", path, line);
        return ERR_NOMEM;
    }
    struct buf why;
    buf_init(&why, 1024);
    struct dkim_key *key = dkim_key_load(kp, &why);
    if (!key) {
        buf_printf(err, "%s:%u: %s\n", path, line, why.data ? why.data : kp);
        buf_free(&why);
        free(kp);
        return ERR_INVAL;
    }
    buf_free(&why);
    if (t->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        struct dkim_signer *nv = realloc(t->v, nc * sizeof(*nv));
        if (!nv) {
            dkim_key_free(key);
            free(kp);
            buf_printf(err, "%s:%u: out of memory\n", path, line);
            return ERR_NOMEM;
        }
        t->v = nv;
        *cap = nc;
    }
    struct dkim_signer *s = &t->v[t->n];
    s->domain = strdup(alabel);
    s->selector = strdup(selector);
    s->keyfile = kp;
    s->key = key;
    t->n++;
    if (!s->domain || !s->selector) {
        buf_printf(err, "%s:%u: out of memory\n", path, line);
        return ERR_NOMEM;
    }
    return 0;
}

struct dkim_keytable *dkim_keytable_load(const char *path, dkim_domain_fn to_alabel,
                                         struct buf *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        buf_printf(err, "%s: cannot open: %s\n", path, strerror(errno));
        return NULL;
    }
    struct dkim_keytable *t = calloc(1, sizeof(*t));
    if (!t) {
        fclose(f);
        buf_printf(err, "%s: out of memory\n", path);
        return NULL;
    }
    atomic_init(&t->refs, 1);
    size_t cap = 0;
    bool bad = false;
    unsigned line = 0;
    char l[4096];
    size_t total = 0;
    while (fgets(l, sizeof(l), f)) {
        line++;
        size_t n = strlen(l);
        total += n;
        if (total > TABLE_MAX || line > MAX_LINES) {
            buf_printf(err, "%s:%u: file too large\n", path, line);
            bad = true;
            break;
        }
        if (n == sizeof(l) - 1 && l[n - 1] != '\n') {
            buf_printf(err, "%s:%u: line too long\n", path, line);
            bad = true;
            int c;
            while ((c = fgetc(f)) != EOF && c != '\n')
                ;
            continue;
        }
        while (n > 0 && (l[n - 1] == '\n' || l[n - 1] == '\r'))
            l[--n] = '\0';
        char *hash = strchr(l, '#');
        if (hash)
            *hash = '\0';
        char *p = l;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            continue;
        if (parse_line(t, &cap, path, line, p, to_alabel, err) != 0)
            bad = true;
    }
    if (ferror(f)) {
        buf_printf(err, "%s: read error\n", path);
        bad = true;
    }
    fclose(f);
    if (bad) {
        dkim_keytable_free(t);
        return NULL;
    }
    return t;
}
