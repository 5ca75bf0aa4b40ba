/*
 * conf.c - the configuration snapshot: defaults from the table in params.h,
 * a Postfix main.cf style file, and -o overrides.
 *
 * Invariants:
 *  - Every parameter is in params.h; parsing, validation, `config show` and
 *    the reference are driven by that table alone.
 *  - A snapshot is complete and valid or not built at all: conf_load()
 *    returns NULL with every problem listed, never a half-parsed config.
 *  - Values are validated by their type and check, with messages that say
 *    what was expected, naming the file and the line.
 */
#include "conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CONF_LINE_MAX 65536 /* longest logical line */
#define CONF_FILE_MAX (4u << 20)

static const struct conf_param_info table[] = {
#define CONF_ROW(name, type, def, check, desc)                                                     \
    {#name, CONF_##type, def, check, desc, offsetof(struct conf, name)},
    CONF_PARAMS(CONF_ROW)
#undef CONF_ROW
};

/* The typed field of parameter i inside a snapshot. */
static void *field_of(struct conf *c, size_t i)
{
    return (char *)c + table[i].offset;
}

static const void *cfield_of(const struct conf *c, size_t i)
{
    return (const char *)c + table[i].offset;
}

const struct conf_param_info *conf_params(void)
{
    return table;
}

const struct conf_param_info *conf_param_find(const char *name)
{
    for (size_t i = 0; i < CONF_NPARAMS; i++)
        if (strcmp(table[i].name, name) == 0)
            return &table[i];
    return NULL;
}

/* ---- small parsers ---------------------------------------------------- */

/* myhostname, smtp_helo_name, relayhost: LDH labels, '_' tolerated (some
 * sites have it in host names), one trailing dot. */
static bool conf_host_ok(const char *s)
{
    return host_name_ok(s, strlen(s), HOST_NAME_TRAILING_DOT | HOST_NAME_UNDERSCORE);
}

int conf_parse_cidr(const char *s, struct conf_cidr *out)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *slash = strchr(s, '/');
    size_t hl = slash ? (size_t)(slash - s) : strlen(s);
    if (hl == 0 || hl >= sizeof(host))
        return ERR_INVAL;
    memcpy(host, s, hl);
    host[hl] = '\0';
    char *h = host;
    /* Postfix writes IPv6 networks as [::1]/128; accept both forms. */
    if (h[0] == '[') {
        size_t l = strlen(h);
        if (l < 3 || h[l - 1] != ']')
            return ERR_INVAL;
        h[l - 1] = '\0';
        h++;
    }
    memset(out, 0, sizeof(*out));
    unsigned maxbits;
    if (inet_pton(AF_INET, h, out->addr) == 1) {
        out->family = AF_INET;
        maxbits = 32;
    } else if (inet_pton(AF_INET6, h, out->addr) == 1) {
        out->family = AF_INET6;
        maxbits = 128;
    } else {
        return ERR_INVAL;
    }
    out->bits = maxbits;
    if (slash) {
        uint64_t b;
        if (str_to_u64(slash + 1, &b) || b > maxbits)
            return ERR_INVAL;
        out->bits = (unsigned)b;
    }
    /* Host bits must be zero, as Postfix insists: 10.0.0.1/8 is a typo. */
    for (unsigned i = out->bits; i < maxbits; i++)
        if (out->addr[i / 8] & (0x80 >> (i % 8)))
            return ERR_INVAL;
    return 0;
}

