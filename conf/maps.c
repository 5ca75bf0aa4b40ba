/*
 * maps.c - the routing tables an operator keeps in files, in the formats
 * Postfix users know: transport(5), smtp_sasl_password_maps,
 * smtpd_sender_login_maps, and Convoy's destination_limits.
 *
 * Every file is "KEY VALUE" lines: '#' starts a comment line, empty lines
 * are skipped, a line that starts with white space continues the previous
 * one (as in Postfix's table files). Keys are case-insensitive (stored
 * lower-cased). A later line with the same key is an error, not a silent
 * override: a table is small enough that a duplicate is a mistake. Every
 * error names FILE:LINE, and every line is checked, so one load reports
 * every problem; a table with any error is not used at all (the caller
 * keeps the table it had: the all-or-nothing rule of reloads).
 *
 * Lookups are by binary search over the keys sorted once at load, so a
 * table of any size costs O(log n) per lookup and nothing per message.
 *
 * Domain keys (transport_maps, destination_limits):
 *   example.net    the domain itself
 *   .example.net   every subdomain of example.net (not example.net itself)
 *   *              every domain (transport_maps only)
 * A lookup for a.b.example.net tries a.b.example.net, .b.example.net,
 * .example.net, .net, then * : the exact name first, then parent domains
 * from the nearest, as Postfix does with parent_domain_matches_subdomains
 * off. Keys are host names in A-label form (RFC 5890); a U-label key is
 * refused with a hint, since mail arrives with A-labels in the envelope.
 */
#include "conf.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAP_FILE_MAX (64u << 20) /* a table file larger than this is refused */
#define MAP_LINE_MAX 4096        /* one logical line */

enum map_kind { MAP_TRANSPORT, MAP_SASL, MAP_LOGINS, MAP_LIMITS };

struct map_entry {
    char *key; /* lower-cased */
    union {
        struct conf_transport transport;
        struct {
            char *user;
            char *password;
        } sasl;
        struct {
            char **v;
            size_t n;
        } logins;
        struct conf_dest_limit limit;
    } u;
    unsigned line;
};

struct conf_map {
    enum map_kind kind;
    char *path;
    struct map_entry *e;
    size_t n, cap;
};

static const char *kind_name(enum map_kind k)
{
    switch (k) {
    case MAP_TRANSPORT:
        return "transport_maps";
    case MAP_SASL:
        return "smtp_sasl_password_maps";
    case MAP_LOGINS:
        return "smtpd_sender_login_maps";
    case MAP_LIMITS:
        return "destination_limits";
    }
    return "map";
}

static void entry_free(enum map_kind kind, struct map_entry *e)
{
    free(e->key);
    switch (kind) {
    case MAP_TRANSPORT:
        free(e->u.transport.text);
        break;
    case MAP_SASL:
        if (e->u.sasl.password) /* never leave a password in freed memory */
            explicit_bzero(e->u.sasl.password, strlen(e->u.sasl.password));
        free(e->u.sasl.user);
        free(e->u.sasl.password);
        break;
    case MAP_LOGINS:
        for (size_t i = 0; i < e->u.logins.n; i++)
            free(e->u.logins.v[i]);
        free(e->u.logins.v);
        break;
    case MAP_LIMITS:
        break;
    }
}

void conf_map_free(struct conf_map *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        entry_free(m->kind, &m->e[i]);
    free(m->e);
    free(m->path);
    free(m);
}

size_t conf_map_size(const struct conf_map *m)
{
    return m ? m->n : 0;
}

const char *conf_map_path(const struct conf_map *m)
{
    return m ? m->path : NULL;
}

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static bool host_ok(const char *s)
{
    return host_name_ok(s, strlen(s), 0);
}

static bool is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return false;
    return true;
}

/* ---- reading ---------------------------------------------------------- */

struct reader {
    const char *path;
    struct buf *errors;
    int nerr;
};