bool conf_cidr_match(const struct conf_cidr *net, const struct sockaddr *sa)
{
    uint8_t a[16];
    int family = sa->sa_family;
    if (family == AF_INET) {
        memcpy(a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (family == AF_INET6) {
        const struct in6_addr *in6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(in6) && net->family == AF_INET) {
            memcpy(a, in6->s6_addr + 12, 4);
            family = AF_INET;
        } else {
            memcpy(a, in6->s6_addr, 16);
        }
    } else {
        return false;
    }
    if (family != net->family)
        return false;
    unsigned full = net->bits / 8, rest = net->bits % 8;
    if (memcmp(a, net->addr, full) != 0)
        return false;
    if (rest) {
        uint8_t mask = (uint8_t)(0xff << (8 - rest));
        if ((a[full] & mask) != (net->addr[full] & mask))
            return false;
    }
    return true;
}

bool conf_mynetworks_match(const struct conf *c, const struct sockaddr *sa)
{
    for (size_t i = 0; i < c->n_mynetworks; i++)
        if (conf_cidr_match(&c->mynetworks_cidr[i], sa))
            return true;
    return false;
}

int conf_parse_hostport(const char *s, bool allow_no_port, struct conf_hostport *out)
{
    memset(out, 0, sizeof(*out));
    const char *port = NULL;
    size_t hl;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end == s + 1)
            return ERR_INVAL;
        hl = (size_t)(end - s - 1);
        if (hl >= sizeof(out->host))
            return ERR_INVAL;
        memcpy(out->host, s + 1, hl);
        out->bracketed = true;
        if (end[1] == ':')
            port = end + 2;
        else if (end[1] != '\0')
            return ERR_INVAL;
    } else {
        const char *colon = strrchr(s, ':');
        /* More than one colon without brackets is a bare IPv6 address. */
        if (colon && strchr(s, ':') != colon)
            colon = NULL;
        hl = colon ? (size_t)(colon - s) : strlen(s);
        if (hl == 0 || hl >= sizeof(out->host))
            return ERR_INVAL;
        memcpy(out->host, s, hl);
        if (colon)
            port = colon + 1;
    }
    out->host[hl] = '\0';
    if (port) {
        uint64_t p;
        if (str_to_u64(port, &p) || p == 0 || p > 65535)
            return ERR_INVAL;
        out->port = (uint16_t)p;
    } else if (!allow_no_port) {
        return ERR_INVAL;
    }
    return 0;
}

const char *conf_listen_role_name(enum conf_listen_role r)
{
    switch (r) {
    case CONF_LISTEN_SUBMISSION:
        return "submission";
    case CONF_LISTEN_SUBMISSIONS:
        return "submissions";
    case CONF_LISTEN_SMTP:
        break;
    }
    return "smtp";
}

int conf_parse_listen(const char *s, struct conf_hostport *out, enum conf_listen_role *role)
{
    *role = CONF_LISTEN_SMTP;
    const char *slash = strrchr(s, '/');
    char addr[300];
    if (slash) {
        const char *r = slash + 1;
        if (strcmp(r, "smtp") == 0)
            *role = CONF_LISTEN_SMTP;
        else if (strcmp(r, "submission") == 0)
            *role = CONF_LISTEN_SUBMISSION;
        else if (strcmp(r, "submissions") == 0)
            *role = CONF_LISTEN_SUBMISSIONS;
        else
            return ERR_INVAL;
        size_t n = (size_t)(slash - s);
        if (n >= sizeof(addr))
            return ERR_INVAL;
        memcpy(addr, s, n);
        addr[n] = '\0';
        s = addr;
    }
    return conf_parse_hostport(s, false, out);
}

static bool is_ip_literal(const char *h)
{
    uint8_t a[16];
    return inet_pton(AF_INET, h, a) == 1 || inet_pton(AF_INET6, h, a) == 1;
}

/* ---- value parsing ---------------------------------------------------- */

/* Parse "min..max" from a check string using the type's unit parser. */
typedef int (*num_parser)(const char *s, int64_t *out);

static int parse_int(const char *s, int64_t *out)
{
    uint64_t v;
    if (str_to_u64(s, &v) || v > INT64_MAX)
        return ERR_INVAL;
    *out = (int64_t)v;
    return 0;
}

static int parse_size(const char *s, int64_t *out)
{
    size_t n = strlen(s);
    if (n == 0)
        return ERR_INVAL;
    int64_t mult = 1;
    char last = s[n - 1];
    if (last == 'k' || last == 'K')
        mult = 1024;
    else if (last == 'm' || last == 'M')
        mult = 1024 * 1024;
    else if (last == 'g' || last == 'G')
        mult = 1024LL * 1024 * 1024;
    char num[32];
    size_t digits = mult == 1 ? n : n - 1;
    if (digits == 0 || digits >= sizeof(num))
        return ERR_INVAL;
    memcpy(num, s, digits);
    num[digits] = '\0';
    int64_t v;
    if (parse_int(num, &v) || v > INT64_MAX / mult)
        return ERR_INVAL;
    *out = v * mult;
    return 0;
}

static int parse_range(const char *check, num_parser p, int64_t *lo, int64_t *hi)
{
    *lo = 0;
    *hi = INT64_MAX;
    if (!check || !*check)
        return 0;
    const char *dots = strstr(check, "..");
    if (!dots)
        return ERR_INVAL;
    char a[32], b[32];
    size_t al = (size_t)(dots - check);
    if (al >= sizeof(a) || strlen(dots + 2) >= sizeof(b))
        return ERR_INVAL;
    memcpy(a, check, al);
    a[al] = '\0';
    str_copy(b, dots + 2, sizeof(b));
    if (p(a, lo) || p(b, hi))
        return ERR_INVAL;
    return 0;
}

static const char *type_word(enum conf_type t)
{
    switch (t) {
    case CONF_STR:
        return "string";
    case CONF_BOOL:
        return "boolean";
    case CONF_INT:
        return "integer";
    case CONF_TIME:
        return "time";
    case CONF_SIZE:
        return "size";
    case CONF_LIST:
        return "list";
    case CONF_ENUM:
        return "choice";
    }
    return "?";
}

static bool enum_has(const char *choices, const char *v)
{
    size_t vl = strlen(v);
    const char *p = choices;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *e = p;
        while (*e && *e != ' ')
            e++;
        if ((size_t)(e - p) == vl && vl && strncmp(p, v, vl) == 0)
            return true;
        p = e;
    }
    return false;
}

/* Check one string or list element against its kind; on failure write what
 * was expected into why. */
static bool check_kind(const char *kind, const char *v, char *why, size_t whylen)
{
    struct conf_hostport hp;
    struct conf_cidr cidr;
    if (!kind || !*kind || strcmp(kind, "path") == 0)
        return true;
    if (strcmp(kind, "hostname") == 0) {
        if (!*v || conf_host_ok(v))
            return true;
        snprintf(why, whylen, "expected a host name such as mail.example.com");
    } else if (strcmp(kind, "facility") == 0) {
        if (log_facility_valid(v))
            return true;
        snprintf(why, whylen, "expected a syslog facility such as mail or local0");
    } else if (strcmp(kind, "relayhost") == 0) {
        if (!*v)
            return true;
        if (conf_parse_hostport(v, true, &hp) == 0 &&
            (conf_host_ok(hp.host) || (hp.bracketed && is_ip_literal(hp.host))))
            return true;
        snprintf(why, whylen, "expected host, host:port or [host]:port");
    } else if (strcmp(kind, "user") == 0) {
        uid_t uid;
        gid_t gid;
        if (!*v || priv_lookup(v, &uid, &gid, why, whylen) == 0)
            return true;
    } else if (strcmp(kind, "listen") == 0) {
        if (!*v)
            return true; /* an empty single address turns the listener off */
        enum conf_listen_role role;
        if (conf_parse_listen(v, &hp, &role) == 0 &&
            (strcmp(hp.host, "*") == 0 || is_ip_literal(hp.host)))
            return true;
        snprintf(why, whylen,
                 "expected address:port such as 127.0.0.1:2525, [::1]:25 or *:25, optionally "
                 "followed by /smtp, /submission or /submissions");
    } else if (strcmp(kind, "hostport") == 0) {
        if (conf_parse_hostport(v, true, &hp) == 0 && is_ip_literal(hp.host))
            return true;
        snprintf(why, whylen,
                 "expected an IP address with an optional port: 127.0.0.1:53, "
                 "[::1]:53");
    } else if (strcmp(kind, "cidr") == 0) {
        if (conf_parse_cidr(v, &cidr) == 0)
            return true;
        snprintf(why, whylen,
                 "expected a network such as 127.0.0.0/8 or [::1]/128 "
                 "(host bits zero)");
    } else {
        return true;
    }
    return false;
}