static void errorf(struct reader *r, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void errorf(struct reader *r, unsigned line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (line)
        buf_printf(r->errors, "%s:%u: ", r->path, line);
    else
        buf_printf(r->errors, "%s: ", r->path);
    buf_vprintf(r->errors, fmt, ap);
    buf_append_str(r->errors, "\n");
    va_end(ap);
    r->nerr++;
}

/* Read the whole file (at most MAP_FILE_MAX) into a NUL-terminated string
 * (the caller frees it). */
static char *read_file(struct reader *r, bool secret)
{
    struct stat st;
    if (stat(r->path, &st) != 0) {
        errorf(r, 0, "cannot open: %s", strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        errorf(r, 0, "not a regular file");
        return NULL;
    }
    if (secret && (st.st_mode & (S_IROTH | S_IWOTH))) {
        errorf(r, 0,
               "holds passwords but is readable or writable by every user (mode %04o): "
               "chmod o-rwx it",
               (unsigned)(st.st_mode & 07777));
        return NULL;
    }
    struct buf text;
    buf_init(&text, MAP_FILE_MAX);
    int rc = file_read_all(r->path, &text);
    if (rc == ERR_TOOBIG)
        errorf(r, 0, "larger than %u MiB", MAP_FILE_MAX >> 20);
    else if (rc == ERR_IO)
        errorf(r, 0, "cannot read: %s", strerror(errno));
    else if (rc != 0)
        errorf(r, 0, "%s", err_str(rc));
    else if (text.len && memchr(text.data, '\0', text.len))
        errorf(r, 0, "contains a NUL byte: not a text table");
    else if (!text.data && buf_append(&text, "", 0) != 0)
        errorf(r, 0, "out of memory");
    else
        return text.data ? text.data : strdup("");
    if (secret && text.data)
        explicit_bzero(text.data, text.len);
    buf_free(&text);
    return NULL;
}

/* Split text into logical lines (continuations joined with one space) and
 * call fn(key, value, line) for each. value may be "". */
typedef void (*line_fn)(struct reader *r, struct conf_map *m, char *key, char *value,
                        unsigned line);

static void for_each_line(struct reader *r, struct conf_map *m, char *text, line_fn fn)
{
    char logical[MAP_LINE_MAX];
    size_t ll = 0;
    unsigned start = 0, lineno = 0;
    bool have = false, too_long = false;
    char *p = text;
    for (;;) {
        char *nl = p ? strchr(p, '\n') : NULL;
        bool eof = p == NULL || *p == '\0';
        char *line = p;
        if (!eof) {
            if (nl)
                *nl = '\0';
            lineno++;
            size_t n = strlen(line);
            if (n && line[n - 1] == '\r')
                line[--n] = '\0';
        }
        const char *first = line;
        if (!eof)
            while (*first == ' ' || *first == '\t')
                first++;
        bool blank = eof || *first == '\0' || *first == '#';
        bool cont = !eof && !blank && first != line;
        if (!blank && cont && have) {
            size_t n = strlen(first);
            if (ll + 1 + n >= sizeof(logical))
                too_long = true;
            else {
                logical[ll++] = ' ';
                memcpy(logical + ll, first, n);
                ll += n;
                logical[ll] = '\0';
            }
        } else if (!blank || eof) {
            /* A new logical line starts (or the file ends): finish the one
             * before. */
            if (have) {
                if (too_long)
                    errorf(r, start, "line longer than %d characters", MAP_LINE_MAX);
                else {
                    char *k = logical;
                    char *v = k + strcspn(k, " \t");
                    if (*v) {
                        *v++ = '\0';
                        v += strspn(v, " \t");
                    }
                    size_t vn = strlen(v);
                    while (vn && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
                        v[--vn] = '\0';
                    fn(r, m, k, v, start);
                }
                have = false;
            }
            if (eof)
                break;
            if (cont) {
                errorf(r, lineno, "continuation line with nothing to continue");
            } else {
                size_t n = strlen(first);
                too_long = n >= sizeof(logical);
                if (!too_long) {
                    memcpy(logical, first, n + 1);
                    ll = n;
                }
                have = true;
                start = lineno;
            }
        }
        p = nl ? nl + 1 : NULL;
    }
}

static struct map_entry *add_entry(struct reader *r, struct conf_map *m, const char *key,
                                   unsigned line)
{
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        struct map_entry *e = realloc(m->e, cap * sizeof(*e));
        if (!e) {
            errorf(r, line, "out of memory");
            return NULL;
        }
        m->e = e;
        m->cap = cap;
    }
    struct map_entry *e = &m->e[m->n];
    memset(e, 0, sizeof(*e));
    e->key = strdup(key);
    if (!e->key) {
        errorf(r, line, "out of memory");
        return NULL;
    }
    lower(e->key);
    e->line = line;
    m->n++;
    return e;
}

/* A domain key: "example.net", ".example.net" or (when star) "*". */
static bool domain_key_ok(struct reader *r, const char *key, bool star, unsigned line)
{
    if (star && strcmp(key, "*") == 0)
        return true;
    if (!is_ascii(key)) {
        errorf(r, line, "\"%s\": write the domain in A-label form (xn--...)", key);
        return false;
    }
    if (strchr(key, '@')) {
        errorf(r, line, "\"%s\": only domains are supported as keys, not addresses", key);
        return false;
    }
    const char *d = key[0] == '.' ? key + 1 : key;
    if (!host_ok(d)) {
        errorf(r, line, "\"%s\" is not a domain name", key);
        return false;
    }
    return true;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct map_entry *)a)->key, ((const struct map_entry *)b)->key);
}