static void list_free(struct conf_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* Split on commas and whitespace. */
static int list_split(const char *s, struct conf_list *out)
{
    out->n = 0;
    out->v = NULL;
    size_t cap = 0;
    const char *p = s;
    for (;;) {
        while (*p && (*p == ',' || isspace((unsigned char)*p)))
            p++;
        if (!*p)
            break;
        const char *e = p;
        while (*e && *e != ',' && !isspace((unsigned char)*e))
            e++;
        if (out->n == cap) {
            cap = cap ? cap * 2 : 4;
            char **nv = realloc(out->v, cap * sizeof(*nv));
            if (!nv)
                goto nomem;
            out->v = nv;
        }
        out->v[out->n] = strndup(p, (size_t)(e - p));
        if (!out->v[out->n])
            goto nomem;
        out->n++;
        p = e;
    }
    return 0;
nomem:
    list_free(out);
    return ERR_NOMEM;
}

/*
 * Parse text into the field of parameter i of c. On a bad value, fill why
 * with what was expected and return ERR_INVAL.
 */
static int set_value(struct conf *c, size_t i, const char *text, char *why, size_t whylen)
{
    const struct conf_param_info *p = &table[i];
    int64_t lo, hi, v;
    why[0] = '\0';
    switch (p->type) {
    case CONF_STR:
    case CONF_ENUM: {
        if (p->type == CONF_ENUM && !enum_has(p->check, text)) {
            snprintf(why, whylen, "expected one of: %s", p->check);
            return ERR_INVAL;
        }
        if (p->type == CONF_STR && !check_kind(p->check, text, why, whylen))
            return ERR_INVAL;
        char *dup = strdup(text);
        if (!dup)
            return ERR_NOMEM;
        char **field = (char **)field_of(c, i);
        free(*field);
        *field = dup;
        return 0;
    }
    case CONF_BOOL: {
        bool b;
        if (strcasecmp(text, "yes") == 0)
            b = true;
        else if (strcasecmp(text, "no") == 0)
            b = false;
        else {
            snprintf(why, whylen, "expected yes or no");
            return ERR_INVAL;
        }
        *(bool *)field_of(c, i) = b;
        return 0;
    }
    case CONF_INT:
    case CONF_TIME:
    case CONF_SIZE: {
        num_parser parse = p->type == CONF_INT    ? parse_int
                           : p->type == CONF_TIME ? time_parse_duration
                                                  : parse_size;
        if (parse_range(p->check, parse, &lo, &hi) != 0)
            return ERR_INVAL; /* a broken table row; caught by the unit tests */
        if (parse(text, &v) != 0 || v < lo || v > hi) {
            const char *what = p->type == CONF_INT    ? "an integer"
                               : p->type == CONF_TIME ? "a time such as 30s, 5m, 2h, 5d or 1w"
                                                      : "a size in bytes such as 10240, 64k, "
                                                        "50M or 1G";
            if (p->check && *p->check) {
                char a[32], b[32];
                const char *dots = strstr(p->check, "..");
                snprintf(a, sizeof(a), "%.*s", (int)(dots - p->check), p->check);
                snprintf(b, sizeof(b), "%s", dots + 2);
                snprintf(why, whylen, "expected %s from %s to %s", what, a, b);
            } else {
                snprintf(why, whylen, "expected %s", what);
            }
            return ERR_INVAL;
        }
        if (p->type == CONF_SIZE)
            *(uint64_t *)field_of(c, i) = (uint64_t)v;
        else
            *(int64_t *)field_of(c, i) = v;
        return 0;
    }
    case CONF_LIST: {
        struct conf_list l;
        if (list_split(text, &l))
            return ERR_NOMEM;
        for (size_t k = 0; k < l.n; k++) {
            char w[160];
            if (!check_kind(p->check, l.v[k], w, sizeof(w))) {
                snprintf(why, whylen, "bad element \"%s\": %s", l.v[k], w);
                list_free(&l);
                return ERR_INVAL;
            }
        }
        struct conf_list *field = field_of(c, i);
        list_free(field);
        *field = l;
        return 0;
    }
    }
    return ERR_INVAL;
}

/* ---- snapshot life ---------------------------------------------------- */

static void conf_free(struct conf *c)
{
    for (size_t i = 0; i < CONF_NPARAMS; i++) {
        free(c->raw[i]);
        if (table[i].type == CONF_STR || table[i].type == CONF_ENUM) {
            free(*(char **)field_of(c, i));
        } else if (table[i].type == CONF_LIST) {
            list_free(field_of(c, i));
        }
    }
    free(c->mynetworks_cidr);
    free(c->path);
    free(c);
}

struct conf *conf_ref(struct conf *c)
{
    if (c)
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_SEQ_CST);
    return c;
}

void conf_unref(struct conf *c)
{
    if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_SEQ_CST) == 0)
        conf_free(c);
}

/* ---- the file --------------------------------------------------------- */

/* Levenshtein distance, bounded to short names. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 99;
    size_t prev[65], cur[65];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(prev));
    }
    return prev[lb];
}

static const char *suggest(const char *name)
{
    const char *best = NULL;
    size_t bestd = 3;
    for (size_t i = 0; i < CONF_NPARAMS; i++) {
        size_t d = edit_distance(name, table[i].name);
        if (d < bestd) {
            bestd = d;
            best = table[i].name;
        }
    }
    return best;
}

/* Apply "name = value" (or "name=value" from -o). where is "file:line" or
 * "-o": it prefixes every error. */
static void apply(struct conf *c, const char *where, char *line, struct buf *errors, int *nerr)
{
    char *eq = strchr(line, '=');
    if (!eq) {
        buf_printf(errors, "%s: syntax error: expected \"name = value\"\n", where);
        (*nerr)++;
        return;
    }
    char *name = line, *value = eq + 1;
    char *ne = eq;
    while (ne > name && isspace((unsigned char)ne[-1]))
        ne--;
    *ne = '\0';
    while (isspace((unsigned char)*name))
        name++;
    while (isspace((unsigned char)*value))
        value++;
    size_t vl = strlen(value);
    while (vl && isspace((unsigned char)value[vl - 1]))
        value[--vl] = '\0';
    if (!*name) {
        buf_printf(errors, "%s: syntax error: missing parameter name before \"=\"\n", where);
        (*nerr)++;
        return;
    }
    for (const char *q = name; *q; q++) {
        if (!isalnum((unsigned char)*q) && *q != '_') {
            buf_printf(errors, "%s: syntax error: bad parameter name \"%s\"\n", where, name);
            (*nerr)++;
            return;
        }
    }
    const struct conf_param_info *p = conf_param_find(name);
    if (!p) {
        const char *s = suggest(name);
        if (s)
            buf_printf(errors, "%s: unknown parameter \"%s\" (did you mean \"%s\"?)\n", where, name,
                       s);
        else
            buf_printf(errors, "%s: unknown parameter \"%s\"\n", where, name);
        (*nerr)++;
        return;
    }
    size_t i = (size_t)(p - table);
    char why[256];
    int rc = set_value(c, i, value, why, sizeof(why));
    if (rc) {
        buf_printf(errors, "%s: bad value \"%s\" for %s: %s\n", where, value, name,
                   rc == ERR_NOMEM ? "out of memory" : why);
        (*nerr)++;
        return;
    }
    char *raw = strdup(value);
    if (!raw) {
        (*nerr)++;
        return;
    }
    free(c->raw[i]);
    c->raw[i] = raw;
    c->is_set[i] = true;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int read_file(const char *path, struct buf *out, struct buf *errors)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        buf_printf(errors, "%s: cannot open: %s\n", path, strerror(errno));
        return ERR_IO;
    }
    int rc = file_read_stream(f, out);
    fclose(f);
    if (rc == ERR_TOOBIG)
        buf_printf(errors, "%s: file too large (limit %u bytes)\n", path, CONF_FILE_MAX);
    else if (rc != 0)
        buf_printf(errors, "%s: read error\n", path);
    return rc;
}