/* Sort the keys and report duplicates. */
static void finish(struct reader *r, struct conf_map *m)
{
    if (m->n > 1)
        qsort(m->e, m->n, sizeof(*m->e), cmp_entry);
    for (size_t i = 1; i < m->n; i++)
        if (strcmp(m->e[i - 1].key, m->e[i].key) == 0) {
            unsigned a = m->e[i - 1].line, b = m->e[i].line;
            errorf(r, a > b ? a : b, "\"%s\" is already given on line %u", m->e[i].key,
                   a > b ? b : a);
        }
}

static struct conf_map *load(enum map_kind kind, const char *path, line_fn fn, bool secret,
                             struct buf *errors)
{
    struct reader r = {.path = path, .errors = errors};
    struct conf_map *m = calloc(1, sizeof(*m));
    if (!m || !(m->path = strdup(path))) {
        free(m);
        errorf(&r, 0, "out of memory");
        return NULL;
    }
    m->kind = kind;
    char *text = read_file(&r, secret);
    if (text) {
        for_each_line(&r, m, text, fn);
        if (secret)
            explicit_bzero(text, strlen(text));
        free(text);
        finish(&r, m);
    }
    if (r.nerr) {
        conf_map_free(m);
        return NULL;
    }
    return m;
}

static const struct map_entry *find_key(const struct conf_map *m, const char *key)
{
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, m->e[mid].key);
        if (c == 0)
            return &m->e[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* Exact, then ".parent" from the nearest, then "*" (when star). */
static const struct map_entry *find_domain(const struct conf_map *m, const char *domain, bool star)
{
    if (!m || !domain)
        return NULL;
    char d[256];
    size_t n = str_copy(d, domain, sizeof(d));
    if (n >= sizeof(d))
        return NULL;
    while (n && d[n - 1] == '.') /* a trailing root dot is the same name */
        d[--n] = '\0';
    lower(d);
    const struct map_entry *e = find_key(m, d);
    if (e)
        return e;
    for (char *p = strchr(d, '.'); p; p = strchr(p + 1, '.'))
        if ((e = find_key(m, p)))
            return e;
    return star ? find_key(m, "*") : NULL;
}

/* ---- transport_maps ------------------------------------------------------ */

/* "4.3.0 text" or "text": a leading enhanced status code of the right class
 * (RFC 3463: class.subject.detail), then the text. */
static bool parse_status_text(struct reader *r, const char *v, char cls, struct conf_transport *t,
                              unsigned line)
{
    const char *p = v;
    if (p[0] >= '2' && p[0] <= '5' && p[1] == '.') {
        size_t n = strcspn(p, " \t");
        char code[sizeof(t->status)];
        if (n >= sizeof(code)) {
            errorf(r, line, "\"%.*s\" is not an enhanced status code", (int)n, p);
            return false;
        }
        memcpy(code, p, n);
        code[n] = '\0';
        unsigned a, b, c;
        char end;
        if (sscanf(code, "%u.%u.%u%c", &a, &b, &c, &end) != 3 || b > 999 || c > 999) {
            errorf(r, line, "\"%s\" is not an enhanced status code", code);
            return false;
        }
        if (code[0] != cls) {
            errorf(r, line, "status %s must be of class %c (%s)", code, cls,
                   cls == '5' ? "error: bounces" : "defer: retries");
            return false;
        }
        str_copy(t->status, code, sizeof(t->status));
        p += n;
        p += strspn(p, " \t");
    } else {
        str_copy(t->status, cls == '5' ? "5.0.0" : "4.0.0", sizeof(t->status));
    }
    t->text = strdup(*p ? p
                        : (cls == '5' ? "delivery refused by transport_maps"
                                      : "delivery deferred by transport_maps"));
    if (!t->text) {
        errorf(r, line, "out of memory");
        return false;
    }
    for (char *q = t->text; *q; q++) /* the text goes into SMTP replies and DSNs */
        if ((unsigned char)*q < 0x20 && *q != '\t')
            *q = ' ';
    return true;
}

static void transport_line(struct reader *r, struct conf_map *m, char *key, char *value,
                           unsigned line)
{
    if (!domain_key_ok(r, key, true, line))
        return;
    if (!*value) {
        errorf(r, line, "\"%s\" has no transport (expected e.g. smtp:[host]:port)", key);
        return;
    }
    char *colon = strchr(value, ':');
    if (!colon) {
        errorf(r, line, "\"%s\": expected transport:nexthop (smtp:, relay:, error:, defer:)",
               value);
        return;
    }
    *colon = '\0';
    const char *transport = value, *rest = colon + 1;
    struct conf_transport t = {0};
    if (strcasecmp(transport, "smtp") == 0 || strcasecmp(transport, "relay") == 0) {
        t.kind = CONF_TRANSPORT_SMTP;
        if (*rest) {
            if (strpbrk(rest, " \t")) {
                errorf(r, line, "\"%s\": a next hop has no spaces", rest);
                return;
            }
            if (conf_parse_hostport(rest, true, &t.nexthop) != 0 ||
                (!t.nexthop.bracketed && !host_ok(t.nexthop.host) &&
                 strcmp(t.nexthop.host, "*") != 0) ||
                strcmp(t.nexthop.host, "*") == 0) {
                errorf(r, line, "\"%s\" is not a next hop (host, host:port, [host] or [host]:port)",
                       rest);
                return;
            }
        }
    } else if (strcasecmp(transport, "error") == 0) {
        t.kind = CONF_TRANSPORT_ERROR;
        if (!parse_status_text(r, rest, '5', &t, line))
            return;
    } else if (strcasecmp(transport, "defer") == 0) {
        t.kind = CONF_TRANSPORT_DEFER;
        if (!parse_status_text(r, rest, '4', &t, line))
            return;
    } else {
        errorf(r, line, "unknown transport \"%s\" (smtp, relay, error or defer)", transport);
        return;
    }
    struct map_entry *e = add_entry(r, m, key, line);
    if (!e) {
        free(t.text);
        return;
    }
    e->u.transport = t;
}

struct conf_map *conf_transport_load(const char *path, struct buf *errors)
{
    return load(MAP_TRANSPORT, path, transport_line, false, errors);
}

const struct conf_transport *conf_transport_find(const struct conf_map *m, const char *domain,
                                                 const char **matched)
{
    if (!m || m->kind != MAP_TRANSPORT)
        return NULL;
    const struct map_entry *e = find_domain(m, domain, true);
    if (matched)
        *matched = e ? e->key : NULL;
    return e ? &e->u.transport : NULL;
}

/* ---- smtp_sasl_password_maps --------------------------------------------- */

static void sasl_line(struct reader *r, struct conf_map *m, char *key, char *value, unsigned line)
{
    struct conf_hostport hp;
    if (conf_parse_hostport(key, true, &hp) != 0 || strcmp(hp.host, "*") == 0 ||
        (!hp.bracketed && !host_ok(hp.host))) {
        errorf(r, line, "\"%s\" is not a server (host, [host] or [host]:port)", key);
        return;
    }
    /* user:password; the password may hold ':' (the first one splits). The
     * value is never echoed in an error. */
    char *colon = strchr(value, ':');
    if (!*value || !colon || colon == value) {
        errorf(r, line, "the value for \"%s\" must be user:password", key);
        return;
    }
    *colon = '\0';
    struct map_entry *e = add_entry(r, m, key, line);
    if (!e)
        return;
    e->u.sasl.user = strdup(value);
    e->u.sasl.password = strdup(colon + 1);
    explicit_bzero(colon + 1, strlen(colon + 1));
    if (!e->u.sasl.user || !e->u.sasl.password)
        errorf(r, line, "out of memory");
}

struct conf_map *conf_sasl_passwords_load(const char *path, struct buf *errors)
{
    return load(MAP_SASL, path, sasl_line, true, errors);
}

int conf_sasl_find(const struct conf_map *m, const char *host, uint16_t port, bool bracketed,
                   const char **user, const char **password)
{
    if (!m || m->kind != MAP_SASL || !host)
        return ERR_NOTFOUND;
    /* The most specific key first: the next hop as written (with its port),
     * then without the port, then the other bracket form. */
    char keys[4][300];
    size_t nk = 0;
    if (port) {
        snprintf(keys[nk++], sizeof(keys[0]), bracketed ? "[%s]:%u" : "%s:%u", host,
                 (unsigned)port);
    }
    snprintf(keys[nk++], sizeof(keys[0]), bracketed ? "[%s]" : "%s", host);
    snprintf(keys[nk++], sizeof(keys[0]), bracketed ? "%s" : "[%s]", host);
    for (size_t i = 0; i < nk; i++) {
        lower(keys[i]);
        const struct map_entry *e = find_key(m, keys[i]);
        if (e) {
            *user = e->u.sasl.user;
            *password = e->u.sasl.password;
            return 0;
        }
    }
    return ERR_NOTFOUND;
}

/* ---- smtpd_sender_login_maps ---------------------------------------------- */

static void logins_line(struct reader *r, struct conf_map *m, char *key, char *value, unsigned line)
{
    const char *at = strchr(key, '@');
    if (!at || (at != key && strchr(at + 1, '@')) || !host_ok(at + 1)) {
        errorf(r, line, "\"%s\": a key is an address (user@domain) or @domain", key);
        return;
    }
    if (!*value) {
        errorf(r, line, "\"%s\" has no login names", key);
        return;
    }
    struct map_entry *e = add_entry(r, m, key, line);
    if (!e)
        return;
    for (char *tok = strtok(value, ", \t"); tok; tok = strtok(NULL, ", \t")) {
        char **v = realloc(e->u.logins.v, (e->u.logins.n + 1) * sizeof(*v));
        if (!v || !(v[e->u.logins.n] = strdup(tok))) {
            if (v)
                e->u.logins.v = v;
            errorf(r, line, "out of memory");
            return;
        }
        e->u.logins.v = v;
        e->u.logins.n++;
    }
}

struct conf_map *conf_sender_logins_load(const char *path, struct buf *errors)
{
    return load(MAP_LOGINS, path, logins_line, false, errors);
}

bool conf_sender_login_ok(const struct conf_map *m, const char *sender, const char *login)
{
    if (!m || m->kind != MAP_LOGINS)
        return true;
    if (!sender || !*sender)
        return true; /* the null sender (bounces) belongs to nobody */
    if (!login)
        return false;
    char key[600];
    if (str_copy(key, sender, sizeof(key)) >= sizeof(key))
        return false;
    lower(key);
    const struct map_entry *e = find_key(m, key);
    const char *at = strrchr(key, '@');
    if (!e && at)
        e = find_key(m, at);
    if (!e)
        return false; /* a sender mapped to no login is nobody's to use */
    for (size_t i = 0; i < e->u.logins.n; i++)
        if (strcmp(e->u.logins.v[i], login) == 0)
            return true;
    return false;
}

/* ---- destination_limits ----------------------------------------------------- */

static bool parse_count(const char *s, unsigned max, unsigned *out)
{
    uint64_t v;
    if (str_to_u64(s, &v) != 0 || v == 0 || v > max)
        return false;
    *out = (unsigned)v;
    return true;
}

static void limits_line(struct reader *r, struct conf_map *m, char *key, char *value, unsigned line)
{
    if (!domain_key_ok(r, key, false, line))
        return;
    struct conf_dest_limit l = {0};
    bool any = false;
    for (char *tok = strtok(value, " \t"); tok; tok = strtok(NULL, " \t")) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            errorf(r, line, "\"%s\": expected name=value", tok);
            return;
        }
        *eq = '\0';
        const char *v = eq + 1;
        if (strcmp(tok, "concurrency") == 0) {
            if (!parse_count(v, 1000, &l.concurrency)) {
                errorf(r, line, "concurrency=%s: a number from 1 to 1000", v);
                return;
            }
        } else if (strcmp(tok, "recipients") == 0) {
            if (!parse_count(v, 100000, &l.recipients)) {
                errorf(r, line, "recipients=%s: a number from 1 to 100000", v);
                return;
            }
        } else if (strcmp(tok, "rate") == 0) {
            /* N/s, N/m or N/h: messages per unit of time. */
            char num[32];
            const char *slash = strchr(v, '/');
            size_t n = slash ? (size_t)(slash - v) : 0;
            unsigned count;
            double per = 0;
            if (slash && n < sizeof(num)) {
                memcpy(num, v, n);
                num[n] = '\0';
                per = strcmp(slash, "/s") == 0   ? 1
                      : strcmp(slash, "/m") == 0 ? 60
                      : strcmp(slash, "/h") == 0 ? 3600
                                                 : 0;
            }
            if (!slash || n >= sizeof(num) || per == 0 || !parse_count(num, 1000000, &count)) {
                errorf(r, line, "rate=%s: expected N/s, N/m or N/h", v);
                return;
            }
            l.rate_per_s = count / per;
        } else {
            errorf(r, line, "unknown limit \"%s\" (concurrency, rate, recipients)", tok);
            return;
        }
        any = true;
    }
    if (!any) {
        errorf(r, line, "\"%s\" sets no limit", key);
        return;
    }
    struct map_entry *e = add_entry(r, m, key, line);
    if (e)
        e->u.limit = l;
}

struct conf_map *conf_dest_limits_load(const char *path, struct buf *errors)
{
    return load(MAP_LIMITS, path, limits_line, false, errors);
}

const struct conf_dest_limit *conf_dest_limit_find(const struct conf_map *m, const char *domain)
{
    if (!m || m->kind != MAP_LIMITS)
        return NULL;
    const struct map_entry *e = find_domain(m, domain, false);
    return e ? &e->u.limit : NULL;
}

const char *conf_map_kind_name(const struct conf_map *m)
{
    return m ? kind_name(m->kind) : "map";
}