static void parse_text(struct conf *c, const char *name, const char *text, size_t len,
                       struct buf *errors, int *nerr)
{
    struct buf logical;
    buf_init(&logical, CONF_LINE_MAX);
    int start_line = 0;
    char where[300];
    size_t pos = 0;
    int lineno = 0;
    while (pos <= len) {
        const char *l = text + pos;
        const char *nl = memchr(l, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - l) : len - pos;
        lineno++;
        bool last = !nl;
        if (ll && l[ll - 1] == '\r')
            ll--;
        if (memchr(l, '\0', ll)) {
            buf_printf(errors, "%s:%d: NUL byte in line\n", name, lineno);
            (*nerr)++;
            ll = 0;
        }
        size_t k = 0;
        while (k < ll && isspace((unsigned char)l[k]))
            k++;
        bool blank = k == ll, comment = !blank && l[k] == '#';
        if (!blank && !comment) {
            if (k > 0) {
                /* Continuation of the logical line. */
                if (start_line == 0) {
                    buf_printf(errors,
                               "%s:%d: syntax error: continuation line (starts with "
                               "whitespace) with no parameter before it\n",
                               name, lineno);
                    (*nerr)++;
                } else if (buf_append(&logical, " ", 1) || buf_append(&logical, l + k, ll - k)) {
                    buf_printf(errors, "%s:%d: line too long\n", name, start_line);
                    (*nerr)++;
                }
            } else {
                if (start_line) {
                    snprintf(where, sizeof(where), "%s:%d", name, start_line);
                    apply(c, where, logical.data, errors, nerr);
                }
                buf_reset(&logical);
                start_line = lineno;
                if (buf_append(&logical, l, ll)) {
                    buf_printf(errors, "%s:%d: line too long\n", name, lineno);
                    (*nerr)++;
                    start_line = 0;
                }
            }
        }
        if (last)
            break;
        pos += (size_t)(nl - l) + 1;
    }
    if (start_line && logical.data) {
        snprintf(where, sizeof(where), "%s:%d", name, start_line);
        apply(c, where, logical.data, errors, nerr);
    }
    buf_free(&logical);
}

static int derive(struct conf *c, struct buf *errors)
{
    if (!*c->myhostname) {
        char host[256];
        if (gethostname(host, sizeof(host)) != 0)
            str_copy(host, "localhost", sizeof(host));
        host[sizeof(host) - 1] = '\0';
        char *dup = strdup(host);
        if (!dup)
            return ERR_NOMEM;
        free(*(char **)(void *)&c->myhostname);
        c->myhostname = dup;
    }
    c->n_mynetworks = c->mynetworks.n;
    c->mynetworks_cidr = calloc(c->n_mynetworks ? c->n_mynetworks : 1, sizeof(struct conf_cidr));
    if (!c->mynetworks_cidr)
        return ERR_NOMEM;
    for (size_t i = 0; i < c->n_mynetworks; i++)
        conf_parse_cidr(c->mynetworks.v[i], &c->mynetworks_cidr[i]);
    if (c->minimal_backoff_time > c->maximal_backoff_time) {
        buf_printf(errors,
                   "minimal_backoff_time (%llds) is larger than maximal_backoff_time "
                   "(%llds)\n",
                   (long long)c->minimal_backoff_time, (long long)c->maximal_backoff_time);
        return ERR_INVAL;
    }
    return 0;
}

/* Defaults, then the text of the file (if any), then the overrides. */
static struct conf *build(const char *name, const char *path, const char *text, size_t len,
                          const char *const *overrides, size_t n_overrides, struct buf *errors)
{
    struct conf *c = calloc(1, sizeof(*c));
    if (!c) {
        buf_printf(errors, "out of memory\n");
        return NULL;
    }
    c->refs = 1;
    int nerr = 0;
    char why[256];
    for (size_t i = 0; i < CONF_NPARAMS; i++) {
        if (set_value(c, i, table[i].def, why, sizeof(why)) != 0) {
            buf_printf(errors, "built-in default of %s is invalid: %s\n", table[i].name, why);
            nerr++;
        }
    }
    if (path && !(c->path = strdup(path)))
        nerr++;
    if (text && len)
        parse_text(c, name, text, len, errors, &nerr);
    for (size_t i = 0; i < n_overrides; i++) {
        char *o = strdup(overrides[i]);
        char where[300];
        if (!o) {
            nerr++;
            break;
        }
        snprintf(where, sizeof(where), "-o %.250s", overrides[i]);
        apply(c, where, o, errors, &nerr);
        free(o);
    }
    if (nerr == 0 && derive(c, errors) != 0)
        nerr++;
    if (nerr) {
        conf_free(c);
        return NULL;
    }
    return c;
}

struct conf *conf_load(const char *path, const char *const *overrides, size_t n_overrides,
                       struct buf *errors)
{
    if (!path)
        return build(NULL, NULL, NULL, 0, overrides, n_overrides, errors);
    struct buf text;
    buf_init(&text, CONF_FILE_MAX);
    if (read_file(path, &text, errors) != 0) {
        buf_free(&text);
        return NULL;
    }
    struct conf *c =
        build(base_name(path), path, text.data, text.len, overrides, n_overrides, errors);
    buf_free(&text);
    return c;
}

struct conf *conf_load_mem(const char *name, const char *text, size_t len, struct buf *errors)
{
    return build(name, NULL, text, len, NULL, 0, errors);
}

/* ---- presentation ----------------------------------------------------- */

int conf_value_text(const struct conf *c, enum conf_param_id id, struct buf *out)
{
    switch (table[id].type) {
    case CONF_STR:
    case CONF_ENUM: {
        const char *s = *(const char *const *)cfield_of(c, id);
        return buf_append_str(out, s ? s : "");
    }
    case CONF_BOOL: {
        bool b = *(const bool *)cfield_of(c, id);
        return buf_append_str(out, b ? "yes" : "no");
    }
    case CONF_INT:
    case CONF_TIME:
    case CONF_SIZE: {
        int64_t v = table[id].type == CONF_SIZE ? (int64_t) * (const uint64_t *)cfield_of(c, id)
                                                : *(const int64_t *)cfield_of(c, id);
        if (table[id].type == CONF_TIME) {
            char t[32];
            time_format_duration(v, t, sizeof(t));
            return buf_append_str(out, t);
        }
        return buf_printf(out, "%lld", (long long)v);
    }
    case CONF_LIST: {
        const struct conf_list *l = cfield_of(c, id);
        for (size_t i = 0; l && i < l->n; i++) {
            int rc = buf_printf(out, "%s%s", i ? ", " : "", l->v[i]);
            if (rc)
                return rc;
        }
        return 0;
    }
    }
    return ERR_INVAL;
}

static const char *type_syntax(const struct conf_param_info *p)
{
    switch (p->type) {
    case CONF_BOOL:
        return "yes or no";
    case CONF_TIME:
        return "time (s, m, h, d, w; bare number = seconds)";
    case CONF_SIZE:
        return "size in bytes (k, M, G)";
    case CONF_LIST:
        return "list (comma or space separated)";
    default:
        return type_word(p->type);
    }
}

int conf_doc_markdown(struct buf *out)
{
    int rc = buf_append_str(
        out, "# convoy.conf(5)\n\n"
             "<!-- Generated by `convoyctl config doc` from conf/params.h; do not edit. -->\n\n"
             "## Name\n\n"
             "convoy.conf - the configuration of the Convoy mail relay\n\n"
             "## Description\n\n"
             "Convoy reads one configuration file (`convoyd -c FILE`; without `-c`, "
             "`/etc/convoy/convoy.conf` when it exists, else the built-in defaults below).\n"
             "The syntax is that of Postfix `main.cf`:\n\n"
             "- `name = value`, one per line; the last setting of a name wins.\n"
             "- A line that starts with whitespace continues the previous line.\n"
             "- Empty lines and lines whose first non-space character is `#` are ignored.\n"
             "- Times take a unit `s`, `m`, `h`, `d` or `w` (a bare number is seconds); sizes "
             "take `k`, `M` or `G` (powers of 1024); booleans are `yes` or `no`; lists are "
             "separated by commas or spaces.\n"
             "- Unknown names and bad values are errors that name the file and line; `convoyd` "
             "then exits with status 78 (or, on reload, keeps the configuration in force).\n"
             "- `convoyd -o name=value` and `convoyctl -o name=value` override the file.\n\n"
             "`convoyctl config show` prints every value in force; `convoyctl config show -n` "
             "only those that differ from the defaults.\n\n"
             "## Parameters\n\n");
    for (size_t i = 0; rc == 0 && i < CONF_NPARAMS; i++) {
        const struct conf_param_info *p = &table[i];
        rc = buf_printf(out, "### %s\n\n%s.\n\n- Type: %s", p->name, p->desc, type_syntax(p));
        if (rc == 0 && p->type == CONF_ENUM)
            rc = buf_printf(out, ": one of `%s`", p->check);
        else if (rc == 0 && p->check && *p->check && strstr(p->check, ".."))
            rc = buf_printf(out, ", from `%.*s` to `%s`", (int)(strstr(p->check, "..") - p->check),
                            p->check, strstr(p->check, "..") + 2);
        if (rc == 0)
            rc = buf_printf(out, "\n- Default: `%s`\n\n", *p->def ? p->def : "(empty)");
    }
    return rc;
}
